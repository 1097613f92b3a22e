"""The perceiver resampler: a fixed set of learned latents cross-attends to one frame's features.

Axis legend: N frames (batch x frames), Q latents, S context length (patches), R resampler width,
H heads, K head_dim, F mlp_dim.

The release's `resampler.perceiver` (see the reference README, "Perceiver resampler"):
  context = RMSNorm(context)                                  once, up front
  lat     = latents [Q, R] broadcast over N
  per layer:  x = lat + XAttn(q=RMSNorm(lat), kv=context, mask = latent x context-pad)
              lat = x + MLP(RMSNorm(x)),  MLP = wo(gelu_exact(wi x)), bias-free
  out     = RMSNorm(lat)
Keys and values are the context only (no latents concatenated) and there is no RoPE.

Cross-attention has two variants, chosen by the config: qk-norm (RMSNorm over K on q and k, then
(q / sqrt(K)) . k) and scaled cosine (cos(q, k) * exp(min(logit_scale, ln 100)), one learned scale
per head, no 1/sqrt(K)); with both on, qk-norm comes first. Masked logits are replaced by -1e10, so
a frame with no valid patch gives a uniform average over its (padding) patches, as in the release.
Logits and softmax are float32; the weights are cast back to the activation dtype before they
multiply v.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from unified_io.config import ResamplerConfig
from unified_io.network.layers import RMSNorm
from unified_io.network.layers.attention import MASKED_LOGIT
from unified_io.network.layers.dense import Projection

# Logical axis names of resampler parameters (the partitioning rules table maps them; unmapped names
# are replicated). The resampler's own names, like the ViT's, so its head count need not divide the
# model axis and the trunk's rules do not apply to it by accident.
EMBED = "resampler_embed"  # R
HEADS = "resampler_heads"  # H
MLP = "resampler_mlp"  # F
LATENTS = "resampler_latents"  # Q
HEAD_DIM = "kv"  # K, as in the trunk (replicated)

LOGIT_SCALE_INIT = math.log(10.0)
LOGIT_SCALE_MAX = math.log(100.0)
_NORMALIZE_EPS = 1e-12  # torch F.normalize


def _l2_normalize(x: jax.Array) -> jax.Array:
  """x / max(||x||, 1e-12) over the last axis, like torch's F.normalize.

  Written as x * rsqrt(max(|x|^2, eps^2)): the same numbers, and a finite gradient at x = 0.
  """
  sum_sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sum_sq, _NORMALIZE_EPS ** 2))


class CrossAttention(nn.Module):
  """Latents attend to the context. Bias-free query/key/value/out, no RoPE."""

  cfg: ResamplerConfig
  dtype: jnp.dtype = jnp.float32

  def _projection(self, name: str) -> Projection:
    cfg = self.cfg
    return Projection((cfg.emb_dim,), (cfg.num_heads, cfg.head_dim), (EMBED, HEADS, HEAD_DIM),
                      self.dtype, name=name)

  @nn.compact
  def __call__(self, lat_nqr: jax.Array, ctx_nsr: jax.Array, mask_n11s: jax.Array,
               deterministic: bool = True) -> jax.Array:
    """`mask` is boolean [N, 1, 1, S] (True = a valid context position)."""
    cfg = self.cfg
    q_nqhk = self._projection("query")(lat_nqr)
    k_nshk = self._projection("key")(ctx_nsr)
    v_nshk = self._projection("value")(ctx_nsr)
    if cfg.qk_norm:
      q_nqhk = RMSNorm(axis_name=HEAD_DIM, name="query_norm")(q_nqhk)
      k_nshk = RMSNorm(axis_name=HEAD_DIM, name="key_norm")(k_nshk)
    q_nqhk = q_nqhk.astype(jnp.float32)
    k_nshk = k_nshk.astype(jnp.float32)

    if cfg.scaled_cosine:
      logit_scale_h = self.param(
          "logit_scale",
          nn.with_logical_partitioning(nn.initializers.constant(LOGIT_SCALE_INIT), (HEADS,)),
          (cfg.num_heads,), jnp.float32)
      cos_nhqs = jnp.einsum("NQHK,NSHK->NHQS", _l2_normalize(q_nqhk), _l2_normalize(k_nshk))
      scale_h = jnp.exp(jnp.minimum(logit_scale_h, LOGIT_SCALE_MAX))
      logits_nhqs = cos_nhqs * scale_h[None, :, None, None]
    else:
      logits_nhqs = jnp.einsum("NQHK,NSHK->NHQS",
                               q_nqhk / jnp.sqrt(jnp.float32(cfg.head_dim)), k_nshk)
    logits_nhqs = jnp.where(mask_n11s, logits_nhqs, MASKED_LOGIT)
    weights_nhqs = jax.nn.softmax(logits_nhqs, axis=-1).astype(self.dtype)
    weights_nhqs = nn.Dropout(cfg.dropout_rate)(weights_nhqs, deterministic=deterministic)

    out_nqhk = jnp.einsum("NHQS,NSHK->NQHK", weights_nhqs, v_nshk.astype(self.dtype))
    return Projection((cfg.num_heads, cfg.head_dim), (cfg.emb_dim,), (HEADS, HEAD_DIM, EMBED),
                      self.dtype, name="out")(out_nqhk)


class GeluMLP(nn.Module):
  """wo(gelu_exact(wi x)), bias-free (the release's MlpBlock with activations ('gelu',))."""

  cfg: ResamplerConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_nqr: jax.Array, deterministic: bool = True) -> jax.Array:
    cfg = self.cfg
    h_nqf = Projection((cfg.emb_dim,), (cfg.mlp_dim,), (EMBED, MLP), self.dtype, name="wi")(x_nqr)
    h_nqf = nn.gelu(h_nqf, approximate=False)
    h_nqf = nn.Dropout(cfg.dropout_rate)(h_nqf, deterministic=deterministic)
    return Projection((cfg.mlp_dim,), (cfg.emb_dim,), (MLP, EMBED), self.dtype, name="wo")(h_nqf)


