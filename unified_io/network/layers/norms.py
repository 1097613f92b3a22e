"""RMSNorm, the release's `UIOLayerNorm`: scale * x * rsqrt(mean(x^2) + eps), no bias, in float32.

The backward pass is written by hand (`rms_norm`'s custom VJP) to keep only x and the per-row
rsqrt for it. Plain autodiff also keeps x * rsqrt and an rsqrt broadcast to x's full shape, for
every norm (three pre-norms and two qk-norms per layer): on XLA:CPU the step's temporary buffer is
page-faulted in anew on every call, so each kept activation costs more than recomputing x * rsqrt
(`recompute.after` keeps XLA from merging that recomputation back into the forward pass).
That pays on CPU only: on GPU and TPU XLA fuses the norm and plain autodiff (`rms_norm_plain`) is
used (`backends.hand_written_vjps` chooses).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from unified_io.network.layers import backends
from unified_io.network.layers.recompute import after


def _forward(x, scale, eps):
  x32 = x.astype(jnp.float32)
  rsqrt = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  return (scale * (x32 * rsqrt)).astype(x.dtype), rsqrt


def rms_norm_plain(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """`rms_norm`, differentiated by plain autodiff."""
  return _forward(x, scale, eps)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """scale * x * rsqrt(mean(x^2, last axis) + eps), computed in float32, returned in x's dtype."""
  return _forward(x, scale, eps)[0]


def _rms_norm_fwd(x, scale, eps):
  y, rsqrt = _forward(x, scale, eps)
  return y, (x, scale, rsqrt)


def _rms_norm_bwd(eps, residuals, g):
  del eps
  g32 = g.astype(jnp.float32)
  x, scale, rsqrt = (after(g32, r) for r in residuals)
  normed = x.astype(jnp.float32) * rsqrt
  d_scale = jnp.sum(g32 * normed, axis=tuple(range(x.ndim - 1)))
  d_normed = g32 * scale
  # d/dx of x * rsqrt(mean(x^2) + eps) is rsqrt * (d_normed - normed * mean(d_normed * normed)).
  d_x = rsqrt * (d_normed - normed * jnp.mean(d_normed * normed, axis=-1, keepdims=True))
  return d_x.astype(x.dtype), d_scale


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


class RMSNorm(nn.Module):
  """Normalises the last axis. `axis_name` is the scale's logical axis ("embed", or "kv" for qk-norm)."""

  eps: float = 1e-6
  axis_name: str = "embed"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                       (x.shape[-1],), jnp.float32)
    norm = rms_norm if backends.hand_written_vjps() else rms_norm_plain
    return norm(x, scale, self.eps)
