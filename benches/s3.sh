#!/usr/bin/env bash
# envseal against rclone on a real S3 server (SeaweedFS on 127.0.0.1), in one interleaved
# run: encrypt of a 1 GiB image and of a tree to the server beside `rclone copy` of the same
# plaintext and `rclone` through a `crypt` remote; decrypt from the server beside
# `rclone copy` back. Medians of REPS runs, ratios to `rclone copy`, and envseal's peak RSS.
#
#   ENVSEAL=target/release/envseal REPS=5 benches/s3.sh
#
# Environment:
#   ENVSEAL     the binary (default target/release/envseal)
#   WEED        SeaweedFS's `weed` (default: target/pyenv/bin/weed, made by .ci/pyenv)
#   BENCH_DIR   scratch directory (default: a new one under /tmp), data and server state
#   REPS        repetitions (default 5)
#   IMAGE_MIB   the image's size (default 1024); TREE_MIB the tree's (default 512)
set -euo pipefail
cd "$(dirname "$0")/.."
envseal="$(realpath "${ENVSEAL:-target/release/envseal}")"
weed="$(realpath "${WEED:-target/pyenv/bin/weed}" 2>/dev/null || true)"
reps="${REPS:-5}"
image_mib="${IMAGE_MIB:-1024}"
tree_mib="${TREE_MIB:-512}"
dir="${BENCH_DIR:-$(mktemp -d /tmp/envseal-s3-bench.XXXXXX)}"
mkdir -p "$dir"
dir="$(realpath "$dir")"
command -v rclone >/dev/null || { echo "rclone is needed (apt-get install rclone)"; exit 1; }
[ -x "$weed" ] || { echo "no weed at $weed: run bash .ci/pyenv first"; exit 1; }

