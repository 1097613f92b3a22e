"""OneLLM's universal projection (`UnifiedIOConfig.input_projection`): the module's router and
mixture, its config and gin surface, its place in the network (shared, default path untouched),
gradients into every expert, and a partition spec for each of its parameters.

  cd /work/main && .venv/bin/python -m pytest -q tests/test_universal_projection.py
"""

import dataclasses

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from unified_io import partitioning
from unified_io.config import (ConfigError, ProjectionExpert, ProjectionRouter, UnifiedIOConfig,
                               UniversalProjectionConfig, from_dict, to_dict)
from unified_io.modalities import Modality
from unified_io.model import UnifiedIOModel
from unified_io.network.embedders.projection import UniversalProjection
from unified_io.presets import make_config

ALL_INPUTS = tuple(Modality)
VIT_READ = tuple(m for m in Modality if m.has_patches)
# The four leaves each served modality loses (its own projection to the trunk).
OWN_PROJECTIONS = {Modality.IMAGE: "input_embedders_image/projection/kernel",
                   Modality.AUDIO: "input_embedders_audio/projection/kernel",
                   Modality.IMAGE_HISTORY: "input_embedders_image_history/post_projection/kernel",
                   Modality.AUDIO_HISTORY: "input_embedders_audio_history/post_projection/kernel",
                   Modality.SENSOR: "input_embedders_sensor/projection/kernel"}
LENGTHS = {"text_inputs": 8, "text_targets": 8, "image_input_samples": 16,
           "audio_input_samples": 8, "image_history_input_samples": 8,
           "audio_history_input_samples": 8, "num_frames": 2, "sensor_input_samples": 8}


def tiny(inputs=ALL_INPUTS, input_projection=None, **overrides):
  """The tiny preset reading `inputs` and writing text (small vocabularies: only the projection
  is under test)."""
  return make_config("tiny", input_modalities=inputs, target_modalities=("text",),
                     text_vocab_size=512, image_vocab_size=0, audio_vocab_size=0,
                     input_projection=input_projection, **overrides)


def _path(keypath):
  return "/".join(str(getattr(k, "key", k)) for k in keypath)


def _is_spec(x):
  return isinstance(x, P)


def abstract_params(cfg):
  model = UnifiedIOModel(cfg)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), model.dummy_batch(1, LENGTHS))


def shapes(boxed):
  return {_path(kp): tuple(leaf.shape)
          for kp, leaf in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(boxed))}


# ------------------------------------------------------------------------------------------------
# the module: router weights and the mixture, against a hand computation
# ------------------------------------------------------------------------------------------------
def _module_and_params(router, expert="mlp", width=12):
  cfg = UniversalProjectionConfig(num_experts=3, expert=expert, router=router,
                                  mlp_dim=10 if expert == "mlp" else 0)
  module = UniversalProjection(cfg, (Modality.IMAGE, Modality.AUDIO), in_dim=width, emb_dim=6)
  params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), jnp.ones((1, 2, width)),
                                     Modality.IMAGE)["params"])
  # Random router parameters (they start at zero: the uniform mixture).
  rng = np.random.default_rng(0)
  params = {k: (rng.normal(size=v.shape).astype(np.float32) if k.startswith("router") else v)
            for k, v in params.items()}
  return module, params


@pytest.mark.parametrize("router", list(ProjectionRouter))
def test_router_weights_sum_to_one_and_follow_the_router(router):
  module, params = _module_and_params(router)
  x = np.random.default_rng(1).normal(size=(2, 5, 12)).astype(np.float32)
  for row, modality in enumerate((Modality.IMAGE, Modality.AUDIO)):
    out, weights = module.apply({"params": params}, x, modality)
    assert out.shape == (2, 5, 6) and weights.shape == (2, 5, 3)
    np.testing.assert_allclose(np.sum(weights, -1), 1.0, rtol=1e-6)
    logits = params["router_logits"][row] + (
        x @ params["router_token_kernel"] if router == ProjectionRouter.MODALITY_AND_TOKEN else 0)
    np.testing.assert_allclose(weights, jax.nn.softmax(np.broadcast_to(logits, (2, 5, 3))),
                               rtol=1e-5, atol=1e-6)
  if router == ProjectionRouter.MODALITY:  # the same weights for every token of a modality
    np.testing.assert_allclose(weights, np.broadcast_to(weights[:1, :1], weights.shape), rtol=1e-6)
  else:
    assert np.ptp(np.asarray(weights[..., 0])) > 1e-3


