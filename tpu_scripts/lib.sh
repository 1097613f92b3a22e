# shellcheck shell=bash
# Shared by every tpu_scripts/*.sh (sourced, never run): flag parsing, the common flags, printing
# or running gcloud commands, and the remote layout. See tpu_scripts/README.md.
#
# Every script takes the common flags
#   --name NAME        the TPU VM / pod slice        (default: $UIO2_TPU_NAME)
#   --zone ZONE        e.g. us-central2-b            (default: $UIO2_TPU_ZONE)
#   --project PROJECT  the Google Cloud project      (default: $UIO2_TPU_PROJECT, else gcloud's)
#   --dry-run          print the commands instead of running them
#   -h, --help         print the script's usage
# Flags are written `--flag value` or `--flag=value`. A bad flag exits 2 with a usage message.

set -euo pipefail

GCLOUD="${GCLOUD:-gcloud}"          # a test (or a wrapper) may put another binary here
TPU_NAME="${UIO2_TPU_NAME:-}"
TPU_ZONE="${UIO2_TPU_ZONE:-}"
TPU_PROJECT="${UIO2_TPU_PROJECT:-}"
DRY_RUN=0
# On every worker, relative to the login user's home: the code, and the runs' logs and pid files.
REMOTE_DIR="${UIO2_REMOTE_DIR:-unified-io}"
# shellcheck disable=SC2034  # read by the scripts that source this file
LOG_DIR="uio2-logs"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT_NAME="$(basename "$0")"

# Prints the calling script's usage text (its USAGE variable) and the common flags.
usage() {
  printf '%s\n' "$USAGE"
  cat <<'EOF'

Common flags:
  --name NAME        the TPU VM or pod slice (default: $UIO2_TPU_NAME)
  --zone ZONE        its zone, e.g. us-central2-b (default: $UIO2_TPU_ZONE)
  --project PROJECT  the Google Cloud project (default: $UIO2_TPU_PROJECT, else gcloud's)
  --dry-run          print the commands instead of running them
  -h, --help         this text
EOF
}

# usage_error MESSAGE: exits 2 (bad command line).
usage_error() {
  echo "$SCRIPT_NAME: $*" >&2
  echo "Try '$SCRIPT_NAME --help'." >&2
  exit 2
}

# fail MESSAGE: exits 1 (the command line was fine, something else was not).
fail() {
  echo "$SCRIPT_NAME: error: $*" >&2
  exit 1
}

# split_flags ARGS...: sets ARGS to the arguments with every `--flag=value` before a lone `--`
# split into `--flag value`, so the scripts' parsers handle one form only.
split_flags() {
  ARGS=()
  while (($#)); do
    case "$1" in
      --) ARGS+=("$@"); return ;;
      --*=*) ARGS+=("${1%%=*}" "${1#*=}") ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
}

# need_value FLAG NUMBER_OF_ARGS_LEFT NEXT_ARG: a flag that takes a value must have one (no value
# of ours starts with "--": that is the next flag, the value forgotten).
need_value() {
  if (($2 < 2)) || [[ "${3:-}" == --* ]]; then
    usage_error "$1 needs a value"
  fi
}

# shellcheck disable=SC2034  # SHIFT is read by the caller
# parse_common_flag ARGS...: handles "$1" if it is a common flag; sets SHIFT to the number of
# arguments used. Anything else is a usage error, so each script calls this last.
parse_common_flag() {
  SHIFT=1
  case "$1" in
    --name) need_value "$1" $# "${2:-}"; TPU_NAME="$2"; SHIFT=2 ;;
    --zone) need_value "$1" $# "${2:-}"; TPU_ZONE="$2"; SHIFT=2 ;;
    --project) need_value "$1" $# "${2:-}"; TPU_PROJECT="$2"; SHIFT=2 ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) usage_error "unknown flag $1" ;;
    *) usage_error "unexpected argument $1" ;;
  esac
}

