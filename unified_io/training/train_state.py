"""The training state: everything a checkpoint holds besides the input pipeline's position."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # int32 [], the number of updates applied or skipped so far
  params: Any
  opt_state: optax.OptState
  nonfinite_steps: jax.Array  # int32 [], steps whose loss or gradients were NaN/Inf

  @classmethod
  def create(cls, params, optimizer: optax.GradientTransformation) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
               nonfinite_steps=jnp.zeros((), jnp.int32))
