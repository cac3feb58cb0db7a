#!/usr/bin/env python3
"""Side by side, interleaved, medians of REPS (docs/PERFORMANCE.md "Scale-out" and
"Compression"). Standard library only.

  shards    one `encrypt` of a tree, against `plan` + N concurrent `encrypt --plan --shard`
            + `merge`, N = 1, 2, 4: what splitting costs on one machine (on N hosts the
            shard runs go side by side, docs/SCALE-OUT.md "Measurements").
  compress  `encrypt` with and without `--compress zstd`, and `tar | zstd | age`, on a
            backup-like tree (text logs, JSON, and already-compressed data): time and size.

Usage:  ENVSEAL=target/release/envseal REPS=5 CASES="shards compress" benches/scale.py
Settings: ENVSEAL, BENCH_DIR (default /tmp/envseal-bench-scale), REPS (5), CASES, TREE_MIB
(512: the shards tree, large files and 10,000 small ones), LOG_MIB (256: the compress tree).
Every envseal run is `--no-sync` (a sync's cost is the disk's, not the work's) with the
embedded key store in BENCH_DIR; the shards cases end with a timed `sync` each, since `merge`
makes the vault durable (its data included) and one run must pay the same. Nothing outside
BENCH_DIR is written.
"""

import os
import random
import shutil
import statistics
import subprocess
import sys
import time

MiB = 1 << 20
here = os.path.dirname(os.path.abspath(__file__))
ENVSEAL = os.environ.get("ENVSEAL", os.path.join(here, "..", "target", "release", "envseal"))
DIR = os.environ.get("BENCH_DIR", "/tmp/envseal-bench-scale")
REPS = int(os.environ.get("REPS", "5"))
CASES = os.environ.get("CASES", "shards compress").split()
TREE_MIB = int(os.environ.get("TREE_MIB", "512"))
LOG_MIB = int(os.environ.get("LOG_MIB", "256"))
ENV = dict(os.environ, ENVSEAL_HOME=os.path.join(DIR, "home"))
ENV.pop("ENVSEAL_KMS", None)


def sh(cmd, **kw):
    subprocess.run(cmd, shell=True, check=True, env=ENV, **kw)


def timed(cmd):
    sh("sync")
    t = time.perf_counter()
    sh(cmd)
    return time.perf_counter() - t


def fresh(*paths):
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)


def du(path):
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def make_tree(root):
    if os.path.exists(os.path.join(root, ".done")):
        return
    fresh(root)
    rng = random.Random(20261207)
    big = os.path.join(root, "big")
    os.makedirs(big)
    small_total = 10_000 * 4096
    left = TREE_MIB * MiB - small_total
    i = 0
    while left > 0:
        n = min(left, 48 * MiB)
        with open(os.path.join(big, f"f{i:03}"), "wb") as f:
            f.write(rng.randbytes(n))
        left -= n
        i += 1
    for d in range(100):
        p = os.path.join(root, "small", f"d{d:02}")
        os.makedirs(p)
        for k in range(100):
            with open(os.path.join(p, f"s{k:03}"), "wb") as f:
                f.write(rng.randbytes(rng.randrange(1, 8192)))
    open(os.path.join(root, ".done"), "w").close()


