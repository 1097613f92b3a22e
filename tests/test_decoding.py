"""Decoding: cached logits equal the full teacher-forced pass, greedy picks argmaxes, beam search on
a tiny model equals exhaustive search, sampling respects top-k / top-p, guidance mixes logits, and
option scores equal `loss_fn` on each option. Tiny configs, random parameters, CPU."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unified_io import decoding
from unified_io.presets import make_config
from unified_io.decoding import EOS_ID, DecodeMethod, DecodeOptions
from unified_io.modalities import Modality
from unified_io.model import UnifiedIOModel

L_ENC = 6


def _init(cfg, lengths):
  model = UnifiedIOModel(cfg)
  batch = model.dummy_batch(1, lengths)
  return model, nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), batch))


@pytest.fixture(scope="module")
def text_model():
  return _init(make_config("tiny", text_vocab_size=128),
               {"text_inputs": L_ENC, "text_targets": 8})


@pytest.fixture(scope="module")
def image_model():
  cfg = make_config("tiny", input_modalities=("text",), target_modalities=("text", "image"),
                    text_vocab_size=128)
  return _init(cfg, {"text_inputs": L_ENC, "text_targets": 8})


def _inputs(batch, seed=0, vocab=128):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, vocab, (batch, L_ENC)).astype(np.int32)
  mask = np.ones((batch, L_ENC), np.int32)
  mask[0, -2:] = 0  # a padded row too
  tokens[0, -2:] = 0
  return {"text": {"tokens": tokens, "mask": mask}}


def _teacher_forced_text_logits(model, params, inputs, targets_bt):
  mask = np.ones_like(targets_bt)
  dec_in = np.concatenate([np.zeros_like(targets_bt[:, :1]), targets_bt[:, :-1]], axis=1)
  batch = {"inputs": inputs, "targets": {"text": {"inputs": dec_in, "targets": targets_bt,
                                                  "mask": mask}}}
  return _jitted(model, "outputs")(params, batch)["text"].logits


_JITTED = {}


def _jitted(model, method: str):
  key = (id(model), method)
  if key not in _JITTED:
    _JITTED[key] = jax.jit(getattr(model, method))
  return _JITTED[key]


def _cached_logits(model, params, inputs, modality, targets_bt):
  """Logits of every position from the cached decoder fed the given tokens one at a time."""
  length = targets_bt.shape[1]
  encoded = decoding.encode(model, params, inputs)
  logits_bv, cache = jax.jit(decoding.start_decoding, static_argnums=(0, 2, 4))(
      model, params, modality, encoded, length)
  step = jax.jit(decoding.decode_step, static_argnums=(0, 3, 7))
  out = [logits_bv]
  for t in range(length - 1):
    logits_bv, cache = step(model, params, cache, modality, jnp.asarray(targets_bt[:, t]),
                            jnp.int32(t + 1), encoded.mask, length)
    out.append(logits_bv)
  return jnp.stack(out, axis=1)


def test_cached_text_logits_equal_the_full_pass(text_model):
  model, params = text_model
  inputs = _inputs(2)
  targets = np.random.default_rng(1).integers(2, 128, (2, 8)).astype(np.int32)
  full = _teacher_forced_text_logits(model, params, inputs, targets)
  cached = _cached_logits(model, params, inputs, "text", targets)
  np.testing.assert_allclose(cached, full, atol=2e-5, rtol=1e-5)


def test_cached_image_logits_equal_the_full_pass(image_model):
  model, params = image_model
  inputs = _inputs(2)
  grid = model.cfg.image_vqgan.grid
  n = grid[0] * grid[1]
  targets = np.random.default_rng(2).integers(2, 2 + model.cfg.image_vqgan.n_embed,
                                              (2, n)).astype(np.int32)
  batch = {"inputs": inputs, "targets": {"image": {"targets": targets,
                                                   "mask": np.ones_like(targets)}}}
  full = _jitted(model, "outputs")(params, batch)["image"].logits
  cached = _cached_logits(model, params, inputs, "image", targets)
  np.testing.assert_allclose(cached, full, atol=2e-5, rtol=1e-5)


def test_greedy_picks_the_argmax_of_the_full_pass(text_model):
  model, params = text_model
  inputs = _inputs(3)
  out = decoding.generate(model, params, inputs, "text", DecodeOptions(max_length=6))
  tokens = np.asarray(out.tokens)
  full = np.asarray(_teacher_forced_text_logits(model, params, inputs, np.maximum(tokens, 1)))
  allowed = decoding.allowed_tokens(model, "text")
  full = np.where(allowed, full, -np.inf)
  for b in range(3):
    n = int(out.lengths[b])
    np.testing.assert_array_equal(tokens[b, :n], full[b, :n].argmax(-1))
    assert (tokens[b, n:] == 0).all()
    if n < 6:
      assert tokens[b, n - 1] == EOS_ID


def test_image_generation_fills_the_grid_with_codes_only(image_model):
  model, params = image_model
  out = decoding.generate(model, params, _inputs(2), Modality.IMAGE, DecodeOptions())
  codes = np.asarray(out.tokens)
  grid = model.cfg.image_vqgan.grid
  assert codes.shape == (2, grid[0] * grid[1])
  assert (codes >= 2).all() and (codes < 2 + model.cfg.image_vqgan.n_embed).all()
  assert (np.asarray(out.lengths) == codes.shape[1]).all()


def _sequence_logp(model, params, inputs, seq, allowed):
  """log p(seq) under the masked, renormalised distribution, by a full pass."""
  targets = np.array([seq + [EOS_ID] * (4 - len(seq))], np.int32)[:, :max(len(seq), 1)]
  logits = np.asarray(_teacher_forced_text_logits(model, params, inputs, targets))[0]
  logits = np.where(allowed, logits, -1e9)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  return float(sum(logp[t, tok] for t, tok in enumerate(seq)))


def test_beam_search_equals_exhaustive_search(text_model):
  model, params = text_model
  length, alpha = 3, 0.6
  allowed = np.zeros(128, bool)
  allowed[[EOS_ID, 5, 9, 17]] = True
  inputs = jax.tree_util.tree_map(lambda a: a[:1], _inputs(1, seed=4))
  vocab = [int(i) for i in np.flatnonzero(allowed)]
  candidates = []
  for n in range(1, length + 1):
    for seq in itertools.product(vocab, repeat=n):
      ends = seq[-1] == EOS_ID
      if EOS_ID in seq[:-1] or (not ends and n < length):
        continue
      logp = _sequence_logp(model, params, inputs, list(seq), allowed)
      candidates.append((logp / ((5 + n) / 6) ** alpha, list(seq)))
  best_score, best_seq = max(candidates)
  options = DecodeOptions(method="beam", max_length=length, num_beams=16, length_penalty=alpha)
  out = _beam_with_allowed(model, params, inputs, options, allowed)
  n = int(out.lengths[0])
  assert list(np.asarray(out.tokens)[0, :n]) == best_seq
  np.testing.assert_allclose(float(out.scores[0]), best_score, rtol=1e-4, atol=1e-4)


def _beam_with_allowed(model, params, inputs, options, allowed):
  """Beam search restricted to a few tokens, so exhaustive search stays small."""
  encoded = decoding.encode(model, params, inputs)
  return decoding._beam_search(model, params, encoded, "text", options, jnp.asarray(allowed),
                               options.max_length)


def test_sampling_respects_top_k_and_top_p():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 2000))
  rngs = jax.random.split(jax.random.PRNGKey(0), 2)
  top_k = decoding._sample(rngs[0], logits, DecodeOptions(method="sample", top_k=2))
  assert set(np.unique(np.asarray(top_k))) == {0, 1}
  top_p = decoding._sample(rngs[1], logits, DecodeOptions(method="sample", top_p=0.85))
  counts = np.bincount(np.asarray(top_p), minlength=4) / 2000
  assert counts[3] == 0 and counts[2] > 0.05  # 0.5 + 0.3 < 0.85: the third token is kept
  np.testing.assert_allclose(counts[:3], np.array([0.5, 0.3, 0.15]) / 0.95, atol=0.04)


def test_guidance_mixes_conditional_and_unconditional_logits():
  cond, uncond = jnp.array([[1.0, 2.0]]), jnp.array([[3.0, 0.0]])
  mixed = decoding._guided(jnp.concatenate([cond, uncond]), 3.0)
  np.testing.assert_allclose(mixed, [[-3.0, 6.0], [-3.0, 6.0]])


def test_guided_image_generation_runs_and_differs_from_unguided(image_model):
  model, params = image_model
  inputs = _inputs(2)
  plain = decoding.generate(model, params, inputs, "image", DecodeOptions())
  guided = decoding.generate(model, params, inputs, "image", DecodeOptions(guidance_scale=3.0))
  assert guided.tokens.shape == plain.tokens.shape
  assert not np.array_equal(np.asarray(plain.tokens), np.asarray(guided.tokens))


def test_option_scores_equal_loss_fn_on_each_option(text_model):
  model, params = text_model
  inputs = _inputs(2)
  options = np.array([[[5, 6, EOS_ID, 0], [7, EOS_ID, 0, 0], [9, 9, 9, EOS_ID]],
                      [[3, EOS_ID, 0, 0], [4, 4, EOS_ID, 0], [8, 2, 2, EOS_ID]]], np.int32)
  scores = np.asarray(decoding.score_options(model, params, inputs, options))
  for b in range(2):
    for n in range(3):
      targets = options[b, n][None]
      mask = (targets != 0).astype(np.int32)
      batch = {"inputs": jax.tree_util.tree_map(lambda a: a[b:b + 1], inputs),
               "targets": {"text": {"inputs": np.concatenate([[[0]], targets[:, :-1]], 1),
                                    "targets": targets, "mask": mask}}}
      np.testing.assert_allclose(scores[b, n], float(_jitted(model, "loss_fn")(params, batch)[0]),
                                 rtol=1e-5)


def test_bad_requests_are_refused(text_model):
  model, params = text_model
  with pytest.raises(ValueError, match="not 'image'"):
    decoding.generate(model, params, _inputs(1), "image")
  with pytest.raises(ValueError, match="not 'image'"):
    decoding.generate(model, params, _inputs(1), Modality.IMAGE)
  with pytest.raises(ValueError, match="rng"):
    decoding.generate(model, params, _inputs(1), "text", DecodeOptions(method="sample"))
  with pytest.raises(ValueError, match="must be greedy, sample or beam, got 'nucleus'$"):
    DecodeOptions(method="nucleus")


def test_decode_method_is_an_enum_and_accepts_its_value():
  assert DecodeOptions().method is DecodeMethod.GREEDY
  assert DecodeOptions(method="beam").method is DecodeMethod.BEAM
  # Equal (and so the same jit specialisation) whichever spelling built it.
  assert DecodeOptions(method="sample") == DecodeOptions(method=DecodeMethod.SAMPLE)
  assert hash(DecodeOptions(method="sample")) == hash(DecodeOptions(method=DecodeMethod.SAMPLE))
