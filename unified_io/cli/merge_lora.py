"""`uio2-merge-lora`: fold a LoRA fine-tuning run's adapters into its base model's weights.

  uio2-merge-lora --adapters_dir runs/caption_lora --output_dir runs/caption_merged
  uio2-merge-lora --adapters_dir runs/caption_lora --base /ckpt/uio2-large --output_dir out

`--adapters_dir` holds the adapters as `unified_io.adapters.lora.save_adapters` writes them
(lora.json and adapters.npz), and, for a run of `uio2-train`, its run-config.json. The base is
`--base` or else the path lora.json records: a training MODEL_DIR (newest step), one of its
checkpoints/<step> directories, or a bare checkpoint (a `uio2-convert` output); it is loaded by
`unified_io.evaluation.run_loader.load_run` into the model of the adapters dir's run-config.json
(else the base's own), checked against the adapters' fingerprint (the error names the first kernel
that differs), and merged: W + alpha / rank * A @ B in W's dtype, every other parameter as is.

`--output_dir` becomes a MODEL_DIR that `uio2-eval`, `uio2-infer` and `load_run` read like a
training run, and that INITIAL_CHECKPOINT_PATH (gin/runs/finetune.gin) accepts:
  run-config.json              a copy of the adapters dir's (else the base's)
  checkpoints/<step>/params/   an orbax tree of the merged parameters (written by `uio2-merge`'s
                               `save_params`); <step> is the base's step
  checkpoints/<step>/merge.json  what was merged: the adapters, the base, the LoRA settings
Memory: the whole base in float32 on the host, plus one merged kernel at a time.
Exit status: 0 done, 2 unusable input (the message, one line, says why).
"""

import argparse
import os
import shutil
import sys
from typing import Any, Dict, Optional, Sequence

from unified_io.cli import quiet


class MergeLoraError(ValueError):
  """Adapters or a base that cannot be merged; the message is one line."""


def run(adapters_dir: str, output_dir: str, base: Optional[str] = None, overwrite: bool = False,
        say=print) -> Dict[str, Any]:
  """The merge (module docstring); returns the record written to merge.json. Raises
  MergeLoraError (or LoraError, RunLoadError: all ValueErrors with one-line messages)."""
  # Imported here: `main` quiets TensorFlow's and XLA's start-up logs before JAX loads.
  # pylint: disable=import-outside-toplevel
  import jax
  import numpy as np
  from flax import traverse_util

  from unified_io import partitioning
  from unified_io.adapters import lora
  from unified_io.evaluation import run_loader
  from unified_io.training import run_config as run_config_lib
  # pylint: enable=import-outside-toplevel
  if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
    raise MergeLoraError(f"output directory {output_dir} is not empty (pass --overwrite to "
                         "replace it)")
  adapters, cfg, saved_fingerprint, saved_base = lora.load_adapters(adapters_dir)
  base = base or saved_base
  if not base:
    raise MergeLoraError(f"{os.path.join(adapters_dir, lora.JSON_FILE)} names no base checkpoint; "
                         "give it with --base")
  out_real = os.path.realpath(output_dir)
  for given in (adapters_dir, base):  # (--overwrite must never delete what is read)
    if os.path.realpath(given) == out_real or os.path.realpath(given).startswith(out_real + os.sep):
      raise MergeLoraError(f"--output_dir {output_dir} holds {given}; write the merged model "
                           "somewhere else")
  try:
    own = run_config_lib.load(adapters_dir)
  except run_config_lib.RunConfigError as exc:
    raise MergeLoraError(" ".join(str(exc).split())) from exc
  if own and base == saved_base and _trainer_record(adapters_dir):
    # A uio2-train LoRA MODEL_DIR: its newest step read as uio2-eval reads it (the base rebuilt
    # as the run built it: seed, assignment map, tokenizers; trained base parameters; adapters).
    run = run_loader.load_run(adapters_dir)
    say(f"merging {len(adapters)} adapters (rank {cfg.rank}, alpha {cfg.alpha:g}) of "
        f"{adapters_dir} step {run.step} into {base}")
    merged = jax.tree_util.tree_map(np.asarray, run.params)
    return _write(output_dir, overwrite, adapters_dir, merged, run.step, adapters_dir, base, cfg,
                  adapters, say)
  loaded = run_loader.load_run(base, model_config=own.model if own else None)
  specs = partitioning.logical_specs(loaded.model.abstract_params())
  lora.check_compatible(saved_fingerprint, loaded.params, specs, cfg)
  say(f"merging {len(adapters)} adapters (rank {cfg.rank}, alpha {cfg.alpha:g}, "
      f"{lora.trainable_count(adapters)} numbers) into {base} step {loaded.step}")
  params = loaded.params
  trained_path = os.path.join(adapters_dir, "trained.npz")  # (training.adapted.TRAINED_FILE)
  if os.path.isfile(trained_path):  # base parameters that trained beside the adapters
    with np.load(trained_path) as trained:
      say(f"with {len(trained.files)} base parameters trained beside them (train.trainable)")
      params = traverse_util.flatten_dict(params, sep="/")
      missing = [k for k in trained.files if k not in params]
      if missing:
        raise MergeLoraError(f"{trained_path}: {missing[0]} is not a parameter of the base")
      params.update({k: trained[k] for k in trained.files})
      params = traverse_util.unflatten_dict(params, sep="/")
  merged = jax.tree_util.tree_map(np.asarray, lora.merge(params, adapters, cfg))

  config_source = adapters_dir if own else loaded.model_dir
  return _write(output_dir, overwrite, config_source, merged, loaded.step, adapters_dir, base, cfg,
                adapters, say)


