"""Partitioning on 8 fake CPU devices (see conftest.py): every parameter's PartitionSpec, and a
sharded forward + backward that matches the single-device one.

Mesh (data=2, model=4); the tiny preset has 4 heads, so `model` divides heads, mlp and vocab.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from unified_io import partitioning
from unified_io.presets import make_config
from unified_io.model import UnifiedIOModel

CFG = make_config("tiny", text_vocab_size=512)
BATCH, L_ENC, T_DEC = 8, 8, 8
LENGTHS = {"text_inputs": L_ENC, "text_targets": T_DEC}

# What each kind of parameter is called (logical axes) and where it lives without / with FSDP.
# Rules: batch -> data; vocab, mlp, heads -> model; kv, length -> replicated; embed -> replicated,
# or -> data with FSDP.
EXPECTED = {
    "attention q/k/v kernel": (("embed", "heads", "kv"), P(None, "model", None), P("data", "model", None)),
    "attention out kernel": (("heads", "kv", "embed"), P("model", None, None), P("model", None, "data")),
    "mlp wi kernel": (("embed", "mlp"), P(None, "model"), P("data", "model")),
    "mlp wo kernel": (("mlp", "embed"), P("model", None), P("model", "data")),
    "qk-norm scale": (("kv",), P(None), P(None)),
    "norm scale": (("embed",), P(None), P("data")),
    "token table": (("vocab", "embed"), P("model", None), P("model", "data")),
    "modality vector": (("embed",), P(None), P("data")),
}


def kind_of(path):
  """The kind of parameter at `path` (a tuple of names), from its place in the network."""
  leaf, owner = path[-1], path[-2]
  if leaf == "kernel" and owner in ("query", "key", "value"):
    return "attention q/k/v kernel"
  if leaf == "kernel" and owner == "out":
    return "attention out kernel"
  if leaf == "kernel" and owner in ("wi_0", "wi_1"):
    return "mlp wi kernel"
  if leaf == "kernel" and owner == "wo":
    return "mlp wo kernel"
  if leaf == "scale" and owner in ("query_norm", "key_norm"):
    return "qk-norm scale"
  if leaf == "scale" and owner.endswith("_norm"):
    return "norm scale"
  if leaf == "embedding" and owner.startswith("token_embedders_"):
    return "token table"
  if leaf == "modality_embedding":
    return "modality vector"
  return None


def _path(keypath):
  return tuple(str(getattr(k, "key", k)) for k in keypath)


def _flat(tree):
  return {_path(kp): leaf for kp, leaf in jax.tree_util.tree_leaves_with_path(
      tree, is_leaf=lambda x: isinstance(x, P))}


@pytest.fixture(scope="module")
def model():
  return UnifiedIOModel(CFG)


@pytest.fixture(scope="module")
def boxed_abstract(model):
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), model.dummy_batch(BATCH, LENGTHS))


@pytest.fixture(scope="module")
def mesh():
  assert jax.device_count() == 8, "conftest.py should give 8 fake CPU devices"
  mesh = partitioning.make_mesh(data=2, model=4)
  assert dict(mesh.shape) == {"data": 2, "model": 4}
  return mesh


# ------------------------------------------------------------------------------------------------
# every parameter's spec
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fsdp", [False, True], ids=["no_fsdp", "fsdp"])
def test_every_parameter_spec(boxed_abstract, fsdp):
  logical = _flat(partitioning.logical_specs(boxed_abstract))
  physical = _flat(partitioning.mesh_specs(boxed_abstract, partitioning.axis_rules(fsdp)))
  shapes = {_path(kp): leaf.shape for kp, leaf in
            jax.tree_util.tree_leaves_with_path(nn.meta.unbox(boxed_abstract))}
  assert set(logical) == set(physical) == set(shapes), "a parameter has no logical axis names"

  unknown = sorted("/".join(p) for p in shapes if kind_of(p) is None)
  assert not unknown, f"parameters without an expected spec (add a rule and a test): {unknown}"
  counts = {}
  for path in shapes:
    kind = kind_of(path)
    counts[kind] = counts.get(kind, 0) + 1
    names, spec_plain, spec_fsdp = EXPECTED[kind]
    want = spec_fsdp if fsdp else spec_plain
    where = "/".join(path)
    assert tuple(logical[path]) == names, f"{where}: logical axes {logical[path]}, expected {names}"
    assert len(names) == len(shapes[path]), f"{where}: {names} for shape {shapes[path]}"
    assert tuple(physical[path]) == tuple(want), f"{where}: {physical[path]}, expected {want}"

  # The classification covered what the config says the network has.
  t = CFG.trunk
  n_attn = t.num_encoder_layers + 2 * t.num_decoder_layers
  assert counts == {
      "attention q/k/v kernel": 3 * n_attn, "attention out kernel": n_attn,
      "mlp wi kernel": 2 * (t.num_encoder_layers + t.num_decoder_layers),
      "mlp wo kernel": t.num_encoder_layers + t.num_decoder_layers,
      "qk-norm scale": 2 * n_attn,
      "norm scale": 2 * t.num_encoder_layers + 3 * t.num_decoder_layers + 2,
      "token table": 3, "modality vector": 2}


def test_describe_lists_every_parameter(boxed_abstract):
  rules = partitioning.axis_rules(fsdp=True)
  text = partitioning.describe(boxed_abstract, rules)
  lines = text.splitlines()
  logical = _flat(partitioning.logical_specs(boxed_abstract))
  physical = _flat(partitioning.mesh_specs(boxed_abstract, rules))
  shapes = {_path(kp): leaf.shape for kp, leaf in
            jax.tree_util.tree_leaves_with_path(nn.meta.unbox(boxed_abstract))}
  assert len(lines) == len(shapes)
  by_name = {line.split()[0]: line for line in lines}
  assert set(by_name) == {"/".join(p) for p in shapes}
  for path, shape in shapes.items():
    line = by_name["/".join(path)]
    assert str(tuple(shape)) in line, line
    assert str(tuple(logical[path])) in line, line
    assert line.rstrip().endswith(str(physical[path])), line


# ------------------------------------------------------------------------------------------------
# sharded forward + backward == single device
# ------------------------------------------------------------------------------------------------
def random_batch(seed=0):
  """Random tokens (not all ones) with ragged padding in both encoder and decoder."""
  rng = np.random.default_rng(seed)
  vocab = CFG.trunk.text_vocab_size
  enc_len = rng.integers(3, L_ENC + 1, BATCH)
  dec_len = rng.integers(2, T_DEC + 1, BATCH)
  enc_len[0], dec_len[0] = L_ENC, T_DEC  # one full row
  enc_mask = (np.arange(L_ENC)[None] < enc_len[:, None]).astype(np.int32)
  dec_mask = (np.arange(T_DEC)[None] < dec_len[:, None]).astype(np.int32)
  targets = rng.integers(1, vocab, (BATCH, T_DEC)).astype(np.int32) * dec_mask
  dec_inputs = np.concatenate([np.zeros((BATCH, 1), np.int32), targets[:, :-1]], axis=1) * dec_mask
  assert 0 < dec_mask.sum() < dec_mask.size and 0 < enc_mask.sum() < enc_mask.size
  return {
      "inputs": {"text": {"tokens": rng.integers(1, vocab, (BATCH, L_ENC)).astype(np.int32) * enc_mask,
                          "mask": enc_mask,
                          "pos_ids": np.broadcast_to(np.arange(L_ENC, dtype=np.int32), (BATCH, L_ENC))}},
      "targets": {"text": {"inputs": dec_inputs, "targets": targets, "mask": dec_mask,
                           "loss_mask": dec_mask}},
  }


@pytest.fixture(scope="module")
def single_device(model):
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(1), model.dummy_batch(1, LENGTHS)))
  batch = random_batch()
  loss, grads = jax.jit(jax.value_and_grad(lambda p, b: model.loss_fn(p, b)[0]))(params, batch)
  return params, batch, float(loss), jax.device_get(grads)


@pytest.mark.parametrize("fsdp", [False, True], ids=["no_fsdp", "fsdp"])
def test_sharded_step_matches_single_device(model, boxed_abstract, mesh, single_device, fsdp):
  params, batch, loss_1, grads_1 = single_device
  assert np.isfinite(loss_1) and loss_1 > 0
  rules = partitioning.axis_rules(fsdp)
  param_shardings = nn.meta.unbox(partitioning.shardings(boxed_abstract, mesh, rules))
  batch_sharding = partitioning.batch_sharding(mesh)
  assert isinstance(batch_sharding, NamedSharding) and batch_sharding.spec == P("data")

  sharded_params = jax.device_put(params, param_shardings)
  sharded_batch = jax.device_put(batch, batch_sharding)
  # The parameters really are split as the rules say.
  expected_specs = _flat(partitioning.mesh_specs(boxed_abstract, rules))
  for kp, leaf in jax.tree_util.tree_leaves_with_path(sharded_params):
    assert leaf.sharding.spec == expected_specs[_path(kp)], _path(kp)
    assert len(leaf.sharding.device_set) == 8

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    step = jax.jit(jax.value_and_grad(lambda p, b: model.loss_fn(p, b)[0]))
    loss_8, grads_8 = step(sharded_params, sharded_batch)

  np.testing.assert_allclose(float(loss_8), loss_1, rtol=1e-5)
  flat_1 = dict(jax.tree_util.tree_leaves_with_path(grads_1))
  flat_8 = dict(jax.tree_util.tree_leaves_with_path(jax.device_get(grads_8)))
  assert flat_1.keys() == flat_8.keys()
  for key, g1 in flat_1.items():
    np.testing.assert_allclose(flat_8[key], g1, rtol=1e-5, atol=1e-6,
                               err_msg=jax.tree_util.keystr(key))
  # The gradient is not trivially zero (so the comparison means something).
  assert max(float(jnp.max(jnp.abs(g))) for g in flat_1.values()) > 1e-3
