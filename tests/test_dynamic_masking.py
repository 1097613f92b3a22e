"""Attention patterns and autoregressive dynamic masking, proven on the release's tables and
through gradients of the decoder; cached decoding (greedy, beam search, guidance) applies the same
patterns as the full pass."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unified_io import decoding
from unified_io.decoding import DecodeOptions
from unified_io.model import UnifiedIOModel
from unified_io.network import layer_stacking, masks
from unified_io.network.encoder_decoder import UnifiedIONetwork
from unified_io.presets import make_config, trunk_config
from unified_io.network.trunk import Decoder

GRID_H, GRID_W = 4, 6
T = GRID_H * GRID_W


def _causal(n):
  t = np.arange(n)
  return t[None, :] <= t[:, None]


@pytest.mark.parametrize("key,grid", [("image", (16, 16)), ("audio", (16, 8))])
def test_patterns_equal_the_release_tables(golden_full, key, grid):
  table = golden_full[f"buffer/target_embedders.{key}.attn_mask"].astype(bool)  # [4, T, T]
  n = grid[0] * grid[1]
  layout = masks.TargetLayout(jnp.arange(n), jnp.full((n,), grid[1]), jnp.zeros((1, n), bool))
  for pattern in masks.Pattern:
    ours = np.asarray(masks.pattern_mask(layout, pattern))[0, 0] & _causal(n)
    np.testing.assert_array_equal(ours, table[pattern], err_msg=pattern.name)


def test_dynamic_masks_equal_the_release_computation(golden_full):
  """The release computes (and never applies) these; batch row 1 has a task mask."""
  task_mask = golden_full["input/targets/image/task_mask"][1].astype(bool)
  noisy = np.concatenate([[False], task_mask[:-1]])  # decoder input t carries target t - 1
  expected = golden_full["act/target_embedders.image/attn_pattern_mask"][1].astype(bool)
  layout = masks.TargetLayout(jnp.arange(256), jnp.full((256,), 16), jnp.asarray(noisy)[None])
  got = masks.decoder_layer_masks(jnp.asarray(_causal(256))[None, None], layout)
  for pattern in masks.Pattern:
    np.testing.assert_array_equal(np.asarray(got[pattern])[0, 0], expected[pattern])


def test_layer_schedule():
  assert [masks.layer_pattern(i, 6) for i in range(6)] == [
      masks.Pattern.ROW, masks.Pattern.COLUMN, masks.Pattern.ROW, masks.Pattern.ROW,
      masks.Pattern.ROW, masks.Pattern.CONV]


def _decoder_jacobian(num_layers, noisy):
  """d out[t] / d in[s] summed over features: [T, T], for one batch row, through the Decoder."""
  cfg = trunk_config("tiny", num_decoder_layers=num_layers)
  decoder = Decoder(cfg)
  rng = np.random.default_rng(0)
  y = jnp.asarray(rng.normal(size=(1, T, cfg.emb_dim)), jnp.float32)
  enc = jnp.asarray(rng.normal(size=(1, 5, cfg.emb_dim)), jnp.float32)
  valid, segments = jnp.ones((1, T), jnp.int32), jnp.zeros((1, T), jnp.int32)
  rope = jnp.zeros((1, T, cfg.head_dim))
  enc_rope = jnp.zeros((1, 5, cfg.head_dim))
  layout = masks.TargetLayout(jnp.arange(T), jnp.full((T,), GRID_W), jnp.asarray(noisy)[None])
  args = (valid, segments, rope, enc, jnp.ones((1, 5), jnp.int32), enc_rope, True, layout)
  params = decoder.init(jax.random.PRNGKey(0), y, *args)

  def out(y_td):
    return decoder.apply(params, y_td[None], *args)[0]

  jac = jax.jacrev(out)(y[0])  # [T, D, T, D]
  return np.abs(np.asarray(jac)).sum(axis=(1, 3))


def test_noised_inputs_are_invisible_to_clean_queries_and_noised_queries_see_only_themselves():
  noisy = np.zeros(T, bool)
  noisy[[3, 7, 8, 15]] = True
  dep = _decoder_jacobian(2, noisy)
  for t in range(T):
    for s in range(T):
      if noisy[t] and s != t:
        assert dep[t, s] == 0.0, (t, s)
      elif not noisy[t] and noisy[s]:
        assert dep[t, s] == 0.0, (t, s)
  # ... and the mask is not simply everything: clean tokens still see earlier clean tokens.
  assert dep[10, 9] > 0 and dep[10, 0] > 0 and dep[7, 7] > 0


def test_one_layer_decoder_follows_the_conv_pattern():
  dep = _decoder_jacobian(1, np.zeros(T, bool))  # a single (last) layer uses CONV
  layout = masks.TargetLayout(jnp.arange(T), jnp.full((T,), GRID_W), jnp.zeros((1, T), bool))
  allowed = np.asarray(masks.pattern_mask(layout, masks.Pattern.CONV))[0, 0] & _causal(T)
  np.testing.assert_array_equal(dep > 0, allowed | np.eye(T, dtype=bool))
  assert not allowed.all()  # the 6-wide grid really restricts something


# ------------------------------------------------------------------------------------------------
# Cached decoding: the same patterns as the full pass (nothing is noised while generating)
# ------------------------------------------------------------------------------------------------
def _image_audio_config(**overrides):
  """The smallest model with image and audio targets, dynamic masking on: 3 decoder layers (ROW,
  COLUMN, CONV), a one-level VQGAN over 6 x 10 pixels (a 6 x 10 token grid, rows of 10) and a
  one-layer audio ViT-VQGAN over 56 x 64 spectrograms (56 tokens in rows of 7)."""
  cfg = make_config("tiny", input_modalities=("text",), target_modalities=("image", "audio"),
                    dynamic_masking=True, text_vocab_size=128, emb_dim=64, num_heads=2,
                    head_dim=32, mlp_dim=128, num_encoder_layers=1, num_decoder_layers=3,
                    **overrides)
  image = dataclasses.replace(cfg.image_vqgan, ch=32, ch_mult=(1,), num_res_blocks=1,
                              attn_resolutions=(), resolution=10, default_input_size=(6, 10),
                              patch_size=(1, 1))
  vit = dict(hidden_size=32, num_layers=1, mlp_dim=64, num_heads=1, head_dim=32)
  audio = dataclasses.replace(cfg.audio_vqgan, proj_dim=8, default_input_size=(56, 64),
                              **{f"{side}_{k}": v for side in ("encoder", "decoder")
                                 for k, v in vit.items()})
  return dataclasses.replace(cfg, image_vqgan=image, audio_vqgan=audio)


def _codes(model, modality, seed):
  """Random VQ codes (+ 2) filling the target's grid, for 2 examples."""
  vq = getattr(model.cfg, f"{modality}_vqgan")
  size = vq.n_embed if modality == "image" else vq.vocab_size
  return np.random.default_rng(seed).integers(2, 2 + size, (2, vq.grid[0] * vq.grid[1])
                                              ).astype(np.int32)


