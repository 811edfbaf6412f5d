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

# Python tools, pinned, in one virtualenv outside the clone.
export SLUICE_VENV="${SLUICE_VENV:-$HOME/.cache/sluice-venv}"
ensure_py_tool() { # ensure_py_tool EXECUTABLE PIP-SPEC...
  local exe="$1"; shift
  [ -x "$SLUICE_VENV/bin/$exe" ] && return 0
  [ -x "$SLUICE_VENV/bin/pip" ] || python3 -m venv "$SLUICE_VENV"
  echo "installing $* into $SLUICE_VENV..." >&2
  "$SLUICE_VENV/bin/pip" install -q "$@"
}

# What the tests run besides cargo: the S3 server, the AWS CLI (scripts/invoke.sh), cfn-lint.
ensure_test_tools() {
  local exe
  for exe in moto_server aws cfn-lint; do
    [ -x "$SLUICE_VENV/bin/$exe" ] || { ensure_py_tool "$exe" "moto[server]==5.2.5" "boto3==1.44.5" "awscli==1.46.3" "cfn-lint==1.58.0" "pylance==14.0.2"; return; }
  done
  # pylance (a real reader for the tests) joined later: an older venv gets it too.
  "$SLUICE_VENV/bin/python" -c 'import lance' 2>/dev/null || "$SLUICE_VENV/bin/pip" install -q "pylance==14.0.2"
}
