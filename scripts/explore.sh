#!/usr/bin/env bash
# The interleaving explorer (tests/explore.rs) over many seeds: each seed runs a
# generated schedule of concurrent `sluice` processes with kills, stalls and
# ambiguous store answers, then checks the lake. Starts its own local S3 server.
#
# Usage: scripts/explore.sh --seeds N [--start S] [--backend local|s3|both]
#                           [--max-ops N] [--without KIND,...]
#   --max-ops   operations per schedule, at most (default 25)
#   --without   leave kinds out (ingest,dup,twice,multi,load,upsert,optimize,index,cleanup,recover),
#               e.g. to look past a known bug; reproduce a failure with the same flag
# A failing seed prints its schedule and the command that runs it again.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

seeds=10 start=1 backend=both max_ops=25 without=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds="$2"; shift 2 ;;
    --start) start="$2"; shift 2 ;;
    --backend) backend="$2"; shift 2 ;;
    --max-ops) max_ops="$2"; shift 2 ;;
    --without) without="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$backend" in local|s3|both) ;; *) echo "--backend local|s3|both" >&2; exit 2 ;; esac

ensure_protoc
ensure_test_tools

unset SLUICE_TEST_S3 SLUICE_REQUIRE_S3 || true
if [ "$backend" != local ]; then
  PORT="${SLUICE_S3_PORT:-9761}"
  BUCKET=sluice-test
  scripts/s3-server.sh stop "$PORT"
  scripts/s3-server.sh start "$PORT" "$BUCKET"
  trap 'scripts/s3-server.sh stop "$PORT"' EXIT
  export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT"
  export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
  export AWS_EC2_METADATA_DISABLED=true
  unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL_S3 || true
  export SLUICE_TEST_S3="s3://$BUCKET"
  export SLUICE_REQUIRE_S3=1
fi

export SLUICE_EXPLORE_SEEDS="$seeds" SLUICE_EXPLORE_START="$start" SLUICE_EXPLORE_BACKEND="$backend"
export SLUICE_EXPLORE_MAX_OPS="$max_ops"
if [ -n "$without" ]; then export SLUICE_EXPLORE_WITHOUT="$without"; else unset SLUICE_EXPLORE_WITHOUT || true; fi
cargo test -p sluice-workers --features failpoints --test integration explore::seeds -- --test-threads 1 --nocapture