def make_backup_tree(root):
    """Text logs (most of it), JSON records, and incompressible media."""
    if os.path.exists(os.path.join(root, ".done")):
        return
    fresh(root)
    rng = random.Random(7)
    paths = ["/api/v1/items", "/api/v1/users", "/health", "/static/app.js", "/login"]
    levels = ["INFO"] * 8 + ["WARN", "ERROR"]
    logs = os.path.join(root, "logs")
    os.makedirs(logs)
    written, n = 0, 0
    while written < LOG_MIB * MiB * 3 // 4:
        lines = []
        for _ in range(20000):
            lines.append(
                f"2026-12-07T{rng.randrange(24):02}:{rng.randrange(60):02}:{rng.randrange(60):02}."
                f"{rng.randrange(1000):03}Z {rng.choice(levels)} host-{rng.randrange(40):02} "
                f"{rng.choice(['GET', 'POST'])} {rng.choice(paths)}/{rng.randrange(100000)} "
                f"status={rng.choice([200, 200, 200, 201, 304, 404, 500])} "
                f"ms={rng.randrange(1, 900)} req={rng.getrandbits(64):016x}\n"
            )
        data = "".join(lines).encode()
        with open(os.path.join(logs, f"app-{n:03}.log"), "wb") as f:
            f.write(data)
        written += len(data)
        n += 1
    js = os.path.join(root, "db")
    os.makedirs(js)
    for k in range(200):
        recs = [
            f'{{"id":{k * 1000 + j},"name":"user{rng.randrange(10**6)}","score":{rng.random():.6f},"tags":["a","b"]}}'
            for j in range(1000)
        ]
        with open(os.path.join(js, f"r{k:03}.json"), "w") as f:
            f.write("\n".join(recs))
    media = os.path.join(root, "media")
    os.makedirs(media)
    for k in range(4):
        with open(os.path.join(media, f"v{k}.mp4"), "wb") as f:
            f.write(rng.randbytes(LOG_MIB * MiB // 16))
    open(os.path.join(root, ".done"), "w").close()


def report(title, results, base):
    print(f"\n{title} (median of {REPS}, ratio to {base} per rep, then median)")
    b = results[base]
    for name, times in results.items():
        ratios = [t / bt for t, bt in zip(times, b)]
        print(f"  {name:28} {statistics.median(times):7.2f} s   {statistics.median(ratios):5.2f}x")


def shards():
    src = os.path.join(DIR, "tree")
    make_tree(src)
    out = os.path.join(DIR, "out")
    plan = os.path.join(DIR, "plan.json")

    def one():
        fresh(out)
        return timed(f"{ENVSEAL} encrypt -q --no-sync -o {out}/v {src} && sync")

    def split(n):
        def run():
            fresh(out)
            os.makedirs(out)
            parts = " ".join(f"{out}/p{i}" for i in range(n))
            runs = " & ".join(
                f"{ENVSEAL} encrypt -q --no-sync --plan {plan} --shard {i} -o {out}/p{i}" for i in range(n)
            )
            return timed(
                f"{ENVSEAL} plan -q --force {src} --shards {n} -o {plan} && ( {runs} & wait ) "
                f"&& {ENVSEAL} merge -q {parts} -o {out}/v && sync"
            )

        return run

    cases = {"one encrypt": one, "1 shard + merge": split(1), "2 shards + merge": split(2), "4 shards + merge": split(4)}
    results = {k: [] for k in cases}
    for rep in range(REPS):
        order = list(cases)
        random.Random(rep).shuffle(order)
        for k in order:
            results[k].append(cases[k]())
    report(f"shards: a {TREE_MIB} MiB tree (large files and 10,000 small ones), {os.cpu_count()} cores", results, "one encrypt")
    fresh(out)


def compress():
    src = os.path.join(DIR, "backup")
    make_backup_tree(src)
    out = os.path.join(DIR, "cout")
    key = os.path.join(DIR, "age.key")
    if not os.path.exists(key):
        sh(f"age-keygen -o {key} 2>/dev/null")
    recipient = subprocess.run(["age-keygen", "-y", key], capture_output=True, text=True, check=True).stdout.strip()
    sizes = {}

    def envseal(flag, name):
        def run():
            fresh(out)
            t = timed(f"{ENVSEAL} encrypt -q --no-sync {flag} -o {out}/v {src}")
            sizes[name] = du(f"{out}/v")
            return t

        return run

    def tar_zstd_age():
        fresh(out)
        os.makedirs(out)
        t = timed(f"tar -C {DIR} -cf - backup | zstd -q -T0 -3 | age -r {recipient} > {out}/b.tar.zst.age")
        sizes["tar | zstd -T0 | age"] = du(f"{out}/b.tar.zst.age")
        return t

    cases = {
        "encrypt": envseal("", "encrypt"),
        "encrypt --compress zstd": envseal("--compress zstd", "encrypt --compress zstd"),
        "tar | zstd -T0 | age": tar_zstd_age,
    }
    results = {k: [] for k in cases}
    for rep in range(REPS):
        order = list(cases)
        random.Random(rep).shuffle(order)
        for k in order:
            results[k].append(cases[k]())
    total = du(src)
    report(f"compress: a {total / MiB:.0f} MiB backup-like tree (logs, JSON, media)", results, "encrypt")
    for k, v in sizes.items():
        print(f"  {k:28} size {v / total:5.3f}x the tree")
    fresh(out)


def main():
    if not os.access(ENVSEAL, os.X_OK):
        sys.exit(f"scale.py: no envseal at {ENVSEAL} (cargo build --release)")
    os.makedirs(DIR, exist_ok=True)
    for c in CASES:
        {"shards": shards, "compress": compress}[c]()


if __name__ == "__main__":
    main()
