"""UnIVAL's light CNN encoders (`UnifiedIOConfig.cnn_encoder`, unified_io/network/embedders/cnn.py):
the patches rebuild the picture, one feature per patch that follows its pixels and moves with
them, masked patches change nothing, the parameter tree (only the ViTs swapped for CNNs), shapes
per modality, a partition spec for every CNN parameter on 8 fake devices, gradients into every
CNN parameter, a train step, the config's errors and its gin file.

  cd /work/main && .venv/bin/python -m pytest -q tests/test_cnn_encoders.py
"""

import dataclasses

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from unified_io import partitioning
from unified_io.config import (CNN_MODALITIES, CnnEncoderConfig, ConfigError, UnifiedIOConfig,
                               from_dict, to_dict)
from unified_io.modalities import Modality
from unified_io.model import UnifiedIOModel
from unified_io.network.embedders import INPUT_EMBEDDERS, VITS
from unified_io.network.embedders.cnn import CnnEncoder, scatter_patches, unpatchify
from unified_io.network.embedders.patches import patchify
from unified_io.presets import make_config
from unified_io.training.optim import learning_rate_schedule
from unified_io.training.train_state import TrainState
from unified_io.training.train_step import make_train_step

INPUTS = ("text", "image", "image_history", "audio", "audio_history")
LENGTHS = {"text_inputs": 8, "text_targets": 8, "image_input_samples": 16,
           "audio_input_samples": 8, "image_history_input_samples": 8,
           "audio_history_input_samples": 8, "num_frames": 2}


def tiny(cnn_encoder=None, inputs=INPUTS, **overrides):
  """The tiny preset reading `inputs` and writing text (small vocabularies: the encoders are
  under test)."""
  cfg = make_config("tiny", input_modalities=inputs, target_modalities=("text",),
                    text_vocab_size=512, image_vocab_size=0, audio_vocab_size=0, **overrides)
  return dataclasses.replace(cfg, cnn_encoder=cnn_encoder)


def _path(keypath):
  return "/".join(str(getattr(k, "key", k)) for k in keypath)


def shapes(tree):
  return {_path(kp): tuple(leaf.shape)
          for kp, leaf in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(tree))}


def abstract_params(cfg):
  model = UnifiedIOModel(cfg)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), model.dummy_batch(1, LENGTHS))


# ------------------------------------------------------------------------------------------------
# the module: 4 px patches on a 24 x 24 grid, two stages (stem stride 1), 3 channels
# ------------------------------------------------------------------------------------------------
PATCH, GRID, CHANNELS = 4, (24, 24), 3
SMALL = CnnEncoderConfig(widths=(8, 16), norm_groups=4)


def random_params(abstract, seed: int = 0):
  """Parameters of init's tree drawn here (compiling init costs more than these tests): kernels
  fan-in normal, GroupNorm scales 1 + noise, biases small noise."""
  rng = np.random.default_rng(seed)

  def draw(keypath, leaf):
    if len(leaf.shape) > 1:
      return (rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
    base = 1.0 if _path(keypath).endswith("scale") else 0.0
    return (base + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(abstract))


@pytest.fixture(scope="module")
def encoder():
  """apply(x [B, N, P], mask [B, N], pos_ids [B, N]) -> (last, tap), jitted."""
  module = CnnEncoder(SMALL, PATCH, GRID, out_dim=12)
  p_dim = PATCH * PATCH * CHANNELS
  params = random_params(jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 3, p_dim)),
                                        jnp.ones((1, 3), jnp.int32), jnp.arange(3)[None]))
  return jax.jit(lambda x, m, pos: module.apply(params, x, m, pos))


def _cells(rows_cols):
  return np.asarray([r * GRID[1] + c for r, c in rows_cols], np.int32)[None]


def _patches(n, seed):
  return np.random.default_rng(seed).normal(size=(1, n, PATCH * PATCH * CHANNELS)).astype(
      np.float32)


def test_scattered_patches_rebuild_the_picture():
  image = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
  patches = np.asarray(patchify(jnp.asarray(image), PATCH))  # [2, 6, 48], row-major cells
  order = np.stack([np.random.default_rng(s).permutation(6) for s in (1, 2)])
  shuffled = np.take_along_axis(patches, order[..., None], axis=1)
  grid = scatter_patches(shuffled, np.ones((2, 6), np.int32), order, 6)
  np.testing.assert_array_equal(unpatchify(grid, (2, 3), PATCH), image)
  # A masked patch adds nothing, wherever its pos_ids point.
  mask = np.ones((2, 6), np.int32)
  mask[:, 0] = 0
  grid = np.asarray(scatter_patches(shuffled, mask, order, 6))
  assert np.all(grid[np.arange(2), order[:, 0]] == 0)