# require_target: --name and --zone are set and look like Google Cloud names.
require_target() {
  [[ -n "$TPU_NAME" ]] || usage_error "--name is required (or set UIO2_TPU_NAME)"
  [[ -n "$TPU_ZONE" ]] || usage_error "--zone is required (or set UIO2_TPU_ZONE)"
  [[ "$TPU_NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
    || usage_error "--name $TPU_NAME: lowercase letters, digits and '-', starting with a letter"
  [[ "$TPU_ZONE" =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] \
    || usage_error "--zone $TPU_ZONE: not a zone name like us-central2-b"
}

# require_run_name NAME: a run name is used in file names on the workers.
require_run_name() {
  [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] \
    || usage_error "--run $1: letters, digits, '_', '.' and '-' only"
}

# shell_quote WORDS...: the words as one line a POSIX shell reads back as the same words.
shell_quote() {
  local word quoted=() escaped="'\\''"
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then
      quoted+=("$word")
    else
      quoted+=("'${word//\'/$escaped}'")
    fi
  done
  printf '%s\n' "${quoted[*]}"
}

# run COMMAND...: prints the command; runs it unless --dry-run.
run() {
  if ((DRY_RUN)); then
    shell_quote "$@"
  else
    echo "+ $(shell_quote "$@")" >&2
    "$@"
  fi
}

# The gcloud flags every call takes: the zone, and the project when one is given.
target_flags() {
  TARGET_FLAGS=("--zone=$TPU_ZONE")
  if [[ -n "$TPU_PROJECT" ]]; then
    TARGET_FLAGS+=("--project=$TPU_PROJECT")
  fi
}

# tpu_vm SUBCOMMAND ARGS...: `gcloud compute tpus tpu-vm SUBCOMMAND NAME --zone=... ARGS...`.
tpu_vm() {
  local subcommand="$1"
  shift
  target_flags
  run "$GCLOUD" compute tpus tpu-vm "$subcommand" "$TPU_NAME" "${TARGET_FLAGS[@]}" "$@"
}

# on_workers WORKER SCRIPT: runs the shell SCRIPT on worker WORKER ("all", or an index) over ssh.
on_workers() {
  tpu_vm ssh "--worker=$1" "--command=$2"
}

# copy_to_workers LOCAL_FILE REMOTE_PATH: gcloud scp of one file to every worker.
copy_to_workers() {
  target_flags
  run "$GCLOUD" compute tpus tpu-vm scp "$1" "$TPU_NAME:$2" "--worker=all" "${TARGET_FLAGS[@]}"
}

# sync_code: the working tree (tracked and untracked files that git does not ignore, so no .venv,
# no build outputs) as a tarball onto every worker, unpacked into REMOTE_DIR. Files deleted
# locally stay on the workers until REMOTE_DIR is removed there.
sync_code() {
  local tarball remote_tarball="/tmp/uio2-code.tar.gz"
  tarball="${TMPDIR:-/tmp}/uio2-code-$$.tar.gz"
  if ((DRY_RUN)); then
    echo "(cd $(shell_quote "$REPO_ROOT") && git ls-files -z --cached --others --exclude-standard" \
      "| tar -czf $(shell_quote "$tarball") --null --ignore-failed-read -T -)"
  else
    command -v git >/dev/null || fail "git is needed to list the files to sync"
    (cd "$REPO_ROOT" && git ls-files -z --cached --others --exclude-standard \
      | tar -czf "$tarball" --null --ignore-failed-read -T -)
  fi
  copy_to_workers "$tarball" "$remote_tarball"
  local dir
  dir="$(shell_quote "$REMOTE_DIR")"
  on_workers all "mkdir -p $dir && tar -xzf $remote_tarball -C $dir && rm -f $remote_tarball"
  if ((!DRY_RUN)); then
    rm -f "$tarball"
  fi
}
