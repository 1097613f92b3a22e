"""LoRA adapters as a parameter transform (unified_io.adapters.lora) and `uio2-merge-lora`."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from tests.tiny_models import TINY_TEXT, random_tokens
from unified_io import partitioning
from unified_io.adapters import lora
from unified_io.cli import merge as merge_cli
from unified_io.cli import merge_lora
from unified_io.evaluation import run_loader
from unified_io.model import UnifiedIOModel
from unified_io.network import layer_stacking
from unified_io.presets import make_config
from unified_io.training import run_config as run_config_lib

LENGTHS = {"text_inputs": 8, "text_targets": 8}
CFG = lora.LoraConfig(rank=4, alpha=8.0)
Q = "encoder/layers_0/attention/query/kernel"
OUT = "decoder/layers_1/self_attention/out/kernel"


@pytest.fixture(scope="module")
def tiny():
  """(model, float32 params, logical specs, batch, jitted forward of params -> logits). The
  params are drawn in NumPy from the abstract shapes (norm scales near 1, the rest N(0, 0.05)):
  seconds cheaper than compiling `model.init`, and as good for equalities."""
  model = UnifiedIOModel(TINY_TEXT)
  boxed = model.abstract_params()
  rng = np.random.default_rng(0)
  def draw(path, leaf):
    noise = rng.normal(0, 0.05, leaf.shape).astype(np.float32)
    return jnp.asarray(1 + noise if path[-1].key == "scale" else noise)
  params = jax.tree_util.tree_map_with_path(draw, partitioning.box_values(boxed))
  batch = random_tokens(model.dummy_batch(1, LENGTHS), vocab=1000, low=3)
  logits = jax.jit(lambda p: model.outputs(p, batch)["text"].logits)
  return model, params, partitioning.logical_specs(boxed), batch, logits


def _with_random_b(adapters, seed=1, std=0.05):
  rng = np.random.default_rng(seed)
  return {path: {"a": pair["a"], "b": jnp.asarray(rng.normal(0, std, pair["b"].shape),
                                                   jnp.float32)}
          for path, pair in adapters.items()}


def _leaf(tree, path):
  for key in path.split("/"):
    tree = tree[key]
  return tree


def _one_line_error(fn, *words):
  with pytest.raises(lora.LoraError) as info:
    fn()
  message = str(info.value)
  assert "\n" not in message and message.startswith("lora: ")
  for word in words:
    assert word in message, message
  return message


# ------------------------------------------------------------------------------------------------
# targets, shapes, specs
# ------------------------------------------------------------------------------------------------
def test_default_targets_are_the_self_attention_kernels_with_their_axes(tiny):
  _, params, specs, _, _ = tiny
  paths = lora.target_paths(params, specs, CFG)
  # 2 encoder + 2 decoder layers, four kernels each; never cross-attention or a ViT's attention.
  assert len(paths) == 16 and Q in paths and OUT in paths
  assert not any("encoder_decoder_attention" in p or "mlp" in p for p in paths)
  adapters = lora.init_adapters(jax.random.PRNGKey(0), params, specs, CFG)
  assert adapters[Q]["a"].shape == (128, 4) and adapters[Q]["b"].shape == (4, 4, 32)
  assert adapters[OUT]["a"].shape == (4, 32, 4) and adapters[OUT]["b"].shape == (4, 128)
  assert not np.any(adapters[Q]["b"]) and np.abs(adapters[Q]["a"]).max() <= 1 / np.sqrt(128)
  adapter_specs = lora.adapter_specs(params, specs, CFG)
  assert adapter_specs[Q] == {"a": PartitionSpec("embed", "lora_rank"),
                              "b": PartitionSpec("lora_rank", "heads", "kv")}
  assert adapter_specs[OUT] == {"a": PartitionSpec("heads", "kv", "lora_rank"),
                                "b": PartitionSpec("lora_rank", "embed")}
  assert lora.trainable_count(adapters) == 16 * (128 * 4 + 4 * 128)
  # every adapter spec is mapped by the rules table
  nn.logical_to_mesh(adapter_specs, partitioning.axis_rules(fsdp=True))


def test_named_and_regex_targets():
  multimodal = make_config("tiny", input_modalities=("text", "image", "audio"),
                           target_modalities=("text", "image"))
  boxed = UnifiedIOModel(multimodal).abstract_params()
  params, specs = partitioning.box_values(boxed), partitioning.logical_specs(boxed)

  def paths(*targets):
    return lora.target_paths(params, specs, lora.LoraConfig(4, targets=targets))
  assert paths("embedders") == ["input_embedders_audio/projection/kernel",
                                "input_embedders_image/projection/kernel"]
  assert len(paths("cross")) == 8 and len(paths("mlp")) == 12 and len(paths("q", "mlp")) == 16
  assert paths(r"re:decoder/layers_1/mlp/wo") == ["decoder/layers_1/mlp/wo/kernel"]
  adapter_specs = lora.adapter_specs(params, specs, lora.LoraConfig(4, targets=("embedders",)))
  assert adapter_specs["input_embedders_image/projection/kernel"]["a"] == PartitionSpec(
      "vit_embed", "lora_rank")


def test_scanned_layers_get_one_adapter_per_layer(tiny):
  _, params, specs, _, _ = tiny
  scanned_boxed = UnifiedIOModel(make_config("tiny", scan_layers=True)).abstract_params()
  scanned_specs = partitioning.logical_specs(scanned_boxed)
  scanned = layer_stacking.stack_layers(params)
  cfg = lora.LoraConfig(rank=4, alpha=8.0, targets=("q", "o", "mlp"))
  adapters = _with_random_b(lora.init_adapters(jax.random.PRNGKey(3), scanned, scanned_specs, cfg))
  stacked_q = "encoder/layers/attention/query/kernel"
  assert adapters[stacked_q]["a"].shape == (2, 128, 4)
  assert adapters[stacked_q]["b"].shape == (2, 4, 4, 32)
  assert lora.adapter_specs(scanned, scanned_specs, cfg)[stacked_q]["b"] == PartitionSpec(
      "layers", "lora_rank", "heads", "kv")
  # Layer i of the stack is adapted by slice i of its adapter (NumPy reference).
  merged = jax.jit(lambda p, a: lora.merge(p, a, cfg))(scanned, adapters)
  for path, pair in adapters.items():
    kernel, a, b = (np.asarray(x) for x in (_leaf(scanned, path), pair["a"], pair["b"]))
    for i in range(2):
      want = kernel[i] + cfg.scale * (a[i].reshape(-1, 4) @ b[i].reshape(4, -1)).reshape(
          kernel[i].shape)
      np.testing.assert_allclose(_leaf(merged, path)[i], want, rtol=0, atol=1e-6)
  per_layer = {path.replace("/layers/", f"/layers_{i}/") for path in adapters for i in range(2)}
  assert sorted(per_layer) == lora.target_paths(params, specs, cfg)


# ------------------------------------------------------------------------------------------------
# the transform
# ------------------------------------------------------------------------------------------------
def test_fresh_adapters_leave_the_outputs_bitwise_unchanged(tiny):
  _, params, specs, _, logits = tiny
  adapters = lora.init_adapters(jax.random.PRNGKey(0), params, specs, CFG)
  applied = jax.jit(lambda p, a: lora.apply_adapters(p, a, CFG))(params, adapters)
  np.testing.assert_array_equal(np.asarray(logits(applied)), np.asarray(logits(params)))


def test_gradient_reaches_the_adapters_and_a_step_changes_only_them(tiny):
  model, params, specs, batch, _ = tiny
  base_before = jax.tree_util.tree_map(np.array, params)
  adapters = lora.init_adapters(jax.random.PRNGKey(0), params, specs, CFG)

  def loss(adapters_):
    return model.loss_fn(lora.apply_adapters(params, adapters_, CFG), batch)[0]
  optimizer = optax.sgd(0.1)

  @jax.jit
  def step(adapters_):
    grads_ = jax.grad(loss)(adapters_)
    updates, _ = optimizer.update(grads_, optimizer.init(adapters_), adapters_)
    return grads_, optax.apply_updates(adapters_, updates)
  grads, trained = step(adapters)
  for path, pair in grads.items():
    assert np.abs(pair["b"]).max() > 0, path
    assert not np.any(pair["a"]), path  # b = 0: no gradient reaches a on the first step
  for path in adapters:
    assert not np.array_equal(trained[path]["b"], adapters[path]["b"])
    np.testing.assert_array_equal(trained[path]["a"], adapters[path]["a"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, base_before)  # base untouched
  merged = lora.merge(params, trained, CFG)
  changed = {"/".join(k.key for k in keys) for keys, leaf in
             jax.tree_util.tree_leaves_with_path(merged)
             if not np.array_equal(leaf, _leaf(params, "/".join(k.key for k in keys)))}
  assert changed == set(adapters)


def test_merged_forward_equals_the_adapter_forward(tiny):
  model, params, specs, batch, logits = tiny
  adapters = _with_random_b(lora.init_adapters(jax.random.PRNGKey(0), params, specs, CFG))
  adapted = jax.jit(
      lambda p, a: model.outputs(lora.apply_adapters(p, a, CFG), batch)["text"].logits)
  want = np.asarray(adapted(params, adapters))
  got = np.asarray(logits(lora.merge(params, adapters, CFG)))
  assert np.abs(want - np.asarray(logits(params))).max() > 1e-3  # the adapters do something
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_untouched_leaves_and_rank_dropout():
  rng = np.random.default_rng(0)
  kernel = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
  a, b = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
  cfg = lora.LoraConfig(rank=4, alpha=2.0, dropout=0.5)
  adapters = {"w/kernel": {"a": jnp.asarray(a), "b": jnp.asarray(b)}}
  params = {"w": {"kernel": kernel}, "norm": {"scale": jnp.ones(5)}}
  applied = lora.apply_adapters(params, adapters, cfg)
  assert applied["norm"]["scale"] is params["norm"]["scale"]  # untouched leaves: the same objects
  no_rng = applied["w"]["kernel"]
  np.testing.assert_allclose(no_rng, kernel + 0.5 * a @ b, atol=1e-5)
  kept_sets = set()
  for seed in range(8):
    delta = np.asarray(lora.apply_adapters(params, adapters, cfg, jax.random.PRNGKey(seed))
                       ["w"]["kernel"] - kernel)
    matches = [kept for n in range(5) for kept in itertools.combinations(range(4), n)
               if np.allclose(delta, 0.5 * 2.0 * a[:, kept] @ b[kept, :], atol=1e-5)]
    assert matches, seed
    kept_sets.add(matches[0])
  assert len(kept_sets) > 1


# ------------------------------------------------------------------------------------------------
# bad input, one line each
# ------------------------------------------------------------------------------------------------
def test_bad_configs_are_refused_in_one_line(tiny):
  _, params, specs, _, _ = tiny
  _one_line_error(lambda: lora.target_paths(params, specs, lora.LoraConfig(targets=("xyz",))),
                  "'xyz'", "known targets: q, k, v, o, cross, mlp, embedders, or re:<regex>")
  _one_line_error(lambda: lora.target_paths(params, specs, lora.LoraConfig(targets=("embedders",))),
                  "'embedders' names no parameter")
  _one_line_error(lambda: lora.target_paths(params, specs, lora.LoraConfig(targets=("re:nope",))),
                  "'re:nope'")
  _one_line_error(lambda: lora.init_adapters(jax.random.PRNGKey(0), params, specs,
                                             lora.LoraConfig(rank=129)),
                  "rank 129", "decoder/layers_0/self_attention/key/kernel", "[128, 4, 32]", "128")
  _one_line_error(lambda: lora.LoraConfig(rank=0), "rank")
  _one_line_error(lambda: lora.LoraConfig(dropout=1.0), "dropout")


def test_adapters_for_another_base_are_refused_naming_the_kernel(tiny):
  _, params, specs, _, _ = tiny
  cfg = lora.LoraConfig(rank=4, targets=("mlp",))
  saved = lora.fingerprint(params, specs, cfg)
  lora.check_compatible(saved, params, specs, cfg)
  lora.check_compatible(saved, lora.fingerprint(params, specs, cfg))  # (fingerprint against one)
  wider = UnifiedIOModel(make_config("tiny", mlp_dim=384)).abstract_params()
  other_params, other_specs = partitioning.box_values(wider), partitioning.logical_specs(wider)
  _one_line_error(lambda: lora.check_compatible(saved, other_params, other_specs, cfg),
                  "made for another base: decoder/layers_0/mlp/wi_0/kernel is [128, 256] there, "
                  "[128, 384] here")
  _one_line_error(lambda: lora.check_compatible(
      saved, lora.fingerprint(other_params, other_specs, cfg)), "wi_0/kernel is [128, 256] there")
  deeper = UnifiedIOModel(make_config("tiny", num_encoder_layers=3)).abstract_params()
  _one_line_error(lambda: lora.check_compatible(saved, partitioning.box_values(deeper),
                                                partitioning.logical_specs(deeper), cfg),
                  "encoder/layers_2/mlp/wi_0/kernel is absent there, [128, 256] here")
  _one_line_error(lambda: lora.check_compatible(saved, params, specs, lora.LoraConfig(2)),
                  "made with rank 4, this config has rank 2")


# ------------------------------------------------------------------------------------------------
# on disk, and uio2-merge-lora
# ------------------------------------------------------------------------------------------------
def test_save_load_round_trip(tiny, tmp_path):
  _, params, specs, _, _ = tiny
  cfg = lora.lora_config(rank=2, alpha=4.0, dropout=0.1, targets=["v", "re:mlp/wo"])
  adapters = _with_random_b(lora.init_adapters(jax.random.PRNGKey(5), params, specs, cfg))
  saved = lora.fingerprint(params, specs, cfg)
  lora.save_adapters(str(tmp_path), adapters, cfg, saved, "/ckpt/base")
  got, got_cfg, got_fingerprint, base = lora.load_adapters(str(tmp_path))
  assert got_cfg == cfg and got_fingerprint == saved and base == "/ckpt/base"
  assert sorted(got) == sorted(adapters)
  for path, pair in adapters.items():
    for name in ("a", "b"):
      np.testing.assert_array_equal(got[path][name], pair[name])
  _one_line_error(lambda: lora.load_adapters(str(tmp_path / "missing")), "lora.json")


def test_merge_binary_writes_a_run_that_load_run_reads(tiny, tmp_path, capsys):
  _, params, specs, _, _ = tiny
  base_dir, adapters_dir, out_dir = tmp_path / "base", tmp_path / "lora_run", tmp_path / "merged"
  merge_cli.save_params(str(base_dir), jax.tree_util.tree_map(np.asarray, params), {})
  adapters = _with_random_b(lora.init_adapters(jax.random.PRNGKey(0), params, specs, CFG))
  adapters_dir.mkdir()
  run_config_lib.RunConfig(model=TINY_TEXT).save(str(adapters_dir))
  lora.save_adapters(str(adapters_dir), adapters, CFG, lora.fingerprint(params, specs, CFG),
                     str(base_dir))
  assert merge_lora.main(["--adapters_dir", str(adapters_dir), "--output_dir", str(out_dir)]) == 0
  loaded = run_loader.load_run(str(out_dir))  # its own run-config.json: no model config given
  assert loaded.model.cfg == TINY_TEXT and loaded.step == 0
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-6),
                         loaded.params, lora.merge(params, adapters, CFG))
  # A base that is not there: exit status 2 and one line saying so.
  capsys.readouterr()
  assert merge_lora.main(["--adapters_dir", str(adapters_dir), "--output_dir",
                          str(tmp_path / "again"), "--base", str(tmp_path / "nowhere")]) == 2
  assert "no such directory" in capsys.readouterr().err
