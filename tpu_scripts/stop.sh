#!/usr/bin/env bash
# Stops a run on every worker of a TPU VM / pod slice. See tpu_scripts/README.md.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USAGE="Usage: $SCRIPT_NAME --name NAME --zone ZONE [--run RUN] [--signal TERM|INT|KILL]
               [--project PROJECT] [--dry-run]

Sends the signal to the run's process on all workers (its pid from ~/$LOG_DIR/RUN.pid). With TERM
(the default) uio2-train writes a checkpoint of the current step and exits 143; launching the same
command again resumes from it. KILL stops at once (the run resumes from its last checkpoint).

  --run RUN       the run's name given to launch.sh (default: train)
  --signal SIG    TERM (default), INT or KILL"

RUN_NAME="train"
SIGNAL="TERM"
split_flags "$@"
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  case "$1" in
    --run) need_value "$1" $# "${2:-}"; RUN_NAME="$2"; shift 2 ;;
    --signal) need_value "$1" $# "${2:-}"; SIGNAL="${2#SIG}"; shift 2 ;;
    *) parse_common_flag "$@"; shift "$SHIFT" ;;
  esac
done
require_target
require_run_name "$RUN_NAME"
[[ "$SIGNAL" =~ ^(TERM|INT|KILL)$ ]] || usage_error "--signal $SIGNAL: TERM, INT or KILL"

pid="\$HOME/$LOG_DIR/$RUN_NAME.pid"
stop="if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2>/dev/null; then
  kill -s $SIGNAL \"\$(cat $pid)\" && echo \"sent $SIGNAL to $RUN_NAME on \$(hostname)\"
else
  echo \"$RUN_NAME is not running on \$(hostname)\"
fi"
on_workers all "$stop"
