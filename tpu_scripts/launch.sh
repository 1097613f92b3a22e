#!/usr/bin/env bash
# Starts the same command on every worker of a TPU VM / pod slice. See tpu_scripts/README.md.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USAGE="Usage: $SCRIPT_NAME --name NAME --zone ZONE [--run RUN] [--env KEY=VALUE]... [--worker W]
                 [--remote-dir DIR] [--project PROJECT] [--dry-run] -- COMMAND [ARG]...

Starts COMMAND (e.g. uio2-train --gin_file=...) in the background on the workers, in DIR with
DIR/.venv/bin first on PATH, detached from the ssh session (nohup, its own session), output to
~/$LOG_DIR/RUN.log and its pid to ~/$LOG_DIR/RUN.pid. A worker where RUN is still running refuses.
Every worker of a pod slice must run the same command: jax joins them into one program.

  --run RUN          the run's name, for logs.sh and stop.sh (default: train)
  --env KEY=VALUE    an environment variable for COMMAND (repeatable)
  --worker W         all (default) or one worker's index, e.g. for a quick test on worker 0
  --remote-dir DIR   where the code lives on the workers (default: ~/$REMOTE_DIR)"

RUN_NAME="train"
WORKER="all"
ENV_VARS=()
COMMAND=()
split_flags "$@"
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  case "$1" in
    --run) need_value "$1" $# "${2:-}"; RUN_NAME="$2"; shift 2 ;;
    --env)
      need_value "$1" $# "${2:-}"
      [[ "$2" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || usage_error "--env $2: not KEY=VALUE"
      ENV_VARS+=("$2"); shift 2 ;;
    --worker) need_value "$1" $# "${2:-}"; WORKER="$2"; shift 2 ;;
    --remote-dir) need_value "$1" $# "${2:-}"; REMOTE_DIR="$2"; shift 2 ;;
    --) shift; COMMAND=("$@"); break ;;
    *) parse_common_flag "$@"; shift "$SHIFT" ;;
  esac
done
require_target
require_run_name "$RUN_NAME"
[[ "$WORKER" =~ ^(all|[0-9]+)$ ]] || usage_error "--worker $WORKER: 'all' or a worker index"
((${#COMMAND[@]})) || usage_error "give the command to run after --, e.g. -- uio2-train ..."

log="\$HOME/$LOG_DIR/$RUN_NAME.log"
pid="\$HOME/$LOG_DIR/$RUN_NAME.pid"
exports="export PATH=\"\$PWD/.venv/bin:\$PATH\""
if ((${#ENV_VARS[@]})); then
  exports+=" $(shell_quote "${ENV_VARS[@]}")"
fi
start="set -e
mkdir -p \$HOME/$LOG_DIR
if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2>/dev/null; then
  echo \"run $RUN_NAME is already running on \$(hostname) (pid \$(cat $pid))\" >&2; exit 1
fi
cd $(shell_quote "$REMOTE_DIR")
$exports
nohup setsid $(shell_quote "${COMMAND[@]}") > $log 2>&1 < /dev/null &
echo \$! > $pid
echo \"started $RUN_NAME on \$(hostname): pid \$!, log $log\""
on_workers "$WORKER" "$start"
