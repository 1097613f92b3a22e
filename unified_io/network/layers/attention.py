"""Multi-head dot-product attention as the UIO2 trunk computes it.

Axis legend: B batch, L query length, S key length, D embed, H heads, K head_dim.

Steps, in the release's order: bias-free q/k/v projections; qk-norm (RMSNorm over K, one [K] scale
shared by the heads); RoPE on q and k in float32; logits (q / sqrt(K)) . k in float32; the mask
replaces masked logits by -1e10 (the release adds a -1e10 bias, which in float32 rounds to exactly
that, so a fully masked query row becomes a uniform average over all keys rather than NaN);
softmax in float32; the weights are cast back to the activation dtype before they multiply v.

`cfg.attention_impl` chooses how that is computed on this backend (backends.py has the table): the
CPU-tuned custom VJPs, the plain formulation, cuDNN or splash (fused_attention.py); every choice
keeps the uniform average for fully masked rows.

Incremental decoding (`cache=` a `CacheKind`, see `unified_io.decoding`) keeps, in the flax
"cache" collection:
  SELF:  the keys (after RoPE) and values of every position decoded so far, [B, S, H, K] with S
         the decode length, and the next position `index`; the L new queries attend causally to
         positions < index + L (the caller's mask, if any, is ANDed in).
  CROSS: the encoder's keys and values, computed on the call that passes `x_kv` and reused by
         the calls that pass `x_kv=None`.
"""

import enum
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from unified_io.config import AttentionImpl, TrunkConfig
from unified_io.network.layers import backends
from unified_io.network.layers.dense import Projection
from unified_io.network.layers.dot_product import (MASKED_LOGIT, attend, attend_block_diagonal,
                                                   attend_plain)
from unified_io.network.layers.fused_attention import attend_cudnn, attend_splash
from unified_io.network.layers.norms import RMSNorm
from unified_io.network.layers.rope import apply_rope


def attend_with(impl: AttentionImpl, q_blhk: jax.Array, k_bshk: jax.Array, v_bshk: jax.Array,
                mask_b1ls: jax.Array, dtype,
                blocks: Optional[Sequence[Tuple[int, int]]] = None) -> jax.Array:
  """[B, L, H, K] attention by the resolved `impl` (never AUTO; `backends.resolve_attention`).

  `blocks` (see `Attention.__call__`) splits the plain and CPU formulations into per-block
  attentions; the fused kernels keep no [L, S] tensor, and splash skips empty blocks itself.
  """
  if impl in (AttentionImpl.CPU, AttentionImpl.XLA):
    attend_fn = attend if impl == AttentionImpl.CPU else attend_plain
    if blocks is not None:
      return attend_block_diagonal(q_blhk, k_bshk, v_bshk, mask_b1ls, blocks, dtype, attend_fn)
    return attend_fn(q_blhk, k_bshk, v_bshk, mask_b1ls, dtype)
  if impl == AttentionImpl.CUDNN:
    return attend_cudnn(q_blhk, k_bshk, v_bshk, mask_b1ls, dtype)
  if impl == AttentionImpl.SPLASH:
    return attend_splash(q_blhk, k_bshk, v_bshk, mask_b1ls, dtype)
  raise ValueError(f"attention implementation {impl!r} is not resolved (see backends.py)")


class CacheKind(str, enum.Enum):
  """What an attention layer caches while decoding incrementally (see the module docstring)."""

  SELF = "self"  # the keys and values of every position decoded so far
  CROSS = "cross"  # the encoder's keys and values