@pytest.mark.parametrize("expert", list(ProjectionExpert))
def test_output_is_the_weighted_sum_of_the_experts(expert):
  module, params = _module_and_params(ProjectionRouter.MODALITY_AND_TOKEN, expert)
  x = np.random.default_rng(2).normal(size=(4, 12)).astype(np.float32)
  out, weights = module.apply({"params": params}, x, Modality.AUDIO)
  experts = []
  for e in range(3):
    if expert == ProjectionExpert.LINEAR:
      experts.append(x @ params["experts_kernel"][e])
    else:
      hidden = jax.nn.gelu(x @ params["experts_in_kernel"][e] + params["experts_in_bias"][e])
      experts.append(hidden @ params["experts_out_kernel"][e] + params["experts_out_bias"][e])
  want = sum(np.asarray(weights)[:, e:e + 1] * experts[e] for e in range(3))
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def test_narrower_features_are_zero_padded():
  module, params = _module_and_params(ProjectionRouter.MODALITY_AND_TOKEN)
  x = np.random.default_rng(3).normal(size=(3, 7)).astype(np.float32)
  padded = np.concatenate([x, np.zeros((3, 5), np.float32)], axis=1)
  for a, b in zip(module.apply({"params": params}, x, Modality.IMAGE),
                  module.apply({"params": params}, padded, Modality.IMAGE)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="image_history"):
    module.apply({"params": params}, x, Modality.IMAGE_HISTORY)  # not served


# ------------------------------------------------------------------------------------------------
# config: validation, gin, saved as data
# ------------------------------------------------------------------------------------------------
def _one_line_error(fn, *args, **kwargs):
  with pytest.raises(ConfigError) as info:
    fn(*args, **kwargs)
  message = str(info.value)
  assert "\n" not in message, message
  return message


def test_unknown_modality_is_a_one_line_config_error():
  message = _one_line_error(UniversalProjectionConfig, modalities=("image", "depth"))
  assert "input_projection.modalities" in message and "'depth'" in message, message
  assert "known: image, image_history, audio, audio_history" in message, message
  message = _one_line_error(UniversalProjectionConfig, modalities=("text",))  # not ViT-read
  assert "'text'" in message, message


def test_bad_fields_are_config_errors():
  for kwargs, field in [(dict(num_experts=0), "num_experts"), (dict(expert="moe"), "expert"),
                        (dict(router="learned"), "router"), (dict(mlp_dim=-1), "mlp_dim"),
                        (dict(expert="linear", mlp_dim=8), "mlp_dim")]:
    message = _one_line_error(UniversalProjectionConfig, **kwargs)
    assert f"`input_projection.{field}`" in message, message
  # Served modalities must be inputs of the model, and the model must read some ViT input.
  image_only, text_only = tiny(("text", "image")), tiny(("text",))
  message = _one_line_error(dataclasses.replace, image_only,
                            input_projection=UniversalProjectionConfig(modalities=("audio",)))
  assert "'audio'" in message and "input_projection.modalities" in message, message
  message = _one_line_error(dataclasses.replace, text_only,
                            input_projection=UniversalProjectionConfig())
  assert "`input_projection`" in message, message
  # Through make_config (gin adds a line naming the configurable after the one-line message).
  with pytest.raises(ConfigError, match="input_projection.modalities"):
    tiny(("text", "image"), UniversalProjectionConfig(modalities=("audio",)))


