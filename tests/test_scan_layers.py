"""Scan over layers (`TrunkConfig.scan_layers`) computes what the per-layer stack computes.

Each scanned model gets the per-layer model's parameters through `layer_stacking.stack_layers`, so
losses, logits and (unstacked) gradients must agree to float32 rounding. Also: attention patterns
picked per layer under scan, dropout rngs split per layer, the stacked parameters' partition specs
on 8 fake devices, cached decoding (greedy and beam) through unchanged `unified_io.decoding`, and
per-layer checkpoints loading into a scanned model.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from test_dynamic_masking import teacher_forced_steps
from unified_io import decoding, partitioning

from unified_io.network import layer_stacking, masks, trunk as transformer

from unified_io.cli import merge
from unified_io.config import RematPolicy
from unified_io.presets import make_config, trunk_config
from unified_io.model import UnifiedIOModel, modality_loss
from unified_io.training.checkpoints import load_params

VOCAB, L_ENC, T_TEXT = 256, 8, 6
IMAGE_TOKENS = 256  # the tiny image tokenizer's 16 x 16 grid


def _models(**overrides):
  plain = UnifiedIOModel(make_config("tiny", text_vocab_size=VOCAB, **overrides))
  scanned = UnifiedIOModel(make_config("tiny", text_vocab_size=VOCAB, scan_layers=True,
                                       **overrides))
  return plain, scanned


def _batch(model, seed=0, image=False):
  """Random tokens, a padded encoder row and a padded decoder row; an image target with a random
  task mask (noised decoder inputs) when `image`."""
  rng = np.random.default_rng(seed)
  batch = model.dummy_batch(2, {"text_inputs": L_ENC, "text_targets": T_TEXT})
  text_in, text_out = batch["inputs"]["text"], batch["targets"]["text"]
  text_in["tokens"] = rng.integers(2, VOCAB, (2, L_ENC)).astype(np.int32)
  text_in["mask"][1, -3:] = 0
  text_out["targets"] = rng.integers(2, VOCAB, (2, T_TEXT)).astype(np.int32)
  text_out["inputs"] = np.concatenate([np.zeros((2, 1), np.int32), text_out["targets"][:, :-1]], 1)
  text_out["mask"][0, -2:] = 0
  text_out["loss_mask"] = text_out["mask"].copy()
  if image:
    image_out = batch["targets"]["image"]
    del image_out["image"]  # tokens given directly: no VQGAN encode
    image_out["targets"] = rng.integers(2, 200, (2, IMAGE_TOKENS)).astype(np.int32)
    image_out["task_mask"] = (rng.random((2, IMAGE_TOKENS)) < 0.3).astype(np.int32)
  return batch


def _loss_logits_grads(model, params, batch):
  """(loss, {modality: logits}, grads) from one jitted pass; the loss as `model.loss_fn` sums it."""
  def loss(p):
    outputs = model.outputs(p, batch)
    total = sum(modality_loss(o.logits, o.targets, o.loss_mask, model.cfg.trunk.z_loss)
                for o in outputs.values())
    return total, {name: o.logits for name, o in outputs.items()}
  (total, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return float(total), jax.device_get(logits), jax.device_get(grads)


def _assert_trees_close(a, b, rtol, atol):
  flat_a = dict(jax.tree_util.tree_leaves_with_path(a))
  flat_b = dict(jax.tree_util.tree_leaves_with_path(b))
  assert flat_a.keys() == flat_b.keys()
  for key, value in flat_a.items():
    np.testing.assert_allclose(flat_b[key], value, rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(key))


def _random_params(model, batch, skip: str):
  """Parameters of `model`'s shapes without compiling its init: arrays ~ N(0, 1/shape[0]), vectors
  (norm scales, modality vectors) ~ 1 + N(0, 0.1); subtrees named `skip` (unused by the batch)
  left out."""
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch))
  rng = np.random.default_rng(7)

  def fill(tree):
    if not isinstance(tree, dict):
      if len(tree.shape) == 1:
        return (1 + 0.1 * rng.standard_normal(tree.shape)).astype(np.float32)
      return (rng.standard_normal(tree.shape) / np.sqrt(tree.shape[0])).astype(np.float32)
    return {k: fill(v) for k, v in tree.items() if k != skip}
  return fill(shapes)


class Setup:
  """A per-layer model, its scanned twin, per-layer params and their stacked copy, a batch, and
  the per-layer model's (loss, logits, grads) on it (computed once)."""

  def __init__(self, image=False, **overrides):
    self.plain, self.scanned = _models(**overrides)
    self.batch = _batch(self.plain, image=image)
    if image:  # compiling the VQGAN's init costs more than the rest of the test
      self.params = _random_params(self.plain, self.batch, skip="vqgan")
    else:
      self.params = nn.meta.unbox(jax.jit(self.plain.init)(jax.random.PRNGKey(0), self.batch))
    self.stacked = layer_stacking.stack_layers(self.params)
    self._reference = None

  @property
  def reference(self):
    if self._reference is None:
      self._reference = _loss_logits_grads(self.plain, self.params, self.batch)
    return self._reference

  def check(self, loss_b, logits_b, grads_b):
    """A scanned model's (loss, logits, stacked grads) match the per-layer model's."""
    loss_a, logits_a, grads_a = self.reference
    assert np.isfinite(loss_a) and loss_a > 0
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
    _assert_trees_close(logits_a, logits_b, rtol=1e-5, atol=1e-5)
    _assert_trees_close(grads_a, layer_stacking.unstack_layers(grads_b), rtol=1e-4, atol=1e-7)
    # Every layer's gradient is non-trivial, so a layer the scan skipped would show.
    for i in range(self.plain.cfg.trunk.num_decoder_layers):
      assert float(np.abs(grads_a["decoder"][f"layers_{i}"]["mlp"]["wo"]["kernel"]).max()) > 1e-4


