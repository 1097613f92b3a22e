"""Pair packing inside the model: two examples share one encoder row and one decoder row.

Axis legend: E examples (= 2B), B packed rows, N tokens per example, P packed row length.

The batch still holds E = 2B examples, and every modality embedder runs on them as usual. Then
examples 2i and 2i+1 become row i: the valid tokens of 2i, in order, then those of 2i+1, left
aligned in a row of P slots; the rest of the row is padding. Each packed token keeps the RoPE row
it was embedded with, so positions stay per example, and carries the index (0 or 1) of its example
within the pair, from which the masks keep the two examples apart. After the decoder, its outputs
are moved back to the unpacked [E, N] layout, so heads and losses see exactly what they would see
without packing.

P is the config's `packed_encoder_length` / `packed_decoder_length`, by default N (one unpacked
row): the trunk then runs on half the rows at the same length, the saving `bench/packing.py`
measures (on world_pretrain_mod the non-padding fraction goes from 0.30 to 0.59 in the encoder and
from 0.25 to 0.50 in the decoder, with `pair_order`, nothing dropped).
A pair whose valid tokens do not fit in P slots loses the tokens past slot P (the release does
the same). Here a dropped target token is also taken out of the loss, and the dropped counts are
reported (`PackingStats`); `check_pairs_fit` raises before the step for callers that want an
error instead, and `pair_lengths` gives the lengths the data pipeline pairs examples by.
"""

from typing import Dict, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

PADDING_EXAMPLE = -1  # the example index of a packed row's padding slots


class PackingError(ValueError):
  """A pair of examples does not fit in the packed lengths."""


class PairLayout(NamedTuple):
  """Where each token of E examples lands in the E / 2 packed rows of `length` slots."""

  slot_en: jax.Array  # [E, N] int32: slot in its pair's row; `length` = not placed
  valid_bp: jax.Array  # [B, P] bool: the slot holds a token
  example_bp: jax.Array  # [B, P] int32: 0 / 1 = which example of the pair; PADDING_EXAMPLE
  dropped_e: jax.Array  # [E] int32: valid tokens of the example that did not fit

  @property
  def length(self) -> int:
    return self.valid_bp.shape[1]


