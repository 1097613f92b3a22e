"""Pair packing: the layout ops by hand, and packed = unpacked on the all-modality model."""

import copy
import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from unified_io import decoding
from unified_io.network import packing
from unified_io.network.encoder_decoder import UnifiedIONetwork
from unified_io.config import ConfigError
from unified_io.presets import make_config
from unified_io.interop.check_reference import nest_inputs
from unified_io.interop.params import release_to_params
from unified_io.interop.release import config_from_release
from unified_io.model import UnifiedIOModel


# ------------------------------------------------------------------------------------------------
# The layout, by hand
# ------------------------------------------------------------------------------------------------
def test_pair_layout_by_hand():
  valid = np.array([[1, 0, 1, 1],   # pair 0, first: 3 tokens
                    [0, 1, 0, 0],   # pair 0, second: 1 token
                    [1, 1, 1, 1],   # pair 1, first: 4 tokens
                    [1, 1, 0, 1]])  # pair 1, second: 3 tokens; only 1 fits in 5 slots
  layout = packing.pair_layout(valid, 5)
  np.testing.assert_array_equal(layout.slot_en, [[0, 5, 1, 2], [5, 3, 5, 5],
                                                 [0, 1, 2, 3], [4, 5, 5, 5]])
  np.testing.assert_array_equal(layout.valid_bp, [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(layout.example_bp, [[0, 0, 0, 1, -1], [0, 0, 0, 0, 1]])
  np.testing.assert_array_equal(layout.dropped_e, [0, 0, 0, 2])

  x = np.arange(1, 17, dtype=np.float32).reshape(4, 4, 1) * 10
  packed = np.asarray(packing.pack(x, layout))[..., 0]
  np.testing.assert_array_equal(packed, [[10, 30, 40, 60, 0], [90, 100, 110, 120, 130]])
  back = np.asarray(packing.unpack(packing.pack(x, layout), layout))
  np.testing.assert_array_equal(back, x * np.asarray(packing.placed(layout))[..., None])


def test_odd_batch_is_refused():
  with pytest.raises(packing.PackingError, match="even number of examples, got a batch of 3"):
    packing.pair_layout(np.ones((3, 4)), 8)


def test_packed_lengths_need_the_switch():
  with pytest.raises(ConfigError, match="packed_encoder_length.*pack_pairs"):
    make_config(packed_encoder_length=64)
  assert make_config(pack_pairs=True, packed_decoder_length=64).packed_decoder_length == 64


# ------------------------------------------------------------------------------------------------
# Packed = unpacked on the release's all-modality tiny model (the full golden's weights)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(golden_full):
  release = {k[len("param/"):]: golden_full[k] for k in golden_full.files if k.startswith("param/")}
  cfg = config_from_release(str(golden_full["meta/config_json"]), release.keys())
  two = nest_inputs(golden_full)
  for name in ("image", "audio"):  # the release's VQ ids: no tokenizer to compile
    two["targets"][name]["targets"] = golden_full[f"output/{name}/targets"]
    del two["targets"][name][name]
  # Four examples: the golden two, then the same two swapped, with shorter text and fewer image
  # patches, so the pairs pack differently.
  batch = jax.tree_util.tree_map(lambda a: np.concatenate([a, a[::-1]]), two)
  batch["inputs"]["text"]["mask"][2, 9:] = 0
  batch["inputs"]["image"]["mask"][3, :20] = 0
  batch["targets"]["text"]["mask"][3, 5:] = 0
  batch["targets"]["text"]["loss_mask"] = batch["targets"]["text"]["mask"].copy()
  model = UnifiedIOModel(cfg)
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), two))
  params, _ = release_to_params(release, abstract)
  return cfg, params, batch


def _tight(cfg, batch, slack=0):
  """The config packed to exactly the longest pair (+ slack) of this batch."""
  lengths = packing.pair_lengths(batch, cfg)
  pair = {k: int(np.max(v[0::2] + v[1::2])) + slack for k, v in lengths.items()}
  return dataclasses.replace(cfg, pack_pairs=True, packed_encoder_length=pair["encoder"],
                             packed_decoder_length=pair["decoder"])


def _loss_and_grads(cfg, params, batch):
  model = UnifiedIOModel(cfg)
  return jax.jit(jax.value_and_grad(model.loss_fn, has_aux=True))(params, batch)


