"""The train step: t5x schedules and Adafactor defaults, microbatching, non-finite updates."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unified_io.presets import make_config
from unified_io.model import UnifiedIOModel
from unified_io.training.optim import adafactor, learning_rate_schedule
from unified_io.training.train_state import TrainState
from unified_io.training.train_step import TrainableError, make_train_step, trainable_mask

from tiny_models import random_tokens


def _text_model_and_batch(batch_size=4):
  model = UnifiedIOModel(make_config("tiny", text_vocab_size=256))
  batch = random_tokens(model.dummy_batch(batch_size, {"text_inputs": 8, "text_targets": 6}))
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), batch))
  return model, params, batch


def test_rsqrt_schedule_is_flat_during_warmup_then_decays():
  lr = learning_rate_schedule("constant * rsqrt_decay", base_learning_rate=2.0, warmup_steps=100)
  np.testing.assert_allclose([lr(0), lr(50), lr(100), lr(400)],
                             [0.2, 0.2, 0.2, 0.1], rtol=1e-6)
  warm = learning_rate_schedule("constant * linear_warmup", base_learning_rate=1.0,
                                warmup_steps=10)
  np.testing.assert_allclose([warm(0), warm(5), warm(10), warm(50)], [0, 0.5, 1, 1], rtol=1e-6)


def test_unknown_schedule_factor_is_named():
  with pytest.raises(ValueError, match="rsqrt_dekay"):
    learning_rate_schedule("constant * rsqrt_dekay")


def test_adafactor_factors_only_large_matrices():
  params = {"big": jnp.ones((256, 512)), "small": jnp.ones((64, 512))}
  state = adafactor(learning_rate_schedule("constant", 0.01)).init(params)
  factored = state[0] if isinstance(state, tuple) else state
  leaves = {jax.tree_util.keystr(p): x.shape for p, x in
            jax.tree_util.tree_leaves_with_path(factored)}
  shapes = set(leaves.values())
  assert (256,) in shapes and (512,) in shapes   # v_row / v_col of the big matrix
  assert (64, 512) in shapes                      # the small one keeps a full second moment


def test_microbatching_equals_the_full_batch_step():
  model, params, batch = _text_model_and_batch(4)
  sgd = optax.sgd(0.1)
  lr = lambda step: jnp.float32(0.1)  # noqa: E731
  states = {}
  for k in (1, 2):
    step = jax.jit(make_train_step(model.loss_fn, sgd, lr, num_microbatches=k, use_dropout=False))
    states[k], metrics = step(TrainState.create(params, sgd), batch, jax.random.PRNGKey(0))
    assert int(metrics["target_tokens"]) == 4 * 6
  for a, b in zip(jax.tree_util.tree_leaves(states[1].params),
                  jax.tree_util.tree_leaves(states[2].params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_indivisible_microbatches_fail_clearly():
  model, params, batch = _text_model_and_batch(4)
  step = make_train_step(model.loss_fn, optax.sgd(0.1), lambda s: 0.1, num_microbatches=3)
  with pytest.raises(ValueError, match="not divisible by num_microbatches=3"):
    step(TrainState.create(params, optax.sgd(0.1)), batch, jax.random.PRNGKey(0))


def test_nonfinite_loss_skips_the_update_and_counts_it():
  params = {"w": jnp.ones((3,))}
  sgd = optax.sgd(1.0)

  def loss_fn(p, batch, rng):
    loss = jnp.sum(p["w"] * batch["x"])
    return loss, {"loss/text": loss}

  step = jax.jit(make_train_step(loss_fn, sgd, lambda s: 1.0, use_dropout=False))
  state = TrainState.create(params, sgd)
  good = {"x": jnp.ones((3,)), "targets": {}}
  bad = {"x": jnp.array([1.0, jnp.nan, 1.0]), "targets": {}}
  state, _ = step(state, good, jax.random.PRNGKey(0))
  np.testing.assert_allclose(state.params["w"], 0.0)
  state, metrics = step(state, bad, jax.random.PRNGKey(0))
  np.testing.assert_allclose(state.params["w"], 0.0)   # unchanged, no NaN leaked in
  assert int(state.step) == 2 and int(state.nonfinite_steps) == 1
  assert int(metrics["nonfinite_steps"]) == 1


def test_adafactor_training_lowers_the_loss():
  model, params, batch = _text_model_and_batch(4)
  lr = learning_rate_schedule("constant", base_learning_rate=0.05)
  opt = adafactor(lr, global_norm_clip=1.0)
  step = jax.jit(make_train_step(model.loss_fn, opt, lr, use_dropout=False))
  state = TrainState.create(params, opt)
  losses = []
  for _ in range(15):
    state, metrics = step(state, batch, jax.random.PRNGKey(0))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0], losses


def test_trainable_patterns_train_only_their_parameters_and_keep_the_rest_exactly():
  """train.trainable: a weight decay would move every parameter; the mask keeps the others."""
  params = {"input_projection": {"kernel": jnp.ones((2, 2))},
            "decoder": {"wo": jnp.ones((2,)), "norm": jnp.ones((2,))}}
  mask = trainable_mask(params, ["^input_projection/", "norm$"])
  assert mask == {"input_projection": {"kernel": True}, "decoder": {"wo": False, "norm": True}}
  opt = optax.adamw(0.1, weight_decay=0.5)

  def loss_fn(p, batch, rng):
    loss = sum(jnp.sum(x * batch["x"]) for x in jax.tree_util.tree_leaves(p))
    return loss, {}

  step = jax.jit(make_train_step(loss_fn, opt, lambda s: 0.1, use_dropout=False, trainable=mask))
  batch = {"x": jnp.float32(2.0), "targets": {"text": {"mask": jnp.ones((1, 2), jnp.int32)}}}
  state, metrics = step(TrainState.create(params, opt), batch, jax.random.PRNGKey(0))
  assert not np.array_equal(state.params["input_projection"]["kernel"], np.ones((2, 2)))
  assert not np.array_equal(state.params["decoder"]["norm"], np.ones(2))
  np.testing.assert_array_equal(state.params["decoder"]["wo"], np.ones(2))
  # The gradient norm counts only what trains: 4 + 2 entries of gradient 2.
  assert float(metrics["grad_norm"]) == pytest.approx(2.0 * np.sqrt(6))
  with pytest.raises(TrainableError, match=r"^train.trainable: 'encoder/' matches no parameter"):
    trainable_mask(params, ["encoder/"])
