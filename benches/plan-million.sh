#!/usr/bin/env bash
# benches/plan-million.sh: peak RSS of `envseal plan` over a tree of a million empty files
# (1,000 directories of 1,000), the figure docs/SCALE-OUT.md promises under 512 MiB. The
# integration test `shard::plan_of_many_files_in_bounded_memory` checks a fifth of it.
#
#   ENVSEAL=target/release/envseal benches/plan-million.sh
#
# Environment:
#   ENVSEAL    the binary (default target/release/envseal)
#   BENCH_DIR  scratch directory (default: a new one under /tmp); as root a tmpfs is mounted
#              on it for the files and unmounted at the end
#   DIRS, PER_DIR  the tree's shape (default 1000 and 1000)
#   SHARDS     parts of the plan (default 64)
set -euo pipefail
cd "$(dirname "$0")/.."
envseal="$(realpath "${ENVSEAL:-target/release/envseal}")"
dirs="${DIRS:-1000}"
per_dir="${PER_DIR:-1000}"
shards="${SHARDS:-64}"
work="${BENCH_DIR:-$(mktemp -d /tmp/envseal-plan-bench.XXXXXX)}"
mkdir -p "$work/tree"
mounted=
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o "size=256m,nr_inodes=$(( dirs * per_dir + dirs + 1000 ))" tmpfs "$work/tree" 2>/dev/null; then
    mounted=1
fi
cleanup() {
    if [ -n "$mounted" ]; then umount "$work/tree"; fi
    rm -rf "$work/tree" "$work/plan.json" "$work/home"
}
trap cleanup EXIT
python3 - "$work/tree/many" "$dirs" "$per_dir" <<'PY'
import os, sys
root, dirs, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for d in range(dirs):
    p = os.path.join(root, "d%04d" % d)
    os.makedirs(p)
    for f in range(per):
        os.close(os.open(os.path.join(p, "f%04d" % f), os.O_CREAT | os.O_WRONLY, 0o644))
PY
files=$(( dirs * per_dir ))
# The plan process's own peak RSS (KiB): GNU time if installed, else wait4 from python3.
if [ -x /usr/bin/time ]; then
    rss=$(ENVSEAL_HOME="$work/home" /usr/bin/time -f %M "$envseal" plan -q --shards "$shards" \
        -o "$work/plan.json" "$work/tree/many" 2>&1 >/dev/null | tail -1)
else
    rss=$(python3 - "$envseal" "$shards" "$work" <<'PY'
import os, sys
exe, shards, work = sys.argv[1:]
env = dict(os.environ, ENVSEAL_HOME=os.path.join(work, "home"))
pid = os.spawnve(os.P_NOWAIT, exe, [exe, "plan", "-q", "--shards", shards, "-o",
                 os.path.join(work, "plan.json"), os.path.join(work, "tree/many")], env)
_, status, ru = os.wait4(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
print(ru.ru_maxrss)
PY
)
fi
echo "plan of $files files into $shards shards: peak RSS $rss KiB ($(( rss / 1024 )) MiB; the bound is 512 MiB)"
