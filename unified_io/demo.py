"""The main job, for now: train the tiny model on the built-in text task and watch the loss fall.

  python -m unified_io.demo                     # tiny trunk, 300 steps, about a minute on 2 cores
  python -m unified_io.demo --steps 600 --gin_file=models/small.gin --gin.make_config.dtype="'float32'"

Data: the seqio task `uio2_synthetic_reverse` (tasks/synthetic_text.py): reverse a random word
sequence. Prints the config, the parameter count, a line every `--log_every` steps (loss, token
accuracy, steps/s), then held-out loss and teacher-forced token accuracy on the validation split.
Exits 1 if the training loss did not at least halve, so it doubles as a smoke test.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF (used by seqio for data) is chatty

import flax.linen as nn  # noqa: E402
import gin  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import seqio  # noqa: E402

from unified_io.gin_paths import gin_dir  # noqa: E402
import unified_io.tasks  # noqa: E402,F401  (registers the tasks)
from unified_io.config import make_config  # noqa: E402
from unified_io.data.text_converter import TextToTextFeatureConverter, nest_batch  # noqa: E402
from unified_io.model import UnifiedIOModel  # noqa: E402
from unified_io.tasks.synthetic_text import MAX_LENGTH, VOCAB_SIZE  # noqa: E402

TASK = "uio2_synthetic_reverse"
LENGTHS = {"inputs": MAX_LENGTH + 1, "targets": MAX_LENGTH + 1}  # + EOS


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--learning_rate", type=float, default=3e-3)
  parser.add_argument("--log_every", type=int, default=25)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin files; models/<size>.gin picks a size (default models/tiny.gin)")
  args, rest = parser.parse_known_args(argv)
  bindings = []
  for item in rest:  # t5x style: --gin.NAME=VALUE
    if not item.startswith("--gin."):
      parser.error(f"unrecognized argument {item!r}")
    bindings.append(item[len("--gin."):])
  return args, bindings


def batches(split: str, batch_size: int, seed: int, num_epochs=None):
  ds = seqio.get_dataset(TASK, LENGTHS, TextToTextFeatureConverter(), split,
                         shuffle=split == "train", num_epochs=num_epochs, seed=seed,
                         batch_size=batch_size)
  for flat in ds.as_numpy_iterator():
    yield nest_batch(flat)


def token_accuracy(model, params, batch):
  out = model.outputs(params, batch)["text"]
  hits = (jnp.argmax(out.logits, -1) == out.targets) * out.loss_mask
  return hits.sum() / jnp.maximum(out.loss_mask.sum(), 1)


def main(argv=None) -> int:
  args, bindings = parse_args(sys.argv[1:] if argv is None else argv)
  gin.add_config_file_search_path(gin_dir())
  gin.parse_config_files_and_bindings(args.gin_file or ["models/tiny.gin"], bindings)
  # The task's words fit in VOCAB_SIZE ids and it has no image or audio targets.
  cfg = make_config(text_vocab_size=VOCAB_SIZE, image_vocab_size=0, audio_vocab_size=0)
  model = UnifiedIOModel(cfg)
  t = cfg.trunk
  print(f"model: {t.num_encoder_layers}+{t.num_decoder_layers} layers, emb {t.emb_dim}, "
        f"{t.num_heads}x{t.head_dim} heads, mlp {t.mlp_dim}, {t.dtype}")

  train = batches("train", args.batch_size, args.seed)
  first = next(train)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(args.seed), first))
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  print(f"parameters: {n_params:,}; task {TASK}, batch {args.batch_size}, {args.steps} steps")

  schedule = optax.warmup_cosine_decay_schedule(0.0, args.learning_rate, 30, args.steps)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule))
  opt_state = optimizer.init(params)

  @jax.jit
  def train_step(params, opt_state, batch):
    (loss, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  accuracy = jax.jit(lambda p, b: token_accuracy(model, p, b))
  losses, batch, start = [], first, time.perf_counter()
  for step in range(1, args.steps + 1):
    params, opt_state, loss = train_step(params, opt_state, batch)
    losses.append(float(loss))
    if step % args.log_every == 0 or step == 1:
      rate = step / (time.perf_counter() - start)
      print(f"step {step:5d}  loss {losses[-1]:.4f}  token acc {float(accuracy(params, batch)):.3f}"
            f"  {rate:.1f} steps/s", flush=True)
    batch = next(train)

  val = list(batches("validation", 100, 0, num_epochs=1))
  val_loss = np.mean([float(model.loss_fn(params, b)[0]) for b in val])
  val_acc = np.mean([float(accuracy(params, b)) for b in val])
  print(f"validation: loss {val_loss:.4f}, teacher-forced token accuracy {val_acc:.3f} "
        f"({len(val)} batches)")
  head, tail = np.mean(losses[:10]), np.mean(losses[-10:])
  print(f"training loss fell from {head:.3f} to {tail:.3f} in {time.perf_counter() - start:.0f}s")
  return 0 if tail < 0.5 * head else 1


if __name__ == "__main__":
  sys.exit(main())
