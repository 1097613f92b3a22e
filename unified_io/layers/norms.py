"""RMSNorm, the release's `UIOLayerNorm`: scale * x * rsqrt(mean(x^2) + eps), no bias, in float32."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class RMSNorm(nn.Module):
  """Normalises the last axis. `axis_name` is the scale's logical axis ("embed", or "kv" for qk-norm)."""

  eps: float = 1e-6
  axis_name: str = "embed"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                       (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (scale * normed).astype(x.dtype)
