#!/usr/bin/env bash
# Shows a run's log on a worker of a TPU VM / pod slice. See tpu_scripts/README.md.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USAGE="Usage: $SCRIPT_NAME --name NAME --zone ZONE [--run RUN] [--worker W] [--lines N]
               [--no-follow] [--project PROJECT] [--dry-run]

Prints the last N lines of ~/$LOG_DIR/RUN.log on worker W and follows it (Ctrl-C stops following;
the run goes on). Process 0 (worker 0) writes the metrics lines; the others log set-up and errors.

  --run RUN      the run's name given to launch.sh (default: train)
  --worker W     a worker's index (default: 0) or all (one after the other; use with --no-follow)
  --lines N      how many lines to show first (default: 100)
  --no-follow    print and exit"

RUN_NAME="train"
WORKER="0"
LINES="100"
FOLLOW=1
split_flags "$@"
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  case "$1" in
    --run) need_value "$1" $# "${2:-}"; RUN_NAME="$2"; shift 2 ;;
    --worker) need_value "$1" $# "${2:-}"; WORKER="$2"; shift 2 ;;
    --lines) need_value "$1" $# "${2:-}"; LINES="$2"; shift 2 ;;
    --no-follow) FOLLOW=0; shift ;;
    *) parse_common_flag "$@"; shift "$SHIFT" ;;
  esac
done
require_target
require_run_name "$RUN_NAME"
[[ "$WORKER" =~ ^(all|[0-9]+)$ ]] || usage_error "--worker $WORKER: 'all' or a worker index"
[[ "$LINES" =~ ^[0-9]+$ ]] || usage_error "--lines $LINES: not a number"
if [[ "$WORKER" == "all" && "$FOLLOW" == 1 ]]; then
  usage_error "--worker all needs --no-follow (following one worker's log never ends)"
fi

tail_flags="-n $LINES"
if ((FOLLOW)); then
  tail_flags+=" -F"
fi
on_workers "$WORKER" "tail $tail_flags \$HOME/$LOG_DIR/$RUN_NAME.log"
