"""Decoding speed: text tokens/s and seconds per generated image, with and without the KV cache.

  python bench/decode.py                      # tiny_multimodal, batch 1 and 8, 32 text tokens
  python bench/decode.py --batch_sizes 1 --iters 5 --text_tokens 64

The model is `models/tiny_multimodal.gin`'s config (tiny trunk, 128 px images as a 16 x 16 grid
of VQGAN tokens) with random parameters, reading the inputs of `model.dummy_batch` (every input
modality present; a 32-token prompt). Greedy decoding, two ways, both jitted whole:
  cached  `unified_io.decoding.generate`: one token per step over key/value caches (the
          self-attention cache grows by one position a step, cross-attention keys/values are
          computed once);
  naive   the encoder once, then a `fori_loop` that re-runs the full teacher-forced decoder over
          the whole target length every step and takes the logits of the current position (what
          decoding costs without a cache: O(T^2) decoder positions instead of O(T)).
Both mask the vocabulary the same way (`decoding.allowed_tokens`). Text runs `--text_tokens`
steps (random parameters essentially never pick EOS; the steps taken are printed); an image
fills its whole token grid.

Prints, per (target, batch, method): the first call (compile + run), the compile time (first call
minus the median run), median run seconds over `--iters`, then text tokens/s (batch x steps / s)
or seconds per image (s / batch), and the cached/naive speedup. A run includes encoding the inputs
once (every input modality: the ViTs and resamplers), as a real call does. Last line:
`text_tokens_per_s_cached_b<B> <value>` for the largest batch.
"""

import argparse
import functools
import os
import sys
import time
from typing import Callable, Dict, List

import numpy as np

# From a bare checkout, fall back on the repository root (last on the path).
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
import jax
import jax.numpy as jnp

from unified_io import decoding
from unified_io.presets import make_config
from unified_io.evaluation.run_loader import abstract_params
from unified_io.model import UnifiedIOModel
from unified_io.network.encoder_decoder import UnifiedIONetwork

# The prompt's text length (the other inputs take every patch and frame of the config).
PROMPT_LENGTHS = {"text_inputs": 32}


def tiny_multimodal_config():
  return make_config("tiny", input_modalities=("text", "image", "audio", "image_history",
                                               "audio_history"),
                     target_modalities=("text", "image", "audio"))


def random_params(model, seed: int = 0):
  """Parameters of the model's shapes without compiling its init: norm scales 1, biases 0,
  other arrays ~ N(0, 1 / fan_in)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(path[-1].key)
    if name in ("scale", "bias"):
      return jnp.full(leaf.shape, 1.0 if name == "scale" else 0.0, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
    return jnp.asarray(rng.normal(0.0, fan_in ** -0.5, leaf.shape), leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, abstract_params(model))


# ------------------------------------------------------------------------------------------------
# The two decoders.
# ------------------------------------------------------------------------------------------------
def _target_features(modality: str, tokens_bt):
  """Teacher-forced decoder features for the tokens so far (positions after t are never read:
  the decoder is causal)."""
  mask_bt = jnp.ones_like(tokens_bt)
  if modality == "text":
    inputs_bt = jnp.concatenate([jnp.zeros_like(tokens_bt[:, :1]), tokens_bt[:, :-1]], axis=1)
    return {"inputs": inputs_bt, "targets": tokens_bt, "mask": mask_bt}
  return {"targets": tokens_bt, "mask": mask_bt}  # image / audio shift their inputs themselves


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def naive_generate(model, modality: str, length: int, params, inputs, allowed_v):
  """Greedy decoding without a cache: the whole decoder again at every step."""
  encoded = decoding.encode(model, params, inputs)
  batch = encoded.hidden.shape[0]

  def step(t, tokens_bt):
    outputs = model.module.apply({"params": params}, {modality: _target_features(modality,
                                                                                  tokens_bt)},
                                 encoded, method=UnifiedIONetwork.decode)
    logits_btv = outputs[modality].logits
    logits_bv = jax.lax.dynamic_index_in_dim(logits_btv, t, axis=1, keepdims=False)
    logits_bv = jnp.where(allowed_v, logits_bv.astype(jnp.float32), -1e9)
    return tokens_bt.at[:, t].set(jnp.argmax(logits_bv, axis=-1).astype(jnp.int32))

  return jax.lax.fori_loop(0, length, step, jnp.zeros((batch, length), jnp.int32))


# ------------------------------------------------------------------------------------------------
# Timing.
# ------------------------------------------------------------------------------------------------
def timed(fn: Callable[[], object], iters: int) -> Dict[str, float]:
  """First call (compile + run) and the median of `iters` further calls, in seconds."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  runs = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    runs.append(time.perf_counter() - start)
  median = float(np.median(runs))
  return {"first": first, "compile": max(first - median, 0.0), "run": median}


