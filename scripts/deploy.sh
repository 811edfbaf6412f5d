#!/usr/bin/env bash
# Build the Lambda artifact and deploy the sluice stack (infra/template.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
Usage: scripts/deploy.sh --artifacts-bucket BUCKET [options]

Builds dist/lambda/bootstrap.zip (scripts/build-lambda.sh), uploads it with
`aws cloudformation package`, and creates or updates the stack with
`aws cloudformation deploy`. Needs the AWS CLI (v1 or v2) with credentials.

  --artifacts-bucket B   an existing bucket for the packaged code (required)
  --stack NAME           stack name (default sluice); functions are NAME-ingest, NAME-maintenance
  --region REGION        AWS region (default: the AWS CLI's)
  --bucket B             use this existing bucket for the lake and incoming files
                         (default: the stack creates one); it must send events to EventBridge
  --tables JSON          SLUICE_TABLES: {"incoming/orders/": {"table": "orders", "mode": "upsert", "key": "id"}}
  --param KEY=VALUE      any other template parameter (repeatable), e.g. --param IngestTimeout=600
  --zip PATH             deploy this artifact instead of building one
  --dry-run              print every command, run none
  --help                 this text

Template parameters (infra/template.yaml): LakePrefix, IncomingPrefix, Tables,
ClockSkew, RetentionFloor, IngestTimeout, IngestMemory, IngestConcurrency,
BatchSize, BatchingWindow, MaxReceiveCount, MaintenanceMemory,
MaintenanceConcurrency, OptimizeParallel, OptimizeSchedule, CleanupSchedule,
RecoverSchedule, AlarmEmail, LogRetentionDays.
EOF
}

STACK=sluice REGION="" ARTIFACTS="" BUCKET="" ZIP="" DRY=0
PARAMS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --artifacts-bucket) ARTIFACTS="$2"; shift 2 ;;
    --stack) STACK="$2"; shift 2 ;;
    --region) REGION="$2"; shift 2 ;;
    --bucket) BUCKET="$2"; PARAMS+=("ExistingBucket=$2"); shift 2 ;;
    --tables) PARAMS+=("Tables=$2"); shift 2 ;;
    --param)
      case "$2" in *=*) PARAMS+=("$2") ;; *) echo "deploy.sh: --param takes KEY=VALUE, got '$2'" >&2; exit 2 ;; esac
      shift 2 ;;
    --zip) ZIP="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --help|-h) usage; exit 0 ;;
    *) echo "deploy.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$ARTIFACTS" ] || { echo "deploy.sh: --artifacts-bucket is required: an existing bucket the packaged code is uploaded to (see --help)" >&2; exit 2; }
[[ "$STACK" =~ ^[A-Za-z][A-Za-z0-9-]{0,40}$ ]] || { echo "deploy.sh: stack name '$STACK' must be letters, digits and dashes, at most 41 characters" >&2; exit 2; }

show() { printf '+'; printf ' %q' "$@"; printf '\n'; }
run() { show "$@"; [ "$DRY" = 1 ] || "$@"; }
# AWS CLI v1 reads only AWS_DEFAULT_REGION; the SDKs (and Lambda) set AWS_REGION.
REGION=${REGION:-${AWS_DEFAULT_REGION:-${AWS_REGION:-}}}
AWS=(aws)
[ -z "$REGION" ] || AWS+=(--region "$REGION")
[ "$DRY" = 1 ] || command -v aws >/dev/null || { echo "deploy.sh: the AWS CLI (aws) is not installed; see https://docs.aws.amazon.com/cli/" >&2; exit 1; }

# 1. The artifact.
if [ -z "$ZIP" ]; then
  dry=(); [ "$DRY" = 0 ] || dry=(--dry-run)
  scripts/build-lambda.sh --out dist/lambda "${dry[@]}"
elif [ "$ZIP" != dist/lambda/bootstrap.zip ]; then
  run mkdir -p dist/lambda
  run cp "$ZIP" dist/lambda/bootstrap.zip
fi

# 2. An existing bucket must already send its events to EventBridge; changing
#    a bucket's notification configuration replaces all of it, so this script
#    never does that for you.
if [ -n "$BUCKET" ]; then
  check=("${AWS[@]}" s3api get-bucket-notification-configuration --bucket "$BUCKET" --output json)
  show "${check[@]}"
  if [ "$DRY" = 0 ] && ! "${check[@]}" | grep -q EventBridgeConfiguration; then
    echo "deploy.sh: bucket $BUCKET does not send events to EventBridge. Add \"EventBridgeConfiguration\": {} to its notification configuration (aws s3api get-bucket-notification-configuration, then put-bucket-notification-configuration with the result plus that key), then deploy again." >&2
    exit 1
  fi
fi

# 3. Package (uploads the zip) and deploy.
run "${AWS[@]}" cloudformation package --template-file infra/template.yaml \
  --s3-bucket "$ARTIFACTS" --s3-prefix "$STACK" --output-template-file dist/lambda/packaged.yaml
overrides=()
[ ${#PARAMS[@]} -eq 0 ] || overrides=(--parameter-overrides "${PARAMS[@]}")
run "${AWS[@]}" cloudformation deploy --template-file dist/lambda/packaged.yaml --stack-name "$STACK" \
  --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --no-fail-on-empty-changeset "${overrides[@]}"
run "${AWS[@]}" cloudformation describe-stacks --stack-name "$STACK" --query "Stacks[0].Outputs" --output table