def _trainer_record(adapters_dir: str) -> bool:
  """Whether lora.json is the one uio2-train writes (it records how to rebuild the base)."""
  import json  # pylint: disable=import-outside-toplevel
  with open(os.path.join(adapters_dir, "lora.json")) as f:
    return "seed" in json.load(f)


def _write(output_dir, overwrite, config_source, merged, step, adapters_dir, base, cfg, adapters,
           say) -> Dict[str, Any]:
  """OUT/run-config.json (a copy) and OUT/checkpoints/<step>/ with the merged parameters."""
  # pylint: disable=import-outside-toplevel
  import jax
  import numpy as np

  import unified_io
  from unified_io.cli import merge as merge_cli
  from unified_io.evaluation import run_loader
  from unified_io.training import run_config as run_config_lib
  # pylint: enable=import-outside-toplevel
  if overwrite and os.path.isdir(output_dir):
    shutil.rmtree(output_dir)
  os.makedirs(output_dir, exist_ok=True)
  if config_source:
    shutil.copyfile(os.path.join(config_source, run_config_lib.FILE),
                    os.path.join(output_dir, run_config_lib.FILE))
  record = {"adapters_dir": os.path.abspath(adapters_dir), "base": os.path.abspath(base),
            "step": step, "lora": cfg.to_dict(), "kernels": sorted(adapters),
            "versions": {"unified_io": unified_io.__version__, "jax": jax.__version__,
                         "numpy": np.__version__}}
  step_dir = os.path.join(output_dir, run_loader.CHECKPOINTS, str(step))
  merge_cli.save_params(step_dir, merged, record)
  say(f"wrote {os.path.abspath(output_dir)}")
  return record


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  quiet.start("--verbose" in argv)  # TF / XLA / orbax logs off the console (before JAX loads)
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n\n", 1)[1])
  parser.add_argument("--adapters_dir", required=True,
                      help="the LoRA run's directory holding lora.json and adapters.npz")
  parser.add_argument("--output_dir", required=True, help="the MODEL_DIR to write")
  parser.add_argument("--base", default=None,
                      help="the base checkpoint (default: the one lora.json records)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --output_dir")
  parser.add_argument("--verbose", action="store_true",
                      help="let TensorFlow, XLA and orbax log as they do by default")
  args = parser.parse_args(argv)
  quiet.import_tensorflow(args.verbose)
  # pylint: disable-next=import-outside-toplevel
  from unified_io.adapters.lora import LoraError
  # pylint: disable-next=import-outside-toplevel
  from unified_io.evaluation.run_loader import RunLoadError
  try:
    run(args.adapters_dir, args.output_dir, args.base, args.overwrite)
  except (MergeLoraError, LoraError, RunLoadError) as e:
    print(f"uio2-merge-lora: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