def bench(batch_sizes: List[int], text_tokens: int, iters: int, skip_naive_image: bool
          ) -> Dict[str, float]:

  model = UnifiedIOModel(tiny_multimodal_config())
  params = random_params(model)
  image_tokens = decoding.target_length(model, "image", decoding.DecodeOptions())
  print(f"devices: {jax.devices()}")
  print(f"model: tiny_multimodal (trunk {model.cfg.trunk.emb_dim} wide, "
        f"{model.cfg.trunk.num_encoder_layers}+{model.cfg.trunk.num_decoder_layers} layers), "
        f"random float32 parameters; text {text_tokens} tokens, image {image_tokens} tokens")
  figures = {}
  for batch_size in batch_sizes:
    inputs = jax.tree_util.tree_map(jnp.asarray, model.dummy_batch(batch_size, PROMPT_LENGTHS)["inputs"])
    encode = jax.jit(lambda p, x: decoding.encode(model, p, x).hidden)
    t = timed(lambda: encode(params, inputs), iters)
    print(f"batch {batch_size:2d}: encoding the inputs (every input modality) takes "
          f"{t['run']:.4f} s of each run below", flush=True)
    figures[f"encode_b{batch_size}"] = t["run"]
    for modality, length in (("text", text_tokens), ("image", image_tokens)):
      options = decoding.DecodeOptions(max_length=length)
      allowed_v = jnp.asarray(decoding.allowed_tokens(model, modality))
      cached = lambda: decoding.generate(model, params, inputs, modality, options)
      naive = lambda: naive_generate(model, modality, length, params, inputs, allowed_v)
      for method, fn in (("cached", cached), ("naive", naive)):
        if method == "naive" and modality == "image" and skip_naive_image and batch_size > 1:
          continue
        t = timed(fn, iters)
        n = length
        if method == "cached":  # the cached loop stops once every row has emitted EOS
          n = int(np.max(np.asarray(cached().lengths)))
          if n < length:
            print(f"  (text: EOS after {n} of {length} steps; the figures count {n} steps)")
        key = f"{modality}_{method}_b{batch_size}"
        if modality == "text":
          rate, label = batch_size * n / t["run"], f"{batch_size * n / t['run']:10.1f} tokens/s"
        else:
          rate, label = t["run"] / batch_size, f"{t['run'] / batch_size:10.3f} s/image"
        figures[key] = rate
        print(f"{modality:5s} batch {batch_size:2d} {method:6s}: first call {t['first']:7.2f} s, "
              f"compile {t['compile']:7.2f} s, run {t['run']:8.4f} s -> {label}", flush=True)
      naive_key, cached_key = f"{modality}_naive_b{batch_size}", f"{modality}_cached_b{batch_size}"
      if naive_key in figures:
        speedup = (figures[cached_key] / figures[naive_key] if modality == "text"
                   else figures[naive_key] / figures[cached_key])
        print(f"{modality:5s} batch {batch_size:2d} KV-cache speedup: {speedup:.1f}x")
  return figures


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_sizes", default="1,8", help="comma-separated batch sizes")
  parser.add_argument("--text_tokens", type=int, default=32, help="text tokens to generate")
  parser.add_argument("--iters", type=int, default=3, help="timed runs after the first call")
  parser.add_argument("--skip_naive_image", action="store_true",
                      help="skip the (slow) uncached image decode for batches above 1")
  args = parser.parse_args(argv)
  batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
  if not batch_sizes or min(batch_sizes) < 1 or args.text_tokens < 1 or args.iters < 1:
    print("error: batch sizes, --text_tokens and --iters must be positive", file=sys.stderr)
    return 2
  figures = bench(batch_sizes, args.text_tokens, args.iters, args.skip_naive_image)
  largest = max(batch_sizes)
  print(f"text_tokens_per_s_cached_b{largest} {figures[f'text_cached_b{largest}']:.1f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
