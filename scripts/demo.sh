#!/usr/bin/env bash
# The main job on a local lake, no AWS account needed: builds sluice (installing
# protoc if missing), generates sample files, ingests them with several
# concurrent workers plus one duplicate delivery, then shows status and a scan.
# Usage: scripts/demo.sh [ROOT]   (default ./lake)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
ensure_protoc

ROOT="${1:-./lake}"
echo "== building sluice (first build compiles Lance: ~15 min on 2 cores)"
cargo build -p sluice-workers --bin sluice
SLUICE="$CARGO_TARGET_DIR/debug/sluice"

SAMPLES="$(mktemp -d)"
trap 'rm -rf "$SAMPLES"' EXIT
mkdir -p "$SAMPLES/incoming/events"
for f in 1 2 3 4; do
  awk -v f="$f" 'BEGIN { for (i = 0; i < 2500; i++) {
    id = f * 100000 + i
    printf "{\"id\": %d, \"user\": \"user-%d\", \"kind\": \"%s\", \"amount\": %.2f}\n", id, i % 97, (i % 3 ? "view" : "click"), (i % 1000) / 7
  } }' > "$SAMPLES/incoming/events/part-$f.jsonl"
done

echo "== init $ROOT"
"$SLUICE" --root "$ROOT" init
echo "== 4 concurrent workers, plus a duplicate delivery of part-1"
pids=()
for f in 1 2 3 4; do
  "$SLUICE" --root "$ROOT" ingest "$SAMPLES/incoming/events/part-$f.jsonl" & pids+=($!)
done
"$SLUICE" --root "$ROOT" ingest "$SAMPLES/incoming/events/part-1.jsonl" & pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
echo "== status"
"$SLUICE" --root "$ROOT" status
echo "== history"
"$SLUICE" --root "$ROOT" history --limit 10
echo "== scan events --limit 5"
"$SLUICE" --root "$ROOT" scan events --limit 5