def pair_layout(valid_en: jax.Array, length: int) -> PairLayout:
  """The layout that packs examples (2i, 2i+1) into row i of `length` slots."""
  num_examples, num_tokens = valid_en.shape
  if num_examples % 2:
    raise PackingError(f"pair packing needs an even number of examples, got a batch of "
                       f"{num_examples}")
  valid_en = valid_en.astype(bool)
  valid_bm = valid_en.reshape(num_examples // 2, 2 * num_tokens)  # the pair, concatenated
  slot_bm = jnp.cumsum(valid_bm, axis=1, dtype=jnp.int32) - 1
  placed_bm = valid_bm & (slot_bm < length)
  slot_en = jnp.where(placed_bm, slot_bm, length).reshape(num_examples, num_tokens)
  count_b = jnp.sum(valid_bm, axis=1, dtype=jnp.int32)
  first_count_b = jnp.sum(valid_en[0::2], axis=1, dtype=jnp.int32)
  slots_p = jnp.arange(length, dtype=jnp.int32)[None]
  valid_bp = slots_p < count_b[:, None]
  example_bp = jnp.where(valid_bp, (slots_p >= first_count_b[:, None]).astype(jnp.int32),
                         PADDING_EXAMPLE)
  dropped_e = jnp.sum(valid_en & (slot_en == length), axis=1, dtype=jnp.int32)
  return PairLayout(slot_en, valid_bp, example_bp, dropped_e)


def pack(x_en: jax.Array, layout: PairLayout) -> jax.Array:
  """[E, N, ...] per-example values -> [B, P, ...] packed rows (zeros in padding slots)."""
  if x_en.dtype == jnp.bool_:  # scatter-add needs numbers
    return pack(x_en.astype(jnp.int32), layout).astype(jnp.bool_)
  num_examples, num_tokens = x_en.shape[:2]
  rows = num_examples // 2
  trailing = x_en.shape[2:]
  x_bm = x_en.reshape((rows, 2 * num_tokens) + trailing)
  slot_bm = layout.slot_en.reshape(rows, 2 * num_tokens)
  # One extra slot collects every token that is not placed; it is cut off afterwards. Placed
  # tokens have distinct slots, so the scatter-add writes each exactly once.
  out = jnp.zeros((rows, layout.length + 1) + trailing, x_en.dtype)
  out = out.at[jnp.arange(rows)[:, None], slot_bm].add(x_bm)
  return out[:, :layout.length]


def unpack(x_bp: jax.Array, layout: PairLayout) -> jax.Array:
  """[B, P, ...] packed rows -> [E, N, ...] per example; tokens that were not placed get zeros."""
  rows = x_bp.shape[0]
  num_examples, num_tokens = layout.slot_en.shape
  padded = jnp.concatenate([x_bp, jnp.zeros((rows, 1) + x_bp.shape[2:], x_bp.dtype)], axis=1)
  slot_bm = layout.slot_en.reshape(rows, 2 * num_tokens)
  out_bm = padded[jnp.arange(rows)[:, None], slot_bm]
  return out_bm.reshape((num_examples, num_tokens) + x_bp.shape[2:])


def placed(layout: PairLayout) -> jax.Array:
  """[E, N] bool: the token has a slot in the packed row."""
  return layout.slot_en < layout.length


class PackingStats(NamedTuple):
  encoder_dropped: jax.Array  # [] int32: valid encoder tokens past the packed encoder length
  decoder_dropped: jax.Array  # [] int32: valid decoder tokens past the packed decoder length
  encoder_fill: jax.Array  # [] float32: fraction of packed encoder slots holding a token
  decoder_fill: jax.Array  # [] float32

  def as_metrics(self) -> Dict[str, jax.Array]:
    return {f"packing/{k}": v for k, v in self._asdict().items()}


def packing_stats(encoder: PairLayout, decoder: PairLayout) -> PackingStats:
  return PackingStats(jnp.sum(encoder.dropped_e), jnp.sum(decoder.dropped_e),
                      jnp.mean(encoder.valid_bp.astype(jnp.float32)),
                      jnp.mean(decoder.valid_bp.astype(jnp.float32)))


# ------------------------------------------------------------------------------------------------
# Host side: the token counts the model will pack, from a batch (NumPy), and the check.
# ------------------------------------------------------------------------------------------------
HISTORY_INPUTS = ("image_history", "audio_history")


def pair_lengths(batch: Mapping[str, Mapping], cfg) -> Dict[str, np.ndarray]:
  """{"encoder": [E], "decoder": [E]}: valid tokens each example puts in the trunk.

  Counted the way the embedders build their parts: one encoder token per valid text token or
  sampled patch; a history frame with any valid patch becomes `latents_size` tokens; one decoder
  token per valid target token.
  """
  encoder = 0
  for name, features in batch["inputs"].items():
    mask = np.asarray(features["mask"]) > 0
    if name in HISTORY_INPUTS:
      resampler = getattr(cfg, name)
      encoder = encoder + np.sum(np.any(mask, axis=-1), axis=-1) * resampler.latents_size
    else:
      encoder = encoder + np.sum(mask, axis=-1)
  decoder = sum(np.sum(np.asarray(f["mask"]) > 0, axis=-1) for f in batch["targets"].values())
  return {"encoder": np.asarray(encoder), "decoder": np.asarray(decoder)}


def check_pairs_fit(batch: Mapping[str, Mapping], cfg, encoder_length: Optional[int] = None,
                    decoder_length: Optional[int] = None) -> None:
  """Raises PackingError naming the first pair (2i, 2i+1) whose tokens exceed a packed length.

  The lengths default to the config's `packed_encoder_length` / `packed_decoder_length`.
  """
  limits = {"encoder": encoder_length or cfg.packed_encoder_length,
            "decoder": decoder_length or cfg.packed_decoder_length}
  for side, per_example in pair_lengths(batch, cfg).items():
    if per_example.shape[0] % 2:
      raise PackingError(f"pair packing needs an even number of examples, got a batch of "
                         f"{per_example.shape[0]}")
    if limits[side] is None:
      continue
    per_pair = per_example[0::2] + per_example[1::2]
    too_long = np.flatnonzero(per_pair > limits[side])
    if too_long.size:
      i = int(too_long[0])
      raise PackingError(
          f"examples {2 * i} and {2 * i + 1} have {per_example[2 * i]} + {per_example[2 * i + 1]}"
          f" = {per_pair[i]} valid {side} tokens, more than the packed {side} length "
          f"{limits[side]} ({too_long.size} pair(s) in this batch do not fit); pair shorter "
          f"examples or raise `packed_{side}_length`")


def pair_order(batch: Mapping[str, Mapping], cfg) -> np.ndarray:
  """A permutation of the batch's examples that pairs long with short ones (host side).

  Examples are ranked by their encoder and decoder token counts, each relative to its packed
  length, and the i-th longest is paired with the i-th shortest: for one length this minimises the
  longest pair. The loss is a token mean over the whole batch, so reordering changes nothing else.
  Use as `take_examples(batch, pair_order(batch, cfg))` before `check_pairs_fit`.
  """
  lengths = pair_lengths(batch, cfg)
  num = lengths["encoder"].shape[0]
  if num % 2:
    raise PackingError(f"pair packing needs an even number of examples, got a batch of {num}")
  size = {"encoder": cfg.packed_encoder_length, "decoder": cfg.packed_decoder_length}
  key = sum(v / (size[k] or max(int(v.max()), 1) * 2) for k, v in lengths.items())
  ranked = np.argsort(-key, kind="stable")
  return np.stack([ranked[:num // 2], ranked[::-1][:num // 2]], axis=1).reshape(-1)


def take_examples(batch, order: np.ndarray):
  """The batch with its examples (the leading axis of every array) in `order`."""
  return jax.tree_util.tree_map(lambda a: np.asarray(a)[order], batch)