@pytest.fixture(scope="module")
def image_audio():
  """(per-layer model, its params, scanned model, stacked params, text inputs of 2 examples).

  Initialised from image and audio codes, so the tokenizers' encoders (never used here: these
  tests give codes) are neither compiled nor in the parameters."""
  model = UnifiedIOModel(_image_audio_config())
  batch = model.dummy_batch(1, {"text_inputs": 6})
  for modality in ("image", "audio"):
    codes = _codes(model, modality, 0)[:1]
    batch["targets"][modality] = {"targets": codes, "mask": np.ones_like(codes)}
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), batch))
  scanned = UnifiedIOModel(_image_audio_config(scan_layers=True))
  rng = np.random.default_rng(0)
  inputs = {"text": {"tokens": rng.integers(2, 128, (2, 6)).astype(np.int32),
                     "mask": np.array([[1] * 6, [1] * 4 + [0] * 2], np.int32)}}
  return model, params, scanned, layer_stacking.stack_layers(params), inputs


_FULL = {}
_encode = jax.jit(decoding.encode, static_argnums=(0,))


def _full_logits(model, params, inputs, modality, targets_bt):
  """The full teacher-forced pass (no task mask) over one target: logits [B, T, V]."""
  if id(model) not in _FULL:
    _FULL[id(model)] = jax.jit(model.outputs)
  batch = {"inputs": inputs, "targets": {modality: {"targets": targets_bt,
                                                    "mask": np.ones_like(targets_bt)}}}
  return np.asarray(_FULL[id(model)](params, batch)[modality].logits)


