"""Softmax attention of already projected heads, with a backward pass that recomputes the weights.

Axis legend: B batch, L query length, S key length, H heads, K head_dim.

`attend(q, k, v, mask, dtype)` computes, as the release does: logits (q / sqrt(K)) . k in float32;
masked logits replaced by -1e10 (the release adds a -1e10 bias, which in float32 rounds to exactly
that, so a fully masked query row becomes a uniform average over all keys rather than NaN); softmax
in float32; the weights cast to `dtype` before they multiply v.

Why a custom VJP: plain autodiff keeps the [B, H, L, S] logits, exponentials and weights of every
layer alive from the forward to the backward pass. XLA:CPU allocates the step's temporary buffer
anew on every call and the kernel page-faults each page of it in (~0.4 ms per MB on the CI
machines; 48 ms of system time per 173 ms training step of the full tiny model at batch 2, 210 ms
at batch 8, before this), so a [B, H, L, S] tensor costs more to keep than to recompute. The
forward pass saves only the row log-sum-exp [B, H, L, 1]; the backward pass recomputes the weights
from q and k in one fused pass (the standard flash-attention backward).
`recompute.after` ties that recomputation to the incoming gradient, so XLA cannot schedule it back
into the forward pass, where it would be alive as long as before (as it does with `jax.checkpoint`).

Layout: q, k and v are transposed once to [B, H, L|S, K], so both products are batched matmuls
with their batch dimensions leading; written on [B, L, H, K], XLA:CPU transposed operands and
results inside every product.

`attend_plain` is the same formulation with plain autodiff (the "xla" choice of
`TrunkConfig.attention_impl`, for backends where XLA fuses it; backends.py chooses).

`attend_block_diagonal` is `attend` for masks that allow nothing outside diagonal blocks (the
decoder's targets never attend to each other): each block is its own attention, about half the
work and memory of the full [L, L] for the full model's three targets.
"""

import functools
from typing import Callable, Sequence, Tuple

import jax
import jax.numpy as jnp

from unified_io.network.layers.recompute import after

MASKED_LOGIT = -1e10


def _to_heads_major(x_blhk: jax.Array) -> jax.Array:
  return x_blhk.transpose(0, 2, 1, 3)  # [B, L, H, K] -> [B, H, L, K]


def _masked_logits(q_bhlk: jax.Array, k_bhsk: jax.Array, mask_b1ls: jax.Array) -> jax.Array:
  logits_bhls = jnp.einsum("BHLK,BHSK->BHLS", q_bhlk, k_bhsk)
  return jnp.where(mask_b1ls, logits_bhls, MASKED_LOGIT)


def _heads_major_operands(q_blhk, k_bshk, v_bshk, dtype):
  """q / sqrt(K), k (float32) and v (dtype), each [B, H, L|S, K]."""
  q_bhlk = _to_heads_major(q_blhk.astype(jnp.float32) / jnp.sqrt(jnp.float32(q_blhk.shape[-1])))
  return q_bhlk, _to_heads_major(k_bshk.astype(jnp.float32)), _to_heads_major(v_bshk.astype(dtype))


def _forward(q_blhk, k_bshk, v_bshk, mask_b1ls, dtype):
  q_bhlk, k_bhsk, v_bhsk = _heads_major_operands(q_blhk, k_bshk, v_bshk, dtype)
  logits_bhls = _masked_logits(q_bhlk, k_bhsk, mask_b1ls)
  # jax.nn.softmax, with its row max and sum kept for the backward pass.
  max_bhl1 = jnp.max(logits_bhls, axis=-1, keepdims=True)
  exp_bhls = jnp.exp(logits_bhls - max_bhl1)
  sum_bhl1 = jnp.sum(exp_bhls, axis=-1, keepdims=True)
  if jnp.dtype(dtype) == jnp.float32:
    # (exp / sum) . v computed as (exp . v) / sum: L*K divisions instead of L*S, and XLA:CPU
    # computes the exponentials once instead of once per consumer; equal up to float32 rounding.
    out_bhlk = jnp.einsum("BHLS,BHSK->BHLK", exp_bhls, v_bhsk) / sum_bhl1
  else:  # the release multiplies v by the weights cast to the activation dtype
    out_bhlk = jnp.einsum("BHLS,BHSK->BHLK", (exp_bhls / sum_bhl1).astype(dtype), v_bhsk)
  # The backward pass needs only log(sum exp) per row. (Saving the max itself lets XLA reuse the
  # forward pass's [B, H, L, S] broadcast of it, which would then stay alive.)
  lse_bhl1 = max_bhl1 + jnp.log(sum_bhl1)
  # The operands are kept as they came (the caller's tensors): their transposed copies would be
  # kept in addition to them.
  residuals = (q_blhk, k_bshk, v_bshk, mask_b1ls, lse_bhl1)
  return _to_heads_major(out_bhlk), residuals


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def attend(q_blhk: jax.Array, k_bshk: jax.Array, v_bshk: jax.Array, mask_b1ls: jax.Array,
           dtype=jnp.float32) -> jax.Array:
  """[B, L, H, K] attention output; `mask` boolean [B, 1 or H, L, S] (True = may attend)."""
  return _forward(q_blhk, k_bshk, v_bshk, mask_b1ls, dtype)[0]