ak=envsealBenchAK01
sk=envsealBenchSecret0123456789abcdef
ports=($(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(9)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
))
state="$dir/weed"
rm -rf "$state" && mkdir -p "$state/data"
cat > "$state/s3.json" <<EOF
{"identities": [{"name": "bench", "credentials": [{"accessKey": "$ak", "secretKey": "$sk"}],
                 "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
EOF
( cd "$state" && exec env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY "$weed" server \
    -dir="$state/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.port="${ports[0]}" -master.port.grpc="${ports[1]}" -master.electionTimeout=1s -master.telemetry=false \
    -master.volumeSizeLimitMB=1024 -volume.port="${ports[2]}" -volume.port.grpc="${ports[3]}" -volume.max=0 -volume.preStopSeconds=0 \
    -filer -filer.port="${ports[4]}" -filer.port.grpc="${ports[5]}" -filer.localSocket="$state/f.sock" \
    -s3 -s3.port="${ports[6]}" -s3.port.grpc="${ports[7]}" -s3.localSocket="$state/s.sock" -s3.config="$state/s3.json" \
    -s3.autoCreateBucket=false -s3.port.iceberg=0 -s3.port.lance=0 -metricsPort="${ports[8]}" ) > "$state/weed.log" 2>&1 &
weed_pid=$!
cleanup() {
    kill -TERM "$weed_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$weed_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$weed_pid" 2>/dev/null || true
    wait "$weed_pid" 2>/dev/null || true
    for p in "${ports[1]}" "${ports[3]}" "${ports[5]}" "${ports[7]}"; do rm -f /tmp/seaweedfs-*-grpc-"$p".sock; done
}
trap cleanup EXIT
endpoint="http://127.0.0.1:${ports[6]}"
sig=(--aws-sigv4 "aws:amz:us-east-1:s3" --user "$ak:$sk" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD')
for _ in $(seq 150); do
    if curl -sf "${sig[@]}" -X PUT "$endpoint/bench" >/dev/null 2>&1 || curl -sf "${sig[@]}" -I "$endpoint/bench" >/dev/null 2>&1; then
        if echo ok | curl -sf "${sig[@]}" -X PUT --data-binary @- "$endpoint/bench/.ready" >/dev/null 2>&1 \
            && curl -sf "${sig[@]}" "$endpoint/bench/.ready" >/dev/null 2>&1; then
            break
        fi
    fi
    sleep 0.2
done
curl -sf "${sig[@]}" "$endpoint/bench/.ready" >/dev/null || { echo "SeaweedFS did not come up: $state/weed.log"; exit 1; }

# The data: an image of random bytes, and a tree of files from 1 KiB to 8 MiB.
data="$dir/data"
if [ ! -f "$data/image/disk.img" ]; then
    mkdir -p "$data/image"
    head -c "$((image_mib << 20))" /dev/urandom > "$data/image/disk.img"
fi
if [ ! -d "$data/tree" ]; then
    python3 - "$data/tree" "$tree_mib" <<'EOF'
import os, random, sys
root, total = sys.argv[1], int(sys.argv[2]) << 20
rng = random.Random(7)
made = 0
i = 0
while made < total:
    d = os.path.join(root, f"d{i % 37}", f"s{i % 5}")
    os.makedirs(d, exist_ok=True)
    size = min(int(rng.lognormvariate(10, 2.2)) + 1, 8 << 20)
    with open(os.path.join(d, f"f{i}.bin"), "wb") as f:
        f.write(os.urandom(size))
    made += size
    i += 1
EOF
fi

export ENVSEAL_HOME="$dir/home"
export AWS_ENDPOINT_URL_S3="$endpoint" AWS_ACCESS_KEY_ID="$ak" AWS_SECRET_ACCESS_KEY="$sk" AWS_REGION=us-east-1
unset AWS_ENDPOINT_URL AWS_SESSION_TOKEN AWS_DEFAULT_REGION AWS_PROFILE
export RCLONE_CONFIG_S3_TYPE=s3 RCLONE_CONFIG_S3_PROVIDER=Other RCLONE_CONFIG_S3_ENDPOINT="$endpoint" \
    RCLONE_CONFIG_S3_ACCESS_KEY_ID="$ak" RCLONE_CONFIG_S3_SECRET_ACCESS_KEY="$sk" RCLONE_CONFIG_S3_REGION=us-east-1 \
    RCLONE_CONFIG_S3_FORCE_PATH_STYLE=true RCLONE_CONFIG_S3_NO_CHECK_BUCKET=true
export RCLONE_CONFIG_CR_TYPE=crypt RCLONE_CONFIG_CR_REMOTE=s3:bench/crypt \
    RCLONE_CONFIG_CR_PASSWORD="$(rclone obscure envseal-bench-password)"
rclone=(env -u AWS_CA_BUNDLE rclone --config /dev/null)
"$envseal" kms create-key >/dev/null 2>&1 || true

out="$dir/out"
log="$dir/times.tsv"
: > "$log"
timed() { # name case rep -- command...
    local name=$1 case=$2 rep=$3; shift 4
    if ! /usr/bin/time -f '%e %M' -o "$dir/t" "$@" >/dev/null 2>"$dir/cmd.err"; then
        echo "$name failed:"; cat "$dir/cmd.err"; exit 1
    fi
    local t; t=$(tail -1 "$dir/t")
    printf '%s\t%s\t%s\t%s\n' "$case" "$name" "$rep" "$t" >> "$log"
    echo "  $case $rep $name: $t"
}
for rep in $(seq "$reps"); do
    for case in image tree; do
        src="$data/$case"
        timed "envseal encrypt" "$case" "$rep" -- "$envseal" encrypt -q -o "s3://bench/e-$case-$rep" "$src"
        timed "rclone copy" "$case" "$rep" -- "${rclone[@]}" copy "$src" "s3:bench/r-$case-$rep"
        timed "rclone crypt" "$case" "$rep" -- "${rclone[@]}" copy "$src" "cr:c-$case-$rep"
        rm -rf "$out"
        timed "envseal decrypt" "$case" "$rep" -- "$envseal" decrypt -q --no-sync "s3://bench/e-$case-$rep" -o "$out/e"
        timed "rclone copy back" "$case" "$rep" -- "${rclone[@]}" copy "s3:bench/r-$case-$rep" "$out/r"
        cmp -s "$src/disk.img" "$out/e/image/disk.img" 2>/dev/null || [ "$case" = tree ] || { echo "decrypt differs"; exit 1; }
        rm -rf "$out"
    done
done
python3 - "$log" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
t = {}
rss = {}
for case, name, rep, tm in rows:
    parts = tm.split()
    if len(parts) != 2:
        continue
    t.setdefault((case, name), []).append(float(parts[0]))
    rss.setdefault((case, name), []).append(int(parts[1]))
for case in ("image", "tree"):
    base_up = statistics.median(t[(case, "rclone copy")])
    base_down = statistics.median(t[(case, "rclone copy back")])
    print(f"{case}:")
    for name in ("envseal encrypt", "rclone copy", "rclone crypt", "envseal decrypt", "rclone copy back"):
        m = statistics.median(t[(case, name)])
        base = base_down if name in ("envseal decrypt", "rclone copy back") else base_up
        print(f"  {name:18} median {m:7.2f} s  {m / base:5.2f}x  peak RSS {max(rss[(case, name)]) // 1024} MiB")
EOF
