"""Does an object's shape and position survive the image input path? Probes on world images.

Issue 15's diagnosis: the main job's model answers colour questions but stays near chance on shape
and referring expressions. This asks whether the information is there to be read at each stage of
the image path, with probes trained on held-out-split world images of one object (the main job's
world: objects 16-34% of the side):

  raw patches            the CLIP-normalised 16 px patches the model gets       [64, 768]
  ViT (random, frozen)   concat(last, block 1) of the tiny ViT at initialisation [64, 256]
  ViT, mean over patches the same, averaged: a bag of patches, no positions     [256]

Each is read by a linear probe and by a one-hidden-layer MLP (Adam, full batch) for the shape
(7 classes, chance 1/7) and the 3 x 3 region of the object's centre (9 classes). A probe that reads
shape from the random ViT's features as well as from the raw patches says the encoder keeps the
information, so a model that still misses shape is losing it later (trunk, training set-up).

Two translation-invariant readers follow, for shape only (a flat probe must learn each position
apart, which 3000 images cannot teach):
  per patch, max-pooled  one MLP applied to every patch token, max over the 64 patches, linear
  small CNN on pixels    3 stride-2 conv layers, global average pool, linear: the positive control
                         (if it fails, the labels or the pictures are wrong, not the model)

  python bench/image_path_probe.py                 # ~16 min on 2 CPU cores (the raw-patch MLP)
  python bench/image_path_probe.py --train 1000 --steps 200
  python bench/image_path_probe.py --skip_flat     # the translation-invariant readers, ~4 min
Last line: `cnn_shape <held-out accuracy of the small CNN>`.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from unified_io.data.ops.image import CLIP_MEAN, CLIP_STD  # noqa: E402
from unified_io.datasets.world import lexicon, scenes  # noqa: E402
from unified_io.datasets.world.config import make_world_config  # noqa: E402
from unified_io.network.embedders.vit import ImageViT  # noqa: E402
from unified_io.presets import tiny_components  # noqa: E402

# The main job's world (unified_io.experiments.main_job.WORLD_BINDINGS), one object per image.
WORLD = dict(max_objects=1, min_object_size=0.16, max_object_size=0.34)


def world_images(count: int, seed: int):
  """(images [n, 128, 128, 3] uint8, shape ids [n], region ids [n]) of one-object scenes."""
  cfg = make_world_config(**WORLD)
  rng = np.random.default_rng(seed)
  images, shapes, regions = [], [], []
  for _ in range(count):
    scene = scenes.sample_scene(rng, cfg, num_objects=1)
    obj = scene.objects[0]
    images.append(scenes.render(scene, cfg.image_size).image_hw3)
    shapes.append(lexicon.SHAPE_NAMES.index(obj.shape))
    cy, cx = (min(int(c * 3), 2) for c in obj.center_yx)
    regions.append(cy * 3 + cx)
  return np.stack(images), np.array(shapes), np.array(regions)


def patches(images_nhw3: np.ndarray, patch: int) -> np.ndarray:
  """As unified_io.data.preprocess: CLIP-normalised, [n, grid, (dh dw c)] row-major."""
  x = (images_nhw3.astype(np.float32) / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
  n, h, w, c = x.shape
  x = x.reshape(n, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, (h // patch) * (w // patch), patch * patch * c).astype(np.float32)


def vit_features(patches_nqp: np.ndarray, seed: int) -> np.ndarray:
  """concat(last, block 1) of the tiny image ViT at initialisation, as the model's embedder."""
  vit_cfg = tiny_components()["image_vit"]
  vit = ImageViT(vit_cfg)
  n, q, _ = patches_nqp.shape
  mask = jnp.ones((1, q), jnp.int32)
  pos = jnp.arange(q, dtype=jnp.int32)[None]
  params = vit.init(jax.random.PRNGKey(seed), jnp.asarray(patches_nqp[:1]), mask, pos)

  @jax.jit
  def run(x):
    last, block1 = vit.apply(params, x, jnp.broadcast_to(mask, x.shape[:2]),
                             jnp.broadcast_to(pos, x.shape[:2]))
    return jnp.concatenate([last, block1], -1)
  return np.concatenate([np.asarray(run(jnp.asarray(patches_nqp[i:i + 256])))
                         for i in range(0, n, 256)])


def probe(train_x, train_y, test_x, test_y, classes: int, hidden: int, steps: int, seed: int
          ) -> float:
  """Held-out accuracy of a linear (hidden=0) or one-hidden-layer probe; inputs standardised."""
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
  key1, key2 = jax.random.split(jax.random.PRNGKey(seed))
  dim = train_x.shape[1]
  if hidden:
    params = {"w1": jax.random.normal(key1, (dim, hidden)) * dim ** -0.5,
              "b1": jnp.zeros(hidden),
              "w2": jax.random.normal(key2, (hidden, classes)) * hidden ** -0.5,
              "b2": jnp.zeros(classes)}
  else:
    params = {"w2": jnp.zeros((dim, classes)), "b2": jnp.zeros(classes)}

  def logits(p, x):
    if hidden:
      x = jax.nn.gelu(x @ p["w1"] + p["b1"])
    return x @ p["w2"] + p["b2"]

  def loss(p):
    nll = optax.softmax_cross_entropy_with_integer_labels(logits(p, train_x), train_y).mean()
    return nll + 1e-3 * sum(jnp.sum(v ** 2) for k, v in p.items() if k.startswith("w"))

  opt = optax.adam(1e-3)

  @jax.jit
  def fit(p):
    def step(carry, _):
      p, s = carry
      g = jax.grad(loss)(p)
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), None, length=steps)
    return p
  params = fit(params)
  return float(np.mean(np.argmax(np.asarray(logits(params, jnp.asarray(test_x))), -1) == test_y))


