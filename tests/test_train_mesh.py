"""One real train step on 8 fake CPU devices equals the single-device step (see conftest.py).

The step is the trainer's: Adafactor with the t5x defaults, `make_train_step` (dropout rng given),
jitted with donation and the state shardings `partitioning.state_shardings` derives from the
logical axis rules, the batch assembled by `partitioning.global_batch`. Meshes: (data=2, model=4),
and the same mesh with FSDP (parameters' embed axis also split over data). The single-device run
is the same step jitted without shardings on one device, on the same batch and rng.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from unified_io import partitioning
from unified_io.presets import make_config
from unified_io.model import UnifiedIOModel
from unified_io.training.optim import adafactor, learning_rate_schedule
from unified_io.training.train_setup import abstract_state
from unified_io.training.train_state import TrainState
from unified_io.training.train_step import jit_train_step, make_train_step

# Dropout is left at 0: its threefry masks make the step's compile ~4x slower on CPU.
CFG = make_config("tiny", text_vocab_size=512)
BATCH, L_ENC, T_DEC = 8, 12, 10
LR = learning_rate_schedule("constant", base_learning_rate=0.01)


def random_batch(seed=0):
  """Random tokens with ragged padding in the encoder and the decoder."""
  rng = np.random.default_rng(seed)
  vocab = CFG.trunk.text_vocab_size
  enc_len = rng.integers(4, L_ENC + 1, BATCH)
  dec_len = rng.integers(3, T_DEC + 1, BATCH)
  enc_mask = (np.arange(L_ENC)[None] < enc_len[:, None]).astype(np.int32)
  dec_mask = (np.arange(T_DEC)[None] < dec_len[:, None]).astype(np.int32)
  targets = rng.integers(2, vocab, (BATCH, T_DEC)).astype(np.int32) * dec_mask
  dec_inputs = np.concatenate([np.zeros((BATCH, 1), np.int32), targets[:, :-1]], axis=1) * dec_mask
  return {
      "inputs": {"text": {
          "tokens": rng.integers(2, vocab, (BATCH, L_ENC)).astype(np.int32) * enc_mask,
          "mask": enc_mask,
          "pos_ids": np.broadcast_to(np.arange(L_ENC, dtype=np.int32), (BATCH, L_ENC)).copy()}},
      "targets": {"text": {"inputs": dec_inputs, "targets": targets, "mask": dec_mask,
                           "loss_mask": dec_mask}},
  }


def _path(keypath):
  return tuple(str(getattr(k, "key", k)) for k in keypath)


@pytest.fixture(scope="module")
def setup():
  """The single-device reference: two warm-up steps on other batches, then the compared step.

  Warm-up matters: Adafactor's first update is g / sqrt(g^2 + 1e-30), about sign(g) per element,
  so an element whose gradient is at rounding level flips sign with the summation order. From a
  trained second moment the update is g / sqrt(v), smooth in g, and tight tolerances hold.
  """
  model = UnifiedIOModel(CFG)
  optimizer = adafactor(LR)
  batch = random_batch()
  init = lambda: model.init(jax.random.PRNGKey(3), batch)  # noqa: E731
  rng = jax.random.PRNGKey(7)
  step = jit_train_step(make_train_step(model.loss_fn, optimizer, LR, use_dropout=True))
  state = TrainState.create(nn.meta.unbox(jax.jit(init)()), optimizer)
  for seed in (1, 2):
    state, _ = step(state, random_batch(seed), rng)
  state = jax.device_get(state)
  # The step donates its state: give it a copy, keep `state` for the sharded runs.
  state_1, metrics_1 = step(jax.device_put(state), batch, rng)
  return dict(model=model, optimizer=optimizer, batch=batch, init=init, state=state, rng=rng,
              state_1=jax.device_get(state_1), metrics_1=jax.device_get(metrics_1))


def _assert_trees_close(got, want, what, rtol=2e-5, atol=1e-6):
  flat_got = dict(jax.tree_util.tree_leaves_with_path(got))
  flat_want = dict(jax.tree_util.tree_leaves_with_path(want))
  assert flat_got.keys() == flat_want.keys(), what
  for key, value in flat_want.items():
    np.testing.assert_allclose(np.asarray(flat_got[key]), np.asarray(value), rtol=rtol, atol=atol,
                               err_msg=f"{what}{jax.tree_util.keystr(key)}")


def test_single_device_step_changes_the_parameters(setup):
  """Guards the comparison below: the step really updates (almost) every parameter."""
  state, state_1 = setup["state"], setup["state_1"]
  assert int(state_1.step) == 3 and int(state_1.nonfinite_steps) == 0
  moved = {jax.tree_util.keystr(kp): float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
           for (kp, a), b in zip(jax.tree_util.tree_leaves_with_path(state_1.params),
                                 jax.tree_util.tree_leaves(state.params))}
  still = sorted(k for k, v in moved.items() if v == 0)
  # Only the target tables of modalities this text-only batch has no targets for stay put.
  assert still == ["['token_embedders_audio']['embedding']",
                   "['token_embedders_image']['embedding']"], still
  assert max(moved.values()) > 1e-3


@pytest.mark.parametrize("fsdp", [False, True], ids=["data2_model4", "fsdp"])
def test_sharded_train_step_equals_single_device(setup, fsdp):
  assert jax.device_count() == 8, "conftest.py should give 8 fake CPU devices"
  mesh = partitioning.make_mesh(data=2, model=4)
  rules = partitioning.axis_rules(fsdp)
  model, optimizer = setup["model"], setup["optimizer"]
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):  # as the trainer runs it
    boxed, abstract = abstract_state(setup["init"], optimizer)
    shardings = partitioning.state_shardings(boxed, abstract, mesh, rules)
    state = jax.device_put(setup["state"], shardings)
    batch = partitioning.global_batch(setup["batch"], mesh)
    step = jit_train_step(
        make_train_step(model.loss_fn, optimizer, LR, use_dropout=True), state_shardings=shardings,
        batch_sharding=jax.tree_util.tree_map(lambda x: x.sharding, batch))
    new_state, metrics = step(state, batch, setup["rng"])
    new_state = jax.block_until_ready(new_state)

  # Placement: parameters as the rules say, really split (each device holds its part only);
  # optimizer leaves shaped like their parameter go with it, the rest is replicated.
  want_specs = {_path(kp): spec for kp, spec in jax.tree_util.tree_leaves_with_path(
      partitioning.mesh_specs(boxed, rules), is_leaf=lambda x: isinstance(x, P))}
  param_shapes = {_path(kp): x.shape for kp, x in
                  jax.tree_util.tree_leaves_with_path(new_state.params)}
  params_split = 0
  for kp, leaf in jax.tree_util.tree_leaves_with_path(new_state.params):
    spec = want_specs[_path(kp)]
    assert leaf.sharding.spec == spec, (_path(kp), leaf.sharding.spec, spec)
    parts = int(np.prod([mesh.shape[axis] for axis in spec if axis is not None]))
    assert leaf.addressable_shards[0].data.size * parts == leaf.size, _path(kp)
    params_split += parts > 1
  assert params_split >= len(want_specs) // 2, "most parameters should be split"
  assert any("data" in s for s in want_specs.values()) == fsdp

  split_moments, replicated_stats = 0, 0
  for kp, leaf in jax.tree_util.tree_leaves_with_path(new_state.opt_state):
    names = _path(kp)
    owner = [p for p in param_shapes if names[-len(p):] == p]
    if owner and leaf.shape == param_shapes[owner[0]]:
      assert leaf.sharding.spec == want_specs[owner[0]], (names, leaf.sharding.spec)
      split_moments += leaf.sharding.spec != P()
    else:
      assert leaf.sharding.spec == P(), (names, leaf.sharding.spec)
      replicated_stats += leaf.size > 1
  # Unfactored second moments (q/k/v kernels: their two largest dims are not both >= 128) follow
  # their parameter; factored row/column statistics (the 128 x 256 MLP kernels) are replicated.
  assert split_moments > 0 and replicated_stats > 0, (split_moments, replicated_stats)

  metrics_1, state_1 = setup["metrics_1"], setup["state_1"]
  np.testing.assert_allclose(float(metrics["loss"]), float(metrics_1["loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["grad_norm"]), float(metrics_1["grad_norm"]), rtol=1e-5)
  assert int(new_state.step) == 3
  _assert_trees_close(jax.device_get(new_state.params), state_1.params, "params")
  _assert_trees_close(jax.device_get(new_state.opt_state), state_1.opt_state, "opt_state",
                      rtol=1e-4, atol=1e-9)
