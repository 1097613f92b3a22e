"""`uio2-train` / `python -m unified_io.cli.train`: training configured only through gin, t5x style.

  uio2-train --gin_file=models/tiny.gin --gin_file=runs/pretrain.gin \
    --gin.MODEL_DIR="'/tmp/uio2'" --gin.MIXTURE_OR_TASK_NAME="'world_text'" \
    --gin.TASK_FEATURE_LENGTHS="{'text_inputs': 64, 'text_targets': 16}" \
    --gin.TRAIN_STEPS=300 --gin.BATCH_SIZE=16

Flags: see `unified_io.cli.gin_flags`. Running the same command again resumes from the newest
checkpoint in MODEL_DIR (a corrupt newest step is named, kept aside as <step>.corrupt-<time>, and
the previous one resumed). Exit status: 0 done; 2 bad configuration (also: MODEL_DIR or its
checkpoint holds another model; nothing is written); 3 non-finite steps (nonfinite_policy 'stop',
or train.max_consecutive_nonfinite in a row; the state is checkpointed); 4 a checkpoint could not
be written (e.g. disk full; the earlier steps are intact); 5 a bad example in strict mode
(bad_input.strict=True; one line names the task, the reason and the file); 143 preempted
(SIGTERM; a checkpoint of the current step was written first, unless it came before the first
step).
"""

import sys

from unified_io import gin_required
from unified_io.cli import gin_flags, quiet

EXIT_PREEMPTED = 143  # 128 + SIGTERM, after the preemption checkpoint is written
EXIT_NONFINITE = 3  # non-finite steps (train.nonfinite_policy / max_consecutive_nonfinite)
EXIT_SAVE_FAILED = 4  # a checkpoint could not be written (e.g. disk full)
EXIT_BAD_INPUT = 5  # strict mode (gin bad_input.strict) met a bad example


def main(argv=None) -> int:
  args, bindings = gin_flags.parse(gin_flags.make_parser(__doc__.splitlines()[0]), argv)
  quiet.start(args.verbose)  # (before TensorFlow and JAX are imported)
  quiet.import_tensorflow(args.verbose)
  gin_flags.initialize_distributed(args)
  import seqio
  if args.tfds_data_dir:
    seqio.set_tfds_data_dir_override(args.tfds_data_dir)
  import unified_io.tasks  # noqa: F401  (registers every task and mixture)
  from unified_io.adapters.lora import LoraError
  from unified_io.config import ConfigError
  from unified_io.data import bad_input
  from unified_io.tasks import manifest
  from unified_io.training import checkpoints as ckpt_lib
  from unified_io.training import trainer
  from unified_io.training.input import InputConfigError
  # Every mistake in the configuration is found before MODEL_DIR is written: one line, status 2.
  # (gin appends "In call to configurable ..." lines to what it raises: the first names the cause)
  user_errors = (FileNotFoundError, gin_flags.GinFlagError, gin_required.GinRequiredError,
                 InputConfigError, ConfigError, trainer.ModelDirError,
                 ckpt_lib.CheckpointMismatchError, LoraError)
  try:
    gin_imports = gin_flags.parse_gin(args.gin_file, bindings, args.gin_search_paths)
    gin_flags.bind_tfds_data_dir(args.tfds_data_dir)  # (recorded in run-config.json)
    manifest.register_configured_manifests()  # JSONL tasks named in gin
    trainer.train(gin_imports=gin_imports)  # (a user's task modules, for run-config.json)
  except user_errors as exc:
    print(f"uio2-train: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
    return 2
  except trainer.Preempted as exc:
    print(f"{str(exc).strip().splitlines()[0]}; exiting", flush=True)
    return EXIT_PREEMPTED
  except trainer.NonFiniteLossError as exc:
    print(f"uio2-train: {str(exc).strip().splitlines()[0]}", file=sys.stderr, flush=True)
    return EXIT_NONFINITE
  except ckpt_lib.SaveError as exc:
    print(f"uio2-train: {str(exc).strip().splitlines()[0]}", file=sys.stderr, flush=True)
    return EXIT_SAVE_FAILED
  except bad_input.BadInputError as exc:  # (the input's readers have already stopped)
    print(f"uio2-train: {str(exc).strip().splitlines()[0]}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT
  return 0


if __name__ == "__main__":
  sys.exit(main())
