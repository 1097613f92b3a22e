"""A bias-free projection whose kernel carries logical axis names.

x [..., *in_shape] -> [..., *out_shape] with kernel [*in_shape, *out_shape]. Our own rather than
`nn.DenseGeneral`, whose init wrapper builds a flat kernel and reshapes it, which breaks the logical
axis box when a mesh is active.

The product is a plain 2D matmul, x [N, prod(in)] @ kernel [prod(in), prod(out)]; both reshapes are
free (row-major). Written as one dot_general over several contracting dims (the attention `out`
kernel [H, K, D]) or several output dims (q/k/v [D, H, K]), it made XLA:CPU copy a transposed
kernel, and transpose the kernel's gradient, on every backward pass: a fifth of the training step of
the tiny text model (bench/step_time.py). Same parameters and forward numbers.
"""

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


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
    batch_shape = x.shape[:x.ndim - n_in]
    fan_in, fan_out = int(np.prod(self.in_shape)), int(np.prod(self.out_shape))
    x_ni = x.reshape(-1, fan_in).astype(self.dtype)  # [N, prod(in)], N = prod(batch_shape)
    kernel_io = kernel.reshape(fan_in, fan_out).astype(self.dtype)
    return (x_ni @ kernel_io).reshape(*batch_shape, *self.out_shape)