@pytest.fixture(scope="module")
def text():
  return Setup()


def test_scanned_equals_per_layer_text(text):
  assert "layers" in text.stacked["decoder"] and "layers_0" not in text.stacked["decoder"]
  assert text.stacked["decoder"]["layers"]["mlp"]["wo"]["kernel"].shape[0] == 2
  text.check(*_loss_logits_grads(text.scanned, text.stacked, text.batch))


def test_scanned_with_remat_equals_per_layer(text):
  scanned = UnifiedIOModel(make_config("tiny", text_vocab_size=VOCAB, scan_layers=True,
                                       remat_policy=RematPolicy.FULL))
  text.check(*_loss_logits_grads(scanned, text.stacked, text.batch))
  # The remat really is inside the scanned body.
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: scanned.loss_fn(p, text.batch)[0]))(text.stacked))
  assert "scan" in jaxpr and ("remat" in jaxpr or "checkpoint" in jaxpr)


def test_scanned_equals_per_layer_image_target_with_dynamic_masking():
  # 3 decoder layers: ROW, COLUMN, CONV (masks.layer_pattern), each picked by its scanned index.
  image = Setup(image=True, target_modalities=("text", "image"), dynamic_masking=True,
                num_decoder_layers=3)
  image.check(*_loss_logits_grads(image.scanned, image.stacked, image.batch))


def test_scanned_init_has_the_per_layer_shapes():
  plain, scanned = _models()
  batch = plain.dummy_batch(1, {"text_inputs": 4, "text_targets": 4})
  shapes_plain = jax.eval_shape(lambda: nn.meta.unbox(plain.init(jax.random.PRNGKey(0), batch)))
  shapes_scan = jax.eval_shape(lambda: nn.meta.unbox(scanned.init(jax.random.PRNGKey(0), batch)))
  as_shapes = lambda t: jax.tree_util.tree_map(lambda x: x.shape, t)  # noqa: E731
  assert as_shapes(layer_stacking.unstack_layers(shapes_scan)) == as_shapes(shapes_plain)
  assert as_shapes(layer_stacking.stack_layers(shapes_plain)) == as_shapes(shapes_scan)


