#!/usr/bin/env bash
# Builds the seed corpus of each fuzz target from the known-answer vectors
# (fixtures/vectors): manifests, key files, object headers, and a journal made of a run
# record, a batch record and authenticated lines.
set -euo pipefail
cd "$(dirname "$0")"
v=../fixtures/vectors
mkdir -p corpus/header corpus/manifest corpus/journal corpus/key_file
n=0
for m in "$v"/vault/manifest.jsonl "$v"/concealed/manifest.jsonl; do
  [ -f "$m" ] && cp "$m" "corpus/manifest/seed-$((n++))"
done
for k in "$v"/*/keys-*.json; do cp "$k" "corpus/key_file/$(basename "$(dirname "$k")")-$(basename "$k")"; done
for o in $(find "$v" -path '*objects*' -type f | head -20); do
  head -c 136 "$o" > "corpus/header/$(basename "$o")"
done
k=$(ls "$v"/vault/keys-*.json | head -1)
{
  printf '%s\n' '{"type":"run","format":2,"vault_id":"a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0","created":"2026-12-01T00:00:00Z","params":{"sources":["L3Q="],"key":null,"kms":"local","segment_size":4096,"conceal_names":false,"excludes":[]}}'
  python3 -c 'import json,sys; k=json.load(open(sys.argv[1])); print(json.dumps({"type":"batch","batch":0,"id":k["batch_id"],"key_commitment":k["key_commitment"],"wrapped":k["wrapped"]},separators=(",",":")))' "$k"
  printf '%s\n' '{"mac":"0000000000000000000000000000000000000000000000000000000000000000","type":"object","obj":0,"id":"c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0"}'
  printf '%s\n' '{"mac":"0000000000000000000000000000000000000000000000000000000000000000","type":"ckpt","obj":0,"src":{"dev":1,"ino":2,"ctime":3,"ctime_nsec":4},"size":9,"mtime":1,"nsec":0,"batch":0,"segs":7}'
} > corpus/journal/seed-0
printf '%s\n' '{"type":"finished","format":2,"vault_id":"a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0","params_mac":"00"}' > corpus/journal/seed-1
echo "seeded: $(ls corpus/* | wc -l) files"
