"""`python -m unified_io.cli.visualize TASK --n 16 --out DIR`: look at a task's examples after
preprocessing (PNGs + index.html); see `unified_io.data.visualize`.

  python -m unified_io.cli.visualize world_refexp --n 16 --out /tmp/look
  python -m unified_io.cli.visualize coco_detection --split validation --no_shuffle \
      --model models/tiny_multimodal.gin --out /tmp/look

Sizes are those of the model the size gin `--model` configures (default: the release's sizes).
The last line says how many examples were written and which bad ones were skipped ("wrote 14 of
20 examples to DIR/index.html; skipped 6 bad: unreadable_audio 6 (first: /data/x.wav)"); with
`--strict` (or gin's bad_input.strict) the first bad example stops it instead, in one line.
Exit status 0 done, 2 an unknown task, a task without examples, a gin file that is not found or,
in strict mode, a bad example.
"""

import argparse
import contextlib
import sys
from typing import Optional, Sequence

from unified_io.cli import gin_flags, quiet


def model_data_config(model_gin: str):
  """The data contract (`unified_io.contract.DataConfig`) of the model a size gin configures."""
  from unified_io.contract import DataConfig  # pylint: disable=import-outside-toplevel
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
  parser.add_argument("--strict", action="store_true",
                      help="stop at the first bad example (bad_input.strict) instead of skipping")
  gin_flags.add_verbose_flag(parser)
  args = parser.parse_args(argv)
  quiet.start(args.verbose)  # (before TensorFlow and JAX are imported)
  quiet.import_tensorflow(args.verbose)
  # pylint: disable=import-outside-toplevel
  import unified_io.tasks  # noqa: F401  pylint: disable=unused-import
  from unified_io.data import bad_input
  from unified_io.data import visualize as visualize_lib
  try:
    data_config = model_data_config(args.model) if args.model else None
    with bad_input.strict_mode(True) if args.strict else contextlib.nullcontext():
      written = visualize_lib.visualize(args.task, args.n, args.out, args.split,
                                        None if args.no_shuffle else args.seed, data_config)
  except (ValueError, FileNotFoundError) as err:  # (BadInputError is a ValueError)
    print(f"visualize: {str(err).strip().splitlines()[0]}", file=sys.stderr)
    return 2
  print(written)
  return 0


if __name__ == "__main__":
  sys.exit(main())
