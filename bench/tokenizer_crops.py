"""Held-out PSNR of the tiny image tokenizer after equal seconds of CPU training on whole images
and on random crops (`train_tokenizer.image_crop`), the measurement behind the crop default.

For each `--crops` value (0 = whole images) a fresh tokenizer of models/tiny_multimodal.gin's size
(the tokenizer trainer's step: L1 + L2 + commitment, Adam with warmup and cosine decay over the
steps that fit, EMA codebook with D^2 dead-code restarts) trains on `world_text_to_image` for
`--seconds` of wall time after compiling, then reconstructs `--eval_examples` test images through
its own encode / decode. Prints per setting: steps run, steps/s, held-out PSNR, SSIM and codebook
usage; last line `crop_psnr_gain_db <PSNR of the last crop setting - PSNR on whole images>`.

  .venv/bin/python bench/tokenizer_crops.py                 # 0 and 64, 150 s each: ~6 min
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import unified_io.tasks  # noqa: F401  (registers the world tasks)
from unified_io import presets
from unified_io.tokenizer_training import measures, objectives
from unified_io.tokenizer_training import trainer as tokenizer_trainer
from unified_io.tokenizer_training.data import tokenizer_examples
from unified_io.tokenizer_training.state import TokenizerState

TASK = "world_text_to_image"


def steps_per_second(step_fn, state, batch, n=5):
  state, _ = step_fn(state, batch)  # compile
  jax.block_until_ready(state.params)
  start = time.perf_counter()
  for _ in range(n):
    state, _ = step_fn(state, batch)
  jax.block_until_ready(state.params)
  return n / (time.perf_counter() - start)


def run(crop: int, args, held_out: np.ndarray):
  obj = objectives.objective("image", presets.tiny_components()["image_vqgan"])
  kwargs = dict(commitment=0.25, codebook_decay=0.99, restart_below=0.03, seed=0,
                crop=crop or None)
  batches = tokenizer_examples(TASK, "image", obj.example_shape[:2], split="train", shuffle=True,
                               seed=0).batch(args.batch).as_numpy_iterator()
  first = jnp.asarray(next(batches))
  # How many steps fit in the time: measured on a throwaway state, so the schedule decays to 0.
  params = obj.init(jax.random.key(0))
  optimizer, schedule = tokenizer_trainer.make_optimizer(args.lr, 50, 10**6, params)
  rate = steps_per_second(tokenizer_trainer.make_step(obj, optimizer, schedule, **kwargs),
                          TokenizerState.create(params, optimizer, obj.codebook(params)), first)
  total = max(int(rate * args.seconds), 60)
  params = obj.init(jax.random.key(0))
  optimizer, schedule = tokenizer_trainer.make_optimizer(args.lr, 50, total, params)
  state = TokenizerState.create(params, optimizer, obj.codebook(params))
  step_fn = tokenizer_trainer.make_step(obj, optimizer, schedule, **kwargs)
  state, _ = step_fn(state, first)
  jax.block_until_ready(state.params)
  start = time.perf_counter()
  for _ in range(total - 1):
    state, _ = step_fn(state, jnp.asarray(next(batches)))
  jax.block_until_ready(state.params)
  seconds = time.perf_counter() - start
  reconstruct = jax.jit(lambda p, x: objectives.reconstruct(obj, p, x))
  outputs, ids = zip(*(jax.device_get(reconstruct(state.params, held_out[i:i + 8]))
                       for i in range(0, len(held_out), 8)))
  values = measures.summary("image", held_out, np.concatenate(outputs), np.concatenate(ids),
                            obj.codebook(state.params).shape[0])
  name = f"crop {crop} px" if crop else "whole 128 px images"
  print(f"{name:>20}: {total} steps in {seconds:.0f} s ({total / seconds:.1f} steps/s), "
        f"held-out PSNR {values['psnr']:.2f} dB, SSIM {values['ssim']:.3f}, "
        f"codebook usage {values['codebook_usage']:.2f}", flush=True)
  return values["psnr"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--crops", default="0,64", help="crop sides to compare; 0 = whole images")
  parser.add_argument("--seconds", type=float, default=150.0)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--eval_examples", type=int, default=32)
  args = parser.parse_args()
  held_out = tokenizer_trainer.held_out(TASK, "image", (128, 128), "test", args.eval_examples)
  psnr = {crop: run(crop, args, held_out) for crop in (int(c) for c in args.crops.split(","))}
  crops = [c for c in psnr if c]
  if 0 in psnr and crops:
    print(f"crop_psnr_gain_db {psnr[crops[-1]] - psnr[0]:.2f}")


if __name__ == "__main__":
  main()
