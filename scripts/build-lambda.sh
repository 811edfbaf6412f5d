#!/usr/bin/env bash
# Build the Lambda artifact: dist/lambda/bootstrap.zip, for provided.al2023 (x86_64).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

usage() {
  cat <<'EOF'
Usage: scripts/build-lambda.sh [--out DIR] [--binary PATH] [--max-glibc X.Y] [--dry-run] [--help]

Builds the `bootstrap` binary with the `lambda` cargo profile (fat LTO,
opt-level "s", panic = "abort", stripped) for x86_64 Linux, linked with
cargo-zigbuild against glibc 2.34 (what provided.al2023 has; a plain build
here links against the host's newer glibc and would not start on Lambda),
then packs it as DIR/bootstrap.zip.

  --out DIR          where the zip goes (default dist/lambda)
  --binary PATH      pack this already built binary instead of building
  --max-glibc X.Y    newest glibc symbol version allowed (default 2.34)
  --dry-run          print every command, run none
  --help             this text

Checks before it writes the zip: an x86-64 ELF executable, no glibc symbol
newer than --max-glibc, at most 250 MB unzipped (Lambda's hard limit). It
warns above 50 MB zipped (the limit of a direct upload; deploy.sh uploads
through S3, which has no such limit). The first build takes about an hour
on 2 cores; it is cached in ~/.cache/sluice-lambda-target
(SLUICE_LAMBDA_TARGET_DIR).
EOF
}

OUT=dist/lambda BINARY="" MAX_GLIBC=2.34 DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --binary) BINARY="$2"; shift 2 ;;
    --max-glibc) MAX_GLIBC="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --help|-h) usage; exit 0 ;;
    *) echo "build-lambda.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  [ "$DRY" = 1 ] || "$@"
}
fail() { echo "build-lambda.sh: $*" >&2; exit 1; }

for tool in zip strip objdump od; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (Debian: apt-get install zip binutils coreutils)"
done

TARGET=x86_64-unknown-linux-gnu
LAMBDA_TARGET_DIR="${SLUICE_LAMBDA_TARGET_DIR:-$HOME/.cache/sluice-lambda-target}"
if [ -z "$BINARY" ]; then
  [ "$DRY" = 1 ] || { ensure_protoc; ensure_py_tool cargo-zigbuild cargo-zigbuild==0.24.1 ziglang==0.17.1; }
  export PATH="$SLUICE_VENV/bin:$PATH"  # cargo-zigbuild, and zig through its ziglang package
  run env CARGO_TARGET_DIR="$LAMBDA_TARGET_DIR" cargo zigbuild --locked --profile lambda --target "$TARGET.2.34" -p sluice-workers --bin bootstrap
  BINARY="$LAMBDA_TARGET_DIR/$TARGET/lambda/bootstrap"
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
run cp "$BINARY" "$stage/bootstrap"
if [ "$DRY" = 0 ]; then
  file_header=$(od -An -tx1 -N20 "$stage/bootstrap" | tr -d ' \n')
  # \x7fELF, 64-bit, little-endian ... e_machine 0x3e (x86-64) at offset 18.
  [ "${file_header:0:10}" = 7f454c4602 ] && [ "${file_header:36:4}" = 3e00 ] \
    || fail "$BINARY is not an x86-64 ELF executable; Lambda's provided.al2023 x86_64 runs only those"
fi
run strip "$stage/bootstrap"
if [ "$DRY" = 0 ]; then
  newest=$(objdump -T "$stage/bootstrap" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
  if [ -n "$newest" ] && [ "$(printf '%s\n%s\n' "$newest" "$MAX_GLIBC" | sort -V | tail -1)" != "$MAX_GLIBC" ]; then
    needs=$(objdump -T "$stage/bootstrap" | grep "GLIBC_$newest" | awk '{print $NF}' | sort -u | tr '\n' ' ')
    fail "$BINARY needs glibc $newest (for: $needs) but the Lambda runtime has $MAX_GLIBC; build it with this script (cargo-zigbuild pins glibc 2.34) instead of a plain cargo build"
  fi
  size=$(stat -c %s "$stage/bootstrap")
  [ "$size" -le $((250 * 1024 * 1024)) ] || fail "bootstrap is $size bytes unzipped, over Lambda's 250 MB limit"
fi
run mkdir -p "$OUT"
run rm -f "$OUT/bootstrap.zip"
run chmod 755 "$stage/bootstrap"
run zip -q -j -9 "$OUT/bootstrap.zip" "$stage/bootstrap"
if [ "$DRY" = 0 ]; then
  zipped=$(stat -c %s "$OUT/bootstrap.zip")
  echo "$OUT/bootstrap.zip: $zipped bytes zipped, $size bytes unzipped (glibc ${newest:-none} or older)"
  [ "$zipped" -le $((50 * 1024 * 1024)) ] || echo "note: over 50 MB zipped: upload it through S3 (scripts/deploy.sh does)" >&2
fi