def pooled_patch_probe(train_x, train_y, test_x, test_y, classes: int, hidden: int, steps: int,
                       seed: int) -> float:
  """Held-out accuracy of max_q(MLP(x_q)) -> linear, x [n, q, d]: position-free, per patch."""
  mean, std = train_x.mean((0, 1)), train_x.std((0, 1)) + 1e-6
  train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  dim = train_x.shape[-1]
  params = {"w1": jax.random.normal(k1, (dim, hidden)) * dim ** -0.5, "b1": jnp.zeros(hidden),
            "w2": jax.random.normal(k2, (hidden, classes)) * hidden ** -0.5,
            "b2": jnp.zeros(classes)}

  def logits(p, x):
    return jnp.max(jax.nn.gelu(x @ p["w1"] + p["b1"]), axis=1) @ p["w2"] + p["b2"]
  return _fit_minibatch(params, logits, train_x, train_y, test_x, test_y, steps, seed)


def cnn_probe(train_images, train_y, test_images, test_y, classes: int, steps: int, seed: int
              ) -> float:
  """Held-out accuracy of a small CNN on the pixels (3 conv 3x3 stride 2, mean pool, linear)."""
  def prep(x):
    return (x.astype(np.float32) / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  widths = (3, 16, 32, 64)
  params = {f"c{i}": jax.random.normal(keys[i], (3, 3, widths[i], widths[i + 1]))
            * (9 * widths[i]) ** -0.5 for i in range(3)}
  params["w"] = jnp.zeros((widths[-1], classes))
  params["b"] = jnp.zeros(classes)

  def logits(p, x):
    for i in range(3):
      x = jax.nn.relu(jax.lax.conv_general_dilated(
          x, p[f"c{i}"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    return x.mean((1, 2)) @ p["w"] + p["b"]
  return _fit_minibatch(params, logits, prep(train_images), train_y, prep(test_images), test_y,
                        steps, seed)


def _fit_minibatch(params, logits, train_x, train_y, test_x, test_y, steps: int, seed: int,
                   batch: int = 64) -> float:
  """Adam on minibatches of `batch`; held-out accuracy."""
  opt = optax.adam(3e-3)

  @jax.jit
  def step(p, s, x, y):
    g = jax.grad(lambda q: optax.softmax_cross_entropy_with_integer_labels(
        logits(q, x), y).mean())(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s
  state = opt.init(params)
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.integers(0, len(train_x), batch)
    params, state = step(params, state, jnp.asarray(train_x[idx]), jnp.asarray(train_y[idx]))
  predict = jax.jit(logits)
  guesses = np.concatenate([np.argmax(np.asarray(predict(params, jnp.asarray(test_x[i:i + 256]))),
                                      -1) for i in range(0, len(test_x), 256)])
  return float(np.mean(guesses == test_y))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--train", type=int, default=3000)
  parser.add_argument("--test", type=int, default=1000)
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--hidden", type=int, default=256)
  parser.add_argument("--pooled_steps", type=int, default=600)
  parser.add_argument("--skip_flat", action="store_true",
                      help="only the translation-invariant readers (the flat raw-patch MLP is slow)")
  args = parser.parse_args()
  start = time.time()
  images, shapes, regions = world_images(args.train + args.test, seed=0)
  raw = patches(images, tiny_components()["image_vit"].patch_size)
  vit = vit_features(raw, seed=0)
  stages = {"raw patches": raw.reshape(len(raw), -1),
            "ViT (random, frozen)": vit.reshape(len(vit), -1),
            "ViT, mean over patches": vit.mean(1)}
  print(f"{args.train} train / {args.test} held-out one-object world images "
        f"({time.time() - start:.0f} s to draw and encode); chance: shape "
        f"{np.bincount(shapes[args.train:]).max() / args.test:.3f} (majority), region "
        f"{np.bincount(regions[args.train:]).max() / args.test:.3f}")
  print(f"{'stage':26s} {'dims':>6s} {'shape lin':>9s} {'shape mlp':>9s} {'region lin':>10s} "
        f"{'region mlp':>10s}")
  n = args.train
  row = [float("nan")] * 4
  for name, x in (() if args.skip_flat else stages.items()):
    row = []
    for labels, classes in ((shapes, len(lexicon.SHAPE_NAMES)), (regions, 9)):
      for hidden in (0, args.hidden):
        row.append(probe(x[:n], labels[:n], x[n:], labels[n:], classes, hidden, args.steps, 0))
    print(f"{name:26s} {x.shape[1]:6d} " + " ".join(f"{v:9.3f}" for v in row[:2]) + " "
          + " ".join(f"{v:10.3f}" for v in row[2:]), flush=True)
  print(f"\nshape, translation-invariant readers ({args.pooled_steps} Adam steps of batch 64):")
  for name, x in (("raw patches, per patch, max-pooled", raw),
                  ("ViT (random, frozen), per patch, max-pooled", vit)):
    accuracy = pooled_patch_probe(x[:n], shapes[:n], x[n:], shapes[n:], len(lexicon.SHAPE_NAMES),
                                  args.hidden, args.pooled_steps, 0)
    print(f"  {name:44s} {accuracy:.3f}", flush=True)
  cnn = cnn_probe(images[:n], shapes[:n], images[n:], shapes[n:], len(lexicon.SHAPE_NAMES),
                  args.pooled_steps, 0)
  print(f"  {'small CNN on the pixels (positive control)':44s} {cnn:.3f}")
  print(f"total {time.time() - start:.0f} s")
  print(f"vit_region_mlp {row[3]:.3f}")
  print(f"cnn_shape {cnn:.3f}")


if __name__ == "__main__":
  main()
