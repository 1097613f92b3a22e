"""load_run: a MODEL_DIR's run-config.json + checkpoint -> model and parameters; steps, dtypes, a
checkpoint of another config, missing directories, and the caller's gin left as it was.

Runs are written the way uio2-train writes them (run-config.json, orbax checkpoints through
TrainCheckpoints) with random parameters: no training, no compiled init."""

import os
import shutil

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unified_io.cli import gin_flags
from unified_io.presets import make_config
from unified_io.contract import DataConfig
from unified_io.evaluation import run_loader
from unified_io.evaluation.run_loader import RunLoadError, load_run
from unified_io.model import UnifiedIOModel
from unified_io.training.checkpoints import TrainCheckpoints
from unified_io.training.run_config import RunConfig
from unified_io.training.train_state import TrainState

TEXT_LENGTHS = {"text_inputs": 24, "text_targets": 12}


def config_of(model_gin: str, bindings=()):
  """The model config a size gin (+ bindings) describes; gin is left clear."""
  try:
    return gin_flags.model_config([model_gin], list(bindings))
  finally:
    gin.clear_config()


def write_run(model_dir, model_gin="models/tiny.gin", lengths=None, steps=(3,), bindings=()):
  """A MODEL_DIR as uio2-train leaves it: run-config.json and checkpoints/<step> for each step
  (random parameters, seeded by the step). Returns {step: params}."""
  lengths = lengths or TEXT_LENGTHS
  cfg = config_of(model_gin, bindings)
  shapes = run_loader.abstract_params(UnifiedIOModel(cfg))
  saved = {}
  checkpoints = TrainCheckpoints(os.path.join(model_dir, "checkpoints"), async_save=False)
  for step in steps:
    params = random_params(shapes, seed=step)
    state = TrainState.create(params, optax.sgd(0.1)).replace(step=jnp.int32(step))
    checkpoints.save(step, state, {"batches_consumed": step, "seed": 0}, force=True)
    saved[step] = params
  checkpoints.wait()
  checkpoints.close()
  RunConfig.of_training(cfg, lengths, "world_text").save(model_dir)
  return saved


