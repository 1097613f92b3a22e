"""The sensor input end to end: the world's tap-counting task through the trainer's input, the conv
tokenizer and the shared image ViT, a loss with gradients reaching the tokenizer, bad input and
config errors.

  cd /work/main && .venv/bin/python -m pytest -q tests/test_sensor_modality.py
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from tiny_models import TINY_SENSOR
from unified_io import contract
from unified_io.config import ConfigError, SensorConfig, UnifiedIOConfig
from unified_io.data import preprocess
from unified_io.data.converter import UnifiedIOFeatureConverter
from unified_io.datasets import world
from unified_io.model import UnifiedIOModel
from unified_io.modalities import Modality
from unified_io.network.embedders import SensorInputEmbedder
from unified_io.network.embedders.vit import ImageViT
from unified_io.presets import make_config

# Text + sensor in, text out: the smallest model that reads the sensor (one trunk layer a side).
MODEL_CFG = make_config("tiny", input_modalities=("text", "sensor"), num_encoder_layers=1,
                        num_decoder_layers=1)
SENSOR = MODEL_CFG.sensor  # 256 samples x 6 channels, 16-sample chunks: 16 tokens
LENGTHS = {"text_inputs": 24, "text_targets": 4, "sensor_input_samples": SENSOR.num_tokens}
BATCH = 2


@pytest.fixture(scope="module")
def pulled():
  """One batch of world_sensor_taps through the trainer's input, for MODEL_CFG's contract."""
  import unified_io.tasks  # noqa: F401  (registers world_sensor_taps)
  from unified_io.training.input import TrainInput
  converter = UnifiedIOModel(MODEL_CFG).feature_converter()
  return next(TrainInput("world_sensor_taps", LENGTHS, BATCH, converter, seed=0, process_index=0,
                         process_count=1))


def test_world_task_yields_the_contracts_sensor_features(pulled):
  sensor = pulled["inputs"]["sensor"]
  specs = contract.DataConfig.from_model(MODEL_CFG).feature_specs(LENGTHS)
  for name in ("input", "mask", "pos_ids"):
    shape, dtype = specs[f"inputs/sensor/{name}"]
    assert sensor[name].shape == (BATCH,) + shape and sensor[name].dtype == dtype, name
  assert sensor["input"].shape[-1] == SENSOR.patch * SENSOR.channels
  np.testing.assert_array_equal(sensor["mask"], 1)  # the world draws the full 256 samples
  np.testing.assert_array_equal(sensor["pos_ids"], np.broadcast_to(np.arange(16), (BATCH, 16)))
  # Raw units: gravity (~9.8 m/s^2) is on one accelerometer axis of every row.
  signal = sensor["input"].reshape(BATCH, SENSOR.length, SENSOR.channels)
  assert (np.abs(np.median(signal[:, :, :3], axis=1)).max(axis=1) > 9).all()
  assert (pulled["targets"]["text"]["mask"].sum(axis=1) >= 2).all()  # the count + EOS


def test_generator_taps_are_where_it_says():
  cfg = world.make_world_config()
  for i in range(4):
    ex = world.generate_example(world.GENERATORS["sensor_taps"], cfg, "train", i)
    onsets = ex["meta/tap_onsets"]
    assert ex["sensor_inputs"].shape == (256, 6) and ex["sensor_inputs"].dtype == np.float32
    assert ex["meta/answer"].item().decode() == ex["text_targets"].item().decode() == str(
        len(onsets))
    jerk = np.abs(np.diff(ex["sensor_inputs"][:, :3], axis=0)).sum(axis=1)
    for onset in onsets:  # each tap is the biggest jolt near its onset
      assert jerk[max(onset - 2, 0):onset + 3].max() > 5 * np.median(jerk)


def test_stage2_pads_masks_and_clips_a_short_signal():
  cfg = contract.DataConfig.from_model(MODEL_CFG)
  signal = np.zeros((100, 6), np.float32)
  signal[0] = [500, -500, 1, 2, 3, np.nan]
  fields = preprocess._sensor_fields({"sensor_inputs": tf.constant(signal)}, cfg, 16)
  patches = fields["sensor_patches"].numpy()
  assert patches.shape == (16, 96)
  np.testing.assert_array_equal(patches[0, :6], [100, -100, 1, 2, 3, 0])  # clipped, NaN -> 0
  np.testing.assert_array_equal(fields["sensor_patch_mask"].numpy(), [1] * 7 + [0] * 9)
  np.testing.assert_array_equal(fields["sensor_patch_pos_ids"].numpy(), np.arange(16))


class _Embed(nn.Module):
  """The sensor embedder with its own image ViT (the network shares one)."""

  cfg: UnifiedIOConfig

  @nn.compact
  def __call__(self, features):
    return SensorInputEmbedder(self.cfg, vit=ImageViT(self.cfg.image_vit))(features).embed


def _features(signal_btc):
  b = signal_btc.shape[0]
  n = SENSOR.num_tokens
  return {"input": jnp.asarray(signal_btc.reshape(b, n, SENSOR.patch_dim)),
          "mask": jnp.ones((b, n), jnp.int32),
          "pos_ids": jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))}


def _tap_at(chunk: int) -> np.ndarray:
  signal = np.zeros((SENSOR.length, SENSOR.channels), np.float32)
  signal[:, 2] = 9.81
  start = chunk * SENSOR.patch + 4
  signal[start:start + 6, :3] += 10 * np.exp(-np.arange(6) / 2.0)[:, None]
  return signal


@pytest.fixture(scope="module")
def embedder_params():
  return nn.meta.unbox(jax.jit(_Embed(MODEL_CFG).init)(jax.random.PRNGKey(0),
                                                        _features(np.stack([_tap_at(0)]))))


def test_embedder_shape_and_a_tap_moves_the_tokens_it_is_in(embedder_params):
  base = _tap_at(0)
  base[:, :3] = 0
  base[:, 2] = 9.81  # no tap
  signals = np.stack([base, _tap_at(3), _tap_at(11)])
  embed_bnd = jax.jit(_Embed(MODEL_CFG).apply)(embedder_params, _features(signals))
  assert embed_bnd.shape == (3, SENSOR.num_tokens, MODEL_CFG.trunk.emb_dim)
  change_n = jnp.abs(embed_bnd[1:] - embed_bnd[:1]).sum(-1)  # [2, N]
  assert int(jnp.argmax(change_n[0])) == 3 and int(jnp.argmax(change_n[1])) == 11


def test_an_unfrozen_vit_gets_gradients_too(embedder_params):
  """(The frozen default: test_tiny_sensor_model_loss_on_a_pulled_batch.)"""
  import dataclasses
  module = _Embed(dataclasses.replace(MODEL_CFG, freeze_vit=False))
  features = _features(np.stack([_tap_at(5)]))
  grads = jax.jit(jax.grad(lambda p: jnp.sum(module.apply(p, features) ** 2)))(embedder_params)
  grads = grads["params"]
  assert float(jnp.abs(grads["SensorInputEmbedder_0"]["tokenizer"]["kernel"]).sum()) > 0
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(
      grads["ImageViT_0"]["transformer"]))


def test_tiny_sensor_model_loss_on_a_pulled_batch(pulled):
  model = UnifiedIOModel(MODEL_CFG)
  batch = {"inputs": pulled["inputs"], "targets": pulled["targets"]}
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), batch))
  loss, grads = jax.jit(jax.value_and_grad(lambda p: model.loss_fn(p, batch)[0]))(params)
  assert np.isfinite(float(loss))
  kernel = grads["input_embedders_sensor"]["tokenizer"]["kernel"]
  assert kernel.shape == (SENSOR.kernel, SENSOR.channels, MODEL_CFG.image_vit.emb_dim)
  assert float(jnp.abs(kernel).sum()) > 0
  # freeze_vit (the default): the shared ViT's parameters get exactly zero gradient, though the
  # gradient flows through its blocks into the tokenizer.
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(
      grads["vits_image_vit"]))
  # Null modality: an absent signal (zeros, mask 0, as the converter writes it) changes nothing.
  absent = {**batch["inputs"], "sensor": jax.tree_util.tree_map(np.zeros_like,
                                                                batch["inputs"]["sensor"])}
  text_only = {k: v for k, v in batch["inputs"].items() if k != "sensor"}
  loss_fn = jax.jit(lambda p, inputs: model.loss_fn(p, {**batch, "inputs": inputs})[0])
  np.testing.assert_allclose(loss_fn(params, absent), loss_fn(params, text_only), rtol=1e-6)


def _stage2(signal: np.ndarray, static: bool = True):
  cfg = contract.DataConfig.from_model(MODEL_CFG)
  shape = signal.shape if static else (None, None)
  ds = tf.data.Dataset.from_generator(
      lambda: iter([{"text_inputs": b"How many taps?", "sensor_inputs": signal}]),
      output_signature={"text_inputs": tf.TensorSpec([], tf.string),
                        "sensor_inputs": tf.TensorSpec(shape, tf.float32)})
  out = preprocess.unified_preprocessor(ds, LENGTHS, data_config=cfg)
  return next(out.as_numpy_iterator())


@pytest.mark.parametrize("shape", [(256, 3), (300, 6)])
def test_bad_signal_is_refused_naming_the_field(shape):
  with pytest.raises(ValueError, match="sensor_inputs"):
    _stage2(np.zeros(shape, np.float32))  # static shapes: refused as the dataset is built
  with pytest.raises(tf.errors.InvalidArgumentError, match="sensor_inputs"):
    _stage2(np.zeros(shape, np.float32), static=False)  # dynamic: as the example is read


def test_sensor_input_needs_a_sensor_config():
  with pytest.raises(ConfigError, match="`sensor`: is required when sensor is an input"):
    UnifiedIOConfig(input_modalities=("text", "sensor"), image_vit=MODEL_CFG.image_vit)
  with pytest.raises(ConfigError, match="`image_vit`"):
    UnifiedIOConfig(input_modalities=("text", "sensor"), sensor=SensorConfig())
  with pytest.raises(ConfigError, match="sensor.length"):
    SensorConfig(length=250)
  # The release has no sensor: a release-sized model reading one must name its SensorConfig.
  with pytest.raises(ConfigError, match="`sensor`"):
    make_config("large", input_modalities=("text", "sensor"))
  assert make_config("large", input_modalities=("text", "sensor"),
                     sensor=SensorConfig(length=512)).sensor.num_tokens == 32


def test_gin_file_and_the_enum():
  import gin
  from unified_io.cli.gin_paths import gin_dir
  gin.clear_config()
  gin.add_config_file_search_path(gin_dir())
  try:
    gin.parse_config_files_and_bindings(["models/tiny_sensor.gin"], [])
    cfg = make_config()
  finally:
    gin.clear_config()
  assert cfg == TINY_SENSOR and Modality.SENSOR in cfg.input_modalities
  assert list(Modality)[-1] == Modality.SENSOR and not Modality.SENSOR.in_release
  assert Modality.SENSOR.has_patches and not Modality.SENSOR.can_be_target


def test_every_sensor_parameter_has_a_rule_and_is_replicated():
  from jax.sharding import PartitionSpec
  from unified_io import partitioning
  model = UnifiedIOModel(MODEL_CFG)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), model.dummy_batch(2, LENGTHS))
  ruled = {name for name, _ in partitioning.axis_rules()}
  logical = partitioning.logical_specs(abstract)["input_embedders_sensor"]
  assert logical["tokenizer"]["kernel"] == PartitionSpec("conv_w", "conv_in", "vit_embed")
  specs = jax.tree_util.tree_leaves(logical, is_leaf=lambda x: isinstance(x, PartitionSpec))
  assert specs and all(name in ruled for spec in specs for name in spec if name is not None)
  physical = partitioning.mesh_specs(abstract, partitioning.axis_rules())["input_embedders_sensor"]
  assert all(all(axis is None for axis in spec) for spec in jax.tree_util.tree_leaves(
      physical["tokenizer"], is_leaf=lambda x: isinstance(x, PartitionSpec)))