def _attend_fwd(q_blhk, k_bshk, v_bshk, mask_b1ls, dtype):
  return _forward(q_blhk, k_bshk, v_bshk, mask_b1ls, dtype)


def _attend_bwd(dtype, residuals, g_blhk):
  g_bhlk = _to_heads_major(g_blhk.astype(dtype))
  # Recompute the weights here, not in the forward pass.
  q_blhk, k_bshk, v_bshk, mask_b1ls, lse_bhl1 = (after(g_bhlk, r) for r in residuals)
  q_bhlk, k_bhsk, v_bhsk = _heads_major_operands(q_blhk, k_bshk, v_bshk, dtype)
  weights32_bhls = jnp.exp(_masked_logits(q_bhlk, k_bhsk, mask_b1ls) - lse_bhl1)
  # A row without any key has weights 1/S, but its log-sum-exp, -1e10 + log(S), rounds to -1e10
  # in float32, which would make them exp(0) = 1.
  has_key_b1l1 = jnp.any(mask_b1ls, axis=-1, keepdims=True)
  weights32_bhls = jnp.where(has_key_b1l1, weights32_bhls, 1.0 / k_bhsk.shape[2])
  d_v_bhsk = jnp.einsum("BHLS,BHLK->BHSK", weights32_bhls.astype(dtype), g_bhlk)
  d_weights_bhls = jnp.einsum("BHLK,BHSK->BHLS", g_bhlk, v_bhsk).astype(jnp.float32)
  # The softmax VJP; masked logits were constants, so they pass no gradient to q and k.
  d_logits_bhls = weights32_bhls * (
      d_weights_bhls - jnp.sum(d_weights_bhls * weights32_bhls, axis=-1, keepdims=True))
  d_logits_bhls = jnp.where(mask_b1ls, d_logits_bhls, 0.0)
  d_q_bhlk = jnp.einsum("BHLS,BHSK->BHLK", d_logits_bhls, k_bhsk) / jnp.sqrt(
      jnp.float32(q_bhlk.shape[-1]))
  d_k_bhsk = jnp.einsum("BHLS,BHLK->BHSK", d_logits_bhls, q_bhlk)
  return (_to_heads_major(d_q_bhlk).astype(q_blhk.dtype),
          _to_heads_major(d_k_bhsk).astype(k_bshk.dtype),
          _to_heads_major(d_v_bhsk).astype(v_bshk.dtype), None)


attend.defvjp(_attend_fwd, _attend_bwd)


def attend_plain(q_blhk: jax.Array, k_bshk: jax.Array, v_bshk: jax.Array, mask_b1ls: jax.Array,
                 dtype=jnp.float32) -> jax.Array:
  """`attend` as the release writes it, differentiated by plain autodiff."""
  q_bhlk, k_bhsk, v_bhsk = _heads_major_operands(q_blhk, k_bshk, v_bshk, dtype)
  weights_bhls = jax.nn.softmax(_masked_logits(q_bhlk, k_bhsk, mask_b1ls), axis=-1)
  out_bhlk = jnp.einsum("BHLS,BHSK->BHLK", weights_bhls.astype(dtype), v_bhsk)
  return _to_heads_major(out_bhlk)


def uniform_where_no_key(out_blhk: jax.Array, v_bshk: jax.Array, mask_b1ls: jax.Array,
                         dtype) -> jax.Array:
  """`out`, with each query row the mask leaves without any key replaced by the uniform average
  over ALL S values: what the release's -1e10 logits give such a row. Fused kernels (and
  per-block attention) give something else there: zeros, NaN, or the average over one block."""
  has_key_bl1 = jnp.any(mask_b1ls, axis=-1).transpose(0, 2, 1)  # [B, L, 1 or H]
  uniform_b1hk = jnp.mean(v_bshk.astype(jnp.float32), axis=1, keepdims=True).astype(dtype)
  return jnp.where(has_key_bl1[..., None], out_blhk.astype(dtype), uniform_b1hk)


def attend_block_diagonal(q_blhk: jax.Array, k_blhk: jax.Array, v_blhk: jax.Array,
                          mask_b1ll: jax.Array, blocks: Sequence[Tuple[int, int]],
                          dtype=jnp.float32, attend_fn: Callable = attend) -> jax.Array:
  """`attend_fn` (`attend` or `attend_plain`) for a self-attention mask that allows nothing
  outside the [start, stop) blocks.

  `blocks` must tile [0, L) in order. A query row the mask leaves without any key gets the uniform
  average over ALL L values, as the full softmax gives it (not over its block's).
  """
  length = q_blhk.shape[1]
  stops = [start for start, _ in blocks[1:]] + [length]
  if blocks[0][0] != 0 or any(stop != s for (_, stop), s in zip(blocks, stops)):
    raise ValueError(f"attention blocks {list(blocks)} do not tile [0, {length})")
  out_blhk = jnp.concatenate(
      [attend_fn(q_blhk[:, a:b], k_blhk[:, a:b], v_blhk[:, a:b], mask_b1ll[:, :, a:b, a:b], dtype)
       for a, b in blocks], axis=1)
  return uniform_where_no_key(out_blhk, v_blhk, mask_b1ll, dtype)
