"""The trunk's SwiGLU MLP: wo(silu(wi_0 x) * wi_1 x), bias-free."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from unified_io.config import TrunkConfig

KERNEL_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def dense(features: int, axes, cfg: TrunkConfig, name: str) -> nn.Dense:
  """A bias-free dense layer in the activation dtype with f32 parameters and logical axis names."""
  return nn.Dense(features, use_bias=False, dtype=cfg.activation_dtype, param_dtype=jnp.float32,
                  kernel_init=nn.with_logical_partitioning(KERNEL_INIT, axes), name=name)


class GatedMLP(nn.Module):
  cfg: TrunkConfig

  @nn.compact
  def __call__(self, x_bld: jax.Array, deterministic: bool = True) -> jax.Array:
    cfg = self.cfg
    gate_blf = dense(cfg.mlp_dim, ("embed", "mlp"), cfg, "wi_0")(x_bld)
    up_blf = dense(cfg.mlp_dim, ("embed", "mlp"), cfg, "wi_1")(x_bld)
    h_blf = nn.silu(gate_blf) * up_blf
    h_blf = nn.with_logical_constraint(h_blf, ("batch", "length", "mlp"))
    h_blf = nn.Dropout(cfg.dropout_rate)(h_blf, deterministic=deterministic)
    return dense(x_bld.shape[-1], ("mlp", "embed"), cfg, "wo")(h_blf)
