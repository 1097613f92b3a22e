#!/usr/bin/env bash
# Copies this working tree to every worker of a TPU VM / pod slice. See tpu_scripts/README.md.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USAGE="Usage: $SCRIPT_NAME --name NAME --zone ZONE [--remote-dir DIR] [--project PROJECT]
               [--dry-run]

Packs the files git tracks or would track (not .venv, not ignored outputs) into a tarball, copies it
to all workers with gcloud scp and unpacks it into DIR (default: ~/$REMOTE_DIR, or
\$UIO2_REMOTE_DIR). Files deleted here stay on the workers until DIR is removed there.

  --remote-dir DIR   where the code lives on the workers, relative to the home directory"

split_flags "$@"
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  case "$1" in
    --remote-dir) need_value "$1" $# "${2:-}"; REMOTE_DIR="$2"; shift 2 ;;
    *) parse_common_flag "$@"; shift "$SHIFT" ;;
  esac
done
require_target
sync_code
