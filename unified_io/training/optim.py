"""The optimizer and learning-rate schedules, with the defaults t5x users expect.

`adafactor` is optax's Adafactor with t5x's defaults: second-moment decay exponent 0.8, factored
second moments for parameters whose two largest dimensions are both >= 128, update clipping at RMS
1.0, step size scaled by the parameter's RMS (floored at 1e-3), no first moment unless `beta1` is
given; plus optional global-norm gradient clipping in front (t5x's `global_norm_clip`).

`learning_rate_schedule` reads t5x's factor strings, e.g. "constant * rsqrt_decay" (the t5x
default: base / sqrt(max(step, warmup))) or "constant * linear_warmup * rsqrt_decay".
"""

from typing import Callable, Optional

import gin
import jax.numpy as jnp
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]
_FACTORS = ("constant", "linear_warmup", "rsqrt_decay", "rsqrt_normalized_decay", "linear_decay",
            "cosine_decay")


@gin.configurable
def learning_rate_schedule(factors: str = "constant * rsqrt_decay",
                           base_learning_rate: float = 1.0, warmup_steps: int = 10_000,
                           decay_steps: Optional[int] = None, min_learning_rate: float = 0.0
                           ) -> Schedule:
  """A step -> learning rate function, the product of the named t5x factors.

  constant          base_learning_rate
  linear_warmup     min(1, step / warmup_steps)
  rsqrt_decay       1 / sqrt(max(step, warmup_steps))
  rsqrt_normalized_decay  sqrt(warmup_steps) / sqrt(max(step, warmup_steps)) (1 after warmup)
  linear_decay      1 - step / decay_steps, floored at 0
  cosine_decay      0.5 (1 + cos(pi min(step, decay_steps) / decay_steps))
  The product is floored at `min_learning_rate`.
  """
  names = [name.strip() for name in factors.split("*")]
  for name in names:
    if name not in _FACTORS:
      raise ValueError(f"learning_rate_schedule: unknown factor {name!r} in {factors!r}; "
                       f"known: {', '.join(_FACTORS)}")
    if name in ("linear_decay", "cosine_decay") and not decay_steps:
      raise ValueError(f"learning_rate_schedule: factor {name!r} needs decay_steps > 0")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warmup = jnp.float32(max(warmup_steps, 1))
    lr = jnp.float32(1.0)
    for name in names:
      if name == "constant":
        lr = lr * base_learning_rate
      elif name == "linear_warmup":
        lr = lr * jnp.minimum(1.0, step / warmup)
      elif name == "rsqrt_decay":
        lr = lr / jnp.sqrt(jnp.maximum(step, warmup))
      elif name == "rsqrt_normalized_decay":
        lr = lr * jnp.sqrt(warmup) / jnp.sqrt(jnp.maximum(step, warmup))
      elif name == "linear_decay":
        lr = lr * jnp.maximum(0.0, 1.0 - step / decay_steps)
      else:  # cosine_decay
        lr = lr * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(step, decay_steps) / decay_steps))
    return jnp.maximum(lr, min_learning_rate)

  return schedule


@gin.configurable
def adafactor(learning_rate: Schedule = gin.REQUIRED, *, decay_rate: float = 0.8,
              min_dim_size_to_factor: int = 128, clipping_threshold: Optional[float] = 1.0,
              multiply_by_parameter_scale: bool = True, beta1: Optional[float] = None,
              weight_decay_rate: Optional[float] = None,
              global_norm_clip: Optional[float] = None) -> optax.GradientTransformation:
  """Adafactor with the t5x defaults (see the module docstring)."""
  inner = optax.adafactor(learning_rate, min_dim_size_to_factor=min_dim_size_to_factor,
                          decay_rate=decay_rate, multiply_by_parameter_scale=multiply_by_parameter_scale,
                          clipping_threshold=clipping_threshold, momentum=beta1,
                          weight_decay_rate=weight_decay_rate)
  if global_norm_clip is None:
    return inner
  return optax.chain(optax.clip_by_global_norm(global_norm_clip), inner)
