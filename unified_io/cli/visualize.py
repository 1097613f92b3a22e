"""`python -m unified_io.cli.visualize TASK --n 16 --out DIR`: look at a task's examples after
preprocessing (PNGs + index.html); see `unified_io.data.visualize`.

  python -m unified_io.cli.visualize world_refexp --n 16 --out /tmp/look
  python -m unified_io.cli.visualize coco_detection --split validation --no_shuffle \
      --model models/tiny_multimodal.gin --out /tmp/look

Sizes are those of the model the size gin `--model` configures (default: the release's sizes).
Exit status 0 done, 2 an unknown task, a task without examples or a gin file that is not found.
"""

import argparse
import sys
from typing import Optional, Sequence

from unified_io.cli import gin_flags
from unified_io.contract import DataConfig
from unified_io.data import visualize as visualize_lib


def model_data_config(model_gin: str) -> DataConfig:
  """The data contract of the model a size gin file configures."""
  return DataConfig.from_model(gin_flags.model_config([model_gin]))


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("task", help="a registered seqio task or mixture")
  parser.add_argument("--n", type=int, default=16, help="examples to render")
  parser.add_argument("--out", required=True, help="output directory (PNGs + index.html)")
  parser.add_argument("--split", default="train")
  parser.add_argument("--seed", type=int, default=0, help="shuffle seed")
  parser.add_argument("--no_shuffle", action="store_true", help="take examples in order")
  parser.add_argument("--model", default=None,
                      help="a model size gin (e.g. models/tiny_multimodal.gin): draw at its sizes")
  args = parser.parse_args(argv)
  import unified_io.tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  try:
    data_config = model_data_config(args.model) if args.model else None
    index = visualize_lib.visualize(args.task, args.n, args.out, args.split,
                                    None if args.no_shuffle else args.seed, data_config)
  except (ValueError, FileNotFoundError) as err:
    print(f"visualize: {err}", file=sys.stderr)
    return 2
  print(f"wrote {index}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
