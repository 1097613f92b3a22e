"""The pure training step: `train_step(state, batch, rng) -> (state, metrics)`.

- Gradient accumulation over `num_microbatches` equal slices of the batch (a `lax.scan`, so memory
  is one microbatch's activations). Each microbatch's loss is its own token mean, so the result
  equals the full-batch gradient when the microbatches hold equal numbers of target tokens (as
  t5x's accumulation does).
- Dropout: the step's rng is `fold_in(rng, step)` (then per microbatch), so a resumed run draws the
  same masks as an uninterrupted one.
- Non-finite loss or gradients: the update is skipped (parameters and optimizer state unchanged),
  the step still advances (the input pipeline has consumed the batch) and `nonfinite_steps` counts
  it; the training loop decides whether to stop (policy "stop") or go on ("skip").

Metric names follow t5x where one exists: `loss`, `learning_rate`, `timing/...` (added by the
loop); ours: `loss/<modality>`, `grad_norm`, `nonfinite_steps`, `target_tokens`.
"""

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import re

import jax
import jax.numpy as jnp
import optax

from unified_io.config import ConfigError
from unified_io.training.train_state import TrainState

Metrics = Dict[str, jax.Array]


def target_tokens(batch) -> jax.Array:
  """Target tokens in the loss (the sum of every target modality's loss mask)."""
  total = jnp.zeros((), jnp.int32)
  for features in batch["targets"].values():
    mask = features.get("loss_mask", features.get("mask"))
    total += jnp.sum(mask).astype(jnp.int32)
  return total


def split_microbatches(batch, num_microbatches: int):
  """[B, ...] leaves -> [num_microbatches, B / num_microbatches, ...]."""
  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"train_step: batch size {x.shape[0]} is not divisible by "
                       f"num_microbatches={num_microbatches}")
    return x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:])
  return jax.tree_util.tree_map(split, batch)


class TrainableError(ConfigError):
  """`train.trainable` names no parameter (one line naming the pattern)."""


def trainable_mask(params, patterns: Sequence[str]) -> Any:
  """A tree like `params` of bools: True where the "/"-joined path matches (`re.search`) one of
  `patterns`; each pattern must match some parameter (TrainableError, one line, otherwise)."""
  paths = {jax.tree_util.keystr(p, simple=True, separator="/"): p
           for p, _ in jax.tree_util.tree_leaves_with_path(params)}
  compiled = []
  for pattern in patterns:
    try:
      compiled.append(re.compile(pattern))
    except re.error as exc:
      raise TrainableError(f"train.trainable: {pattern!r} is not a regular expression ({exc})")
    if not any(compiled[-1].search(path) for path in paths):
      raise TrainableError(f"train.trainable: {pattern!r} matches no parameter; parameters are "
                           f"named like {next(iter(paths), '?')!r}")
  return jax.tree_util.tree_map_with_path(
      lambda p, _: any(c.search(jax.tree_util.keystr(p, simple=True, separator="/"))
                       for c in compiled), params)


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation,
                    learning_rate: Callable[[jax.Array], jax.Array], *,
                    num_microbatches: int = 1, use_dropout: bool = True,
                    combine: Optional[Callable] = None, trainable: Optional[Any] = None
                    ) -> Callable[[TrainState, Dict, jax.Array], Tuple[TrainState, Metrics]]:
  """`loss_fn(params, batch, dropout_rng) -> (loss, {name: value})`, e.g. `model.loss_fn`.

  `combine(frozen, trainable, dropout_rng) -> params`: the model's parameters from the state's
  `frozen` part and the trained `params` (e.g. a base plus LoRA adapters,
  `unified_io.training.adapted`); gradients and updates then reach the trained part only.
  `trainable`: a tree like the params of Python bools (`trainable_mask`): the others get a zero
  gradient (so `grad_norm` and clipping see only the trained ones) and keep their values exactly,
  whatever the optimizer would do to them (e.g. a weight decay)."""
  if combine is not None:
    model_loss = loss_fn

    def loss_fn(trainable, batch, rng, frozen):  # pylint: disable=function-redefined
      return model_loss(combine(frozen, trainable, rng), batch, rng)
  else:
    model_loss = loss_fn
    loss_fn = lambda params, batch, rng, frozen: model_loss(params, batch, rng)  # noqa: E731
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def loss_and_grads(params, batch, rng, frozen):
    dropout_rng = rng if use_dropout else None
    if num_microbatches <= 1:
      (loss, aux), grads = grad_fn(params, batch, dropout_rng, frozen)
      return loss, aux, grads
    micro = split_microbatches(batch, num_microbatches)

    def body(carry, inputs):
      index, microbatch = inputs
      micro_rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, index)
      (loss, aux), grads = grad_fn(params, microbatch, micro_rng, frozen)
      return jax.tree_util.tree_map(jnp.add, carry, (loss, aux, grads)), None

    _, aux_shape = jax.eval_shape(loss_fn, params, jax.tree_util.tree_map(lambda x: x[0], micro),
                                  dropout_rng, frozen)
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                   (jnp.zeros(()), aux_shape, params))
    (loss, aux, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(num_microbatches), micro))
    scale = 1.0 / num_microbatches
    return jax.tree_util.tree_map(lambda x: x * scale, (loss, aux, grads))

  def train_step(state: TrainState, batch, rng: jax.Array) -> Tuple[TrainState, Metrics]:
    step_rng = jax.random.fold_in(rng, state.step)
    loss, aux, grads = loss_and_grads(state.params, batch, step_rng, state.frozen)
    if trainable is not None:
      grads = jax.tree_util.tree_map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    if trainable is not None:
      new_params = jax.tree_util.tree_map(lambda n, o, t: n if t else o, new_params, state.params,
                                          trainable)
    keep = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
        lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(step=state.step + 1,
                              params=keep(new_params, state.params),
                              opt_state=keep(new_opt_state, state.opt_state),
                              nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32))
    metrics = {"loss": loss, **aux, "grad_norm": grad_norm,
               "learning_rate": learning_rate(state.step),
               "nonfinite_steps": new_state.nonfinite_steps, "target_tokens": target_tokens(batch)}
    return new_state, metrics

  return train_step


def jit_train_step(train_step: Callable, state_shardings=None, batch_sharding=None,
                   donate: bool = True) -> Callable:
  """The jitted step with the state donated (updated in place) and explicit shardings if given."""
  in_shardings = None if state_shardings is None else (state_shardings, batch_sharding, None)
  out_shardings = None if state_shardings is None else (state_shardings, None)
  return jax.jit(train_step, in_shardings=in_shardings, out_shardings=out_shardings,
                 donate_argnums=(0,) if donate else ())
