#!/usr/bin/env python3
"""Side-by-side benchmark of envseal against cp, cp -r, tar and age (see benches/compare.sh
for usage, settings and method). Standard library only.

Only the envseal CLI's exit codes and the files it writes are used, never its output format,
so the script works with any engine behind the same CLI.
"""

import hashlib
import json
import math
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time

KiB = 1 << 10
MiB = 1 << 20
SEED = 20240601
MARKER = ".envseal-bench"


class BenchError(Exception):
    pass


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# settings


def env_int(name, default):
    v = os.environ.get(name, "").strip()
    if not v:
        return default
    try:
        n = int(v)
    except ValueError:
        raise BenchError(f"{name}={v!r} is not an integer")
    if n < 0:
        raise BenchError(f"{name} must not be negative")
    return n


def settings():
    scale = os.environ.get("SCALE", "full").strip() or "full"
    if scale not in ("full", "small"):
        raise BenchError(f"SCALE={scale!r}: use full or small")
    small = scale == "small"
    if os.environ.get("IMAGE_MIB", "").strip():
        image_mib = env_int("IMAGE_MIB", 0)
    elif os.environ.get("IMAGE_GIB", "").strip():
        try:
            image_mib = int(round(float(os.environ["IMAGE_GIB"]) * 1024))
        except ValueError:
            raise BenchError(f"IMAGE_GIB={os.environ['IMAGE_GIB']!r} is not a number")
    else:
        image_mib = 64 if small else 2048
    s = {
        "scale": scale,
        "reps": env_int("REPS", 5),
        "warmup": env_int("WARMUP", 1),
        "image_mib": image_mib,
        "tree_mib": env_int("TREE_MIB", 32 if small else 1024),
        "tiny_files": env_int("TINY_FILES", 2000 if small else 100000),
        "empty_files": env_int("EMPTY_FILES", 10000 if small else 1000000),
    }
    s["sparse_mib"] = env_int("SPARSE_MIB", 256 if small else 4096)
    known = ("image", "tree", "tiny", "empty", "sparse", "pairs")
    cases = (os.environ.get("CASES") or " ".join(known)).split()
    for c in cases:
        if c not in known:
            raise BenchError(f"CASES: unknown case {c!r} (known: {' '.join(known)})")
    s["cases"] = [c for c in known if c in cases]
    if s["reps"] < 1:
        raise BenchError("REPS must be at least 1")
    if s["warmup"] < 0:
        raise BenchError("WARMUP must be 0 or more")
    if s["image_mib"] < 1 or s["tree_mib"] < 1:
        raise BenchError("IMAGE_GIB/IMAGE_MIB and TREE_MIB must give at least 1 MiB")
    return s


def find_envseal():
    e = os.environ.get("ENVSEAL", "").strip()
    if not e:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        e = os.path.join(repo, "target", "release", "envseal")
        if not os.path.exists(e):
            raise BenchError(
                f"no envseal binary at {e}: run `cargo build --release` or set ENVSEAL=/path/to/envseal"
            )
    found = shutil.which(e) if os.sep not in e else e
    if not found or not os.access(found, os.X_OK):
        raise BenchError(f"ENVSEAL={e}: not an executable")
    return os.path.abspath(found)


# ---------------------------------------------------------------------------------------------
# the work dir: everything written or deleted is inside it


class Workdir:
    def __init__(self, path):
        self.root = os.path.realpath(path)
        if self.root == os.sep:
            raise BenchError("BENCH_DIR must not be /")
        if os.path.exists(self.root):
            if not os.path.isdir(self.root):
                raise BenchError(f"BENCH_DIR={self.root} is not a directory")
            if os.listdir(self.root) and not os.path.exists(os.path.join(self.root, MARKER)):
                raise BenchError(
                    f"BENCH_DIR={self.root} is not empty and was not made by this script "
                    f"(no {MARKER}); choose another BENCH_DIR"
                )
        os.makedirs(self.root, exist_ok=True)
        with open(os.path.join(self.root, MARKER), "w") as f:
            f.write("work dir of envseal benches/compare.sh; safe to delete\n")
        self.corpus = os.path.join(self.root, "corpus")
        self.run = os.path.join(self.root, "run")
        os.makedirs(self.corpus, exist_ok=True)

    def abs(self, rel):
        return os.path.join(self.root, rel)

    def remove(self, rel):
        """Delete a path that must lie inside BENCH_DIR/run or BENCH_DIR/corpus."""
        p = os.path.normpath(os.path.join(self.root, rel))
        inside = lambda d: p != d and os.path.commonpath([p, d]) == d
        if not (p == self.run or inside(self.run) or inside(self.corpus)):
            raise BenchError(f"internal: refusing to delete {p} (outside {self.root})")
        if os.path.islink(p) or os.path.isfile(p):
            os.unlink(p)
        elif os.path.isdir(p):
            shutil.rmtree(p)


# ---------------------------------------------------------------------------------------------
# corpora (deterministic: fixed seeds; built into a temp name, renamed when complete)

WORDS = ["home", "etc", "var", "src", "docs", "photos", "mail", "cache", "projects", "build",
         "data", "lib", "config", "notes", "backup", "music", "assets", "logs", "tmp", "share"]
EXTS = ["txt", "json", "jpg", "png", "pdf", "c", "rs", "py", "log", "db", "tar", "bin", "html"]


def write_pool(f, pool, start, n):
    """Write n bytes of the cyclic pool starting at offset start."""
    mv = memoryview(pool)
    L = len(pool)
    start %= L
    while n > 0:
        c = min(n, L - start, 4 * MiB)
        f.write(mv[start:start + c])
        n -= c
        start = (start + c) % L


