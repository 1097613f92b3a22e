"""Attention masks as booleans [B, 1, L, S] (True = may attend), built from per-token validity.

The release's convention: encoder self-attention is bidirectional over valid tokens
(`pad_q * pad_k`); decoder self-attention is causal, over valid tokens, and only within one
segment (the release's `modality_id` "subsegments": targets of different modalities never see each
other); cross-attention is `pad_q * pad_enc`. Invalid query rows are fully masked, which the
attention turns into a uniform average, exactly as the release does.
"""

import enum
from typing import Dict, NamedTuple

import jax
import jax.numpy as jnp


def padding_mask(valid_q_bl: jax.Array, valid_k_bs: jax.Array) -> jax.Array:
  """[B, 1, L, S]: both the query and the key are real tokens."""
  return (valid_q_bl.astype(bool)[:, None, :, None]) & (valid_k_bs.astype(bool)[:, None, None, :])


def same_segment(segment_q_bl: jax.Array, segment_k_bs: jax.Array) -> jax.Array:
  """[B, 1, L, S]: the query and the key carry the same segment id (packed examples)."""
  return (segment_q_bl[:, None, :, None] == segment_k_bs[:, None, None, :])


def decoder_self_mask(valid_bl: jax.Array, segment_ids_bl: jax.Array) -> jax.Array:
  """[B, 1, L, L]: causal, valid query and key, and the same segment id."""
  length = valid_bl.shape[1]
  causal_ll = jnp.tril(jnp.ones((length, length), dtype=bool))
  same_segment_bll = segment_ids_bl[:, :, None] == segment_ids_bl[:, None, :]
  return padding_mask(valid_bl, valid_bl) & (causal_ll[None] & same_segment_bll)[:, None]


# ------------------------------------------------------------------------------------------------
# Attention patterns and autoregressive dynamic masking for image and audio targets (the paper's).
# The release builds these but never applies them; they are used only when enabled in the config.
# ------------------------------------------------------------------------------------------------
class Pattern(enum.IntEnum):
  """DALL-E style sparse causal patterns over a target's token grid of width W."""

  ROW = 0  # the previous W tokens: k in [t - W, t]
  COLUMN = 1  # the same column: (t - k) % W == 0
  CONV = 2  # an 11 x 11 causal window: 0 <= row_t - row_k <= 5 and |col_t - col_k| <= 5


CONV_HALF_WIDTH = 5


def layer_pattern(layer: int, num_layers: int) -> Pattern:
  """The release's per-layer schedule: the last layer CONV, every 4th from layer 1 COLUMN, else ROW."""
  if layer == num_layers - 1:
    return Pattern.CONV
  return Pattern.COLUMN if (layer - 1) % 4 == 0 else Pattern.ROW


class TargetLayout(NamedTuple):
  """Per decoder token: where it sits in its target's grid, and whether its input is noised."""

  # [T], or [B, T] when packing moves tokens per row:
  index: jax.Array  # int32 position within its target part
  grid_width: jax.Array  # int32 width of its target's token grid; 0 = no pattern (text)
  noisy: jax.Array  # [B, T] bool: the decoder INPUT at this position is a masked (noised) token


def pattern_mask(layout: TargetLayout, pattern: Pattern) -> jax.Array:
  """[1 or B, 1, T, T] (True = allowed) for one pattern; tokens without a grid are unrestricted.

  Only meaningful inside a segment and under the causal mask, which the caller ANDs in.
  """
  t_q, t_k = layout.index[..., :, None], layout.index[..., None, :]
  width = jnp.maximum(layout.grid_width[..., :, None], 1)
  if pattern == Pattern.ROW:
    allowed = t_q - t_k <= width
  elif pattern == Pattern.COLUMN:
    allowed = (t_q - t_k) % width == 0
  else:
    rows = t_q // width - t_k // width
    allowed = (rows <= CONV_HALF_WIDTH) & (jnp.abs(t_q % width - t_k % width) <= CONV_HALF_WIDTH)
  allowed = allowed | (layout.grid_width[..., :, None] == 0)
  return allowed[None, None] if allowed.ndim == 2 else allowed[:, None]


def dynamic_mask(noisy_bt: jax.Array) -> jax.Array:
  """[B, 1, T, T]: a clean query never sees a noised key; a noised query sees only itself."""
  clean_bt = ~noisy_bt.astype(bool)
  eye_tt = jnp.eye(noisy_bt.shape[1], dtype=bool)
  return (eye_tt[None] | (clean_bt[:, :, None] & clean_bt[:, None, :]))[:, None]


def decoder_layer_masks(base_b1tt: jax.Array, layout: TargetLayout) -> Dict[Pattern, jax.Array]:
  """The decoder self-attention mask of each pattern: base & pattern & dynamic, built once."""
  common_b1tt = base_b1tt & dynamic_mask(layout.noisy)
  return {p: common_b1tt & pattern_mask(layout, p) for p in Pattern}
