"""Properties the network must have whatever its weights: causality, segment isolation, padding
invariance, and the algebra of RoPE. Tiny config, random parameters, CPU.

Axis legend: B batch, L encoder length, T decoder length, D embed, H heads, K head_dim.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unified_io.network import masks
from unified_io.presets import make_config
from unified_io.network.layers.rope import apply_rope, rope_table_1d, rope_table_2d
from unified_io.model import UnifiedIOModel

CFG = make_config("tiny", text_vocab_size=512)
VOCAB = CFG.trunk.text_vocab_size
L_ENC, T_DEC = 6, 8


@pytest.fixture(scope="module")
def model():
  return UnifiedIOModel(CFG)


@pytest.fixture(scope="module")
def params(model):
  batch = model.dummy_batch(1, {"text_inputs": L_ENC, "text_targets": T_DEC})
  return nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), batch))


@pytest.fixture(scope="module")
def forward(model):
  """(text logits [B, T, V], loss) of a batch, jitted once per module."""
  return jax.jit(lambda p, b: (model.outputs(p, b)["text"].logits, model.loss_fn(p, b)[0]))


def _text_batch(enc_tokens_bl, enc_mask_bl, dec_inputs_bt, dec_targets_bt, dec_mask_bt,
                enc_pos_bl=None):
  batch = {
      "inputs": {"text": {"tokens": enc_tokens_bl, "mask": enc_mask_bl}},
      "targets": {"text": {"inputs": dec_inputs_bt, "targets": dec_targets_bt,
                           "mask": dec_mask_bt}},
  }
  if enc_pos_bl is not None:
    batch["inputs"]["text"]["pos_ids"] = enc_pos_bl
  return jax.tree_util.tree_map(lambda x: np.asarray(x, np.int32), batch)


# ------------------------------------------------------------------------------------------------
# causality and segments, proven through gradients of the decoder w.r.t. its embedded inputs
# ------------------------------------------------------------------------------------------------
def _random_decoder_batch(seed):
  """A random one-row batch, all tokens valid."""
  rng = np.random.default_rng(seed)
  return _text_batch(rng.integers(1, VOCAB, (1, L_ENC)), np.ones((1, L_ENC)),
                     rng.integers(1, VOCAB, (1, T_DEC)), rng.integers(1, VOCAB, (1, T_DEC)),
                     np.ones((1, T_DEC)))


@pytest.fixture(scope="module")
def dependence(model):
  """f(params, batch, segment_ids [1, T]) -> [T out, T in] dependence of the decoder's output.

  dep[t, s] = max_d |d (hidden[0, t] . c_t) / d embed[0, s, d]|, with `embed` the embedded decoder
  inputs (tokens + modality vector) and c_t a random cotangent; one backward pass per t.
  """

  def decoder_hidden(params, y_btd, part, segment_ids_bt, encoded):
    return model.module.apply(
        {"params": params}, y_btd, part.mask, segment_ids_bt, part.rope, encoded.hidden,
        encoded.mask, encoded.rope, method=lambda m, *a: m.decoder(*a))

  def dependence_tt(params, batch, segment_ids_bt):
    variables = {"params": params}
    encoded = model.module.apply(variables, batch["inputs"], method="encode")
    part = model.module.apply(variables, batch["targets"]["text"],
                              method=lambda m, f: m.target_embedders["text"](f))
    out_btd, vjp = jax.vjp(
        lambda y: decoder_hidden(params, y, part, segment_ids_bt, encoded), part.embed)
    t = out_btd.shape[1]
    cotangent_td = jax.random.normal(jax.random.PRNGKey(1), out_btd.shape[1:])
    # Cotangent number t is nonzero only at [0, t]: [T, B, T, D].
    cot_tbtd = jnp.zeros((t,) + out_btd.shape).at[:, 0].set(
        jnp.eye(t)[:, :, None] * cotangent_td[None])
    grads_tbtd = jax.vmap(lambda c: vjp(c)[0])(cot_tbtd)
    return jnp.max(jnp.abs(grads_tbtd[:, 0]), axis=-1)

  jitted = jax.jit(dependence_tt)
  return lambda *args: np.asarray(jitted(*args))


def test_decoder_is_causal_through_gradients(params, dependence):
  dep_tt = dependence(params, _random_decoder_batch(0), jnp.zeros((1, T_DEC), jnp.int32))
  future = np.triu(np.ones((T_DEC, T_DEC), bool), k=1)  # s > t
  assert np.all(dep_tt[future] == 0.0), f"output t depends on a later input s:\n{dep_tt}"
  assert np.all(dep_tt[~future] > 0.0), f"output t ignores an earlier input s <= t:\n{dep_tt}"


def test_decoder_segments_do_not_see_each_other(params, dependence):
  segment_t = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  dep_tt = dependence(params, _random_decoder_batch(1), jnp.asarray(segment_t[None], jnp.int32))
  allowed = np.tril(np.ones((T_DEC, T_DEC), bool)) & (segment_t[:, None] == segment_t[None, :])
  assert np.all(dep_tt[~allowed] == 0.0), f"a target sees another segment or the future:\n{dep_tt}"
  assert np.all(dep_tt[allowed] > 0.0), f"a target ignores an earlier token of its segment:\n{dep_tt}"


def test_decoder_self_mask_by_hand():
  # Written out from the rule: causal AND both tokens valid AND same segment.
  valid = jnp.array([[1, 1, 1, 0, 1, 1]])
  segment = jnp.array([[0, 0, 0, 0, 1, 1]])
  expected = np.array([
      [1, 0, 0, 0, 0, 0],
      [1, 1, 0, 0, 0, 0],
      [1, 1, 1, 0, 0, 0],
      [0, 0, 0, 0, 0, 0],  # padding query: fully masked
      [0, 0, 0, 0, 1, 0],  # first token of segment 1 sees only itself
      [0, 0, 0, 0, 1, 1],
  ], bool)
  mask = np.asarray(masks.decoder_self_mask(valid, segment))
  assert mask.shape == (1, 1, 6, 6) and mask.dtype == bool
  np.testing.assert_array_equal(mask[0, 0], expected)


def test_changing_a_later_decoder_token_leaves_earlier_logits_bitwise_equal(params, forward):
  rng = np.random.default_rng(2)
  args = [rng.integers(1, VOCAB, (1, L_ENC)), np.ones((1, L_ENC)),
          rng.integers(1, VOCAB, (1, T_DEC)), rng.integers(1, VOCAB, (1, T_DEC)),
          np.ones((1, T_DEC))]
  base, _ = forward(params, _text_batch(*args))
  s = 5
  args[2] = args[2].copy()
  args[2][0, s] = (args[2][0, s] + 17) % VOCAB
  changed, _ = forward(params, _text_batch(*args))
  np.testing.assert_array_equal(np.asarray(changed[:, :s]), np.asarray(base[:, :s]))
  assert float(jnp.max(jnp.abs(changed[:, s:] - base[:, s:]))) > 1e-3


# ------------------------------------------------------------------------------------------------
# padding invariance
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_case():
  """Two rows; row 1 already has padding at the end of both its encoder and decoder parts."""
  rng = np.random.default_rng(3)
  enc_mask = np.array([[1] * L_ENC, [1] * (L_ENC - 2) + [0] * 2])
  dec_mask = np.array([[1] * T_DEC, [1] * (T_DEC - 3) + [0] * 3])
  enc = rng.integers(1, VOCAB, (2, L_ENC)) * enc_mask
  targets = rng.integers(1, VOCAB, (2, T_DEC)) * dec_mask
  dec_in = np.concatenate([np.zeros((2, 1), int), targets[:, :-1]], axis=1) * dec_mask
  return dict(enc=enc, enc_mask=enc_mask, dec_in=dec_in, targets=targets, dec_mask=dec_mask)


def _padded(rng, tokens, mask, n, at):
  """Inserts n padding tokens (random ids, mask 0) at column `at` of [B, N] arrays."""
  pad_tokens = rng.integers(0, VOCAB, (tokens.shape[0], n))
  return (np.concatenate([tokens[:, :at], pad_tokens, tokens[:, at:]], axis=1),
          np.concatenate([mask[:, :at], np.zeros((mask.shape[0], n), int), mask[:, at:]], axis=1))


def _real(logits_btv, dec_mask_bt):
  return np.asarray(logits_btv)[dec_mask_bt.astype(bool)]  # [number of real targets, V]


@pytest.mark.parametrize("where", ["append", "middle"])
def test_padding_does_not_change_real_logits_or_loss(params, forward, base_case, where):
  c = base_case
  base_logits, base_loss = forward(
      params, _text_batch(c["enc"], c["enc_mask"], c["dec_in"], c["targets"], c["dec_mask"]))

  rng = np.random.default_rng(4)
  n_enc = 3
  at = L_ENC if where == "append" else 3
  enc, enc_mask = _padded(rng, c["enc"], c["enc_mask"], n_enc, at)
  # Real tokens keep their positions 0..L-1; padding gets arbitrary (in-range) positions.
  pos = np.concatenate([np.arange(at), rng.integers(0, CFG.trunk.max_text_length, n_enc),
                        np.arange(at, L_ENC)])[None].repeat(2, 0)
  n_dec = 4  # decoder padding is appended: its RoPE positions restart at 0 and count up
  dec_in, dec_mask = _padded(rng, c["dec_in"], c["dec_mask"], n_dec, T_DEC)
  targets, _ = _padded(rng, c["targets"], c["dec_mask"], n_dec, T_DEC)
  batch = _text_batch(enc, enc_mask, dec_in, targets, dec_mask, enc_pos_bl=pos)

  logits, loss = forward(params, batch)
  np.testing.assert_allclose(_real(logits, dec_mask), _real(base_logits, c["dec_mask"]),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(loss), float(base_loss), rtol=1e-5, atol=1e-6)

  # The check has teeth: the same batch with one real encoder token changed does move the logits.
  enc_changed = enc.copy()
  enc_changed[:, 0] = (enc_changed[:, 0] + 1) % VOCAB  # column 0 is real in both cases
  changed, _ = forward(params, _text_batch(enc_changed, enc_mask, dec_in, targets, dec_mask,
                                            enc_pos_bl=pos))
  assert np.max(np.abs(_real(changed, dec_mask) - _real(logits, dec_mask))) > 1e-4


# ------------------------------------------------------------------------------------------------
# RoPE
# ------------------------------------------------------------------------------------------------
K = 32


def _rotated_dot(table, q_k, k_k, i, j):
  """(rope(q) at table row i) . (rope(k) at table row j)."""
  q = apply_rope(jnp.asarray(q_k)[None, None, None], jnp.asarray(table[i])[None, None])
  k = apply_rope(jnp.asarray(k_k)[None, None, None], jnp.asarray(table[j])[None, None])
  return float(jnp.sum(q * k))


@pytest.fixture(scope="module")
def qk():
  rng = np.random.default_rng(5)
  return rng.normal(size=K).astype(np.float32), rng.normal(size=K).astype(np.float32)


def test_rope_1d_depends_only_on_relative_position(qk):
  q, k = qk
  table = rope_table_1d(64, K)
  for p, p2, c in [(3, 10, 5), (10, 3, 7), (0, 0, 40), (20, 21, 30)]:
    assert _rotated_dot(table, q, k, p, p2) == pytest.approx(
        _rotated_dot(table, q, k, p + c, p2 + c), rel=1e-5, abs=1e-5)
  # ... and it does depend on the relative position (RoPE is not the identity).
  assert abs(_rotated_dot(table, q, k, 3, 10) - _rotated_dot(table, q, k, 3, 11)) > 1e-3


@pytest.mark.parametrize("axis", ["row", "col"])
def test_rope_2d_depends_only_on_relative_position_per_axis(qk, axis):
  q, k = qk
  height, width = 9, 7
  table = rope_table_2d(height, width, K)
  index = lambda r, c: r * width + c  # row-major
  shift = (lambda r, c, s: (r + s, c)) if axis == "row" else (lambda r, c, s: (r, c + s))
  for (r1, c1), (r2, c2), s in [((0, 1), (2, 3), 3), ((4, 0), (1, 2), 2), ((1, 3), (1, 3), 4)]:
    before = _rotated_dot(table, q, k, index(r1, c1), index(r2, c2))
    after = _rotated_dot(table, q, k, index(*shift(r1, c1, s)), index(*shift(r2, c2, s)))
    assert after == pytest.approx(before, rel=1e-5, abs=1e-5), (axis, r1, c1, r2, c2, s)
  # Changing the relative offset along this axis changes the dot product.
  moved = index(*shift(2, 3, 1))
  assert abs(_rotated_dot(table, q, k, index(0, 1), index(2, 3))
             - _rotated_dot(table, q, k, index(0, 1), moved)) > 1e-3


def test_rope_1d_table_layout():
  table = rope_table_1d(8, K, base=10000.0)
  assert table.shape == (8, K) and table.dtype == np.float32
  np.testing.assert_array_equal(table[0], np.tile([1.0, 0.0], K // 2))
  # Row p, pair i is (cos, sin) of p * 10000^(-2i/K) (README "RoPE"); spot values by hand:
  # pair 0 has frequency 1, pair 1 has 10000^(-2/32) = 10^(-1/4).
  np.testing.assert_allclose(table[1, :2], [np.cos(1.0), np.sin(1.0)], atol=1e-7)
  np.testing.assert_allclose(table[3, 2:4], [np.cos(3 * 10 ** -0.25), np.sin(3 * 10 ** -0.25)],
                             atol=1e-7)
  np.testing.assert_allclose(table[5, -2:], [np.cos(5 * 1e4 ** (-30 / 32)),
                                             np.sin(5 * 1e4 ** (-30 / 32))], atol=1e-7)


def test_rope_2d_table_layout():
  height, width, scale = 4, 5, 4 / 3
  table = rope_table_2d(height, width, K, scale=scale).reshape(height, width, K)
  assert table.dtype == np.float32
  np.testing.assert_array_equal(table[0, 0], np.tile([1.0, 0.0], K // 2))
  first, second = table[..., :K // 2], table[..., K // 2:]
  # First half of head_dim depends only on the row, second half only on the column.
  np.testing.assert_array_equal(first, np.broadcast_to(first[:, :1], first.shape))
  np.testing.assert_array_equal(second, np.broadcast_to(second[:1, :], second.shape))
  assert not np.allclose(first[0], first[1]) and not np.allclose(second[:, 0], second[:, 1])
  # K/4 frequencies 10000^(-2j/(K/2)); coordinates times `scale` (README "RoPE"): row 2, column 3.
  freqs = 1e4 ** (-np.arange(0, K // 2, 2) / (K // 2))
  np.testing.assert_allclose(first[2, 0, 0::2], np.cos(2 * scale * freqs), atol=1e-7)
  np.testing.assert_allclose(first[2, 0, 1::2], np.sin(2 * scale * freqs), atol=1e-7)
  np.testing.assert_allclose(second[0, 3, 0::2], np.cos(3 * scale * freqs), atol=1e-7)
  np.testing.assert_allclose(second[0, 3, 1::2], np.sin(3 * scale * freqs), atol=1e-7)


def test_apply_rope_preserves_every_adjacent_pair_norm():
  rng = np.random.default_rng(6)
  x_blhk = rng.normal(size=(2, 10, 3, K)).astype(np.float32)
  table = rope_table_1d(64, K)
  rope_blk = table[rng.integers(1, 64, (2, 10))]
  y = np.asarray(apply_rope(jnp.asarray(x_blhk), jnp.asarray(rope_blk)))
  pair_norm = lambda a: np.linalg.norm(a.reshape(*a.shape[:-1], K // 2, 2), axis=-1)
  np.testing.assert_allclose(pair_norm(y), pair_norm(x_blhk), rtol=1e-5, atol=1e-6)
  assert np.max(np.abs(y - x_blhk)) > 0.1  # it did rotate


def test_rope_1d_table_matches_release_buffer(reference_dir):
  with np.load(reference_dir / "uio2_text_golden.npz") as golden:
    buffers = [golden[f"buffer/{side}_embedders.text.pos_emb_cache"] for side in ("input", "target")]
  ours = rope_table_1d(512, 64)
  # The release builds its cache in float32: each angle p * theta_i (theta_i <= 1) is rounded to
  # float32, an error of at most p * 2^-24 rad, and cos/sin add a rounding of about 2^-24 each.
  # Our table is float64-exact, so row p may differ by up to p * 2^-24 + 2^-23 (1.8e-5 observed
  # at p = 511; 3e-7 over the 16 positions the golden batch uses).
  bound_p1 = np.arange(512)[:, None] * 2.0 ** -24 + 2.0 ** -23
  for buffer in buffers:
    assert buffer.shape == ours.shape
    excess = np.abs(buffer - ours) - bound_p1
    assert np.all(excess <= 0), f"rows over the float32 bound: {np.unique(np.where(excess > 0)[0])}"
    np.testing.assert_allclose(buffer[:16], ours[:16], atol=1e-6)