# ------------------------------------------------------------------------------------------------
# per-layer attention patterns under scan, on the Decoder alone (3 layers: ROW, COLUMN, CONV)
# ------------------------------------------------------------------------------------------------
GRID_W, T_GRID, NUM_LAYERS = 6, 24, 3


def _decoder_args(cfg, deterministic=True):
  """Random Decoder inputs over a 4 x 6 token grid with some noised inputs (dynamic masking)."""
  rng = np.random.default_rng(3)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
  noisy = jnp.asarray(rng.random((2, T_GRID)) < 0.25)
  layout = masks.TargetLayout(jnp.arange(T_GRID), jnp.full((T_GRID,), GRID_W), noisy)
  return (normal(2, T_GRID, cfg.emb_dim), jnp.ones((2, T_GRID), jnp.int32),
          jnp.zeros((2, T_GRID), jnp.int32), normal(2, T_GRID, cfg.head_dim),
          normal(2, 5, cfg.emb_dim), jnp.ones((2, 5), jnp.int32), normal(2, 5, cfg.head_dim),
          deterministic, layout)


def _decoder_outputs(cfg, params=None):
  args = _decoder_args(cfg)
  decoder = transformer.Decoder(cfg)
  if params is None:
    params = jax.jit(lambda: decoder.init(jax.random.PRNGKey(0), *args)["params"])()
  return params, np.asarray(jax.jit(lambda p: decoder.apply({"params": p}, *args))(params))


def test_scanned_decoder_applies_each_layers_pattern(monkeypatch):
  schedule = [int(masks.layer_pattern(i, NUM_LAYERS)) for i in range(NUM_LAYERS)]
  assert set(schedule) == {int(p) for p in masks.Pattern}
  plain_cfg = trunk_config("tiny", num_decoder_layers=NUM_LAYERS)
  scan_cfg = trunk_config("tiny", num_decoder_layers=NUM_LAYERS, scan_layers=True)
  params, out_plain = _decoder_outputs(plain_cfg)
  stacked = layer_stacking.stack_layers({"decoder": nn.meta.unbox(params)})["decoder"]
  _, out_scan = _decoder_outputs(scan_cfg, stacked)
  np.testing.assert_allclose(out_scan, out_plain, rtol=1e-5, atol=1e-5)
  # The layer index really chooses the mask: the same stack with the schedule reversed differs.
  monkeypatch.setattr(transformer, "_layer_patterns",
                      lambda n: np.asarray(schedule[::-1], np.int32))
  _, out_reversed = _decoder_outputs(scan_cfg, stacked)
  assert np.abs(out_reversed - out_plain).max() > 1e-3


def test_dropout_rngs_are_split_per_layer():
  cfg = trunk_config("tiny", scan_layers=True, dropout_rate=0.5)
  args = _decoder_args(cfg, deterministic=False)
  decoder = transformer.Decoder(cfg)
  params = jax.jit(lambda: decoder.init(jax.random.PRNGKey(0), *args)["params"])()

  @jax.jit
  def dropped(rng):
    """Per layer: where the layer's first residual dropout zeroed activations, [N, B, T, D]."""
    _, state = decoder.apply({"params": params}, *args, rngs={"dropout": rng},
                             capture_intermediates=lambda mdl, _: isinstance(mdl, nn.Dropout),
                             mutable=["intermediates"])
    # The layer's one Dropout runs after each of its three sub-blocks; the first call's output.
    return state["intermediates"]["layers"]["Dropout_0"]["__call__"][0] == 0

  zeros = np.asarray(dropped(jax.random.PRNGKey(1)))
  assert zeros.shape == (cfg.num_decoder_layers, 2, T_GRID, cfg.emb_dim)
  assert 0.4 < zeros.mean() < 0.6  # the dropout ran at its rate
  assert (zeros[0] != zeros[1]).mean() > 0.4, "the layers share a dropout mask: rngs not split"
  assert (np.asarray(dropped(jax.random.PRNGKey(2))) != zeros).mean() > 0.4


