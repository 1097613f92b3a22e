"""`uio2-train-tokenizer` / `python -m unified_io.cli.train_tokenizer`: trains the image VQGAN or
the audio ViT-VQGAN of a model config on a registered task or mixture, configured through gin.

  uio2-train-tokenizer --gin_file=models/tiny_multimodal.gin --gin_file=runs/train_tokenizer.gin \
    --gin.MODEL_DIR="'/tmp/tokenizer_image'" --gin.MIXTURE_OR_TASK_NAME="'world_text_to_image'" \
    --gin.TOKENIZER="'image'" --gin.TRAIN_STEPS=3000 --gin.BATCH_SIZE=4

Flags: see `unified_io.cli.gin_flags`. Rerunning the same command resumes from the newest
checkpoint (exactly: the input pipeline's state is saved with it). Exit status: 0 done; 2 bad
configuration (nothing written); 3 non-finite losses for a whole logging interval (the state is
checkpointed); 4 a checkpoint could not be written; 143 preempted (SIGTERM, after a checkpoint).
"""

import sys

from unified_io import gin_required
from unified_io.cli import gin_flags, quiet

EXIT_PREEMPTED = 143
EXIT_NONFINITE = 3
EXIT_SAVE_FAILED = 4


def main(argv=None) -> int:
  args, bindings = gin_flags.parse(gin_flags.make_parser(__doc__.splitlines()[0]), argv)
  quiet.start(args.verbose)  # (before TensorFlow and JAX are imported)
  quiet.import_tensorflow(args.verbose)
  import seqio
  if args.tfds_data_dir:
    seqio.set_tfds_data_dir_override(args.tfds_data_dir)
  import unified_io.tasks  # noqa: F401  (registers every task and mixture)
  from unified_io.config import ConfigError
  from unified_io.tasks import manifest
  from unified_io.tokenizer_training import trainer as tokenizer_trainer
  from unified_io.tokenizer_training.data import TokenizerDataError
  from unified_io.training import checkpoints as ckpt_lib
  from unified_io.training import trainer
  user_errors = (FileNotFoundError, gin_flags.GinFlagError, gin_required.GinRequiredError,
                 ConfigError, TokenizerDataError, tokenizer_trainer.TokenizerTrainingError,
                 trainer.ModelDirError, ckpt_lib.CheckpointMismatchError)
  prog = "uio2-train-tokenizer"
  try:
    gin_flags.parse_gin(args.gin_file, bindings, args.gin_search_paths)
    gin_flags.bind_tfds_data_dir(args.tfds_data_dir)
    manifest.register_configured_manifests()
    tokenizer_trainer.train_tokenizer()
  except user_errors as exc:
    print(f"{prog}: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
    return 2
  except trainer.Preempted as exc:
    print(f"{str(exc).strip().splitlines()[0]}; exiting", flush=True)
    return EXIT_PREEMPTED
  except FloatingPointError as exc:
    print(f"{prog}: {str(exc).strip().splitlines()[0]}", file=sys.stderr, flush=True)
    return EXIT_NONFINITE
  except ckpt_lib.SaveError as exc:
    print(f"{prog}: {str(exc).strip().splitlines()[0]}", file=sys.stderr, flush=True)
    return EXIT_SAVE_FAILED
  return 0


if __name__ == "__main__":
  sys.exit(main())