class PerceiverLayer(nn.Module):
  """One cross-attention block: pre-norm attention to the context, then a pre-norm MLP."""

  cfg: ResamplerConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, lat_nqr: jax.Array, ctx_nsr: jax.Array, mask_n11s: jax.Array,
               deterministic: bool = True) -> jax.Array:
    cfg = self.cfg
    h_nqr = RMSNorm(axis_name=EMBED, name="pre_xattention_norm")(lat_nqr)
    h_nqr = CrossAttention(cfg, self.dtype, name="xattention")(h_nqr, ctx_nsr, mask_n11s,
                                                               deterministic)
    h_nqr = nn.Dropout(cfg.dropout_rate)(h_nqr, deterministic=deterministic)
    x_nqr = lat_nqr + h_nqr
    h_nqr = RMSNorm(axis_name=EMBED, name="pre_mlp_norm")(x_nqr)
    h_nqr = GeluMLP(cfg, self.dtype, name="mlp")(h_nqr, deterministic)
    return x_nqr + h_nqr


class PerceiverResampler(nn.Module):
  """context [N, S, R] + context mask [N, S] -> latents [N, Q, R] (the release's `perceiver`)."""

  cfg: ResamplerConfig
  dtype: jnp.dtype = jnp.float32  # activation dtype; parameters are float32

  @nn.compact
  def __call__(self, ctx_nsr: jax.Array, mask_ns: jax.Array,
               deterministic: bool = True) -> jax.Array:
    cfg = self.cfg
    if ctx_nsr.ndim != 3 or ctx_nsr.shape[-1] != cfg.emb_dim or mask_ns.shape != ctx_nsr.shape[:2]:
      raise ValueError(f"perceiver resampler: expected context [N, S, {cfg.emb_dim}] and mask "
                       f"[N, S], got {ctx_nsr.shape} and {mask_ns.shape}")
    # torch kaiming_normal_(fan_in) on [Q, R]: std 1/sqrt(R).
    latents_qr = self.param(
        "latents", nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=-1, out_axis=-2),
            (LATENTS, EMBED)),
        (cfg.latents_size, cfg.emb_dim), jnp.float32)
    n = ctx_nsr.shape[0]
    lat_nqr = jnp.broadcast_to(latents_qr.astype(self.dtype), (n,) + latents_qr.shape)
    ctx_nsr = RMSNorm(axis_name=EMBED, name="context_norm")(ctx_nsr.astype(self.dtype))
    mask_n11s = (mask_ns > 0)[:, None, None, :]  # every latent sees the frame's valid patches
    for i in range(cfg.num_layers):
      lat_nqr = PerceiverLayer(cfg, self.dtype, name=f"layers_{i}")(lat_nqr, ctx_nsr, mask_n11s,
                                                                    deterministic)
    return RMSNorm(axis_name=EMBED, name="perceiver_norm")(lat_nqr)


class Resampler(nn.Module):
  """The release nests the perceiver as `resampler.perceiver`; this keeps its parameter paths."""

  cfg: ResamplerConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, ctx_nsr: jax.Array, mask_ns: jax.Array,
               deterministic: bool = True) -> jax.Array:
    return PerceiverResampler(self.cfg, self.dtype, name="perceiver")(ctx_nsr, mask_ns,
                                                                      deterministic)
