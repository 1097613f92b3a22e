"""Issue 15's geometry check on the image input path: an object moved by one patch in a world
picture reaches the model as the same patches one grid cell further on, and the encoder's 2D RoPE
attention sees the same relative geometry there (what a model needs to read a shape anywhere).

The pictures go through what training runs (world rendering -> `unified_preprocessor` at the tiny
multimodal model's sizes -> `ImageInputEmbedder`), with the main job's feature lengths: all 64
patches of the 8 x 8 grid, in random order with their grid positions.

  cd /work/main && .venv/bin/python -m pytest -q tests/test_image_path.py
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from unified_io.contract import DataConfig
from unified_io.datasets.world import scenes
from unified_io.network.embedders.image import ImageInputEmbedder
from unified_io.network.embedders.vit import ImageViT
from unified_io.network.layers.rope import apply_rope
from unified_io.data.preprocess import unified_preprocessor
from unified_io.presets import make_config

CFG = make_config("tiny", input_modalities=("text", "image"), target_modalities=("text",))
DATA = DataConfig.from_model(CFG)
LENGTHS = {"text_inputs": 16, "text_targets": 8, "image_input_samples": 64}
PATCH = DATA.image_patch_size
GRID = DATA.image_input_size[0] // PATCH


def picture(center_yx, shape="triangle"):
  """A plain-background scene (no texture, noise or strokes) with one object: exact pixels, so a
  move by a whole patch moves every pixel of the object by exactly that much."""
  obj = scenes.SceneObject(shape=shape, colour="red", center_yx=center_yx, radius=0.15)
  scene = scenes.Scene(objects=(obj,), background="white", strokes_s4=(), texture_seed=0,
                       noise_seed=0, texture=0.0, pixel_noise=0.0)
  return scenes.render(scene, DATA.image_input_size[0])


def model_inputs(image_hw3):
  """The image's patches, mask and grid positions as training feeds them."""
  ds = tf.data.Dataset.from_tensors({"image_inputs": image_hw3, "text_inputs": "what shape?",
                                     "text_targets": "triangle"})
  with seqio.utils.map_seed_manager(0):
    out = next(iter(unified_preprocessor(ds, LENGTHS, data_config=DATA)))
  return {k: out[f"image_{field}"].numpy() for k, field in
          (("input", "patches"), ("mask", "patch_mask"), ("pos_ids", "patch_pos_ids"))}


def object_cells(inputs, background_patch):
  """{grid (row, col): patch} of the patches that are not plain background."""
  return {divmod(int(p), GRID): x for x, p in zip(inputs["input"], inputs["pos_ids"])
          if not np.array_equal(x, background_patch)}


@pytest.fixture(scope="module")
def moved():
  """(rendering here, model inputs here, model inputs one patch down and right)."""
  step = PATCH / DATA.image_input_size[0]  # one patch, as a fraction of the side (exact)
  here, there = picture((0.375, 0.375)), picture((0.375 + step, 0.375 + step))
  return here, model_inputs(here.image_hw3), model_inputs(there.image_hw3)


def test_an_object_moved_one_patch_is_the_same_patches_one_cell_further(moved):
  here, a, b = moved
  assert a["mask"].all() and sorted(a["pos_ids"]) == list(range(GRID * GRID))
  background = a["input"][list(a["pos_ids"]).index(GRID * GRID - 1)]  # far corner: empty
  cells_a, cells_b = object_cells(a, background), object_cells(b, background)
  assert len(cells_a) >= 4
  assert sorted(cells_b) == sorted((r + 1, c + 1) for r, c in cells_a)
  for (r, c), patch in cells_a.items():
    np.testing.assert_array_equal(cells_b[(r + 1, c + 1)], patch)
  # The world's box (pixel edges) covers exactly the cells that hold object pixels.
  y1, x1, y2, x2 = here.boxes_n4[0]
  covered = {(r, c) for r in range(int(y1) // PATCH, (int(y2) - 1) // PATCH + 1)
             for c in range(int(x1) // PATCH, (int(x2) - 1) // PATCH + 1)}
  assert set(cells_a) <= covered
  assert {r for r, _ in covered} == {r for r, _ in cells_a}  # and no row or column more
  assert {c for _, c in covered} == {c for _, c in cells_a}


def test_rope_attention_between_the_object_patches_moves_with_the_object(moved):
  """Queries and keys made from the patches' pixels, rotated by the rows the embedder gathers
  for them: the logits among the object's patches (and to the background at the same relative
  offsets) are unchanged by the move, and differ between different relative offsets."""
  _, a, b = moved
  embedder = ImageInputEmbedder(CFG, vit=ImageViT(CFG.image_vit))
  batch = {k: jnp.asarray(np.stack([a[k], b[k]])) for k in a}
  params = embedder.init(jax.random.PRNGKey(0), batch)
  rope_bnk = np.asarray(embedder.apply(params, batch).rope)
  head_dim = CFG.trunk.head_dim
  w_q, w_k = (np.asarray(jax.random.normal(key, (batch["input"].shape[-1], head_dim))) / 50
              for key in jax.random.split(jax.random.PRNGKey(1), 2))

  def logits(row):
    """[cell, cell] -> q.k of this row's tokens, keyed by grid cells."""
    x = np.asarray(batch["input"][row])
    q = apply_rope(jnp.asarray(x @ w_q)[None, :, None], jnp.asarray(rope_bnk[row:row + 1]))
    k = apply_rope(jnp.asarray(x @ w_k)[None, :, None], jnp.asarray(rope_bnk[row:row + 1]))
    scores = np.asarray(jnp.einsum("bqhk,bshk->qs", q, k))
    cells = [divmod(int(p), GRID) for p in np.asarray(batch["pos_ids"][row])]
    return {(ci, cj): scores[i, j] for i, ci in enumerate(cells) for j, cj in enumerate(cells)}

  before, after = logits(0), logits(1)
  moved = [(ci, cj) for ci, cj in before if max(ci + cj) < GRID - 1]  # both ends stay on the grid
  shifted = lambda cell: (cell[0] + 1, cell[1] + 1)  # noqa: E731
  for ci, cj in moved:
    np.testing.assert_allclose(after[shifted(ci), shifted(cj)], before[ci, cj], rtol=1e-4,
                               atol=1e-4, err_msg=f"{ci} -> {cj}")
  # Not trivially equal: one background patch scores the same background content differently
  # two cells to its left and two cells above it.
  assert abs(before[(7, 7), (7, 5)] - before[(7, 7), (5, 7)]) > 1e-3
