"""`after(g, x)`: x, made data-dependent on a backward-pass cotangent g, for hand-written VJPs that
recompute forward values instead of keeping them.

XLA sees a recomputation from forward-pass values only as a duplicate of the forward pass: CSE
merges it with the forward computation, or the scheduler hoists it there, and the "recomputed"
tensor stays alive from the forward to the backward pass after all (an optimization barrier does
not help on XLA:CPU, which expands barriers away before it schedules). Adding 0 * (one element of
g) leaves x unchanged for any finite g (XLA does not fold 0 * float, whose result is NaN for an
infinite operand), fuses into the recomputation at no cost, and can only run once g exists.
"""

import jax
import jax.numpy as jnp


def after(g: jax.Array, x: jax.Array) -> jax.Array:
  """x + 0 * g[0, ..., 0], in x's dtype: equal to x, but computed after g.

  Apply it to every forward-pass value a recomputation reads, small ones included: XLA also merges
  a broadcast of a kept [D] or [..., 1] value with the forward pass's identical broadcast, and then
  keeps that full-size broadcast alive instead.
  """
  zero = 0.0 * jax.lax.slice(g, (0,) * g.ndim, (1,) * g.ndim).reshape(())
  if jnp.issubdtype(x.dtype, jnp.bool_):
    return x & (zero == 0.0)
  return x + zero.astype(x.dtype)
