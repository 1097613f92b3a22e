"""Partition specs of every parameter of the all-modality model (8 fake devices, no compute)."""

import flax.linen as nn
import jax
import pytest
from jax.sharding import PartitionSpec

from unified_io import partitioning
from unified_io.interop.release import config_from_release
from unified_io.model import UnifiedIOModel

COMPONENT_PREFIXES = ("vits_", "target_embedders_image/vqgan", "target_embedders_audio/vqgan",
                      "input_embedders_image_history/resampler",
                      "input_embedders_audio_history/resampler")


@pytest.fixture(scope="module")
def abstract_params(golden_full):
  names = [k[len("param/"):] for k in golden_full.files if k.startswith("param/")]
  cfg = config_from_release(str(golden_full["meta/config_json"]), names)
  model = UnifiedIOModel(cfg)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), model.dummy_batch(2))


def _leaves(tree):
  return jax.tree_util.tree_leaves_with_path(
      tree, is_leaf=lambda x: isinstance(x, PartitionSpec))


def _path(path):
  return "/".join(str(getattr(k, "key", k)) for k in path)


@pytest.mark.parametrize("fsdp", [False, True])
def test_every_logical_name_has_a_rule_and_components_are_replicated(abstract_params, fsdp):
  rules = partitioning.axis_rules(fsdp)
  ruled = {name for name, _ in rules}
  logical = dict((_path(p), s) for p, s in _leaves(partitioning.logical_specs(abstract_params)))
  physical = dict((_path(p), s) for p, s in _leaves(partitioning.mesh_specs(abstract_params, rules)))
  assert len(logical) == len(physical) > 400
  for path, names in logical.items():
    assert len(names) > 0, f"{path} has no logical axis names"
    missing = [n for n in names if n not in ruled]
    assert not missing, f"{path}: logical names {missing} have no rule"
    if path.startswith(COMPONENT_PREFIXES):
      assert all(axis is None for axis in physical[path]), (path, physical[path])
  # The trunk is still split: e.g. the encoder's MLP over `model`.
  assert physical["encoder/layers_0/mlp/wi_0/kernel"][1] == "model"


def test_component_shardings_place_on_8_devices(abstract_params):
  assert len(jax.devices()) == 8
  mesh = partitioning.make_mesh(2, 4)
  shardings = nn.meta.unbox(partitioning.shardings(abstract_params, mesh, partitioning.axis_rules(True)))
  shapes = nn.meta.unbox(abstract_params)
  split = 0
  for sharding, shape in zip(jax.tree_util.tree_leaves(shardings), jax.tree_util.tree_leaves(shapes)):
    # Raises IndivisibleError if a rule splits a dimension the mesh axis does not divide.
    local = sharding.shard_shape(shape.shape)
    split += local != tuple(shape.shape)
  assert split > 50  # the trunk really is split (FSDP + model axis)
