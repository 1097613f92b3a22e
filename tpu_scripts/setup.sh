#!/usr/bin/env bash
# Installs this package on every worker of a TPU VM / pod slice. See tpu_scripts/README.md.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USAGE="Usage: $SCRIPT_NAME --name NAME --zone ZONE [--no-sync] [--python PYTHON] [--remote-dir DIR]
                [--project PROJECT] [--dry-run]

Syncs the code (as sync.sh) and, on all workers at once: installs PYTHON (apt) if missing, makes
DIR/.venv, installs the package with the pinned versions of constraints.txt and jax's TPU extra
(libtpu), then prints the TPU devices jax sees (all workers run it at once, as a
pod slice needs). Run it again after changing setup.py.

  --no-sync          skip the copy of the code (it is already there)
  --python PYTHON    the interpreter to build the venv with (default: python3.11)
  --remote-dir DIR   where the code lives on the workers (default: ~/$REMOTE_DIR)"

SYNC=1
PYTHON="python3.11"
split_flags "$@"
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  case "$1" in
    --no-sync) SYNC=0; shift ;;
    --python) need_value "$1" $# "${2:-}"; PYTHON="$2"; shift 2 ;;
    --remote-dir) need_value "$1" $# "${2:-}"; REMOTE_DIR="$2"; shift 2 ;;
    *) parse_common_flag "$@"; shift "$SHIFT" ;;
  esac
done
require_target
[[ "$PYTHON" =~ ^python3(\.[0-9]+)?$ ]] || usage_error "--python $PYTHON: a name like python3.11"

if ((SYNC)); then
  sync_code
fi
python="$(shell_quote "$PYTHON")"
install="set -e
cd $(shell_quote "$REMOTE_DIR")
if ! command -v $python >/dev/null; then
  sudo apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $python $python-venv
fi
$python -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -c constraints.txt -e .
.venv/bin/pip install -q -c constraints.txt 'jax[tpu]'
.venv/bin/python -c 'import jax; print(f\"process {jax.process_index()}/{jax.process_count()}: \"
                      f\"{jax.local_device_count()} of {jax.device_count()} devices\")'"
on_workers all "$install"
