#!/usr/bin/env bash
# Invoke a deployed sluice function ad hoc and print its JSON result.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/invoke.sh [options] ACTION [KEY=VALUE ...]
       scripts/invoke.sh [options] --payload JSON

Sends {"action": ACTION, KEY: VALUE, ...} to the stack's maintenance function
and prints what it returns. Exits 1 if the function reports an error.

Actions and their keys:
  status
  recover   [dry_run=true]
  optimize  [tables=a,b] [parallel=N] [dry_run=true]
  cleanup   [dry_run=true]
  ingest    sources=s3://bucket/key,... [table=T] [format=jsonl|csv|parquet|json] [mode=append|upsert] [key=COLUMN]
  load      (use --payload: {"action": "load", "tables": [{"table": ..., "sources": [...]}]})

Values: tables and sources are comma-separated lists; true, false and
numbers are sent as such; anything else as a string.

Options:
  --stack NAME         the stack deploy.sh created (default sluice)
  --function NAME      invoke this function instead of the stack's maintenance function
  --region REGION      AWS region (default: the AWS CLI's)
  --endpoint-url URL   another Lambda endpoint (a local emulator, say)
  --payload JSON       send this payload as is
  --dry-run            print every command, run none
  --help               this text

Examples:
  scripts/invoke.sh status
  scripts/invoke.sh optimize tables=orders parallel=8
  scripts/invoke.sh recover dry_run=true
EOF
}

STACK=sluice FUNCTION="" REGION="" ENDPOINT="" PAYLOAD="" DRY=0
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --stack) STACK="$2"; shift 2 ;;
    --function) FUNCTION="$2"; shift 2 ;;
    --region) REGION="$2"; shift 2 ;;
    --endpoint-url) ENDPOINT="$2"; shift 2 ;;
    --payload) PAYLOAD="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --help|-h) usage; exit 0 ;;
    -*) echo "invoke.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

json_string() { # a JSON string literal
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

if [ -z "$PAYLOAD" ]; then
  [ ${#ARGS[@]} -gt 0 ] || { echo "invoke.sh: say which action: status, recover, optimize, cleanup, ingest, or --payload JSON (see --help)" >&2; exit 2; }
  action=${ARGS[0]}
  case "$action" in
    status|recover|optimize|cleanup|ingest|load) ;;
    *) echo "invoke.sh: unknown action '$action': expected status, recover, optimize, cleanup, ingest or load" >&2; exit 2 ;;
  esac
  PAYLOAD="{\"action\": $(json_string "$action")"
  for kv in "${ARGS[@]:1}"; do
    [[ "$kv" == *=* ]] || { echo "invoke.sh: '$kv' is not KEY=VALUE" >&2; exit 2; }
    key=${kv%%=*} value=${kv#*=}
    [[ "$key" =~ ^[a-z_]+$ ]] || { echo "invoke.sh: bad key '$key'" >&2; exit 2; }
    case "$key" in
      tables|sources)
        items=()
        IFS=, read -r -a parts <<<"$value"
        for p in "${parts[@]}"; do [ -z "$p" ] || items+=("$(json_string "$p")"); done
        value="[$(IFS=,; echo "${items[*]}")]" ;;
      *) [[ "$value" =~ ^(true|false|[0-9]+)$ ]] || value=$(json_string "$value") ;;
    esac
    PAYLOAD+=", $(json_string "$key"): $value"
  done
  PAYLOAD+="}"
fi

# Commands go to stdout in a dry run, else to stderr: stdout is the result alone.
show() { if [ "$DRY" = 1 ]; then print_cmd "$@"; else print_cmd "$@" >&2; fi; }
print_cmd() { printf '+'; printf ' %q' "$@"; printf '\n'; }
# AWS CLI v1 reads only AWS_DEFAULT_REGION; the SDKs (and Lambda) set AWS_REGION.
REGION=${REGION:-${AWS_DEFAULT_REGION:-${AWS_REGION:-}}}
AWS=(aws)
[ -z "$REGION" ] || AWS+=(--region "$REGION")
[ "$DRY" = 1 ] || command -v aws >/dev/null || { echo "invoke.sh: the AWS CLI (aws) is not installed; see https://docs.aws.amazon.com/cli/" >&2; exit 1; }

if [ -z "$FUNCTION" ]; then
  lookup=("${AWS[@]}" cloudformation describe-stacks --stack-name "$STACK" --query "Stacks[0].Outputs[?OutputKey=='MaintenanceFunction'].OutputValue" --output text)
  show "${lookup[@]}"
  if [ "$DRY" = 1 ]; then
    FUNCTION="$STACK-maintenance"
  else
    FUNCTION=$("${lookup[@]}") || { echo "invoke.sh: cannot read stack '$STACK' (deployed with scripts/deploy.sh? right --region?)" >&2; exit 1; }
  fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '%s' "$PAYLOAD" >"$work/payload.json"
endpoint=()
[ -z "$ENDPOINT" ] || endpoint=(--endpoint-url "$ENDPOINT")
# fileb:// sends the bytes as they are with both AWS CLI v1 and v2.
call=("${AWS[@]}" "${endpoint[@]}" lambda invoke --function-name "$FUNCTION" --payload "fileb://$work/payload.json"
  --cli-read-timeout 0 --output json "$work/result.json")
echo "payload: $PAYLOAD" >&2
show "${call[@]}"
[ "$DRY" = 0 ] || exit 0
meta=$("${call[@]}")
cat "$work/result.json"
echo
if grep -q '"FunctionError"' <<<"$meta"; then
  echo "invoke.sh: $FUNCTION reported an error (above); its logs: aws logs tail /aws/lambda/$FUNCTION --since 15m" >&2
  exit 1
fi
