"""Held-out loss per denoising mode at each checkpoint of a pretraining run (runs/pretrain_mod.gin).

  uio2-train --gin_file=models/tiny_multimodal.gin --gin_file=runs/pretrain_mod.gin \
    --gin.MODEL_DIR="'/tmp/uio2_mod'" --gin.TRAIN_STEPS=300 --gin.BATCH_SIZE=8 \
    --gin.train.checkpoint_every=100
  python bench/pretrain_mod_losses.py /tmp/uio2_mod            # every checkpoint of the run

The model and feature lengths come from MODEL_DIR/run-config.json, the mixture from there too
(`--mixture` to override), the denoising rates from the run's own MODEL_DIR/config.gin (its
`DenoisingConfig.*` lines). The examples are the mixture's validation split, unshuffled, the same
`--examples` for every checkpoint, each put through the mixture of denoisers with a fixed seed; an
example's mode is its prefix token ([Text] [R], [Image] [S], ...). Each example's loss is its own
(`decoding.example_losses`: the training loss of a batch of that example alone), averaged per mode.
Prints one row per checkpoint and one column per mode (mean loss), the first row ("init") being
randomly initialised parameters as training starts from them (`--no_init` leaves it out), then
`<mode> first -> last` for each mode; the last line is `modes_falling <k>/<n>`.
"""

import argparse
import collections
import os
import re
import sys

import numpy as np


def denoising_bindings(model_dir: str) -> str:
  """The `DenoisingConfig.*` bindings of the run's operative gin config ('' if none)."""
  path = os.path.join(model_dir, "config.gin")
  if not os.path.exists(path):
    return ""
  text = open(path).read()
  # (a binding may continue over several lines inside brackets)
  bindings = re.findall(r"^DenoisingConfig\.\w+ = .*?(?=^\S|\Z)", text, flags=re.M | re.S)
  return "\n".join(b.strip() for b in bindings)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("model_dir")
  parser.add_argument("--mixture", default=None, help="default: the run's mixture")
  parser.add_argument("--examples", type=int, default=96)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", default=None, help="comma-separated checkpoint steps (default all)")
  parser.add_argument("--no_init", action="store_true",
                      help="leave out the row of randomly initialised parameters")
  args = parser.parse_args()

  import flax.linen as nn
  import gin
  import jax

  import unified_io.data.denoising  # noqa: F401  (DenoisingConfig for gin)
  import unified_io.tasks  # noqa: F401  (registers the world tasks and mixtures)
  from unified_io import decoding
  from unified_io.contract import nest_batch
  from unified_io.data import pipeline, vocab
  from unified_io.evaluation import run_loader
  from unified_io.training import run_config

  gin.parse_config(denoising_bindings(args.model_dir))
  saved = run_config.load(args.model_dir)
  mixture = args.mixture or (saved.mixture_or_task_name if saved else None)
  if not mixture:
    sys.exit(f"{args.model_dir}: no mixture recorded in run-config.json; pass --mixture")
  steps = ([int(s) for s in args.steps.split(",")] if args.steps else
           sorted(int(s) for s in os.listdir(os.path.join(args.model_dir, "checkpoints"))
                  if s.isdigit()))
  first = run_loader.load_run(args.model_dir, steps[0])
  lengths = first.task_feature_lengths
  converter = first.model.feature_converter(task_masks=first.model.cfg.dynamic_masking)
  dataset = pipeline.get_dataset(mixture, converter, lengths, split="validation", shuffle=False,
                                 seed=0, num_epochs=1)
  batches = [nest_batch(b) for b in dataset.take(args.examples).batch(args.batch)
             .as_numpy_iterator()]
  prefix_names = {v: k for k, v in vocab.PREFIX_TOKENS.items()}
  modes = np.concatenate([b["inputs"]["text"]["tokens"][:, 0] for b in batches])
  modes = np.array([prefix_names.get(int(t), "other") for t in modes])
  names = sorted(set(modes))
  losses_fn = jax.jit(decoding.example_losses, static_argnums=0)

  print(f"{args.model_dir}: {mixture}, {len(modes)} validation examples "
        f"({', '.join(f'{n} {int(np.sum(modes == n))}' for n in names)})")
  print("step".rjust(6) + "".join(n.rjust(13) for n in names))
  table = collections.OrderedDict()
  rows = ([] if args.no_init else ["init"]) + steps
  for row in rows:
    if row == "init":  # (what the trainer starts from: the model's own initialisation)
      params = nn.meta.unbox(jax.jit(first.model.init)(jax.random.PRNGKey(0), batches[0]))
    else:
      params = (first if row == steps[0] else run_loader.load_run(args.model_dir, row)).params
    losses = np.concatenate([np.asarray(losses_fn(first.model, params, b)) for b in batches])
    table[row] = {n: float(losses[modes == n].mean()) for n in names}
    print(f"{row:>6}" + "".join(f"{table[row][n]:13.3f}" for n in names), flush=True)
  falling = 0
  for n in names:
    a, b = table[rows[0]][n], table[rows[-1]][n]
    falling += b < a
    print(f"{n}: {a:.3f} -> {b:.3f} ({'falls' if b < a else 'does not fall'})")
  print(f"modes_falling {falling}/{len(names)}")


if __name__ == "__main__":
  main()