def test_packed_equals_unpacked(setup):
  """Losses and gradients, with dynamic masking on (its per-row patterns are packed too)."""
  cfg, params, batch = setup
  cfg = dataclasses.replace(cfg, dynamic_masking=True)
  packed_cfg = _tight(cfg, batch)
  # The packed rows really are shorter than two examples side by side.
  full = packing.pair_lengths(batch, cfg)
  assert packed_cfg.packed_decoder_length < 2 * (12 + 256 + 128)
  assert packed_cfg.packed_decoder_length == int(np.max(full["decoder"][0::2] +
                                                        full["decoder"][1::2]))

  (total, aux), grads = _loss_and_grads(cfg, params, batch)
  (p_total, p_aux), p_grads = _loss_and_grads(packed_cfg, params, batch)
  for name in ("loss/text", "loss/image", "loss/audio"):
    np.testing.assert_allclose(p_aux[name], aux[name], rtol=2e-5, err_msg=name)
  np.testing.assert_allclose(p_total, total, rtol=2e-5)
  assert int(p_aux["packing/encoder_dropped"]) == 0 and int(p_aux["packing/decoder_dropped"]) == 0
  assert 0.9 < float(p_aux["packing/decoder_fill"]) <= 1.0
  flat, p_flat = (jax.tree_util.tree_leaves_with_path(g) for g in (grads, p_grads))
  checked = 0
  for (path, g), (_, pg) in zip(flat, p_flat):
    g, pg = np.asarray(g), np.asarray(pg)
    scale = max(np.abs(g).max(), 1e-12)
    np.testing.assert_allclose(pg / scale, g / scale, atol=2e-5, err_msg=jax.tree_util.keystr(path))
    checked += np.abs(g).max() > 0
  assert checked > 100  # the trunk, the embedders and the heads all get gradients


def test_packed_losses_without_dynamic_masking(setup):
  cfg, params, batch = setup
  losses = [jax.jit(UnifiedIOModel(c).loss_fn)(params, batch)[1] for c in (cfg, _tight(cfg, batch))]
  for name in ("loss/text", "loss/image", "loss/audio"):
    np.testing.assert_allclose(losses[1][name], losses[0][name], rtol=2e-5, err_msg=name)


def test_cross_example_attention_is_blocked(setup):
  """Changing example 1 of a pair leaves example 0's packed outputs exactly as they were."""
  cfg, params, batch = setup
  packed_cfg = _tight(cfg, batch)
  model = UnifiedIOModel(packed_cfg)
  changed = copy.deepcopy(batch)
  changed["inputs"]["text"]["tokens"][1] = (changed["inputs"]["text"]["tokens"][1] + 7) % 1000
  changed["inputs"]["image"]["input"][1] += 1.0
  changed["targets"]["text"]["inputs"][1] = (changed["targets"]["text"]["inputs"][1] + 3) % 1000
  outputs = jax.jit(lambda p, b: model.training_outputs(p, b)[0])
  a, b = outputs(params, batch), outputs(params, changed)
  for name in a:
    mask = np.asarray(batch["targets"][name]["mask"]) > 0
    np.testing.assert_array_equal(np.asarray(a[name].logits)[0][mask[0]],
                                  np.asarray(b[name].logits)[0][mask[0]], err_msg=name)
    assert not np.allclose(np.asarray(a[name].logits)[1][mask[1]],  # control: example 1 changed
                           np.asarray(b[name].logits)[1][mask[1]]), name


def test_a_pair_that_does_not_fit(setup):
  """check_pairs_fit names the pair; inside the model, the release's way: the tokens past the
  packed length are dropped, here also from the loss, and counted."""
  cfg, params, batch = setup
  lengths = packing.pair_lengths(batch, cfg)
  short_cfg = _tight(cfg, batch, slack=-5)
  with pytest.raises(packing.PackingError, match=r"examples 0 and 1 have \d+ \+ \d+ = \d+ valid "
                                                 r"encoder tokens, more than the packed encoder"):
    packing.check_pairs_fit(batch, short_cfg)
  packing.check_pairs_fit(batch, _tight(cfg, batch))  # fits: no error

  _, aux = jax.jit(UnifiedIOModel(short_cfg).loss_fn)(params, batch)
  pair_dec = lengths["decoder"][0::2] + lengths["decoder"][1::2]
  pair_enc = lengths["encoder"][0::2] + lengths["encoder"][1::2]
  expected = lambda pair, limit: int(np.sum(np.maximum(pair - limit, 0)))
  assert int(aux["packing/decoder_dropped"]) == expected(pair_dec,
                                                         short_cfg.packed_decoder_length) == 5
  assert int(aux["packing/encoder_dropped"]) == expected(pair_enc,
                                                         short_cfg.packed_encoder_length) > 0
  assert all(np.isfinite(float(v)) for v in aux.values())


