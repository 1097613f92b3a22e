"""The trunk's SwiGLU MLP: wo(silu(wi_0 x) * wi_1 x), bias-free.

`swiglu(gate, up) = silu(gate) * up` has a hand-written backward pass that keeps only its two
inputs (the matmul outputs, which the projections' backward passes keep anyway): plain autodiff
also keeps silu's sigmoid and product, two more [B, L, mlp_dim] tensors per layer, and on XLA:CPU
every kept byte is page-faulted in again on every call. That pays on CPU only: on GPU and TPU XLA
fuses silu into the product, and plain autodiff (`swiglu_plain`) is used
(`backends.hand_written_vjps` chooses).
"""

import flax.linen as nn
import jax

from unified_io.config import TrunkConfig
from unified_io.network.layers import backends
from unified_io.network.layers.dense import Projection
from unified_io.network.layers.recompute import after


def swiglu_plain(gate: jax.Array, up: jax.Array) -> jax.Array:
  """silu(gate) * up, differentiated by plain autodiff."""
  return nn.silu(gate) * up


@jax.custom_vjp
def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
  """silu(gate) * up, with the backward pass that keeps only gate and up."""
  return swiglu_plain(gate, up)


def _swiglu_fwd(gate, up):
  return swiglu(gate, up), (gate, up)


def _swiglu_bwd(residuals, g):
  gate, up = (after(g, r) for r in residuals)  # recompute silu here, not in the forward pass
  sigmoid = jax.nn.sigmoid(gate)
  silu = gate * sigmoid
  # d silu(x) / dx = sigmoid(x) * (1 + x * (1 - sigmoid(x)))
  d_gate = g * up * (sigmoid * (1 + gate * (1 - sigmoid)))
  return d_gate.astype(gate.dtype), (g * silu).astype(up.dtype)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


class GatedMLP(nn.Module):
  cfg: TrunkConfig

  @nn.compact
  def __call__(self, x_bld: jax.Array, deterministic: bool = True) -> jax.Array:
    cfg = self.cfg
    dim, dtype = x_bld.shape[-1], cfg.activation_dtype
    gate_blf = Projection((dim,), (cfg.mlp_dim,), ("embed", "mlp"), dtype, name="wi_0")(x_bld)
    up_blf = Projection((dim,), (cfg.mlp_dim,), ("embed", "mlp"), dtype, name="wi_1")(x_bld)
    h_blf = (swiglu if backends.hand_written_vjps() else swiglu_plain)(gate_blf, up_blf)
    h_blf = nn.with_logical_constraint(h_blf, ("batch", "length", "mlp"))
    h_blf = nn.Dropout(cfg.dropout_rate)(h_blf, deterministic=deterministic)
    return Projection((cfg.mlp_dim,), (dim,), ("mlp", "embed"), dtype, name="wo")(h_blf)
