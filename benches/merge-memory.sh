#!/usr/bin/env bash
# benches/merge-memory.sh: peak memory of `envseal merge` joining 4 parts of many tiny files
# (docs/FORMAT.md §6.6: a clear vault's merge streams its entries). The parts are made through
# the library (tests/it/merge.rs, `merge_memory_at_scale`), on /dev/shm where there is one;
# the merge runs as the real binary under GNU time (/usr/bin/time), which reports its peak RSS.
#
#   benches/merge-memory.sh                    # 4 x 250,000 files (minutes; ~1 GiB of tmpfs)
#   MERGE_FILES=20000 benches/merge-memory.sh  # a quick check
set -euo pipefail
cd "$(dirname "$0")/.."
command -v /usr/bin/time >/dev/null || { echo "GNU time (/usr/bin/time) is needed" >&2; exit 2; }
export MERGE_FILES="${MERGE_FILES:-250000}"
cargo test --test it merge::merge_memory_at_scale -- --ignored --nocapture --test-threads 1 2>&1 |
    grep -E '^merge of|panicked|error' || { echo "the run failed" >&2; exit 1; }
