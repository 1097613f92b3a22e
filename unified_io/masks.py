"""Attention masks as booleans [B, 1, L, S] (True = may attend), built from per-token validity.

The release's convention: encoder self-attention is bidirectional over valid tokens
(`pad_q * pad_k`); decoder self-attention is causal, over valid tokens, and only within one
segment (the release's `modality_id` "subsegments": targets of different modalities never see each
other); cross-attention is `pad_q * pad_enc`. Invalid query rows are fully masked, which the
attention turns into a uniform average, exactly as the release does.
"""

import jax
import jax.numpy as jnp


def padding_mask(valid_q_bl: jax.Array, valid_k_bs: jax.Array) -> jax.Array:
  """[B, 1, L, S]: both the query and the key are real tokens."""
  return (valid_q_bl.astype(bool)[:, None, :, None]) & (valid_k_bs.astype(bool)[:, None, None, :])


def decoder_self_mask(valid_bl: jax.Array, segment_ids_bl: jax.Array) -> jax.Array:
  """[B, 1, L, L]: causal, valid query and key, and the same segment id."""
  length = valid_bl.shape[1]
  causal_ll = jnp.tril(jnp.ones((length, length), dtype=bool))
  same_segment_bll = segment_ids_bl[:, :, None] == segment_ids_bl[:, None, :]
  return padding_mask(valid_bl, valid_bl) & (causal_ll[None] & same_segment_bll)[:, None]