class Attention(nn.Module):
  cfg: TrunkConfig

  def _projection(self, emb_dim: int, name: str) -> Projection:
    cfg = self.cfg
    return Projection((emb_dim,), (cfg.num_heads, cfg.head_dim), ("embed", "heads", "kv"),
                      cfg.activation_dtype, name=name)

  @nn.compact
  def __call__(self, x_q_bld: jax.Array, x_kv_bsd: jax.Array, mask_b1ls: Optional[jax.Array],
               q_rope_blk: Optional[jax.Array] = None, k_rope_bsk: Optional[jax.Array] = None,
               deterministic: bool = True,
               blocks: Optional[Sequence[Tuple[int, int]]] = None,
               cache: Optional[CacheKind] = None, cache_length: int = 0) -> jax.Array:
    """`mask` is boolean [B, 1 or H, L, S] (True = may attend); rope tables are [B, L|S, K].

    `cache`: None, CacheKind.SELF (`cache_length` = S, the length the cache is made with) or
    CacheKind.CROSS (see the module docstring).

    `blocks`: for self-attention whose mask allows nothing outside these [start, stop) diagonal
    blocks (they tile [0, L)), each block is computed on its own (`attend_block_diagonal`).
    """
    cfg = self.cfg
    q_blhk = self._projection(x_q_bld.shape[-1], "query")(x_q_bld)
    if cfg.qk_norm:
      q_blhk = RMSNorm(cfg.norm_eps, axis_name="kv", name="query_norm")(q_blhk)
    q_blhk = q_blhk.astype(jnp.float32)
    if cfg.use_rope and q_rope_blk is not None:
      q_blhk = apply_rope(q_blhk, q_rope_blk)
    if x_kv_bsd is not None:
      k_bshk, v_bshk = self._keys_values(x_kv_bsd, k_rope_bsk)

    if cache == CacheKind.SELF:
      k_bshk, v_bshk, mask_b1ls = self._self_cache(k_bshk, v_bshk, mask_b1ls, cache_length)
    elif cache == CacheKind.CROSS:
      k_bshk, v_bshk = self._cross_cache(None if x_kv_bsd is None else (k_bshk, v_bshk))
    elif cache is not None:
      raise ValueError(f"cache must be None, 'self' or 'cross', got {cache!r}")

    if mask_b1ls is None:
      mask_b1ls = jnp.ones((1, 1, q_blhk.shape[1], k_bshk.shape[1]), bool)

    dropout = not deterministic and cfg.dropout_rate > 0.0
    impl = backends.resolve_attention(
        cfg.attention_impl, dtype=cfg.activation_dtype, head_dim=cfg.head_dim,
        q_length=q_blhk.shape[1], kv_length=k_bshk.shape[1], dropout=dropout)
    if not dropout:
      out_blhk = attend_with(impl, q_blhk, k_bshk, v_bshk, mask_b1ls, cfg.activation_dtype, blocks)
    else:  # attention dropout: the plain formulation (dropout acts on the full weights)
      logits_bhls = jnp.einsum("BLHK,BSHK->BHLS", q_blhk / jnp.sqrt(jnp.float32(cfg.head_dim)),
                               k_bshk)
      logits_bhls = jnp.where(mask_b1ls, logits_bhls, MASKED_LOGIT)
      weights_bhls = jax.nn.softmax(logits_bhls, axis=-1).astype(cfg.activation_dtype)
      weights_bhls = nn.Dropout(cfg.dropout_rate)(weights_bhls, deterministic=deterministic)
      out_blhk = jnp.einsum("BHLS,BSHK->BLHK", weights_bhls, v_bshk)
    return Projection((cfg.num_heads, cfg.head_dim), (x_q_bld.shape[-1],), ("heads", "kv", "embed"),
                      cfg.activation_dtype, name="out")(out_blhk)

  def _keys_values(self, x_kv_bsd: jax.Array, k_rope_bsk: Optional[jax.Array]):
    cfg = self.cfg
    k_bshk = self._projection(x_kv_bsd.shape[-1], "key")(x_kv_bsd)
    v_bshk = self._projection(x_kv_bsd.shape[-1], "value")(x_kv_bsd)
    if cfg.qk_norm:
      k_bshk = RMSNorm(cfg.norm_eps, axis_name="kv", name="key_norm")(k_bshk)
    k_bshk = k_bshk.astype(jnp.float32)
    if cfg.use_rope and k_rope_bsk is not None:
      k_bshk = apply_rope(k_bshk, k_rope_bsk)
    return k_bshk, v_bshk

  def _self_cache(self, k_blhk, v_blhk, mask_b1ls, cache_length: int):
    """Writes the L new keys/values at `index`; returns the whole cache and the causal mask."""
    batch, length, heads, head_dim = k_blhk.shape
    if cache_length < length:
      raise ValueError(f"decode cache of length {cache_length} cannot take {length} new tokens")
    shape = (batch, cache_length, heads, head_dim)
    key = self.variable("cache", "cached_key", jnp.zeros, shape, k_blhk.dtype)
    value = self.variable("cache", "cached_value", jnp.zeros, shape, v_blhk.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    start = index.value
    key.value = jax.lax.dynamic_update_slice(key.value, k_blhk, (0, start, 0, 0))
    value.value = jax.lax.dynamic_update_slice(value.value, v_blhk, (0, start, 0, 0))
    index.value = start + length
    query_pos_l1 = start + jnp.arange(length)[:, None]
    causal_1ls = (jnp.arange(cache_length)[None, :] <= query_pos_l1)[None, None]
    mask = causal_1ls if mask_b1ls is None else mask_b1ls & causal_1ls
    return key.value, value.value, mask

  def _cross_cache(self, fresh):
    """Stores the encoder's keys/values when `fresh` = (k, v) is given, else reads them."""
    if fresh is None:
      if not self.has_variable("cache", "cross_key"):
        raise ValueError("cross-attention cache is empty: the first decoding call must pass the "
                         "encoder output")
      return self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value")
    self.put_variable("cache", "cross_key", fresh[0])
    self.put_variable("cache", "cross_value", fresh[1])
    return fresh
