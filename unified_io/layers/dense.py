"""A bias-free projection whose kernel carries logical axis names.

x [..., *in_shape] -> [..., *out_shape] with kernel [*in_shape, *out_shape]. Our own rather than
`nn.DenseGeneral`, whose init wrapper builds a flat kernel and reshapes it, which breaks the logical
axis box when a mesh is active.
"""

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp


class Projection(nn.Module):
  in_shape: Tuple[int, ...]
  out_shape: Tuple[int, ...]
  axes: Tuple[str, ...]  # logical names of the kernel's axes, in_shape then out_shape
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n_in, n_out = len(self.in_shape), len(self.out_shape)
    init = nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=tuple(range(n_in)),
        out_axis=tuple(range(n_in, n_in + n_out)))
    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.axes),
                        tuple(self.in_shape) + tuple(self.out_shape), jnp.float32)
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    return jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (contract, ((), ())))
