#!/usr/bin/env bash
# benches/mount.sh: reading a whole file through `envseal mount` against `envseal decrypt` of
# the same file (docs/MOUNT.md; goal: the mount at most 1.5x decrypt's time).
#
# Usage (root, /dev/fuse, fusermount3):
#   benches/mount.sh                        # a 2 GiB image, 5 reps
#   SIZE_MIB=256 REPS=2 benches/mount.sh    # quick check
#
# Settings (environment):
#   ENVSEAL    envseal binary (default: <repo>/target/release/envseal)
#   BENCH_DIR  work dir (default /tmp/envseal-bench-mount); nothing outside it is written
#   SIZE_MIB   size of the image (default 2048)
#   REPS       repetitions (default 5)
#
# Method: one image of random-looking data (fixed seed), encrypted once with the embedded key
# store. Each rep, in alternating order: `decrypt --no-sync --only img` into a fresh
# directory, and `cat MNT/src/img > OUT` from a mount made fresh for the rep (so the kernel's
# page cache of the mount is cold, as decrypt's reading of the vault is not: the vault's
# object stays cached for both). Both write the same file to the page cache of the same file
# system, without a sync; `sync` runs untimed before each timing. The times are the wall
# time of each command; the mount's start (manifest and key unwrap, as decrypt does) is
# timed apart and shown. Printed: median of each, and the median of the per-rep ratios.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ENVSEAL="${ENVSEAL:-$here/../target/release/envseal}"
BENCH_DIR="${BENCH_DIR:-/tmp/envseal-bench-mount}"
SIZE_MIB="${SIZE_MIB:-2048}"
REPS="${REPS:-5}"
[[ -x "$ENVSEAL" ]] || { echo "mount.sh: no envseal at $ENVSEAL (cargo build --release)" >&2; exit 1; }
command -v fusermount3 >/dev/null || { echo "mount.sh: fusermount3 is required (Debian: fuse3)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "mount.sh: python3 is required" >&2; exit 1; }

mkdir -p "$BENCH_DIR"
cd "$BENCH_DIR"
export ENVSEAL_HOME="$BENCH_DIR/home"
unset ENVSEAL_KMS ENVSEAL_PASSPHRASE
if [[ ! -f "src/img" || "$(stat -c %s src/img)" != "$((SIZE_MIB << 20))" ]]; then
    mkdir -p src
    python3 - "$SIZE_MIB" <<'EOF'
import random, sys
r = random.Random(20261207)
block = r.randbytes(16 << 20)
with open("src/img", "wb") as f:
    for i in range(int(sys.argv[1])):
        k = (i * 4099) % len(block)
        f.write(i.to_bytes(8, "little") + (block[k:] + block[:k])[8:1 << 20])
EOF
    rm -rf vault
fi
[[ -f vault/manifest.jsonl ]] || "$ENVSEAL" encrypt -q --no-sync -o vault src
cat vault/objects/*/* > /dev/null

now() { date +%s.%N; }
declare -a dec cat start
mnt="$BENCH_DIR/mnt"
mkdir -p "$mnt"
cleanup() { fusermount3 -u "$mnt" 2>/dev/null || true; }
trap cleanup EXIT
for rep in $(seq 1 "$REPS"); do
    rm -rf out-dec out-cat
    order="dec cat"
    (( rep % 2 == 0 )) && order="cat dec"
    for what in $order; do
        sync
        if [[ $what == dec ]]; then
            t0=$(now)
            "$ENVSEAL" decrypt -q --no-sync --only src/img vault -o out-dec
            dec+=("$(echo "$(now) - $t0" | bc)")
        else
            t0=$(now)
            "$ENVSEAL" mount vault "$mnt" 2>mount.log &
            pid=$!
            until grep -q " $mnt fuse" /proc/mounts; do sleep 0.01; done
            start+=("$(echo "$(now) - $t0" | bc)")
            mkdir -p out-cat
            sync
            t0=$(now)
            cat "$mnt/src/img" > out-cat/img
            cat+=("$(echo "$(now) - $t0" | bc)")
            fusermount3 -u "$mnt"
            wait "$pid"
            cmp -s out-cat/img src/img || { echo "mount.sh: the mount read wrong bytes" >&2; exit 1; }
        fi
    done
done
python3 - "${dec[*]}" "${cat[*]}" "${start[*]}" "$SIZE_MIB" <<'EOF'
import statistics as s, sys
dec, cat, start = ([float(x) for x in a.split()] for a in sys.argv[1:4])
mib = int(sys.argv[4])
print(f"file: {mib} MiB, {len(dec)} reps")
print(f"decrypt --only:        median {s.median(dec):.3f} s  ({mib / s.median(dec):.0f} MiB/s)")
print(f"cat through the mount: median {s.median(cat):.3f} s  ({mib / s.median(cat):.0f} MiB/s)")
print(f"mount start:           median {s.median(start):.3f} s")
ratios = [c / d for c, d in zip(cat, dec)]
print(f"mount/decrypt: median of per-rep ratios {s.median(ratios):.2f} (goal <= 1.5)")
EOF