def test_shapes_and_a_patch_moves_its_own_feature_most(encoder):
  apply = encoder
  g = GRID[0] * GRID[1]
  x, pos = _patches(g, 0), np.random.default_rng(1).permutation(g).astype(np.int32)[None]
  mask = np.ones((1, g), np.int32)
  last, tap = apply(x, mask, pos)
  assert last.shape == tap.shape == (1, g, 12) and last.dtype == jnp.float32
  token = int(np.flatnonzero(pos[0] == 10 * GRID[1] + 10)[0])  # the patch at cell (10, 10)
  changed = x.copy()
  changed[0, token] += 1.0
  moved_last, moved_tap = apply(changed, mask, pos)
  rows, cols = np.divmod(pos[0], GRID[1])
  far = (np.abs(rows - 10) > 4) | (np.abs(cols - 10) > 4)  # beyond the receptive field
  for before, after in ((last, moved_last), (tap, moved_tap)):
    delta = np.abs(np.asarray(after - before)).max(axis=-1)[0]  # per token
    assert delta[token] > 1e-2, delta[token]
    # Beyond its receptive field a patch reaches a token only through GroupNorm's statistics.
    assert delta[token] > 20 * delta[far].max(), (delta[token], delta[far].max())


def test_features_move_with_the_patches(encoder):
  """Translation equivariance in the gather sense: the same patches two rows and three columns
  further (a whole number of cells, away from the border) give the same features, in whatever
  order the tokens come."""
  apply = encoder
  x = _patches(4, 1)
  cells = [(9, 9), (9, 10), (11, 9), (10, 11)]
  mask = np.ones((1, 4), np.int32)
  last, tap = apply(x, mask, _cells(cells))
  shifted_last, shifted_tap = apply(x, mask, _cells([(r + 2, c + 3) for r, c in cells]))
  np.testing.assert_allclose(shifted_last, last, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(shifted_tap, tap, atol=1e-5, rtol=1e-5)
  order = np.array([2, 0, 3, 1])
  perm_last, _ = apply(x[:, order], mask, _cells(cells)[:, order])
  np.testing.assert_allclose(perm_last, np.asarray(last)[:, order], atol=1e-6)
  # (and it has teeth: next to the border the zero padding shows)
  border_last, _ = apply(x, mask, _cells([(r - 9, c - 9) for r, c in cells]))
  assert np.abs(np.asarray(border_last - last)).max() > 1e-3


def test_masked_patches_change_no_other_feature(encoder):
  """As in the ViT (a masked patch is no key): a masked patch's pixels and pos_ids change no real
  token's features, and neither does how many masked patches pad the row."""
  apply = encoder
  x, pos = _patches(6, 2), _cells([(3, 3), (3, 4), (8, 8), (15, 2), (6, 6), (6, 7)])
  mask = np.array([[1, 1, 1, 1, 0, 0]], np.int32)
  real_last, real_tap = apply(x[:, :4], mask[:, :4], pos[:, :4])
  other = x.copy()
  other[:, 4:] = 100.0 * _patches(2, 3)
  other_pos = pos.copy()
  other_pos[0, 4:] = [pos[0, 0], 17]  # even onto a real patch's cell
  for patches, ids in ((x, pos), (other, other_pos)):
    last, tap = apply(patches, mask, ids)
    np.testing.assert_allclose(np.asarray(last)[:, :4], real_last, atol=1e-6)
    np.testing.assert_allclose(np.asarray(tap)[:, :4], real_tap, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# in the network: the parameter tree, shapes per modality, partition specs
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vit_boxed():
  return abstract_params(tiny())


@pytest.fixture(scope="module")
def cnn_boxed():
  return abstract_params(tiny(CnnEncoderConfig()))


def test_only_the_vits_are_swapped_for_cnns(vit_boxed, cnn_boxed):
  vit, cnn = shapes(vit_boxed), shapes(cnn_boxed)
  assert set(vit) - set(cnn) == {p for p in vit if p.startswith("vits_")}
  added = set(cnn) - set(vit)
  prefixes = {p.split("/cnn/")[0] for p in added}
  assert prefixes == {f"input_embedders_{m.value}" for m in CNN_MODALITIES}
  assert all(cnn[p] == vit[p] for p in cnn if p in vit)  # projections, resamplers, trunk
  # The features keep the ViT's width V; the histories read only the last map (no tap).
  v, widths = tiny().image_vit.emb_dim, CnnEncoderConfig().widths
  assert cnn["input_embedders_image/cnn/last_projection/kernel"] == (widths[-1], v)
  assert cnn["input_embedders_image/cnn/tap_projection/kernel"] == (widths[-2], v)
  assert cnn["input_embedders_audio/cnn/stem/kernel"] == (3, 3, 1, widths[0])
  assert not [p for p in added if "_history/cnn/tap_projection" in p]
  # Only some modalities: the others keep their ViT.
  image_only = shapes(abstract_params(tiny(CnnEncoderConfig(modalities=("image",)))))
  assert {p.split("/cnn/")[0] for p in image_only if "/cnn/" in p} == {"input_embedders_image"}
  assert any(p.startswith("vits_image_vit/") for p in image_only)  # image history's ViT


@pytest.mark.parametrize("modality", list(CNN_MODALITIES))
def test_embedder_output_shapes(modality):
  """Each embedder with its CNN gives what it gives with its ViT: [B, L, D] embeddings, [B, L]
  mask, [B, L, K] RoPE rows (shapes only: `jax.eval_shape`, nothing compiled)."""
  cfg = tiny(CnnEncoderConfig())
  features = UnifiedIOModel(cfg).dummy_batch(2, LENGTHS)["inputs"][modality.value]
  cls = INPUT_EMBEDDERS[modality]
  embedder = cls(cfg, vit=VITS[cls.VIT](getattr(cfg, cls.VIT)))
  variables = jax.eval_shape(embedder.init, jax.random.PRNGKey(0), features)
  part = jax.eval_shape(embedder.apply, variables, features)
  if modality.is_history:
    length = LENGTHS["num_frames"] * getattr(cfg, modality.value).latents_size
  else:
    length = LENGTHS[f"{modality.value}_input_samples"]
  d, k = cfg.trunk.emb_dim, cfg.trunk.head_dim
  assert part.embed.shape == (2, length, d) and part.mask.shape == (2, length)
  assert part.rope.shape == (2, length, k)
  assert "cnn" in variables["params"] and not [n for n in variables["params"] if "vit" in n.lower()]


EXPECTED_LOGICAL = {"kernel4": P("conv_h", "conv_w", "conv_in", "conv_out"),
                    "channel": P("conv_out"), "projection": P("conv_out", "vit_embed"),
                    "projection_bias": P("vit_embed")}


def _kind(path, ndim):
  if "_projection/" in path:
    return "projection" if ndim == 2 else "projection_bias"
  return "kernel4" if ndim == 4 else "channel"


@pytest.mark.parametrize("fsdp", [False, True], ids=["no_fsdp", "fsdp"])
def test_every_cnn_parameter_has_a_partition_spec(cnn_boxed, fsdp):
  rules = partitioning.axis_rules(fsdp)
  ruled = {name for name, _ in rules}
  is_spec = lambda x: isinstance(x, P)  # noqa: E731
  logical = {_path(kp): s for kp, s in jax.tree_util.tree_leaves_with_path(
      partitioning.logical_specs(cnn_boxed), is_leaf=is_spec)}
  physical = {_path(kp): s for kp, s in jax.tree_util.tree_leaves_with_path(
      partitioning.mesh_specs(cnn_boxed, rules), is_leaf=is_spec)}
  shape_of = shapes(cnn_boxed)
  cnn_paths = [p for p in logical if "/cnn/" in p]
  assert len(cnn_paths) == len([p for p in shape_of if "/cnn/" in p]) > 100
  assert len(jax.devices()) == 8
  mesh = partitioning.make_mesh(data=2, model=4)
  for path in cnn_paths:
    names = logical[path]
    assert names == EXPECTED_LOGICAL[_kind(path, len(shape_of[path]))], (path, names)
    assert set(names) <= ruled, f"{path}: {set(names) - ruled} have no rule"
    assert all(axis is None for axis in physical[path]), (path, physical[path])  # replicated
    sharding = jax.sharding.NamedSharding(mesh, physical[path])
    assert sharding.shard_shape(shape_of[path]) == shape_of[path]


# ------------------------------------------------------------------------------------------------
# training: a gradient into every CNN parameter, a finite train step
# ------------------------------------------------------------------------------------------------
def keep_gradients() -> optax.GradientTransformation:
  """An optax stage that keeps the step's gradients in its state and passes them on."""
  return optax.GradientTransformation(
      lambda params: jax.tree_util.tree_map(jnp.zeros_like, params),
      lambda grads, state, params=None: (grads, grads))


def test_train_step_is_finite_and_every_cnn_parameter_gets_a_gradient():
  """The train step (`make_train_step`, dropout; plain SGD: the optimizer is not under test) of a
  small CNN model: one encoder and one decoder layer, an image input (a CNN with its tap, 3
  channels) and an audio history (no tap, 1 channel), random pixels. The gradients are read from
  the optimizer state."""
  cfg = tiny(CnnEncoderConfig(widths=(16, 32), norm_groups=4),
             inputs=("text", "image", "audio_history"), num_encoder_layers=1,
             num_decoder_layers=1)
  model = UnifiedIOModel(cfg)
  batch = model.dummy_batch(2, LENGTHS)
  rng = np.random.default_rng(0)
  for modality in cfg.cnn_modalities:
    x = batch["inputs"][modality.value]["input"]
    batch["inputs"][modality.value]["input"] = rng.normal(size=x.shape).astype(np.float32)
  for side, name in (("inputs", "tokens"), ("targets", "targets"), ("targets", "inputs")):
    x = batch[side]["text"][name]
    batch[side]["text"][name] = rng.integers(3, 512, x.shape).astype(np.int32)
  params = random_params(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch))

  lr = learning_rate_schedule("constant", base_learning_rate=0.01)
  optimizer = optax.chain(keep_gradients(), optax.sgd(lr))
  step = jax.jit(make_train_step(model.loss_fn, optimizer, lr))
  state, metrics = step(TrainState.create(params, optimizer), batch, jax.random.PRNGKey(0))
  assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0
  assert int(state.nonfinite_steps) == 0 and int(state.step) == 1
  grads = {_path(kp): np.asarray(g) for kp, g in
           jax.tree_util.tree_leaves_with_path(state.opt_state[0]) if "/cnn/" in _path(kp)}
  assert {p.split("/cnn/")[0] for p in grads} == {"input_embedders_image",
                                                  "input_embedders_audio_history"}
  for path, grad in grads.items():
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0, f"{path}: no gradient"
  stem = state.params["input_embedders_image"]["cnn"]["stem"]["kernel"]
  assert np.abs(np.asarray(stem) - params["input_embedders_image"]["cnn"]["stem"]["kernel"]).max() > 0


# ------------------------------------------------------------------------------------------------
# config: errors, saved as data, the gin file
# ------------------------------------------------------------------------------------------------
def test_bad_configs_are_one_line_config_errors():
  cases = [(lambda: CnnEncoderConfig(modalities=("sensor",)), "cnn_encoder.modalities"),
           (lambda: CnnEncoderConfig(widths=(32, 60)), "cnn_encoder.widths"),
           (lambda: CnnEncoderConfig(widths=()), "cnn_encoder.widths"),
           (lambda: CnnEncoderConfig(blocks_per_stage=0), "cnn_encoder.blocks_per_stage"),
           # 5 stages halve 16 px patches too often
           (lambda: tiny(CnnEncoderConfig(widths=(8,) * 5)), "cnn_encoder.widths"),
           (lambda: tiny(CnnEncoderConfig(modalities=("audio",)), inputs=("text", "image")),
            "cnn_encoder.modalities"),
           (lambda: tiny(CnnEncoderConfig(), inputs=("text",)), "`cnn_encoder`")]
  for build, field in cases:
    with pytest.raises(ConfigError) as info:
      build()
    assert field in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_config_surface_and_data():
  cnn = CnnEncoderConfig(modalities=("audio", "image"))
  assert cnn.modalities == (Modality.IMAGE, Modality.AUDIO)  # enum order
  assert tiny(CnnEncoderConfig()).cnn_modalities == tuple(CNN_MODALITIES)
  assert tiny(cnn).cnn_modalities == (Modality.IMAGE, Modality.AUDIO)
  assert tiny().cnn_modalities == () and UnifiedIOConfig().cnn_encoder is None
  cfg = tiny(cnn)
  assert from_dict(UnifiedIOConfig, to_dict(cfg)) == cfg  # saved with a run, rebuilt from it


def test_gin_file_switches_the_encoders():
  from unified_io.cli.gin_paths import gin_dir  # pylint: disable=import-outside-toplevel
  configs = {}
  for name in ("tiny_multimodal", "tiny_multimodal_cnn"):
    gin.clear_config()
    gin.add_config_file_search_path(gin_dir())
    try:
      gin.parse_config_files_and_bindings([f"models/{name}.gin"], [])
      configs[name] = make_config()
    finally:
      gin.clear_config()
  cnn = configs["tiny_multimodal_cnn"]
  assert type(cnn.cnn_encoder) is CnnEncoderConfig
  assert cnn == dataclasses.replace(configs["tiny_multimodal"], cnn_encoder=CnnEncoderConfig())
  assert cnn.cnn_modalities == tuple(CNN_MODALITIES)
