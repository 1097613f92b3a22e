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
  # Parameters the step reads but never updates, e.g. the (int8) base under LoRA adapters
  # (`unified_io.training.adapted`); then `params` holds only what trains. Checkpoints leave it
  # out: the base is read again from where it came from, so several runs share one base.
  frozen: Any = None

  @classmethod
  def create(cls, params, optimizer: optax.GradientTransformation, frozen: Any = None
             ) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
               nonfinite_steps=jnp.zeros((), jnp.int32), frozen=frozen)
