"""Attention masks as booleans [B, 1, L, S] (True = may attend), built from per-token validity.

The release's convention: encoder self-attention is bidirectional over valid tokens
(`pad_q * pad_k`); decoder self-attention is causal, over valid tokens, and only within one
segment (the release's `modality_id` "subsegments": targets of different modalities never see each
other); cross-attention is `pad_q * pad_enc`. Invalid query rows are fully masked, which the
attention turns into a uniform average, exactly as the release does.
"""

import enum
from typing import Dict, NamedTuple, Optional

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
  # [B, T] bool: the decoder INPUT at this position is a masked (noised) token. None: nothing is
  # noised (no task mask, as when generating), so the dynamic mask allows everything.
  noisy: Optional[jax.Array] = None


def _pattern_allows(t_q: jax.Array, t_k: jax.Array, width: jax.Array,
                    pattern: Pattern) -> jax.Array:
  """True where the query at grid index `t_q` may see the key at `t_k` (arrays broadcast);
  `width` 0 = no grid (text): everything is allowed."""
  w = jnp.maximum(width, 1)
  if pattern == Pattern.ROW:
    allowed = t_q - t_k <= w
  elif pattern == Pattern.COLUMN:
    allowed = (t_q - t_k) % w == 0
  else:
    rows = t_q // w - t_k // w
    allowed = (rows <= CONV_HALF_WIDTH) & (jnp.abs(t_q % w - t_k % w) <= CONV_HALF_WIDTH)
  return allowed | (width == 0)


def pattern_mask(layout: TargetLayout, pattern: Pattern) -> jax.Array:
  """[1 or B, 1, T, T] (True = allowed) for one pattern; tokens without a grid are unrestricted.

  Only meaningful inside a segment and under the causal mask, which the caller ANDs in.
  """
  allowed = _pattern_allows(layout.index[..., :, None], layout.index[..., None, :],
                            layout.grid_width[..., :, None], pattern)
  return allowed[None, None] if allowed.ndim == 2 else allowed[:, None]


def dynamic_mask(noisy_bt: jax.Array) -> jax.Array:
  """[B, 1, T, T]: a clean query never sees a noised key; a noised query sees only itself."""
  clean_bt = ~noisy_bt.astype(bool)
  eye_tt = jnp.eye(noisy_bt.shape[1], dtype=bool)
  return (eye_tt[None] | (clean_bt[:, :, None] & clean_bt[:, None, :]))[:, None]


def decoder_layer_masks(base_b1tt: jax.Array, layout: TargetLayout) -> Dict[Pattern, jax.Array]:
  """The decoder self-attention mask of each pattern: base & pattern & dynamic, built once."""
  common_b1tt = base_b1tt if layout.noisy is None else base_b1tt & dynamic_mask(layout.noisy)
  return {p: common_b1tt & pattern_mask(layout, p) for p in Pattern}


def cached_layer_masks(layout: TargetLayout, cache_length: int) -> Dict[Pattern, jax.Array]:
  """Incremental decoding of ONE target: each pattern's mask [1, 1, L, S] from the L new tokens
  (`layout.index` [L]: their positions in the target; `layout.grid_width` [L]) to the cache's
  slots 0 .. S - 1, slot s holding the token at position s of the same target.

  These are the rows `decoder_layer_masks` gives those positions in the full pass of a lone target
  with nothing noised; the cache ANDs in the causal mask. A noised input has no meaning here
  (generation writes no task mask), so a layout with `noisy` is refused.
  """
  if layout.noisy is not None:
    raise ValueError("cached decoding has no noised (task-masked) inputs; pass noisy=None")
  slots_1s = jnp.arange(cache_length, dtype=jnp.int32)[None, :]
  allowed = {p: _pattern_allows(layout.index[:, None], slots_1s, layout.grid_width[:, None], p)
             for p in Pattern}
  return {p: a_ls[None, None] for p, a_ls in allowed.items()}
