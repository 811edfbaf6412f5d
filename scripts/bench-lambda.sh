#!/usr/bin/env bash
# The Lambda artifact's numbers: zip and unzipped size, and cold-start init
# (process start to its first "next invocation" request on a local Runtime
# API, which is what Lambda reports as Init Duration, minus the sandbox).
# Usage: scripts/bench-lambda.sh [--runs N] [--zip PATH]   (builds the zip if none is given)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

RUNS=10 ZIP=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --zip) ZIP="$2"; shift 2 ;;
    *) echo "usage: scripts/bench-lambda.sh [--runs N] [--zip PATH]" >&2; exit 2 ;;
  esac
done
if [ -z "$ZIP" ]; then
  scripts/build-lambda.sh --out dist/lambda
  ZIP=dist/lambda/bootstrap.zip
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
unzip -q "$ZIP" -d "$work"
echo "artifact: $ZIP"
echo "  zipped:   $(stat -c %s "$ZIP") bytes"
echo "  unzipped: $(stat -c %s "$work/bootstrap") bytes"
echo "  newest glibc symbol: $(objdump -T "$work/bootstrap" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)"

python3 - "$work/bootstrap" "$RUNS" <<'PY'
import http.server, os, statistics, subprocess, sys, threading, time

binary, runs = sys.argv[1], int(sys.argv[2])
first_next = threading.Event()

class Api(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.endswith("/runtime/invocation/next"):
            first_next.set()
        time.sleep(5)  # never answer; the process is killed once timed

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
threading.Thread(target=server.serve_forever, daemon=True).start()
env = dict(os.environ,
           AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_port}",
           AWS_LAMBDA_FUNCTION_NAME="sluice-bench", AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
           AWS_LAMBDA_FUNCTION_MEMORY_SIZE="2048", AWS_REGION="us-east-1",
           AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
           SLUICE_ROOT="s3://sluice-bench/lake",
           SLUICE_TABLES='{"incoming/orders/": {"table": "orders"}}')
times = []
for _ in range(runs):
    first_next.clear()
    start = time.perf_counter()
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not first_next.wait(30):
        proc.kill()
        sys.exit(f"bootstrap never asked for an invocation (exit {proc.poll()})")
    times.append((time.perf_counter() - start) * 1000)
    proc.kill()
    proc.wait()
print(f"cold-start init, {runs} runs: first {times[0]:.1f} ms, median {statistics.median(times):.1f} ms, max {max(times):.1f} ms")
PY
