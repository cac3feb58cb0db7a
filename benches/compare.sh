#!/usr/bin/env bash
# benches/compare.sh: side-by-side benchmark of envseal against cp, cp -r, tar and (if
# installed) age, on deterministic corpora. The work is done by benches/compare.py (python3,
# standard library only); this wrapper only checks the prerequisites and passes on its arguments.
#
# Usage:
#   benches/compare.sh [--json]                      # full run, defaults below
#   SCALE=small REPS=2 benches/compare.sh            # quick check (under a minute)
#   ENVSEAL=/path/to/envseal CASES="image tree" REPS=5 benches/compare.sh
#
# Settings (environment):
#   ENVSEAL      envseal binary (default: <repo>/target/release/envseal)
#   BENCH_DIR    work dir for corpora and outputs (default /tmp/envseal-bench); nothing outside
#                it is written or deleted (its corpora are kept and reused; outputs are removed)
#   REPS         repetitions (default 5)
#   WARMUP       untimed reps of every command before the timed ones (default 1)
#   CASES        subset of "image tree tiny empty sparse pairs" (default: all six)
#   SCALE        "full" (default) or "small": 64 MiB image, 32 MiB tree, 2000 tiny, 10000 empty,
#                256 MiB sparse images
#   IMAGE_GIB    image size in GiB (default 2; IMAGE_MIB also accepted)
#   TREE_MIB     size of the backup-like tree (default 1024)
#   TINY_FILES   files of 0-63 bytes (default 100000)
#   EMPTY_FILES  empty files (default 1000000; envseal only: peak RSS of encrypt, verify, ls)
#   SPARSE_MIB   size of each image of the sparse case (default 4096)
#   BENCH_HOLD_PAGES  "1" (root, on a VM with virtio-balloon free page reporting): hold the
#                reporting back for the run and restore it after, so that a command's time
#                does not depend on how long ago the previous one freed memory
#   ENVSEAL_BASE an earlier envseal binary: its encrypt/decrypt --no-sync run beside this one's
#                in the image, tree and tiny cases (rows "base ..."), before/after in one run
#   BENCH_RSS    "python" forces the python3 wait4() launcher even when GNU time is installed
#   --json       print the results as one JSON document on stdout instead of the tables
#                (a JSON copy is always written to $BENCH_DIR/results-<time>.json)
#
# Corpora (fixed seeds, so every machine builds the same bytes; built once, reused):
#   image  a disk image: alternating 64 MiB of random-looking data and 32 MiB of (allocated)
#          zeros; the data is a seeded 16 MiB random block, rotated per block by an amount
#          that differs mod 4 KiB, with a per-block header, so no two 4 KiB blocks repeat
#   tree   a backup-like tree: thousands of files with log-normal sizes (median 8 KiB, a few
#          tens of MiB, capped at 64 MiB), 2% empty files, a few symlinks, nested directories
#   tiny   files of 0-63 bytes in a few hundred directories
#   empty  empty files, 1000 per directory
#   sparse two images of SPARSE_MIB: sparse.img, a hole with 16 MiB of data in 16 runs, and
#          dense.img, all data; the run FAILS (exit 1) unless encrypting sparse.img takes under
#          a tenth of the time of dense.img and its vault is under 32 MiB (2x its data), and
#          the first rep checks the restored sparse.img has the same SEEK_DATA map
#   pairs  the image corpus again, for decrypt against encrypt: cp, encrypt --no-sync and
#          decrypt --no-sync, each removing its own previous output just before it runs;
#          reports decrypt/encrypt and decrypt/cp (median of the per-rep ratios, target <= 1.0)
#
# Method:
#   - every corpus is read once, untimed, before the first timing (page cache warm; the
#     numbers are CPU/page-cache bound, not disk bound), and WARMUP reps run every command
#     untimed first (on a fresh VM the first touch of guest memory costs seconds per GiB:
#     the first run of a command would time the hypervisor, not the tool);
#   - ONE interleaved run: for rep in 1..REPS, for each case, each tool runs once; the tools
#     of a case run in a fixed order that rotates by one group per rep (so no tool always
#     runs first); a tool's dependent steps (encrypt -> verify -> verify --deep -> decrypt,
#     tar -c -> tar -x, age -e -> age -d) stay in order;
#   - every timed command writes to a fresh path under $BENCH_DIR/run, on the same file
#     system as the corpus; outputs are deleted (untimed) as soon as no later step needs them,
#     and `sync` runs (untimed) before every timing, so the dirty-page writeback of one run
#     does not land in the next one's time;
#   - wall time and peak RSS come from fork/exec + wait4() of each command (ru_maxrss of
#     the child; for a pipeline, the largest of its processes);
#   - reported per command: median wall time, median of the per-rep ratios against the
#     baseline run in the same rep (cp for image, cp -r for tree and tiny), peak RSS (max
#     over reps), MiB/s and files/s, and the output's disk usage (du -sk, and KiB per file);
#   - every command must exit 0 (else the run stops, naming the command); the first rep
#     checks that envseal decrypt restored the corpus byte for byte. envseal runs with its
#     embedded key store in a fresh ENVSEAL_HOME under $BENCH_DIR/run (key created untimed);
#     other ENVSEAL_* variables are cleared for the commands.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v python3 >/dev/null 2>&1; then
    echo "compare.sh: python3 is required" >&2
    exit 1
fi
for tool in cp tar du sync; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "compare.sh: $tool is required" >&2
        exit 1
    fi
done
export BENCH_CMDLINE="${BENCH_CMDLINE:-$(
    for v in ENVSEAL ENVSEAL_BASE BENCH_DIR BENCH_HOLD_PAGES REPS WARMUP CASES SCALE IMAGE_GIB IMAGE_MIB TREE_MIB TINY_FILES EMPTY_FILES SPARSE_MIB; do
        if [[ -n "${!v:-}" ]]; then printf '%s=%q ' "$v" "${!v}"; fi
    done
    printf '%q' "$0"
    for a in "$@"; do printf ' %q' "$a"; done
)}"
exec python3 "$here/compare.py" "$@"
