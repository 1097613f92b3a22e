"""`uio2-eval` / `python -m unified_io.cli.eval`: evaluate checkpoints on a task or mixture, t5x style.

  uio2-eval --gin_file=runs/eval.gin --gin.CHECKPOINT_PATH="'/tmp/uio2'" \
    --gin.MIXTURE_OR_TASK_NAME="'world_default'" --gin.EVAL_OUTPUT_DIR="'/tmp/uio2/eval'"

Every checkpoint of the MODEL_DIR not yet evaluated is evaluated (the model is rebuilt from the
run's run-config.json); see unified_io/evaluation/runs.py and gin/runs/eval.gin for the options.
"""

import sys

from unified_io.cli.gin_binary import run_gin_binary


def _entry():
  from unified_io.evaluation import runs  # pylint: disable=import-outside-toplevel
  return runs.evaluate


def main(argv=None) -> int:
  return run_gin_binary("uio2-eval", __doc__.splitlines()[0], _entry, argv)


if __name__ == "__main__":
  sys.exit(main())
