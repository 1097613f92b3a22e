"""The trunk's SwiGLU MLP: wo(silu(wi_0 x) * wi_1 x), bias-free."""

import flax.linen as nn
import jax

from unified_io.config import TrunkConfig
from unified_io.layers.dense import Projection

class GatedMLP(nn.Module):
  cfg: TrunkConfig

  @nn.compact
  def __call__(self, x_bld: jax.Array, deterministic: bool = True) -> jax.Array:
    cfg = self.cfg
    dim, dtype = x_bld.shape[-1], cfg.activation_dtype
    gate_blf = Projection((dim,), (cfg.mlp_dim,), ("embed", "mlp"), dtype, name="wi_0")(x_bld)
    up_blf = Projection((dim,), (cfg.mlp_dim,), ("embed", "mlp"), dtype, name="wi_1")(x_bld)
    h_blf = nn.silu(gate_blf) * up_blf
    h_blf = nn.with_logical_constraint(h_blf, ("batch", "length", "mlp"))
    h_blf = nn.Dropout(cfg.dropout_rate)(h_blf, deterministic=deterministic)
    return Projection((cfg.mlp_dim,), (dim,), ("mlp", "embed"), dtype, name="wo")(h_blf)