def test_config_surface_gin_and_data():
  upm = UniversalProjectionConfig(num_experts=2, router="modality_and_token",
                                  modalities=("audio", "image"))
  assert upm.modalities == (Modality.IMAGE, Modality.AUDIO)  # enum order
  assert upm.router == ProjectionRouter.MODALITY_AND_TOKEN
  assert tiny(input_projection=UniversalProjectionConfig()).projected_modalities == VIT_READ
  assert tiny().projected_modalities == ()
  gin.clear_config()
  try:
    gin.parse_config("""
      make_config.input_modalities = ("text", "image", "audio")
      make_config.input_projection = @UniversalProjectionConfig()
      UniversalProjectionConfig.num_experts = 2
      UniversalProjectionConfig.router = "modality_and_token"
      UniversalProjectionConfig.modalities = ("audio", "image")
    """)
    cfg = make_config()
  finally:
    gin.clear_config()
  assert cfg.input_projection == upm
  assert type(cfg.input_projection) is UniversalProjectionConfig
  # Saved with a run as data and rebuilt from it.
  assert from_dict(UnifiedIOConfig, to_dict(cfg)) == cfg


# ------------------------------------------------------------------------------------------------
# in the network: the parameter tree, sharing, partition specs
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_boxed():
  return abstract_params(tiny())


@pytest.fixture(scope="module")
def universal_boxed():
  return abstract_params(tiny(input_projection=UniversalProjectionConfig(
      router="modality_and_token")))


def test_default_tree_is_the_release_one_and_universal_adds_only_its_leaves(default_boxed,
                                                                            universal_boxed):
  default, universal = shapes(default_boxed), shapes(universal_boxed)
  assert not [p for p in default if "input_projection" in p]
  cfg, emb = tiny(), 128
  assert default[OWN_PROJECTIONS[Modality.IMAGE]] == (2 * cfg.image_vit.emb_dim, emb)
  assert default[OWN_PROJECTIONS[Modality.AUDIO]] == (2 * cfg.audio_vit.emb_dim, emb)
  assert default[OWN_PROJECTIONS[Modality.IMAGE_HISTORY]] == (cfg.image_history.emb_dim, emb)
  assert default[OWN_PROJECTIONS[Modality.AUDIO_HISTORY]] == (cfg.audio_history.emb_dim, emb)

  assert set(default) - set(universal) == set(OWN_PROJECTIONS.values())
  width, k, hidden = 2 * cfg.image_vit.emb_dim, 3, 2 * emb  # the widest feature; mlp_dim 0
  assert {p: s for p, s in universal.items() if p not in default} == {
      "input_projection/router_logits": (len(VIT_READ), k),
      "input_projection/router_token_kernel": (width, k),
      "input_projection/experts_in_kernel": (k, width, hidden),
      "input_projection/experts_in_bias": (k, hidden),
      "input_projection/experts_out_kernel": (k, hidden, emb),
      "input_projection/experts_out_bias": (k, emb)}
  assert all(universal[p] == default[p] for p in universal if p in default)


def test_only_the_named_modalities_use_it():
  boxed = abstract_params(tiny(input_projection=UniversalProjectionConfig(
      modalities=("image", "audio"))))
  names = shapes(boxed)
  assert names["input_projection/router_logits"] == (2, 3)
  assert OWN_PROJECTIONS[Modality.IMAGE_HISTORY] in names
  assert OWN_PROJECTIONS[Modality.IMAGE] not in names


def test_one_module_serves_image_and_audio():
  cfg = tiny(("text", "image", "audio"), UniversalProjectionConfig())
  model = UnifiedIOModel(cfg)
  batch = model.dummy_batch(1, LENGTHS)
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)
  _, state = jax.eval_shape(
      lambda p: model.module.apply({"params": p}, batch, mutable=["intermediates"]),
      nn.meta.unbox(boxed))
  sown = state["intermediates"]["input_projection"]
  assert sown["router_weights_image"][0].shape == (1, LENGTHS["image_input_samples"], 3)
  assert sown["router_weights_audio"][0].shape == (1, LENGTHS["audio_input_samples"], 3)
  names = shapes(boxed)
  assert [p for p in names if "projection" in p] == [p for p in names
                                                     if p.startswith("input_projection/")]


