#!/usr/bin/env bash
# Start a local S3-compatible server (moto) on 127.0.0.1 for tests and demos.
# Usage: scripts/s3-server.sh start PORT BUCKET | stop PORT
# Installs moto[server] (with the other test tools) into a virtualenv under ~/.cache on first use.
set -euo pipefail
. "$(dirname "$0")/env.sh"
VENV="$SLUICE_VENV"

case "${1:-}" in
  start)
    port="$2"; bucket="$3"
    ensure_test_tools
    pidfile="$HOME/.cache/sluice-moto-$port.pid"
    # moto, with conditional PUTs made atomic as on S3 (see s3_server.py).
    "$VENV/bin/python" "$(dirname "$0")/s3_server.py" -H 127.0.0.1 -p "$port" >"$HOME/.cache/sluice-moto-$port.log" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 1 100); do
      if "$VENV/bin/python" - "$port" "$bucket" <<'PY' 2>/dev/null
import sys, boto3
port, bucket = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
s3.create_bucket(Bucket=bucket)
PY
      then exit 0; fi
      sleep 0.2
    done
    echo "the S3 server did not start; see $HOME/.cache/sluice-moto-$port.log" >&2
    exit 1
    ;;
  stop)
    pidfile="$HOME/.cache/sluice-moto-$2.pid"
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
    ;;
  *) echo "usage: $0 start PORT BUCKET | stop PORT" >&2; exit 2 ;;
esac
