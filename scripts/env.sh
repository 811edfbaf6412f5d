# Shared set-up for the scripts: build cache outside the clone, protoc present.
# Source it: `. scripts/env.sh`.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

ensure_protoc() {
  command -v protoc >/dev/null 2>&1 && return 0
  echo "installing protobuf-compiler (Lance needs protoc to build)..." >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq protobuf-compiler >/dev/null
}
