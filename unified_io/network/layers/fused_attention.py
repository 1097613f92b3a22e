"""Attention through the accelerators' fused kernels, with the release's masking semantics.

Axis legend: B batch, L query length, S key length, H heads, K head_dim.

Both kernels keep neither the [B, H, L, S] logits nor the weights; backends.py decides when they
run. What they compute differs from `dot_product.attend` in three ways, two of them repaired here:
  - A query row the mask leaves without any key: the release's -1e10 logits make it the uniform
    average over all S values; the kernels give something else (their own masking constant, or
    zeros), so `uniform_where_no_key` puts the release's value back (and its gradient: 1/S to
    every value, none to q and k).
  - A masked key next to an allowed one gets weight exactly 0 in both (exp underflows), so
    partially masked rows agree.
  - cuDNN multiplies q, k and v in the activation dtype (bf16/fp16): the release computes the
    logits in float32. This is the one numerical difference, of the order of the activation
    dtype's rounding. Splash takes float32 q and k as the release does (and multiplies the float32
    weights by v in float32, where the release rounds the weights to the activation dtype first).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from unified_io.network.layers.dot_product import uniform_where_no_key

_SPLASH_BLOCKS = (512, 256, 128)  # the largest that divides the length is used


def attend_cudnn(q_blhk: jax.Array, k_bshk: jax.Array, v_bshk: jax.Array, mask_b1ls: jax.Array,
                 dtype, implementation: str = "cudnn") -> jax.Array:
  """`attend` through `jax.nn.dot_product_attention`; `dtype` must be bf16/fp16 for cuDNN.

  `implementation="xla"` runs the same wrapper without cuDNN (how the tests check it on CPU).
  """
  q, k, v = (x.astype(dtype) for x in (q_blhk, k_bshk, v_bshk))
  scale = 1.0 / float(q_blhk.shape[-1]) ** 0.5
  # cuDNN turns the mask into an additive bias, whose sharding rule wants a batch axis like q's.
  mask_b1ls = jnp.broadcast_to(mask_b1ls, q.shape[:1] + mask_b1ls.shape[1:])
  out_blhk = jax.nn.dot_product_attention(q, k, v, mask=mask_b1ls, scale=scale,
                                          implementation=implementation)
  return uniform_where_no_key(out_blhk, v_bshk, mask_b1ls, dtype)


def _block(length: int) -> int:
  for block in _SPLASH_BLOCKS:
    if length % block == 0:
      return block
  raise ValueError(f"splash attention needs lengths that are multiples of 128, got {length}")


def attend_splash(q_blhk: jax.Array, k_bshk: jax.Array, v_bshk: jax.Array, mask_b1ls: jax.Array,
                  dtype, interpret: bool = False) -> jax.Array:
  """`attend` through the TPU Pallas splash kernel, one example at a time (the mask is dynamic:
  padding and packing differ per example). `interpret=True` runs the kernel on CPU (tests).

  Under a mesh (`jax.set_mesh`, as partitioning.activated sets it) the kernel runs in a shard_map
  over the logical axes "batch" and "heads": XLA cannot partition a Pallas kernel itself.
  """
  batch, length, heads, head_dim = q_blhk.shape
  q_bhlk = (q_blhk.astype(jnp.float32) / jnp.sqrt(jnp.float32(head_dim))).transpose(0, 2, 1, 3)
  k_bhsk = k_bshk.astype(jnp.float32).transpose(0, 2, 1, 3)
  v_bhsk = v_bshk.astype(dtype).transpose(0, 2, 1, 3)
  mask_bhls = jnp.broadcast_to(mask_b1ls, (batch, heads, length, k_bshk.shape[1]))
  kernel = functools.partial(_splash_per_example, interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.size > 1:
    spec = PartitionSpec(*nn.logical_to_mesh_axes(("batch", "heads", "length", "kv")))
    kernel = jax.shard_map(kernel, mesh=mesh, in_specs=(spec,) * 4, out_specs=spec,
                           check_vma=False)
  out_bhlk = kernel(q_bhlk, k_bhsk, v_bhsk, mask_bhls)
  return uniform_where_no_key(out_bhlk.transpose(0, 2, 1, 3), v_bshk, mask_b1ls, dtype)


def _splash_per_example(q_bhlk, k_bhsk, v_bhsk, mask_bhls, interpret: bool):
  """One splash kernel per example, built from its own [H, L, S] mask (vmapped over B)."""
  # Imported here: the Pallas TPU kernels are experimental API, and a jax release that moves them
  # must not break importing the model on backends that never run them.
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
  length, kv_length = q_bhlk.shape[2], k_bhsk.shape[2]
  block_q, block_kv = _block(length), _block(kv_length)
  block_sizes = splash.BlockSizes(
      block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv, block_q_dkv=block_q,
      block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv, block_q_dq=block_q,
      block_kv_dq=block_kv)

  def one_example(q_hlk, k_hsk, v_hsk, mask_hls):
    kernel = splash.make_splash_mha(mask_hls, block_sizes=block_sizes, head_shards=1,
                                    q_seq_shards=1, interpret=interpret)
    # make_splash_mha stores the flag `is_dynamic_mask` as an array (a tracer under jit), which
    # calling the kernel then tests as a Python bool (only to name a profiler scope).
    kernel.fwd_mask_info = kernel.fwd_mask_info._replace(is_dynamic_mask=True)
    return kernel(q_hlk, k_hsk, v_hsk)

  return jax.vmap(one_example)(q_bhlk, k_bhsk, v_bhsk, mask_bhls)