def test_pair_order_makes_pairs_fit(setup):
  cfg, _, batch = setup
  # Pair the golden long example with the long copy: consecutive pairs no longer balance.
  order = np.array([0, 3, 1, 2])
  unbalanced = packing.take_examples(batch, order)
  lengths = packing.pair_lengths(unbalanced, cfg)
  # Packed lengths that fit the pairs (0, 3) and (1, 2), which the consecutive pairs exceed.
  balanced = {k: int(max(v[0] + v[3], v[1] + v[2])) for k, v in lengths.items()}
  tight = dataclasses.replace(cfg, pack_pairs=True, packed_encoder_length=balanced["encoder"],
                              packed_decoder_length=balanced["decoder"])
  with pytest.raises(packing.PackingError):
    packing.check_pairs_fit(unbalanced, tight)
  reordered = packing.take_examples(unbalanced, packing.pair_order(unbalanced, tight))
  packing.check_pairs_fit(reordered, tight)
  assert sorted(packing.pair_order(unbalanced, tight).tolist()) == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------------
# Packing is a training layout: decoding, scoring and evaluation run one example per row
# ------------------------------------------------------------------------------------------------
def test_a_packed_config_decodes_and_scores_as_the_unpacked_one():
  """Same parameters, same tokens, scores and losses; an odd batch (which packing refuses) too."""
  cfg = make_config("tiny", text_vocab_size=128, num_encoder_layers=1, num_decoder_layers=1)
  plain = UnifiedIOModel(cfg)
  packed = UnifiedIOModel(dataclasses.replace(cfg, pack_pairs=True))
  rng = np.random.default_rng(0)
  inputs = {"text": {"tokens": rng.integers(2, 128, (3, 6)).astype(np.int32),
                     "mask": np.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 6], np.int32)}}
  targets = rng.integers(2, 128, (3, 5)).astype(np.int32)
  mask = np.array([[1] * 5, [1] * 5, [1] * 3 + [0] * 2], np.int32)
  batch = {"inputs": inputs, "targets": {"text": {
      "inputs": np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], 1),
      "targets": targets, "mask": mask}}}
  params = nn.meta.unbox(jax.jit(plain.init)(jax.random.PRNGKey(0), batch))

  options = decoding.DecodeOptions(max_length=5)
  want, got = (decoding.generate(m, params, inputs, "text", options) for m in (plain, packed))
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_array_equal(got.lengths, want.lengths)
  np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)
  losses = [jax.jit(decoding.example_losses, static_argnums=0)(m, params, batch)
            for m in (plain, packed)]
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)
  answers = np.array([[[5, 1, 0], [7, 8, 1]]] * 3, np.int32)
  scores = [decoding.score_options(m, params, inputs, answers) for m in (plain, packed)]
  np.testing.assert_allclose(scores[1], scores[0], rtol=1e-6)

  # The training forward still packs (its statistics say so) ...
  _, aux = jax.eval_shape(packed.loss_fn, params, jax.tree_util.tree_map(lambda a: a[:2], batch))
  assert "packing/decoder_fill" in aux
  # ... and the packed network itself refuses to decode incrementally, naming the way out.
  with pytest.raises(ValueError, match="pack_pairs off .*inference_module"):
    packed.module.apply({"params": params}, "text", targets[:, :1], 0, inputs["text"]["mask"],
                        None, None, 5, method=UnifiedIONetwork.decode_cached, mutable=["cache"])


def _flops(cfg, params, batch) -> float:
  cost = jax.jit(UnifiedIOModel(cfg).loss_fn).lower(params, batch).cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def test_default_packed_rows_make_a_step_cheaper(setup):
  """Unset packed lengths = one unpacked row: the trunk runs on half the rows, no longer ones."""
  cfg, params, batch = setup
  packed = dataclasses.replace(cfg, pack_pairs=True)
  unpacked_flops, packed_flops = _flops(cfg, params, batch), _flops(packed, params, batch)
  assert packed_flops < 0.85 * unpacked_flops, (packed_flops, unpacked_flops)
  # These golden rows are nearly full, so pairs overflow one row: the tail is dropped and counted.
  _, metrics = jax.jit(UnifiedIOModel(packed).loss_fn)(params, batch)
  assert int(metrics["packing/encoder_dropped"]) > 0 and np.isfinite(metrics["loss/text"])


def test_a_packed_run_loads_like_any_other(tmp_path):
  """run_loader builds abstract parameters from a batch of one: init must not pack."""
  from test_run_loader import write_run
  from unified_io.evaluation import run_loader
  write_run(str(tmp_path), bindings=["make_config.pack_pairs = True"])
  run = run_loader.load_run(str(tmp_path))
  assert run.step == 3 and run.model.cfg.pack_pairs