def random_params(shapes, seed: int):
  """Parameters of the given shapes without compiling the model's init (a minute for the
  all-modality model on CPU): norm scales 1, biases 0, other arrays ~ N(0, 1 / fan_in)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(path[-1].key)
    if name == "scale":
      return jnp.ones(leaf.shape, leaf.dtype)
    if name == "bias":
      return jnp.zeros(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
    return jnp.asarray(rng.normal(0.0, fan_in ** -0.5, leaf.shape), leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _assert_params_equal(got, expected):
  flat_got = jax.tree_util.tree_leaves_with_path(got)
  flat_expected = jax.tree_util.tree_leaves_with_path(expected)
  assert [p for p, _ in flat_got] == [p for p, _ in flat_expected]
  for (path, a), (_, b) in zip(flat_got, flat_expected):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("text_run"))
  return model_dir, write_run(model_dir, steps=(2, 5))


def test_model_dir_loads_the_newest_step_with_the_runs_config(text_run):
  model_dir, saved = text_run
  run = load_run(model_dir)
  assert run.step == 5 and run.model_dir == model_dir
  assert run.model.cfg == make_config("tiny")
  assert run.task_feature_lengths == TEXT_LENGTHS
  assert run.data_config == DataConfig.from_model(run.model.cfg)
  assert run.vocabulary.vocab_size == run.model.cfg.trunk.text_vocab_size
  _assert_params_equal(run.params, saved[5])


def test_a_step_or_a_step_directory(text_run):
  model_dir, saved = text_run
  by_step = load_run(model_dir, step=2)
  assert by_step.step == 2
  _assert_params_equal(by_step.params, saved[2])
  by_dir = load_run(os.path.join(model_dir, "checkpoints", "2"))
  assert by_dir.step == 2 and by_dir.model_dir == model_dir
  _assert_params_equal(by_dir.params, saved[2])
  with pytest.raises(RunLoadError, match=r"has no step 4; its steps are \[2, 5\]"):
    load_run(model_dir, step=4)


def test_bfloat16_casts_every_float_parameter(text_run):
  model_dir, saved = text_run
  run = load_run(model_dir, dtype="bfloat16")
  for got, expected in zip(jax.tree_util.tree_leaves(run.params),
                           jax.tree_util.tree_leaves(saved[5])):
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected), rtol=1e-2,
                               atol=1e-6)
  with pytest.raises(RunLoadError, match="dtype .int4."):
    load_run(model_dir, dtype="int4")


def test_the_callers_gin_is_left_alone(text_run):
  model_dir, _ = text_run
  gin.clear_config()
  try:
    gin.bind_parameter("make_config.size", "small")
    before = gin.config_str()
    run = load_run(model_dir)
    assert run.model.cfg.trunk == make_config("tiny").trunk  # the run's config, not the gin's
    assert gin.config_str() == before
    assert gin.query_parameter("make_config.size") == "small"
  finally:
    gin.clear_config()
  load_run(model_dir)
  assert gin.config_str().strip() == ""


def test_a_checkpoint_of_another_config_names_the_first_parameter(text_run):
  model_dir, _ = text_run
  with pytest.raises(RunLoadError) as err:
    load_run(model_dir, model_config=make_config("tiny", mlp_dim=384))
  message = str(err.value)
  assert "\n" not in message
  assert "mlp" in message and "384" in message and "in the checkpoint but" in message
  assert "--gin_file" in message
  with pytest.raises(RunLoadError, match="the model has parameter .* that the checkpoint lacks"):
    load_run(model_dir, model_config=make_config("tiny", num_decoder_layers=3))


def test_missing_things_are_one_clear_line(tmp_path, text_run):
  with pytest.raises(RunLoadError, match="no such directory"):
    load_run(str(tmp_path / "nowhere"))
  empty = tmp_path / "empty_run"
  empty.mkdir()
  RunConfig(make_config("tiny")).save(str(empty))
  with pytest.raises(RunLoadError, match="no checkpoint yet"):
    load_run(str(empty))
  bare = tmp_path / "bare"
  bare.mkdir()
  with pytest.raises(RunLoadError, match="no run-config.json beside it"):
    load_run(str(bare))
  broken = tmp_path / "broken_run"
  shutil.copytree(text_run[0], broken)
  (broken / "run-config.json").write_text('{"format": 1, "model": {"trunk": {"emb_dm": 3}}}')
  with pytest.raises(RunLoadError, match="run-config.json: `model`.*emb_dm"):
    load_run(str(broken))


def test_a_bare_checkpoint_with_a_model_config(tmp_path, text_run):
  model_dir, saved = text_run
  bare = tmp_path / "release"
  shutil.copytree(os.path.join(model_dir, "checkpoints", "5"), bare)
  run = load_run(str(bare), model_config=config_of("models/tiny.gin"))
  assert run.model_dir is None and run.task_feature_lengths is None and run.step == 0
  _assert_params_equal(run.params, saved[5])


def test_a_per_layer_checkpoint_loads_into_a_scanned_model(tmp_path, text_run):
  """A converted release is per layer; the large/xl/xxl gins scan their layers: the checkpoint is
  checked in its own layout and stacked, whole or straight onto a mesh's shardings."""
  from unified_io import partitioning
  from unified_io.network import layer_stacking
  model_dir, saved = text_run
  bare = tmp_path / "release"
  shutil.copytree(os.path.join(model_dir, "checkpoints", "5"), bare)
  scanned = config_of("models/tiny.gin", ["make_config.scan_layers = True"])
  expected = layer_stacking.stack_layers(saved[5])
  _assert_params_equal(load_run(str(bare), model_config=scanned).params, expected)
  mesh = partitioning.make_mesh(model=2, devices=jax.devices()[:4])
  run = load_run(str(bare), model_config=scanned, mesh=mesh, dtype="bfloat16")
  assert run.model.cfg.trunk.scan_layers
  kernel = run.params["encoder"]["layers"]["attention"]["query"]["kernel"]
  assert kernel.dtype == jnp.bfloat16 and kernel.sharding.mesh.shape == mesh.shape
  _assert_params_equal(jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), run.params),
                       jax.tree_util.tree_map(lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16),
                                                                    np.float32), expected))