# ------------------------------------------------------------------------------------------------
# partition specs of the stacked parameters (8 fake devices, see conftest.py)
# ------------------------------------------------------------------------------------------------
def _flat_specs(tree):
  return {tuple(str(getattr(k, "key", k)) for k in kp): spec
          for kp, spec in jax.tree_util.tree_leaves_with_path(
              tree, is_leaf=lambda x: isinstance(x, P))}


@pytest.mark.parametrize("fsdp", [False, True], ids=["no_fsdp", "fsdp"])
def test_stacked_parameter_specs(fsdp):
  plain, scanned = _models()
  batch = plain.dummy_batch(8, {"text_inputs": 4, "text_targets": 4})
  boxed_plain = jax.eval_shape(plain.init, jax.random.PRNGKey(0), batch)
  boxed_scan = jax.eval_shape(scanned.init, jax.random.PRNGKey(0), batch)
  rules = partitioning.axis_rules(fsdp)
  logical_plain = _flat_specs(partitioning.logical_specs(boxed_plain))
  mesh_plain = _flat_specs(partitioning.mesh_specs(boxed_plain, rules))
  logical_scan = _flat_specs(partitioning.logical_specs(boxed_scan))
  mesh_scan = _flat_specs(partitioning.mesh_specs(boxed_scan, rules))
  stacked = [p for p in logical_scan if p[1] == "layers"]
  assert stacked and {p[0] for p in stacked} == {"encoder", "decoder"}
  for path in logical_scan:
    if path[1] != "layers":  # outside the stacks: as in the per-layer model
      assert logical_scan[path] == logical_plain[path] and mesh_scan[path] == mesh_plain[path]
      continue
    per_layer = (path[0], "layers_0") + path[2:]
    assert tuple(logical_scan[path]) == ("layers",) + tuple(logical_plain[per_layer]), path
    assert tuple(mesh_scan[path]) == (None,) + tuple(mesh_plain[per_layer]), path
  assert len(logical_scan) == len(logical_plain) - sum(
      1 for p in logical_plain if p[1].startswith("layers_") and p[1] != "layers_0")


def test_sharded_scanned_step_equals_the_single_device_per_layer_model(text):
  """(data=2, model=4) with FSDP: the stacked parameters split as the rules say, and the scanned
  step equals the single-device per-layer one."""
  mesh = partitioning.make_mesh(data=2, model=4)
  rules = partitioning.axis_rules(fsdp=True)
  boxed = jax.eval_shape(text.scanned.init, jax.random.PRNGKey(0), text.batch)
  shardings = nn.meta.unbox(partitioning.shardings(boxed, mesh, rules))
  sharded = jax.device_put(text.stacked, shardings)
  kernel = sharded["decoder"]["layers"]["mlp"]["wi_0"]["kernel"]
  assert kernel.sharding.spec == P(None, "data", "model") and len(kernel.sharding.device_set) == 8
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    result = _loss_logits_grads(text.scanned, sharded,
                                jax.device_put(text.batch, partitioning.batch_sharding(mesh)))
  text.check(*result)


