#!/usr/bin/env bash
# Creates a Cloud TPU VM or pod slice. See tpu_scripts/README.md.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USAGE="Usage: $SCRIPT_NAME --name NAME --zone ZONE --type TYPE [--version RUNTIME]
                 [--spot | --reserved] [--project PROJECT] [--dry-run]

Creates the TPU VM (one host, e.g. v4-8) or pod slice (several hosts, e.g. v4-32):
  gcloud compute tpus tpu-vm create NAME --zone=ZONE --accelerator-type=TYPE --version=RUNTIME

  --type TYPE        accelerator type: v4-N, v5litepod-N (v5e; v5e-N is accepted for it), v5p-N
  --version RUNTIME  TPU software version; default by generation: v4 tpu-ubuntu2204-base,
                     v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5 (other generations need it)
  --spot             a spot VM (cheaper, may be preempted at any time: uio2-train checkpoints on
                     the SIGTERM it gets, and the same launch command resumes)
  --reserved         use the project's reserved capacity"

ACCELERATOR_TYPE=""
RUNTIME_VERSION=""
CAPACITY=""
split_flags "$@"
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  case "$1" in
    --type) need_value "$1" $# "${2:-}"; ACCELERATOR_TYPE="$2"; shift 2 ;;
    --version) need_value "$1" $# "${2:-}"; RUNTIME_VERSION="$2"; shift 2 ;;
    --spot | --reserved)
      if [[ -n "$CAPACITY" && "$CAPACITY" != "$1" ]]; then
        usage_error "--spot and --reserved exclude each other"
      fi
      CAPACITY="$1"; shift ;;
    *) parse_common_flag "$@"; shift "$SHIFT" ;;
  esac
done
require_target
[[ -n "$ACCELERATOR_TYPE" ]] || usage_error "--type is required (e.g. v4-8, v5litepod-16, v5p-8)"
[[ "$ACCELERATOR_TYPE" =~ ^(v[0-9]+[a-z]*)-([0-9]+)$ ]] \
  || usage_error "--type $ACCELERATOR_TYPE: not an accelerator type like v4-8 or v5litepod-16"
generation="${BASH_REMATCH[1]}"
if [[ "$generation" == "v5e" ]]; then  # gcloud's name for v5e
  ACCELERATOR_TYPE="v5litepod-${BASH_REMATCH[2]}"
  generation="v5litepod"
fi
if [[ -z "$RUNTIME_VERSION" ]]; then
  case "$generation" in
    v4) RUNTIME_VERSION="tpu-ubuntu2204-base" ;;
    v5litepod) RUNTIME_VERSION="v2-alpha-tpuv5-lite" ;;
    v5p) RUNTIME_VERSION="v2-alpha-tpuv5" ;;
    *) usage_error "--type $ACCELERATOR_TYPE: no default runtime for $generation; pass --version" ;;
  esac
fi

flags=("--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION")
if [[ -n "$CAPACITY" ]]; then
  flags+=("$CAPACITY")
fi
tpu_vm create "${flags[@]}"