EXPECTED_SPECS = {  # leaf: (logical axes, physical spec, physical spec with FSDP)
    "router_logits": (("projection_modalities", "projection_experts"), P(None, None),
                      P(None, None)),
    "router_token_kernel": (("vit_embed", "projection_experts"), P(None, None), P(None, None)),
    "experts_in_kernel": (("projection_experts", "vit_embed", "mlp"), P(None, None, "model"),
                          P(None, None, "model")),
    "experts_in_bias": (("projection_experts", "mlp"), P(None, "model"), P(None, "model")),
    "experts_out_kernel": (("projection_experts", "mlp", "embed"), P(None, "model", None),
                           P(None, "model", "data")),
    "experts_out_bias": (("projection_experts", "embed"), P(None, None), P(None, "data")),
}


@pytest.mark.parametrize("fsdp", [False, True], ids=["no_fsdp", "fsdp"])
def test_every_new_leaf_has_a_partition_spec(universal_boxed, fsdp):
  rules = partitioning.axis_rules(fsdp)
  ruled = {name for name, _ in rules}
  logical = {_path(kp): s for kp, s in jax.tree_util.tree_leaves_with_path(
      partitioning.logical_specs(universal_boxed), is_leaf=_is_spec)}
  physical = {_path(kp): s for kp, s in jax.tree_util.tree_leaves_with_path(
      partitioning.mesh_specs(universal_boxed, rules), is_leaf=_is_spec)}
  new = {p.split("/")[-1]: p for p in logical if p.startswith("input_projection/")}
  assert set(new) == set(EXPECTED_SPECS)
  mesh = partitioning.make_mesh(data=2, model=4)  # 8 fake CPU devices (conftest.py)
  shape_of = shapes(universal_boxed)
  for leaf, (names, plain, with_fsdp) in EXPECTED_SPECS.items():
    path = new[leaf]
    assert tuple(logical[path]) == names, (path, logical[path])
    assert set(names) <= ruled, f"{path}: {set(names) - ruled} have no rule"
    assert tuple(physical[path]) == tuple(with_fsdp if fsdp else plain), (path, physical[path])
    # The mesh divides every split dimension (raises otherwise).
    jax.sharding.NamedSharding(mesh, physical[path]).shard_shape(shape_of[path])


# ------------------------------------------------------------------------------------------------
# training: a finite loss, and a gradient into every expert and router row
# ------------------------------------------------------------------------------------------------
def test_loss_is_finite_and_every_expert_gets_a_gradient():
  cfg = tiny(("text", "image", "audio"), UniversalProjectionConfig(router="modality_and_token"),
             num_encoder_layers=1, num_decoder_layers=1)
  model = UnifiedIOModel(cfg)
  batch = model.dummy_batch(1, LENGTHS)
  # Random parameters of init's tree (compiling init would double the test's time; the tree and
  # init's tracing are checked above). A random router is no uniform mixture: a harder case.
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda a: (0.05 * rng.normal(size=a.shape)).astype(np.float32),
      nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)))
  (loss, metrics), grads = jax.jit(jax.value_and_grad(model.loss_fn, has_aux=True))(params, batch)
  assert np.isfinite(loss) and np.isfinite(metrics["loss/text"]) and loss > 0
  grads = grads["input_projection"]
  for name in ("experts_in_kernel", "experts_in_bias", "experts_out_kernel", "experts_out_bias"):
    per_expert = np.abs(np.asarray(grads[name])).reshape(3, -1).sum(axis=1)
    assert np.all(per_expert > 0), (name, per_expert)
    assert np.all(np.isfinite(grads[name]))
  per_modality = np.abs(np.asarray(grads["router_logits"])).sum(axis=1)  # rows: image, audio
  assert np.all(per_modality > 0), per_modality
  assert np.abs(np.asarray(grads["router_token_kernel"])).sum() > 0
