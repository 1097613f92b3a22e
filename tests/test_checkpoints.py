"""Train checkpoints (save, keep K, resume, data position) and params-only loading."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unified_io.training.checkpoints import CheckpointError, TrainCheckpoints, load_params
from unified_io.training.optim import adafactor, learning_rate_schedule
from unified_io.training.train_state import TrainState


def _state(seed=0):
  rng = np.random.default_rng(seed)
  params = {"encoder": {"wi": jnp.asarray(rng.normal(size=(256, 192)), jnp.float32),
                        "scale": jnp.asarray(rng.normal(size=(192,)), jnp.float32)},
            "head": {"kernel": jnp.asarray(rng.normal(size=(192, 10)), jnp.float32)}}
  return TrainState.create(params, adafactor(learning_rate_schedule("constant", 0.1)))


def _equal(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_keep_and_resume_latest(tmp_path):
  ckpts = TrainCheckpoints(str(tmp_path / "ckpt"), save_every=2, keep=2)
  saved = {}
  for step in range(1, 8):
    state = _state(step).replace(step=jnp.int32(step))
    if ckpts.save(step, state, {"batches": step, "seed": 7}):
      saved[step] = state
  ckpts.wait()
  assert sorted(saved) == [2, 4, 6]
  assert list(ckpts.all_steps()) == [4, 6]          # keep=2
  reopened = TrainCheckpoints(str(tmp_path / "ckpt"), save_every=2, keep=2)
  state, data = reopened.restore(jax.eval_shape(lambda: _state()))
  assert int(state.step) == 6 and data == {"batches": 6, "seed": 7}
  _equal(state, saved[6])
  with pytest.raises(CheckpointError, match="no checkpoint for step 2"):
    reopened.restore(_state(), step=2)
  reopened.close()
  ckpts.close()


def test_forced_save_off_the_interval(tmp_path):
  ckpts = TrainCheckpoints(str(tmp_path), save_every=100)
  assert not ckpts.save(3, _state(), {"batches": 3})
  assert ckpts.save(3, _state(), {"batches": 3}, force=True)
  ckpts.wait()
  assert ckpts.latest_step() == 3
  ckpts.close()


def test_load_params_with_assignment_map_and_dtype(tmp_path):
  ckpts = TrainCheckpoints(str(tmp_path), save_every=1)
  source = _state(1)
  ckpts.save(1, source, {"batches": 1})
  ckpts.wait()
  ckpts.close()
  target = {"encoder": {"wi": jnp.zeros((256, 192)), "scale": jnp.zeros((192,))},
            "new_head": {"kernel": jnp.ones((192, 10))}, "fresh": {"bias": jnp.full((3,), 5.0)}}
  loaded = load_params(str(tmp_path / "1"), target, dtype=jnp.bfloat16,
                       assignment_map=[(r"^new_head/(.*)", r"head/\1"), (r"^fresh/", None)])
  assert loaded["encoder"]["wi"].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(loaded["new_head"]["kernel"], np.float32),
                             np.asarray(source.params["head"]["kernel"]), rtol=1e-2)
  np.testing.assert_array_equal(np.asarray(loaded["fresh"]["bias"], np.float32), 5.0)
  with pytest.raises(CheckpointError, match="1 parameters of the model are not in"):
    load_params(str(tmp_path / "1"), {**target, "other": {"w": jnp.zeros((2,))}},
                assignment_map=[(r"^new_head/(.*)", r"head/\1"), (r"^fresh/", None)])
  with pytest.raises(CheckpointError, match="another config"):
    load_params(str(tmp_path / "1"), {"encoder": {"wi": jnp.zeros((4, 4))}}, strict=False)
  with pytest.raises(CheckpointError, match="no orbax checkpoint"):
    load_params(str(tmp_path / "nowhere"), target)