def gen_image(path, size_mib):
    """Alternating data/zero regions (64/32 MiB at >= 1.5 GiB; smaller images use 1/12 of the
    size, rounded down to a power of two, so they still alternate). The data is a seeded
    16 MiB block, rotated per 16 MiB block by a distinct amount mod 4 KiB, with a 4 KiB header."""
    total = size_mib * MiB
    d_mib = 64 if size_mib >= 1536 else max(1, 2 ** int(math.log2(max(1, size_mib / 12))))
    dsz, zsz = d_mib * MiB, d_mib * MiB // 2
    block = 16 * MiB
    base = random.Random(SEED).randbytes(block)
    zeros = bytes(min(zsz, block)) if zsz else b""
    off = blk = zero_bytes = 0
    with open(path, "wb") as f:
        while off < total:
            n = min(dsz, total - off)
            while n > 0:
                c = min(block, n)
                hdr = hashlib.shake_256(f"envseal-bench image {SEED} {blk}".encode()).digest(4096)
                f.write(hdr[:c])
                if c > 4096:
                    write_pool(f, base, (3 * blk + 1) + 4096, c - 4096)
                off += c
                n -= c
                blk += 1
            n = min(zsz, total - off)
            zero_bytes += n
            while n > 0:
                c = min(len(zeros), n)
                f.write(zeros[:c])
                off += c
                n -= c
    return {"files": 1, "dirs": 0, "symlinks": 0, "bytes": total, "zero_bytes": zero_bytes}


