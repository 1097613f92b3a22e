"""Attention patterns and autoregressive dynamic masking, proven on the release's tables and
through gradients of the decoder."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unified_io.network import masks
from unified_io.presets import trunk_config
from unified_io.network.trunk import Decoder

GRID_H, GRID_W = 4, 6
T = GRID_H * GRID_W


def _causal(n):
  t = np.arange(n)
  return t[None, :] <= t[:, None]


@pytest.mark.parametrize("key,grid", [("image", (16, 16)), ("audio", (16, 8))])
def test_patterns_equal_the_release_tables(golden_full, key, grid):
  table = golden_full[f"buffer/target_embedders.{key}.attn_mask"].astype(bool)  # [4, T, T]
  n = grid[0] * grid[1]
  layout = masks.TargetLayout(jnp.arange(n), jnp.full((n,), grid[1]), jnp.zeros((1, n), bool))
  for pattern in masks.Pattern:
    ours = np.asarray(masks.pattern_mask(layout, pattern))[0, 0] & _causal(n)
    np.testing.assert_array_equal(ours, table[pattern], err_msg=pattern.name)


def test_dynamic_masks_equal_the_release_computation(golden_full):
  """The release computes (and never applies) these; batch row 1 has a task mask."""
  task_mask = golden_full["input/targets/image/task_mask"][1].astype(bool)
  noisy = np.concatenate([[False], task_mask[:-1]])  # decoder input t carries target t - 1
  expected = golden_full["act/target_embedders.image/attn_pattern_mask"][1].astype(bool)
  layout = masks.TargetLayout(jnp.arange(256), jnp.full((256,), 16), jnp.asarray(noisy)[None])
  got = masks.decoder_layer_masks(jnp.asarray(_causal(256))[None, None], layout)
  for pattern in masks.Pattern:
    np.testing.assert_array_equal(np.asarray(got[pattern])[0, 0], expected[pattern])


def test_layer_schedule():
  assert [masks.layer_pattern(i, 6) for i in range(6)] == [
      masks.Pattern.ROW, masks.Pattern.COLUMN, masks.Pattern.ROW, masks.Pattern.ROW,
      masks.Pattern.ROW, masks.Pattern.CONV]


def _decoder_jacobian(num_layers, noisy):
  """d out[t] / d in[s] summed over features: [T, T], for one batch row, through the Decoder."""
  cfg = trunk_config("tiny", num_decoder_layers=num_layers)
  decoder = Decoder(cfg)
  rng = np.random.default_rng(0)
  y = jnp.asarray(rng.normal(size=(1, T, cfg.emb_dim)), jnp.float32)
  enc = jnp.asarray(rng.normal(size=(1, 5, cfg.emb_dim)), jnp.float32)
  valid, segments = jnp.ones((1, T), jnp.int32), jnp.zeros((1, T), jnp.int32)
  rope = jnp.zeros((1, T, cfg.head_dim))
  enc_rope = jnp.zeros((1, 5, cfg.head_dim))
  layout = masks.TargetLayout(jnp.arange(T), jnp.full((T,), GRID_W), jnp.asarray(noisy)[None])
  args = (valid, segments, rope, enc, jnp.ones((1, 5), jnp.int32), enc_rope, True, layout)
  params = decoder.init(jax.random.PRNGKey(0), y, *args)

  def out(y_td):
    return decoder.apply(params, y_td[None], *args)[0]

  jac = jax.jacrev(out)(y[0])  # [T, D, T, D]
  return np.abs(np.asarray(jac)).sum(axis=(1, 3))


def test_noised_inputs_are_invisible_to_clean_queries_and_noised_queries_see_only_themselves():
  noisy = np.zeros(T, bool)
  noisy[[3, 7, 8, 15]] = True
  dep = _decoder_jacobian(2, noisy)
  for t in range(T):
    for s in range(T):
      if noisy[t] and s != t:
        assert dep[t, s] == 0.0, (t, s)
      elif not noisy[t] and noisy[s]:
        assert dep[t, s] == 0.0, (t, s)
  # ... and the mask is not simply everything: clean tokens still see earlier clean tokens.
  assert dep[10, 9] > 0 and dep[10, 0] > 0 and dep[7, 7] > 0


def test_one_layer_decoder_follows_the_conv_pattern():
  dep = _decoder_jacobian(1, np.zeros(T, bool))  # a single (last) layer uses CONV
  layout = masks.TargetLayout(jnp.arange(T), jnp.full((T,), GRID_W), jnp.zeros((1, T), bool))
  allowed = np.asarray(masks.pattern_mask(layout, masks.Pattern.CONV))[0, 0] & _causal(T)
  np.testing.assert_array_equal(dep > 0, allowed | np.eye(T, dtype=bool))
  assert not allowed.all()  # the 6-wide grid really restricts something