def test_cached_image_logits_equal_the_full_pass_one_token_at_a_time(image_audio):
  """Through `unified_io.decoding`'s own steps, on the per-layer decoder."""
  model, params, _, _, inputs = image_audio
  targets = _codes(model, "image", 1)
  length = targets.shape[1]
  encoded = _encode(model, params, inputs)
  logits_bv, cache = jax.jit(decoding.start_decoding, static_argnums=(0, 2, 4))(
      model, params, "image", encoded, length)
  cached = teacher_forced_steps(model, params, "image", cache, logits_bv, targets, encoded.mask)
  full = _full_logits(model, params, inputs, "image", targets)
  np.testing.assert_allclose(cached, full, atol=2e-5, rtol=1e-5)


def teacher_forced_steps(model, params, modality, cache, first_logits_bv, targets_bt, enc_mask):
  """[B, L, V]: the first step's logits, then `decoding.decode_step` fed target t at each step t
  (jitted once per model); L = the targets' length, which is also the cache's."""
  length = targets_bt.shape[1]
  step = jax.jit(decoding.decode_step, static_argnums=(0, 3, 7))
  logits_bv, cached = first_logits_bv, [first_logits_bv]
  for t in range(length - 1):
    logits_bv, cache = step(model, params, cache, modality, jnp.asarray(targets_bt[:, t]),
                            jnp.int32(t + 1), enc_mask, length)
    cached.append(logits_bv)
  return np.stack(cached, axis=1)


def test_cached_audio_logits_equal_the_full_pass_in_chunks(image_audio):
  """`decode_cached` fed 8 tokens per call (chunks straddle the 7-token rows), scanned decoder."""
  _, _, model, params, inputs = image_audio
  targets = _codes(model, "audio", 2)
  length, chunk = targets.shape[1], 8
  inputs_bt = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  encoded = _encode(model, params, inputs)

  @jax.jit
  def run(variables, tokens_bl, start, hidden_bsd, rope_bsk):
    return model.inference_module.apply(
        variables, "audio", tokens_bl, start, encoded.mask, hidden_bsd, rope_bsk, length,
        method=UnifiedIONetwork.decode_cached, mutable=["cache"])

  logits_blv, variables = run({"params": params}, inputs_bt[:, :chunk], jnp.int32(0),
                              encoded.hidden, encoded.rope)
  cached = [logits_blv]
  for start in range(chunk, length, chunk):
    logits_blv, state = run({"params": params, **variables}, inputs_bt[:, start:start + chunk],
                            jnp.int32(start), None, None)
    variables = {**variables, **state}
    cached.append(logits_blv)
  full = _full_logits(model, params, inputs, "audio", targets)
  np.testing.assert_allclose(np.concatenate(cached, axis=1), full, atol=2e-5, rtol=1e-5)


def test_beam_search_and_guidance_run_with_dynamic_masking(image_audio):
  """Each result is checked against the full (masked) pass on the tokens it produced."""
  model, params, _, _, inputs = image_audio
  allowed = decoding.allowed_tokens(model, "image")
  n = model.cfg.image_vqgan.grid[0] * model.cfg.image_vqgan.grid[1]

  def log_probs(batch_inputs, tokens):
    logits = np.where(allowed, _full_logits(model, params, batch_inputs, "image", tokens), -1e9)
    return jax.nn.log_softmax(logits, axis=-1)

  beam = decoding.generate(model, params, inputs, "image",
                           DecodeOptions(method="beam", num_beams=2, length_penalty=0.0))
  tokens = np.asarray(beam.tokens)
  assert tokens.shape == (2, n) and allowed[tokens].all()
  np.testing.assert_array_equal(beam.lengths, [n, n])
  seq_logp = np.take_along_axis(log_probs(inputs, tokens), tokens[..., None], -1).sum((1, 2))
  np.testing.assert_allclose(beam.scores, seq_logp, rtol=1e-4)

  scale = 3.0
  guided = decoding.generate(model, params, inputs, "image", DecodeOptions(guidance_scale=scale))
  tokens = np.asarray(guided.tokens)
  assert tokens.shape == (2, n) and allowed[tokens].all()
  cond = _full_logits(model, params, inputs, "image", tokens)
  uncond = _full_logits(model, params, decoding.null_prompt_inputs(inputs), "image", tokens)
  mixed = np.where(allowed, uncond + scale * (cond - uncond), -np.inf)
  np.testing.assert_array_equal(tokens, mixed.argmax(-1))
