"""`uio2-train` / `python -m unified_io.cli.train`: training configured only through gin, t5x style.

  uio2-train --gin_file=models/tiny.gin --gin_file=runs/pretrain.gin \
    --gin.MODEL_DIR="'/tmp/uio2'" --gin.MIXTURE_OR_TASK_NAME="'world_text'" \
    --gin.TASK_FEATURE_LENGTHS="{'text_inputs': 64, 'text_targets': 16}" \
    --gin.TRAIN_STEPS=300 --gin.BATCH_SIZE=16

Flags: see `unified_io.cli.gin_flags`. Running the same command again resumes from the newest
checkpoint in MODEL_DIR. Exit status: 0 done, 2 bad configuration, 143 preempted (SIGTERM; a
checkpoint of the current step was written first).
"""

import sys


from unified_io import gin_required
from unified_io.cli import gin_flags

EXIT_PREEMPTED = 143  # 128 + SIGTERM, after the preemption checkpoint is written


def main(argv=None) -> int:
  args, bindings = gin_flags.parse(gin_flags.make_parser(__doc__.splitlines()[0]), argv)
  gin_flags.initialize_distributed(args)
  import seqio
  if args.tfds_data_dir:
    seqio.set_tfds_data_dir_override(args.tfds_data_dir)
  import unified_io.tasks  # noqa: F401  (registers every task and mixture)
  from unified_io.training import trainer
  from unified_io.training.input import InputConfigError
  try:
    gin_imports = gin_flags.parse_gin(args.gin_file, bindings, args.gin_search_paths)
  except FileNotFoundError as exc:
    print(f"uio2-train: {exc}", file=sys.stderr)
    return 2
  gin_flags.bind_tfds_data_dir(args.tfds_data_dir)  # (recorded in run-config.json)
  from unified_io.tasks import manifest
  manifest.register_configured_manifests()  # JSONL tasks named in gin
  try:
    trainer.train(gin_imports=gin_imports)  # (a user's task modules, for run-config.json)
  except gin_required.GinRequiredError as exc:
    print(f"uio2-train: {exc}", file=sys.stderr)
    return 2
  except InputConfigError as exc:  # (gin adds context lines; the first names the cause)
    print(f"uio2-train: {str(exc).splitlines()[0]}", file=sys.stderr)
    return 2
  except trainer.Preempted as exc:
    print(f"{exc}; exiting", flush=True)
    return EXIT_PREEMPTED
  return 0


if __name__ == "__main__":
  sys.exit(main())
