#!/usr/bin/env bash
# The test command (README, CI): installs what the tests need, starts a local
# S3-compatible server on 127.0.0.1, runs the whole suite, stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
ensure_protoc
ensure_test_tools

# One copy of arrow and lance (object_store 0.13 is DataFusion's own, inside Lance).
dups=$(cargo tree -e normal --workspace --prefix none | awk '{print $1, $2}' | sort -u \
  | awk '{print $1}' | uniq -d | grep -E '^(arrow|parquet|lance)' || true)
if [ -n "$dups" ]; then
  echo "duplicate versions in the dependency tree (use the ones Lance uses):" >&2
  echo "$dups" >&2
  exit 1
fi

PORT="${SLUICE_S3_PORT:-9755}"
BUCKET=sluice-test
scripts/s3-server.sh stop "$PORT"
scripts/s3-server.sh start "$PORT" "$BUCKET"
trap 'scripts/s3-server.sh stop "$PORT"' EXIT

# Explicit test credentials and endpoint: no client ever looks for cloud metadata.
export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL_S3 || true
export SLUICE_TEST_S3="s3://$BUCKET"
export SLUICE_REQUIRE_S3=1

# The interleaving explorer: a few small seeds here; scripts/explore.sh runs many.
export SLUICE_EXPLORE_SEEDS="${SLUICE_EXPLORE_SEEDS:-2}" SLUICE_EXPLORE_MAX_OPS="${SLUICE_EXPLORE_MAX_OPS:-14}"

# The library's unit tests, then the integration suite: one invocation, so
# both share one build of every dependency (a separate `-p sluice-core` run
# resolves other features and rebuilds Lance).
cargo test -p sluice-core -p sluice-workers --features sluice-workers/failpoints --lib --test integration "$@" -- --test-threads 2