# ------------------------------------------------------------------------------------------------
# cached decoding through the unchanged unified_io.decoding
# ------------------------------------------------------------------------------------------------
def test_cached_logits_of_a_scanned_model_equal_the_full_pass(text):
  scanned, stacked, batch = text.scanned, text.stacked, text.batch
  targets = batch["targets"]["text"]["targets"]
  encoded = decoding.encode(scanned, stacked, batch["inputs"])
  logits_bv, cache = decoding.start_decoding(scanned, stacked, "text", encoded, T_TEXT)
  # Stored batch-major: every cache leaf has the batch first, the layer axis second.
  for leaf in jax.tree_util.tree_leaves(cache):
    assert leaf.shape[:2] == (2, scanned.cfg.trunk.num_decoder_layers), leaf.shape
  cached = teacher_forced_steps(scanned, stacked, "text", cache, logits_bv, targets[:, :T_TEXT],
                                encoded.mask)
  full = text.reference[1]["text"]  # the per-layer model's teacher-forced logits
  valid = batch["targets"]["text"]["mask"].astype(bool)  # (the full pass has padded positions)
  np.testing.assert_allclose(cached[valid], full[valid], rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("options", [decoding.DecodeOptions(max_length=T_TEXT),
                                     decoding.DecodeOptions(method="beam", num_beams=3,
                                                            max_length=T_TEXT)],
                         ids=["greedy", "beam"])
def test_generate_on_a_scanned_model_equals_the_per_layer_model(text, options):
  plain, scanned, params, stacked, batch = (
      text.plain, text.scanned, text.params, text.stacked, text.batch)
  out_plain = decoding.generate(plain, params, batch["inputs"], "text", options)
  out_scan = decoding.generate(scanned, stacked, batch["inputs"], "text", options)
  np.testing.assert_array_equal(out_scan.tokens, out_plain.tokens)
  np.testing.assert_array_equal(out_scan.lengths, out_plain.lengths)
  np.testing.assert_allclose(out_scan.scores, out_plain.scores, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# layouts: conversion and checkpoints
# ------------------------------------------------------------------------------------------------
def test_stack_and_unstack_are_inverse(text):
  params, stacked = text.params, text.stacked
  assert layer_stacking.is_stacked(stacked) and not layer_stacking.is_stacked(params)
  _assert_trees_close(params, layer_stacking.unstack_layers(stacked), rtol=0, atol=0)
  # Converting a tree already in the target layout changes nothing.
  _assert_trees_close(stacked, layer_stacking.stack_layers(stacked), rtol=0, atol=0)
  _assert_trees_close(params, layer_stacking.match_layout(params, params), rtol=0, atol=0)
  # The resamplers' own layers_{i} are outside the trunk stacks and stay.
  other = {"image_history": {"layers_0": {"w": np.ones(2)}}, "encoder": {"x": np.ones(1)}}
  assert layer_stacking.stack_layers(other) == other


def test_bad_layouts_are_refused():
  w = np.ones((2, 3))
  with pytest.raises(layer_stacking.LayerLayoutError, match="layers_0 .. layers_"):
    layer_stacking.stack_layers({"encoder": {"layers_0": {"w": w}, "layers_2": {"w": w}}})
  with pytest.raises(layer_stacking.LayerLayoutError, match="both"):
    layer_stacking.unstack_layers({"encoder": {"layers_0": {"w": w}, "layers": {"w": w}}})
  with pytest.raises(layer_stacking.LayerLayoutError, match="other parameters"):
    layer_stacking.stack_layers({"decoder": {"layers_0": {"w": w}, "layers_1": {"v": w}}})
  with pytest.raises(layer_stacking.LayerLayoutError, match="leading"):
    layer_stacking.unstack_layers({"decoder": {"layers": {"w": w, "v": np.ones((3,))}}})


def test_per_layer_checkpoint_loads_into_a_scanned_model(tmp_path, text):
  """A converted release (per-layer names, `uio2-convert`'s layout) fine-tunes a scanned model,
  and a scanned checkpoint loads into a per-layer model."""
  params, stacked = text.params, text.stacked
  merge.save_params(str(tmp_path / "per_layer"), params, {})
  target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), stacked)
  loaded = load_params(str(tmp_path / "per_layer"), target)
  _assert_trees_close(stacked, loaded, rtol=0, atol=0)
  merge.save_params(str(tmp_path / "scanned"), stacked, {})
  loaded = load_params(str(tmp_path / "scanned"), params)
  _assert_trees_close(params, loaded, rtol=0, atol=0)