def gen_sparse(root, size_mib):
    """Two images of one size: `sparse.img`, a hole with 16 MiB of data in 16 runs of 1 MiB
    spread over it (1/256 of the size at small sizes), and `dense.img`, all data (the image
    corpus's seeded block, no zeros)."""
    os.makedirs(root)
    total = size_mib * MiB
    run = max(4096, min(MiB, total // 256))
    base = random.Random(SEED + 1).randbytes(16 * MiB)
    with open(os.path.join(root, "sparse.img"), "wb") as f:
        f.truncate(total)
        for i in range(16):
            f.seek(i * (total // 16) + (i % 3) * 7 * 4096)
            write_pool(f, base, i * 4099, run)
    with open(os.path.join(root, "dense.img"), "wb") as f:
        blk = 0
        while blk * 16 * MiB < total:
            write_pool(f, base, (3 * blk + 1) + 4096, min(16 * MiB, total - blk * 16 * MiB))
            blk += 1
    # `bytes`: one image's size (MiB/s of each command is per image).
    return {"files": 2, "dirs": 1, "symlinks": 0, "bytes": total, "data_bytes": 16 * run}


def data_map(path):
    """A file's data ranges as SEEK_DATA/SEEK_HOLE report them."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size, at = os.fstat(fd).st_size, 0
        while at < size:
            try:
                d = os.lseek(fd, at, os.SEEK_DATA)
            except OSError:
                break
            h = os.lseek(fd, d, os.SEEK_HOLE)
            out.append((d, h))
            at = h
    finally:
        os.close(fd)
    return out


def gen_tree(root, size_mib):
    """A backup-like tree: log-normal file sizes (median 8 KiB, sigma 2.5, capped at 64 MiB),
    2% empty files, ~0.5% symlinks, directories nested up to 5 deep, ~12 files a directory."""
    rng = random.Random(SEED)
    target = size_mib * MiB
    sizes, total = [], 0
    while total < target:
        s = 0 if rng.random() < 0.02 else min(int(rng.lognormvariate(math.log(8192), 2.5)), 64 * MiB)
        s = min(s, target - total)
        sizes.append(s)
        total += s
    nfiles = len(sizes)
    dirs = [("", 0)]
    for i in range(max(3, nfiles // 12)):
        parent, depth = rng.choice([d for d in dirs[-64:] if d[1] < 5] or dirs[:1])
        name = f"{rng.choice(WORDS)}-{i}"
        dirs.append((os.path.join(parent, name) if parent else name, depth + 1))
    os.makedirs(root)
    for d, _ in dirs[1:]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    pool = random.Random(SEED + 1).randbytes(16 * MiB)
    placed = []
    for i, s in enumerate(sizes):
        d = rng.choice(dirs[1:])[0]
        rel = os.path.join(d, f"{rng.choice(WORDS)}{i}.{rng.choice(EXTS)}")
        with open(os.path.join(root, rel), "wb") as f:
            hdr = hashlib.shake_256(f"envseal-bench tree {SEED} {i}".encode()).digest(min(s, 64))
            f.write(hdr)
            if s > 64:
                write_pool(f, pool, rng.randrange(len(pool)), s - 64)
        placed.append(rel)
    nlinks = max(1, nfiles // 200)
    for k in range(nlinks):
        rel = rng.choice(placed)
        os.symlink(os.path.basename(rel), os.path.join(root, os.path.dirname(rel), f"link-{k}"))
    return {"files": nfiles, "dirs": len(dirs), "symlinks": nlinks, "bytes": total}


def gen_tiny(root, n):
    """n files of 0-63 random bytes, ~300 a directory, in two levels."""
    rng = random.Random(SEED + 2)
    ndirs = max(1, n // 300)
    ntop = max(1, math.isqrt(ndirs))
    dirs = [os.path.join(f"t{i % ntop:03d}", f"s{i:04d}") for i in range(ndirs)]
    os.makedirs(root)
    for d in dirs:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    total = 0
    for i in range(n):
        data = rng.randbytes(rng.randrange(64))
        total += len(data)
        with open(os.path.join(root, dirs[i % ndirs], f"f{i:06d}"), "wb") as f:
            f.write(data)
    return {"files": n, "dirs": 1 + ndirs + min(ntop, ndirs), "symlinks": 0, "bytes": total}


def gen_empty(root, n):
    """n empty files, 1000 a directory."""
    ndirs = max(1, (n + 999) // 1000)
    os.makedirs(root)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for d in range(ndirs):
        dp = os.path.join(root, f"d{d:04d}")
        os.mkdir(dp)
        for i in range(d * 1000, min(n, (d + 1) * 1000)):
            os.close(os.open(os.path.join(dp, f"f{i:07d}"), flags, 0o644))
    return {"files": n, "dirs": 1 + ndirs, "symlinks": 0, "bytes": 0}


def corpus(wd, case, s):
    """Build (or reuse) a case's corpus; returns (relative path, metadata)."""
    if case in ("image", "pairs"):
        name, gen, arg = f"image-{s['image_mib']}MiB.img", gen_image, s["image_mib"]
    elif case == "tree":
        name, gen, arg = f"tree-{s['tree_mib']}MiB", gen_tree, s["tree_mib"]
    elif case == "tiny":
        name, gen, arg = f"tiny-{s['tiny_files']}", gen_tiny, s["tiny_files"]
    elif case == "sparse":
        name, gen, arg = f"sparse-{s['sparse_mib']}MiB", gen_sparse, s["sparse_mib"]
    else:
        name, gen, arg = f"empty-{s['empty_files']}", gen_empty, s["empty_files"]
    rel = os.path.join("corpus", name)
    meta_path = wd.abs(rel + ".meta.json")
    if os.path.lexists(wd.abs(rel)) and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        log(f"corpus {case}: reusing {rel}")
        return rel, meta
    tmp = os.path.join("corpus", f".tmp-{name}")
    wd.remove(tmp)
    wd.remove(rel)
    log(f"corpus {case}: building {rel} ...")
    t0 = time.perf_counter()
    meta = gen(wd.abs(tmp), arg)
    meta["seed"] = SEED
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    os.rename(wd.abs(tmp), wd.abs(rel))
    os.sync()
    log(f"corpus {case}: built in {time.perf_counter() - t0:.1f} s")
    return rel, meta


def warm(path):
    """Read a corpus once (untimed): file contents into the page cache, metadata into the
    dentry/inode caches."""
    buf = bytearray(4 * MiB)

    def read(p):
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass

    if os.path.isfile(path):
        read(path)
        return
    for dp, dns, fns in os.walk(path):
        for fn in fns:
            p = os.path.join(dp, fn)
            if os.path.islink(p):
                os.readlink(p)
            else:
                read(p)
        for dn in dns:
            os.lstat(os.path.join(dp, dn))


def compare_outputs(src, dst):
    """Byte-for-byte check that dst restores src (files, symlinks, directories)."""
    buf_a, buf_b = bytearray(MiB), bytearray(MiB)

    def same_file(a, b):
        if os.path.getsize(a) != os.path.getsize(b):
            return False
        with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
            while True:
                na, nb = fa.readinto(buf_a), fb.readinto(buf_b)
                if na != nb or buf_a[:na] != buf_b[:nb]:
                    return False
                if na == 0:
                    return True

    if os.path.isfile(src):
        if not os.path.isfile(dst) or not same_file(src, dst):
            raise BenchError(f"envseal decrypt: {dst} differs from {src}")
        return
    n_src = n_dst = 0
    for dp, dns, fns in os.walk(src):
        rel = os.path.relpath(dp, src)
        for name in fns + dns:
            a, b = os.path.join(dp, name), os.path.join(dst, rel, name)
            n_src += 1
            if os.path.islink(a):
                ok = os.path.islink(b) and os.readlink(a) == os.readlink(b)
            elif os.path.isdir(a):
                ok = os.path.isdir(b) and not os.path.islink(b)
            else:
                ok = os.path.isfile(b) and not os.path.islink(b) and same_file(a, b)
            if not ok:
                raise BenchError(f"envseal decrypt: {b} does not match {a}")
    for dp, dns, fns in os.walk(dst):
        n_dst += len(dns) + len(fns)
    if n_src != n_dst:
        raise BenchError(f"envseal decrypt: {dst} has {n_dst} entries, {src} has {n_src}")


# ---------------------------------------------------------------------------------------------
# running and timing commands


# The fallback launcher: fork/exec the command, wait4() it, write its start and end
# (CLOCK_MONOTONIC, so that its own start-up is not timed) and ru_maxrss (KiB) to argv[1],
# exit with its status.
WRAPPER = """
import os, sys, time
t0 = time.monotonic()
try:
    pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
except OSError as e:
    sys.stderr.write("%s: %s\\n" % (sys.argv[2], e))
    sys.exit(127)
_, status, ru = os.wait4(pid, 0)
t1 = time.monotonic()
with open(sys.argv[1], "w") as f:
    f.write("%r %r %d\\n" % (t0, t1, ru.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


class Runner:
    def __init__(self, wd, envseal):
        self.wd = wd
        self.envseal = envseal
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENVSEAL")}
        env["ENVSEAL_HOME"] = wd.abs("run/home")
        env["LC_ALL"] = "C"
        self.env = env
        self.results = {}  # case -> label -> record
        self.launcher = None
        self.launcher_name = None
        self.launcher_floor_kib = None
        self.rep = 0
        self.case = None

    def display(self, pipeline):
        return " | ".join(
            shlex.join(["envseal" if a == self.envseal else a for a in argv]) for argv in pipeline
        )

    def pick_launcher(self):
        """Each command runs under a small launcher that forks it and reports its ru_maxrss.
        Running commands straight from this Python process would not do: Linux carries the
        parent's RSS high-water mark into a forked child's ru_maxrss across exec, so every
        command would show at least this process's peak. GNU /usr/bin/time (about 2 MiB) is
        used when present; else a minimal python3 (-I -S) wrapper, whose own RSS is then the
        floor of every figure (reported as such)."""
        probe = self.wd.abs("run/rss-probe.txt")
        gnu = "/usr/bin/time"
        if os.access(gnu, os.X_OK) and os.environ.get("BENCH_RSS") != "python":
            try:
                ok = subprocess.run([gnu, "-f", "%M", "-o", probe, "true"], cwd=self.wd.root,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, timeout=30).returncode == 0
                with open(probe) as f:
                    int(f.read().split()[-1])
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                ok = False
            if ok:
                self.launcher = lambda out: [gnu, "-f", "%M", "-o", out]
                self.launcher_name = "GNU /usr/bin/time -f %M"
        if self.launcher is None:
            self.launcher = lambda out: [sys.executable, "-I", "-S", "-c", WRAPPER, out]
            self.launcher_name = "python3 wait4() wrapper"
        self.wd.remove("run/rss-probe.txt")
        _, floor = self.run(["true"])
        self.launcher_floor_kib = floor
        log(f"peak RSS measured with {self.launcher_name}; `true` shows {floor} KiB")

    def run(self, pipeline, what=None):
        """Run a command (a list of argvs makes a pipeline) with cwd=BENCH_DIR; returns
        (wall seconds, peak RSS KiB of the largest process). Non-zero exit raises."""
        if isinstance(pipeline[0], str):
            pipeline = [pipeline]
        err_path = self.wd.abs("run/stderr.txt")
        rss_paths = [self.wd.abs(f"run/rss-{i}.txt") for i in range(len(pipeline))]
        for p in rss_paths:
            if os.path.exists(p):
                os.unlink(p)
        procs = []
        with open(err_path, "wb") as err:
            t0 = time.perf_counter()
            prev = None
            try:
                for i, argv in enumerate(pipeline):
                    last = i == len(pipeline) - 1
                    p = subprocess.Popen(
                        self.launcher(rss_paths[i]) + list(argv), cwd=self.wd.root, env=self.env,
                        stdin=prev.stdout if prev else subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL if last else subprocess.PIPE,
                        stderr=err,
                    )
                    if prev:
                        prev.stdout.close()
                    procs.append(p)
                    prev = p
            except OSError as e:
                for p in procs:
                    p.kill()
                    p.wait()
                raise BenchError(f"cannot run `{self.display(pipeline)}`: {e}")
            codes = [p.wait() for p in procs]
            wall = time.perf_counter() - t0
        rss, starts, ends = 0, [], []
        for p in rss_paths:
            try:
                with open(p) as f:
                    fields = f.read().split()
                rss = max(rss, int(fields[-1]))
                if len(fields) == 3:
                    starts.append(float(fields[0]))
                    ends.append(float(fields[1]))
            except (OSError, ValueError, IndexError):
                pass
        if starts and len(starts) == len(pipeline):
            wall = max(ends) - min(starts)
        if any(codes):
            with open(err_path, "rb") as f:
                tail = f.read()[-2000:].decode("utf-8", "replace").rstrip()
            where = f" (rep {self.rep + 1}, case {self.case})" if self.case else ""
            raise BenchError(
                f"command failed{where}, exit status {' | '.join(map(str, codes))}:\n"
                f"  {what or self.display(pipeline)}\n"
                + ("stderr:\n  " + tail.replace("\n", "\n  ") if tail else "(no stderr)")
            )
        if not rss:
            raise BenchError(f"no peak RSS reported for `{self.display(pipeline)}`")
        return wall, rss

    def timed(self, label, pipeline, out=None, baseline=False, durable=False):
        """One timing: sync (untimed), run, record; `out` is the output to measure with du
        on the first rep."""
        if out and os.path.lexists(self.wd.abs(out)):
            raise BenchError(f"internal: output {out} exists before `{label}`")
        os.sync()
        if isinstance(pipeline[0], str):
            pipeline = [pipeline]
        wall, rss = self.run(pipeline)
        if self.rep < 0:
            log(f"  warm-up {self.case:5} {label:28} {wall:9.3f} s (not recorded)")
            return
        rec = self.results.setdefault(self.case, {}).setdefault(
            label, {"label": label, "cmd": self.display(pipeline), "times_s": [],
                    "rss_kib": [], "out_kib": None, "baseline": baseline,
                    "durable": durable})
        rec["times_s"].append(wall)
        rec["rss_kib"].append(rss)
        if out and rec["out_kib"] is None:
            du = subprocess.run(["du", "-sk", out], cwd=self.wd.root, capture_output=True,
                                text=True, check=True)
            rec["out_kib"] = int(du.stdout.split()[0])
        log(f"  rep {self.rep + 1} {self.case:5} {label:28} {wall:9.3f} s  {rss / 1024:8.1f} MiB")


# ---------------------------------------------------------------------------------------------
# the cases: each is a list of groups; a group's steps run in order, groups rotate per rep


def groups_for(case, src, r, have_age):
    wd, E = r.wd, r.envseal
    name = os.path.basename(src)
    first_rep = lambda: r.rep == 0
    G = []

    def envseal_group():
        r.timed("envseal encrypt", [E, "encrypt", src, "-o", "run/vault", "-q"], out="run/vault")
        if case == "empty":
            r.timed("envseal verify", [E, "verify", "run/vault", "-q"])
            r.timed("envseal ls", [E, "ls", "run/vault"])
        else:
            if case != "image":
                r.timed("envseal verify", [E, "verify", "run/vault", "-q"])
                r.timed("envseal verify --deep", [E, "verify", "--deep", "run/vault", "-q"])
            r.timed("envseal decrypt", [E, "decrypt", "run/vault", "-o", "run/dec", "-q"])
            if first_rep():
                compare_outputs(wd.abs(src), wd.abs(os.path.join("run/dec", name)))
            wd.remove("run/dec")
        wd.remove("run/vault")

    def base_group():
        # ENVSEAL_BASE: an earlier build beside this one in the same run (before/after).
        B = os.environ["ENVSEAL_BASE"]
        r.timed("base encrypt --no-sync", [B, "encrypt", "--no-sync", src, "-o", "run/vault.b", "-q"])
        r.timed("base decrypt --no-sync",
                [B, "decrypt", "--no-sync", "run/vault.b", "-o", "run/dec.b", "-q"])
        wd.remove("run/dec.b")
        wd.remove("run/vault.b")

    with_base = [base_group] if os.environ.get("ENVSEAL_BASE") else []

    def envseal_nosync_group():
        # Like for like with plain cp: the same runs without the syncs (--no-sync).
        r.timed("envseal encrypt --no-sync",
                [E, "encrypt", "--no-sync", src, "-o", "run/vault.ns", "-q"])
        r.timed("envseal decrypt --no-sync",
                [E, "decrypt", "--no-sync", "run/vault.ns", "-o", "run/dec.ns", "-q"])
        wd.remove("run/dec.ns")
        wd.remove("run/vault.ns")

    if case == "sparse":
        sparse, dense = os.path.join(src, "sparse.img"), os.path.join(src, "dense.img")

        def sparse_group():
            r.timed("envseal encrypt sparse", [E, "encrypt", sparse, "-o", "run/vs", "-q"],
                    out="run/vs")
            r.timed("envseal decrypt sparse", [E, "decrypt", "run/vs", "-o", "run/ds", "-q"],
                    out="run/ds")
            if first_rep():
                back = wd.abs("run/ds/sparse.img")
                compare_outputs(wd.abs(sparse), back)
                if data_map(back) != data_map(wd.abs(sparse)):
                    raise BenchError("the restored sparse image has another SEEK_DATA map")
            wd.remove("run/ds")
            wd.remove("run/vs")

        def dense_group():
            r.timed("envseal encrypt dense", [E, "encrypt", dense, "-o", "run/vd", "-q"],
                    out="run/vd", baseline=True)
            wd.remove("run/vd")

        def cp_group():
            r.timed("cp sparse", ["cp", sparse, "run/cp.sparse"], out="run/cp.sparse")
            wd.remove("run/cp.sparse")

        G = [dense_group, sparse_group, cp_group]
    elif case == "image":
        def cp_group():
            r.timed("cp", ["cp", src, "run/cp.out"], out="run/cp.out", baseline=True)
            wd.remove("run/cp.out")
            # envseal makes its output durable before it reports success; so does this one.
            r.timed("cp + sync", ["sh", "-c", f"cp {src} run/cps.out && sync -f run/cps.out"],
                    durable=True)
            wd.remove("run/cps.out")

        def age_group():
            key = "run/age.key"
            r.timed("age -e", ["age", "-e", "-i", key, "-o", "run/img.age", src], out="run/img.age")
            r.timed("age -d", ["age", "-d", "-i", key, "-o", "run/age.out", "run/img.age"])
            wd.remove("run/age.out")
            wd.remove("run/img.age")

        G = [cp_group, envseal_group, envseal_nosync_group] + with_base + (
            [age_group] if have_age else [])
    elif case == "pairs":
        # Decrypt against encrypt and cp on the dense image, no sync on any side. Each command
        # removes its own previous output just before it runs (untimed), so that no command
        # gets the pages another one just freed (docs/PERFORMANCE.md "Decrypt").
        def own(label, out, argv, baseline=False):
            wd.remove(out)
            r.timed(label, argv, out=out, baseline=baseline)

        def cp_group():
            own("cp", "run/pair.cp", ["cp", src, "run/pair.cp"], baseline=True)

        def envseal_pair():
            own("envseal encrypt --no-sync", "run/pair.vault",
                [E, "encrypt", "--no-sync", src, "-o", "run/pair.vault", "-q"])
            own("envseal decrypt --no-sync", "run/pair.dec",
                [E, "decrypt", "--no-sync", "run/pair.vault", "-o", "run/pair.dec", "-q"])
            if first_rep():
                compare_outputs(wd.abs(src), wd.abs(os.path.join("run/pair.dec", name)))

        G = [cp_group, envseal_pair]
    elif case in ("tree", "tiny"):
        parent = os.path.dirname(src)

        def cp_group():
            r.timed("cp -r", ["cp", "-r", src, "run/cp.out"], out="run/cp.out", baseline=True)
            wd.remove("run/cp.out")
            r.timed("cp -r + sync",
                    ["sh", "-c", f"cp -r {src} run/cps.out && sync -f run/cps.out"],
                    durable=True)
            wd.remove("run/cps.out")

        def tar_group():
            r.timed("tar -c", ["tar", "-cf", "run/c.tar", "-C", parent, name], out="run/c.tar")
            os.mkdir(wd.abs("run/tar.x"))
            r.timed("tar -x", ["tar", "-xf", "run/c.tar", "-C", "run/tar.x"])
            wd.remove("run/tar.x")
            wd.remove("run/c.tar")

        def age_group():
            key = "run/age.key"
            r.timed("tar -c | age -e",
                    [["tar", "-cf", "-", "-C", parent, name],
                     ["age", "-e", "-i", key, "-o", "run/c.tar.age"]], out="run/c.tar.age")
            os.mkdir(wd.abs("run/age.x"))
            r.timed("age -d | tar -x",
                    [["age", "-d", "-i", key, "run/c.tar.age"],
                     ["tar", "-xf", "-", "-C", "run/age.x"]])
            wd.remove("run/age.x")
            wd.remove("run/c.tar.age")

        G = [cp_group, envseal_group, envseal_nosync_group, tar_group] + with_base + (
            [age_group] if have_age else [])
    else:
        G = [envseal_group]
    return G


# ---------------------------------------------------------------------------------------------
# machine description and report


def first_line(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def machine(root):
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = f"{int(line.split()[1]) / MiB:.1f} GiB"
    except OSError:
        pass
    fs, best = "?", ""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt = parts[1].replace("\\040", " ")
                if (root == mnt or root.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, fs = mnt, f"{parts[2]} on {parts[0]}"
    except OSError:
        pass
    u = platform.uname()
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "kernel": f"{u.system} {u.release} {u.machine}",
        "mem": mem,
        "fs": fs,
    }


PAGE_REPORTING = "/sys/module/page_reporting/parameters"
# Pages are reported only after a minute free, and no amount of free memory triggers it sooner.
PAGE_REPORTING_HOLD = (("min_free_ms", "60000"), ("max_waiting_mib", "1000000"))


class PageReporting:
    """Free page reporting (virtio-balloon) hands guest pages that stay free for a while back
    to the hypervisor; the next touch of each costs a host fault (seen here: about 4 s of sys
    time per GiB, so `cp` of 2 GiB took 0.8 s or 10 s depending on how long ago memory was
    freed). Timings then depend on what the previous command freed, not on the tool. With
    BENCH_HOLD_PAGES=1 (root), reporting is held back for the run (pages are reported only
    after a minute free, and without a size trigger) and the settings restored at the end."""

    def __init__(self):
        self.saved = {}
        self.active = os.path.isdir(PAGE_REPORTING) and os.path.isdir(
            "/sys/bus/virtio/drivers/virtio_balloon")

    def read(self, name):
        try:
            with open(os.path.join(PAGE_REPORTING, name)) as f:
                return f.read().strip()
        except OSError:
            return None

    def write(self, name, value):
        with open(os.path.join(PAGE_REPORTING, name), "w") as f:
            f.write(value)

    def hold(self):
        if not self.active:
            if os.environ.get("BENCH_HOLD_PAGES") == "1":
                log("BENCH_HOLD_PAGES=1: no free page reporting on this machine, nothing to hold")
            return "not active"
        if os.environ.get("BENCH_HOLD_PAGES") != "1":
            log("warning: free page reporting is active on this VM: freed memory returns to the"
                " host, and timings include the host's first-touch cost (BENCH_HOLD_PAGES=1, as"
                " root, holds it back for the run)")
            return "active (timings include host first-touch faults)"
        for name, value in PAGE_REPORTING_HOLD:
            old = self.read(name)
            if old is None:
                raise BenchError(f"BENCH_HOLD_PAGES=1: cannot read {PAGE_REPORTING}/{name}")
            try:
                self.write(name, value)
            except OSError as e:
                self.release()
                raise BenchError(f"BENCH_HOLD_PAGES=1: cannot set {PAGE_REPORTING}/{name}: {e}")
            self.saved[name] = old
        held = ", ".join(f"{n}={v}" for n, v in PAGE_REPORTING_HOLD)
        log(f"free page reporting held back for the run ({held})")
        return f"held back for the run ({held})"

    def release(self):
        for name, old in self.saved.items():
            try:
                self.write(name, old)
            except OSError as e:
                log(f"warning: could not restore {PAGE_REPORTING}/{name}={old}: {e}")
        self.saved = {}


def loadavg():
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def summarize(case, meta, recs):
    base = next((r for r in recs.values() if r["baseline"]), None)
    durable = next((r for r in recs.values() if r.get("durable")), None)
    out = []
    for rec in recs.values():
        t = rec["times_s"]
        med = statistics.median(t)
        rec["median_s"] = med
        rec["peak_rss_kib"] = max(rec["rss_kib"])
        if base is not None:
            ratios = [a / b for a, b in zip(t, base["times_s"]) if b > 0]
            rec["ratios"] = ratios
            rec["median_ratio"] = statistics.median(ratios) if ratios else None
        else:
            rec["ratios"], rec["median_ratio"] = [], None
        if durable is not None:
            ratios = [a / b for a, b in zip(t, durable["times_s"]) if b > 0]
            rec["median_ratio_durable"] = statistics.median(ratios) if ratios else None
        else:
            rec["median_ratio_durable"] = None
        rec["mib_per_s"] = meta["bytes"] / MiB / med if meta["bytes"] and med > 0 else None
        images = case in ("image", "sparse", "pairs")
        rec["files_per_s"] = meta["files"] / med if not images and med > 0 else None
        rec["kib_per_file"] = (rec["out_kib"] / meta["files"]
                               if rec["out_kib"] is not None and not images and meta["files"]
                               else None)
        out.append(rec)
    return out


def pair_ratios(recs):
    """The pairs case's figures: decrypt against encrypt and against cp, each the median of
    the per-rep ratios (both commands of a ratio ran in the same rep)."""
    t = lambda label: recs.get(label, {}).get("times_s", [])
    dec = t("envseal decrypt --no-sync")
    out = {}
    for name, other in (("decrypt/encrypt", t("envseal encrypt --no-sync")), ("decrypt/cp", t("cp"))):
        ratios = [a / b for a, b in zip(dec, other) if b > 0]
        if ratios:
            out[name] = {"median": statistics.median(ratios), "min": min(ratios),
                         "max": max(ratios), "n": len(ratios), "ratios": ratios}
    return out


def fmt(v, spec, width):
    return (format(v, spec) if v is not None else "-").rjust(width)


def print_report(rep, f=sys.stdout):
    p = lambda s="": print(s, file=f)
    m, t = rep["machine"], rep["tools"]
    p(f"$ {rep['cmdline']}")
    p(f"date: {rep['date']}   reps: {rep['settings']['reps']}   scale: {rep['settings']['scale']}"
      f"   total run time: {rep['elapsed_s']:.0f} s")
    p(f"machine: nproc={m['nproc']}, CPU: {m['cpu']}, {m['kernel']}, RAM {m['mem']}, "
      f"BENCH_DIR on {m['fs']}")
    p(f"load average: {rep['load_start']} at start, {rep['load_end']} at end")
    p(f"envseal: {t['envseal']} ({t['envseal_path']})")
    p(f"peers: {t['cp']}; {t['tar']}; " + (f"age {t['age']}" if t["age"] else "age: not installed (skipped)"))
    p(f"method: page cache warm, {rep['settings'].get('warmup', 0)} untimed warm-up rep(s), one"
      " interleaved run (tool order rotates per rep), sync before each timing, outputs on the"
      " corpus file system")
    if rep.get("page_reporting", "not active") != "not active":
        p(f"free page reporting (virtio-balloon): {rep['page_reporting']}")
    p(f"peak RSS: ru_maxrss via {rep['rss_method']} (`true` measures {rep['rss_floor_kib'] / 1024:.1f} MiB)")
    for c in rep["cases"]:
        meta, base = c["corpus"], c["baseline"]
        p()
        desc = (f"{meta['files']} files, {meta['dirs']} dirs"
                if c["case"] not in ("image", "pairs") else "1 file")
        if c["case"] == "sparse":
            desc = (f"sparse.img and dense.img, {meta['bytes'] / MiB:.0f} MiB each; "
                    f"sparse.img holds {meta['data_bytes'] / MiB:.0f} MiB of data")
        if meta.get("symlinks"):
            desc += f", {meta['symlinks']} symlinks"
        if c["case"] != "sparse":
            desc += f", {meta['bytes'] / MiB:.1f} MiB"
        if meta.get("zero_bytes"):
            desc += f" ({meta['zero_bytes'] / MiB:.0f} MiB of it zeros)"
        p(f"== {c['case']}: {c['path']}: {desc}; du -sk {meta['du_kib']} KiB ==")
        cols = [("command", 28, None), ("median s", 10, None),
                (f"x {base}" if base and len(base) <= 6 else "ratio", 8, None)]
        if base:
            cols.append(("x +sync", 9, None))
        cols += [("peak RSS MiB", 13, None),
                ("MiB/s", 9, None)]
        trees = c["case"] not in ("image", "sparse", "pairs")
        if trees:
            cols.append(("files/s", 10, None))
        cols.append(("out KiB", 11, None))
        if trees:
            cols.append(("KiB/file", 9, None))
        p(cols[0][0].ljust(cols[0][1]) + "".join(h.rjust(w) for h, w, _ in cols[1:]))
        for r in c["commands"]:
            row = r["label"].ljust(28)
            row += fmt(r["median_s"], ".3f", 10)
            row += fmt(r["median_ratio"], ".2f", 8)
            if base:
                row += fmt(r.get("median_ratio_durable"), ".2f", 9)
            row += fmt(r["peak_rss_kib"] / 1024, ".1f", 13)
            mps = r["mib_per_s"]
            row += fmt(mps, ".0f" if mps is None or mps >= 100 else ".1f" if mps >= 10 else ".2f", 9)
            if trees:
                row += fmt(r["files_per_s"], ".0f", 10)
            row += fmt(r["out_kib"], "d", 11)
            if trees:
                row += fmt(r["kib_per_file"], ".2f", 9)
            p(row)
        if c.get("pairs"):
            for k, v in c["pairs"].items():
                p(f"{k}: median {v['median']:.2f} over {v['n']} pairs (range {v['min']:.2f}-"
                  f"{v['max']:.2f}); target <= 1.0: {'met' if v['median'] <= 1.0 else 'NOT met'}")
        p("commands (cwd = BENCH_DIR):")
        for r in c["commands"]:
            p(f"  {r['label']:28} {r['cmd']}")
    p()
    p("x +sync: the same against `cp` (`cp -r`) followed by `sync -f` of its output: envseal"
      " makes its output durable (one filesystem sync) before it reports success;"
      " `--no-sync` rows skip that sync, like for like with plain cp")
    p("ratio (sparse): against `envseal encrypt dense` in the same rep")
    p("x cp, x cp -r: median over reps of (command time / baseline time in the same rep);"
      " peak RSS: max over reps; out KiB: du -sk of the output (first rep)")


# ---------------------------------------------------------------------------------------------


def main(argv):
    as_json = False
    for a in argv:
        if a == "--json":
            as_json = True
        elif a in ("-h", "--help"):
            here = os.path.dirname(os.path.abspath(__file__))
            with open(os.path.join(here, "compare.sh")) as f:
                for line in f:
                    if line.startswith("set -"):
                        break
                    if line.startswith("#") and not line.startswith("#!"):
                        print(line[2:].rstrip())
            return 0
        else:
            raise BenchError(f"unknown argument {a!r} (see --help)")
    s = settings()
    envseal = find_envseal()
    wd = Workdir(os.environ.get("BENCH_DIR") or "/tmp/envseal-bench")
    have_age = bool(shutil.which("age") and shutil.which("age-keygen"))
    t_start = time.perf_counter()
    report = {
        "cmdline": os.environ.get("BENCH_CMDLINE") or shlex.join(["benches/compare.py"] + argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "settings": s,
        "bench_dir": wd.root,
        "machine": machine(wd.root),
        "tools": {
            "envseal": first_line([envseal, "--version"]),
            "envseal_path": envseal,
            "cp": first_line(["cp", "--version"]),
            "tar": first_line(["tar", "--version"]),
            "age": first_line(["age", "--version"]) if have_age else None,
        },
        "load_start": loadavg(),
    }
    if not have_age:
        log("age is not installed: age columns skipped (Debian: apt-get install age)")

    corpora = {}
    for case in s["cases"]:
        rel, meta = corpus(wd, case, s)
        if "du_kib" not in meta:
            du = subprocess.run(["du", "-sk", rel], cwd=wd.root, capture_output=True, text=True,
                                check=True)
            meta["du_kib"] = int(du.stdout.split()[0])
            with open(wd.abs(rel + ".meta.json"), "w") as f:
                json.dump(meta, f)
        corpora[case] = (rel, meta)

    r = Runner(wd, envseal)
    pages = PageReporting()
    try:
        report["page_reporting"] = pages.hold()
        wd.remove("run")
        os.makedirs(wd.abs("run/home"))
        r.pick_launcher()
        report["rss_method"] = r.launcher_name
        report["rss_floor_kib"] = r.launcher_floor_kib
        # untimed setup: the key (created on first use), the age identity, warm caches
        os.makedirs(wd.abs("run/keyinit"))
        with open(wd.abs("run/keyinit/f"), "w") as f:
            f.write("key init\n")
        r.run([envseal, "encrypt", "run/keyinit", "-o", "run/keyinit.vault", "-q"])
        r.run([envseal, "verify", "--deep", "run/keyinit.vault", "-q"])
        wd.remove("run/keyinit.vault")
        wd.remove("run/keyinit")
        if have_age:
            r.run(["age-keygen", "-o", "run/age.key"])
        for case in s["cases"]:
            t0 = time.perf_counter()
            warm(wd.abs(corpora[case][0]))
            log(f"warm-up read of {corpora[case][0]}: {time.perf_counter() - t0:.1f} s")
        os.sync()

        # Warm-up reps run every command untimed first: on a fresh VM the first touch of
        # guest memory costs seconds per GiB (seen here: 3.8 s/GiB of sys time), so the first
        # run of each command measures the hypervisor, not the tool.
        for rep in range(-s["warmup"], s["reps"]):
            r.rep = rep
            log(f"rep {rep + 1}/{s['reps']}" if rep >= 0 else f"warm-up rep {rep + s['warmup'] + 1}")
            for case in s["cases"]:
                r.case = case
                groups = groups_for(case, corpora[case][0], r, have_age)
                k = rep % len(groups)
                for g in groups[k:] + groups[:k]:
                    g()
            r.case = None
    finally:
        pages.release()
        try:
            wd.remove("run")
        except OSError as e:
            log(f"warning: could not remove {wd.run}: {e}")

    report["load_end"] = loadavg()
    report["elapsed_s"] = time.perf_counter() - t_start
    report["cases"] = []
    for case in s["cases"]:
        rel, meta = corpora[case]
        recs = r.results.get(case, {})
        base = next((x["label"] for x in recs.values() if x["baseline"]), None)
        report["cases"].append({"case": case, "path": rel, "corpus": meta, "baseline": base,
                                "commands": summarize(case, meta, recs),
                                "pairs": pair_ratios(recs) if case == "pairs" else None})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(wd.abs(f"results-{stamp}.json"), "w") as f:
        json.dump(report, f, indent=1)
    if as_json:
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        print_report(report)
    log(f"results saved to {wd.abs(f'results-{stamp}.json')}")
    return check_sparse(report)


def check_sparse(report):
    """The sparse case's promises (docs/PERFORMANCE.md): encrypting the sparse image takes
    under a tenth of the time of the dense one, and its vault is under 2x its data. Exit 1
    when broken."""
    c = next((c for c in report["cases"] if c["case"] == "sparse"), None)
    if c is None:
        return 0
    cmds = {r["label"]: r for r in c["commands"]}
    ratio = cmds["envseal encrypt sparse"]["median_ratio"]
    vault_kib = cmds["envseal encrypt sparse"]["out_kib"]
    limit_kib = 2 * c["corpus"]["data_bytes"] // 1024
    ok = ratio is not None and ratio < 0.1 and vault_kib < limit_kib
    log(f"sparse: encrypt takes {ratio:.3f}x the dense image's time (must be < 0.1), vault "
        f"{vault_kib} KiB (must be < {limit_kib}): {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as e:
        log(f"compare.sh: error: {e}")
        sys.exit(1)
    except KeyboardInterrupt:
        log("compare.sh: interrupted")
        sys.exit(130)
