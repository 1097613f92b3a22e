"""`uio2-infer` / `python -m unified_io.cli.infer`: a checkpoint's predictions for a task's split.

  uio2-infer --gin_file=runs/infer.gin --gin.CHECKPOINT_PATH="'/tmp/uio2'" \
    --gin.MIXTURE_OR_TASK_NAME="'world_caption'" --gin.INFER_OUTPUT_DIR="'/tmp/uio2/infer'"

Predictions go to jsonl files of `infer.chunk_size` examples; rerunning the command skips the
chunks already written (unified_io/evaluation/runs.py, gin/runs/infer.gin).
"""

import sys

from unified_io.cli.gin_binary import run_gin_binary


def _entry():
  from unified_io.evaluation import runs  # pylint: disable=import-outside-toplevel
  return runs.infer


def main(argv=None) -> int:
  return run_gin_binary("uio2-infer", __doc__.splitlines()[0], _entry, argv)


if __name__ == "__main__":
  sys.exit(main())
