#!/usr/bin/env bash
# Deletes a Cloud TPU VM or pod slice. See tpu_scripts/README.md.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USAGE="Usage: $SCRIPT_NAME --name NAME --zone ZONE [--yes] [--async] [--project PROJECT] [--dry-run]

Deletes the TPU VM or pod slice with its boot disks (logs and local checkpoints on them are lost;
keep MODEL_DIR on shared storage). gcloud asks for confirmation unless --yes is given.

  --yes      do not ask (gcloud --quiet)
  --async    return at once instead of waiting for the deletion"

flags=()
split_flags "$@"
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  case "$1" in
    --yes) flags+=("--quiet"); shift ;;
    --async) flags+=("--async"); shift ;;
    *) parse_common_flag "$@"; shift "$SHIFT" ;;
  esac
done
require_target
tpu_vm delete "${flags[@]+"${flags[@]}"}"
