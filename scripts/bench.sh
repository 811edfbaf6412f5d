#!/usr/bin/env bash
# The benchmark: sluice vs plain Lance, same data, same store, one run.
# Builds release binaries (once per machine: ~48 min on 2 cores), then runs
# sluice-bench on local disk (wall time, peak RSS, concurrency), on an in-memory
# S3 model (round trips and contention) and on the local S3 server (requests
# per ingest, where every request is visible).
# Usage: scripts/bench.sh [--quick] [--only throughput,roundtrips,contention,depth,rss,latency,recovery,optimize,cleanup,search,backfill,sources]
# (search: 200,000 768-dim vectors in 100 ingests, IVF_PQ + BTREE; local disk only.
# roundtrips, contention: 20 ms added to every request, sluice's and Lance's alike.)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
ensure_protoc
# Peak RSS is measured through GNU time (a small parent; see sluice-bench).
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
cargo build --release -p sluice-workers --bins
BENCH="$CARGO_TARGET_DIR/release/sluice-bench"

QUICK=0; ONLY=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --only) ONLY=(--only "$2"); shift ;;
    *) echo "usage: scripts/bench.sh [--quick] [--only SECTIONS]" >&2; exit 2 ;;
  esac
  shift
done

if [ "$QUICK" = 1 ]; then
  LOCAL_ARGS=(--sizes 1,8 --reps 3 --depth 50 --big-mb 64 --vectors 20000 --dims 128 --batches 20 --queries 50 --writers 1,8)
  S3_ARGS=(--sizes 1 --reps 3 --depth 50 --big-mb 1 --writers 1,8)
else
  LOCAL_ARGS=(--sizes 1,64 --reps 5 --depth 1000 --big-mb 1024)
  S3_ARGS=(--sizes 1 --reps 3 --depth 1000 --big-mb 1)
fi

echo "## local disk"
"$BENCH" --work "${TMPDIR:-/tmp}/sluice-bench-local" "${LOCAL_ARGS[@]}" "${ONLY[@]}"

# The round-trip sections again on an in-memory store shared by every writer
# in the process: every request, Lance's too, goes through object_store with
# S3's conditional PUTs, each 20 ms late, and nothing saturates (an S3 model).
MEM=()
for s in roundtrips contention; do
  if [ ${#ONLY[@]} -eq 0 ] || [[ ",${ONLY[1]}," == *",$s,"* ]]; then MEM+=("$s"); fi
done
if [ ${#MEM[@]} -gt 0 ]; then
  echo "## in-memory store, +20 ms per request (an S3 model)"
  MEM_ARGS=(--sizes 1 --reps 5 --writers 1,8,32)
  [ "$QUICK" = 1 ] && MEM_ARGS=(--sizes 1 --reps 3 --writers 1,8)
  "$BENCH" --root memory://sluice-bench --work "${TMPDIR:-/tmp}/sluice-bench-mem" "${MEM_ARGS[@]}" --only "$(IFS=,; echo "${MEM[*]}")"
fi

PORT="${SLUICE_S3_PORT:-9756}"
scripts/s3-server.sh stop "$PORT"
scripts/s3-server.sh start "$PORT" sluice-bench
trap 'scripts/s3-server.sh stop "$PORT"' EXIT
export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
echo "## local S3 server (moto): request counts are exact; wall times measure moto"
# The search section runs on local disk only (moto would measure moto).
S3_ONLY=("${ONLY[@]}")
[ ${#S3_ONLY[@]} -eq 0 ] && S3_ONLY=(--only throughput,roundtrips,contention,depth,rss,latency,recovery,optimize,cleanup,backfill)
"$BENCH" --root s3://sluice-bench --work "${TMPDIR:-/tmp}/sluice-bench-s3" "${S3_ARGS[@]}" "${S3_ONLY[@]}"
