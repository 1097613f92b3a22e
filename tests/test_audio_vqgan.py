"""The audio ViT-VQGAN tokenizer: the release's golden numbers, and properties at a tiny size.

Golden (`uio2_full_golden.npz`, the release run in float32): the sincos buffers, the encoder
output z, the quantizer's normalised codes and the target token ids. The golden file has no
decoder activations, so the decoder is checked against a NumPy float64 re-statement of the
release's torch decoder (its weights in torch layout, `ConvTranspose2d` written out by hand).
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from unified_io import partitioning
from unified_io.config import AudioVQGANConfig
from unified_io.interop.params import release_to_params
from unified_io.interop.release import config_from_release
from unified_io.network.vq.audio_vqgan import (AudioViTVQGAN, grid_to_target_order,
                                               sincos_table_2d, target_to_grid_order)

PREFIX = "target_embedders.audio.vqgan"
Z_RTOL = 1e-4  # of max|ref|
TIE_GAP = 1e-4  # an id may differ from the golden only where the top-2 distance gap is below this

TINY = AudioVQGANConfig(vocab_size=64, proj_dim=8, encoder_hidden_size=32, encoder_num_layers=1,
                        encoder_mlp_dim=64, encoder_num_heads=2, encoder_head_dim=16,
                        decoder_hidden_size=32, decoder_num_layers=1, decoder_mlp_dim=64,
                        decoder_num_heads=2, decoder_head_dim=16, default_input_size=(32, 64))


@pytest.fixture(scope="module")
def golden(reference_dir):
  path = reference_dir / "uio2_full_golden.npz"
  assert path.is_file(), f"{path} is missing from the reference folder"
  with np.load(path) as data:
    keys = [k for k in data.files if PREFIX in k or k.startswith(("meta/", "input/targets/audio/"))
            or k.startswith("act/target_embedders.audio/")]
    arrays = {k: data[k] for k in keys}
    arrays["param_names"] = [k[len("param/"):] for k in data.files if k.startswith("param/")]
    return arrays


@pytest.fixture(scope="module")
def release(golden):
  """The tokenizer's torch state_dict (name -> array) from the golden file."""
  return {k[len("param/"):]: v for k, v in golden.items() if k.startswith(f"param/{PREFIX}.")}


@pytest.fixture(scope="module")
def converted(golden, release):
  """(model, variables, spectrogram) with the release's weights converted by `release_to_params`."""
  config = config_from_release(json.loads(str(golden["meta/config_json"])), golden["param_names"])
  model = AudioViTVQGAN(config.audio_vqgan)
  spectrogram = golden["input/targets/audio/audio"]
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), spectrogram))
  params, unused = release_to_params(release, abstract["params"], prefix=PREFIX)
  assert unused == [], f"release tensors left unconverted: {unused}"
  return model, {"params": params}, spectrogram


def _forward(module, spectrogram, ids):
  """Everything the golden tests look at, from one compiled function (compiles are slow on CPU)."""
  return dict(z=module.encode_latents(spectrogram), ids=module.encode(spectrogram),
              recon=module.decode(ids),
              codes=module.quantize.lookup(target_to_grid_order(ids, module.cfg.grid)))


@pytest.fixture(scope="module")
def outputs(golden, converted):
  """Our z, ids, decode(golden ids) and codebook rows for the golden ids, under jit."""
  model, variables, spectrogram = converted
  ids = golden["act/target_embedders.audio/target_tokens"] - 2  # the release adds 2 (BOS, MASK)
  run = jax.jit(lambda v, x, i: model.apply(v, x, i, method=_forward))
  return {k: np.asarray(v) for k, v in run(variables, spectrogram, ids).items()}


# ------------------------------------------------------------------------------------------------
# the release's numbers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("buffer", ["encoder.encoder_position_embedding",
                                    "decoder.decoder_position_embedding"])
def test_sincos_tables_equal_release_buffers(golden, converted, buffer):
  cfg = converted[0].cfg
  ref = golden[f"buffer/{PREFIX}.{buffer}"]
  ours = sincos_table_2d(cfg.encoder_hidden_size, cfg.grid)
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


def test_encoder_latents_match_release(golden, outputs):
  z = outputs["z"]
  ref = golden[f"act/{PREFIX}.encoder"]
  assert z.shape == ref.shape
  err, scale = np.abs(z - ref).max(), np.abs(ref).max()
  assert err <= Z_RTOL * scale, f"max|z - ref| {err:.3e} > {Z_RTOL} * {scale:.3e}"


def _top2_gap(z_bne: np.ndarray, codebook_ve: np.ndarray) -> np.ndarray:
  """[B, N] second-smallest minus smallest l2-normalised distance, in float64."""
  def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  zn, cb = unit(z_bne.astype(np.float64)), unit(codebook_ve.astype(np.float64))
  dist = (zn ** 2).sum(-1, keepdims=True) + (cb ** 2).sum(-1) - 2 * zn @ cb.T
  top2 = np.sort(dist, axis=-1)[..., :2]
  return top2[..., 1] - top2[..., 0]


def test_ids_equal_release_target_tokens(golden, converted, outputs):
  model = converted[0]
  ids = outputs["ids"]
  ref = golden["act/target_embedders.audio/target_tokens"] - 2  # the release adds 2 (BOS, MASK)
  assert ids.shape == ref.shape and ids.dtype == np.int32
  differ = ids != ref
  if differ.any():  # allowed only at near-ties, and the gap is computed, not assumed
    gap_grid = _top2_gap(golden[f"act/{PREFIX}.encoder"],
                         golden[f"param/{PREFIX}.quantize.embedding.weight"])
    gap = np.asarray(grid_to_target_order(jnp.asarray(gap_grid), model.cfg.grid))
    assert (gap[differ] < TIE_GAP).all(), (
        f"ids differ away from near-ties at {np.argwhere(differ & (gap >= TIE_GAP)).tolist()}")
    assert differ.mean() < 0.01, f"{differ.sum()} ids differ"


def test_release_target_order_is_the_quantizer_grid_transposed(golden, converted, outputs):
  """The release's quantizer emits (mel/8, time/8); its target tokens are (time/8, mel/8)."""
  grid = converted[0].cfg.grid
  target = golden["act/target_embedders.audio/target_tokens"] - 2
  quantizer_ids = golden[f"act/{PREFIX}.quantize/2/2"].reshape(target.shape)
  np.testing.assert_array_equal(np.asarray(target_to_grid_order(target, grid)), quantizer_ids)
  np.testing.assert_array_equal(np.asarray(grid_to_target_order(quantizer_ids, grid)), target)


def test_codebook_lookup_is_the_release_normalised_zq(golden, outputs):
  """decode starts from l2-normalised codebook rows, as the release's `get_codebook_entry`."""
  np.testing.assert_allclose(outputs["codes"], golden[f"act/{PREFIX}.quantize/0"], rtol=0,
                             atol=1e-6)


def _torch_decoder_f64(p, codes_bne, cfg):
  """The release's ViTDecoder in NumPy float64, weights in torch layout."""
  def lin(x, name, bias=True):
    y = x @ p[f"{name}.weight"].T
    return y + p[f"{name}.bias"] if bias else y

  def ln(x, name):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * p[f"{name}.weight"] + p[f"{name}.bias"]

  b, n, _ = codes_bne.shape
  h, k = cfg.decoder_num_heads, cfg.decoder_head_dim
  x = lin(codes_bne, "decoder.decoder_proj", bias=False)
  x = x + sincos_table_2d(cfg.encoder_hidden_size, cfg.grid)
  for i in range(cfg.decoder_num_layers):
    blk = f"decoder.transformer.encoderblock_{i}"
    y = ln(x, f"{blk}.ln_1")
    q, kk, v = (lin(y, f"{blk}.attn.{w}", bias=False).reshape(b, n, h, k)
                for w in ("query", "key", "value"))
    logits = np.einsum("bqhd,bkhd->bhqk", q / np.sqrt(k), kk)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    x = x + lin(np.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, n, h * k), f"{blk}.attn.out", False)
    y = ln(x, f"{blk}.ln_2")
    x = x + lin(np.maximum(lin(y, f"{blk}.mlp.fc1"), 0), f"{blk}.mlp.fc2")
  x = ln(x, "decoder.transformer.encoder_norm")
  (m, t), (ph, pw) = cfg.grid, cfg.patch_size
  x_bdmt = x.reshape(b, m, t, -1).transpose(0, 3, 1, 2)  # NCHW
  weight = p["decoder.conv_transpose.weight"]  # ConvTranspose2d: [in, out, kh, kw]
  out = np.zeros((b, weight.shape[1], m * ph, t * pw))
  for r in range(ph):  # out[b, o, i*ph + r, j*pw + c] = sum_d x[b, d, i, j] * W[d, o, r, c]
    for c in range(pw):
      out[:, :, r::ph, c::pw] = np.einsum("bdij,do->boij", x_bdmt, weight[:, :, r, c])
  return out  # [B, C, mel, time], what the release's `decode_code` returns


def test_decode_matches_release_decoder(golden, release, converted, outputs):
  model, _, spectrogram = converted
  ours = outputs["recon"]
  assert ours.shape == spectrogram.shape
  p = {k[len(PREFIX) + 1:]: v.astype(np.float64) for k, v in release.items()}
  codes = golden[f"act/{PREFIX}.quantize/0"].astype(np.float64)  # release z_q, (mel, time) grid
  ref = _torch_decoder_f64(p, codes, model.cfg).transpose(0, 3, 2, 1)  # -> [B, time, mel, C]
  err, scale = np.abs(ours - ref).max(), np.abs(ref).max()
  assert err <= 1e-4 * scale, f"max|decode - ref| {err:.3e} (max|ref| {scale:.3e})"


# ------------------------------------------------------------------------------------------------
# properties at a tiny random-init size
# ------------------------------------------------------------------------------------------------
def _random_params(abstract, seed: int = 0):
  """Random N(0, 0.3) values in the shapes `init` declares (`jax.eval_shape` traced `init` fully;
  actually running it costs seconds of XLA:CPU compile for the random draws)."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda leaf: jnp.asarray(0.3 * rng.standard_normal(leaf.shape), leaf.dtype), abstract)


def _tiny_forward(module, spectrogram):
  ids = module.encode(spectrogram)
  recon = module.decode(ids)
  return dict(ids=ids, z=module.encode_latents(spectrogram), recon=recon,
              recon_again=module.decode(ids), ids2=module.encode(recon))


@pytest.fixture(scope="module")
def tiny():
  """(model, boxed abstract variables, outputs of `_tiny_forward` run twice) at a tiny size."""
  model = AudioViTVQGAN(TINY)
  mel, time = TINY.default_input_size
  x = np.random.default_rng(1).standard_normal((3, time, mel, 1)).astype(np.float32)
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  variables = _random_params(nn.meta.unbox(boxed))
  run = jax.jit(lambda v, s: model.apply(v, s, method=_tiny_forward))
  first, second = run(variables, x), run(variables, x)
  return model, boxed, variables, x, first, second


def test_tiny_shapes_range_and_jit(tiny):
  _, _, _, x, out, _ = tiny
  m, t = TINY.grid
  ids = out["ids"]
  assert ids.shape == (3, m * t) and ids.dtype == jnp.int32
  assert int(ids.min()) >= 0 and int(ids.max()) < TINY.vocab_size
  assert len(np.unique(np.asarray(ids))) > 1  # random weights: not one code everywhere
  assert out["z"].shape == (3, m * t, TINY.proj_dim) and out["z"].dtype == jnp.float32
  assert out["recon"].shape == x.shape and out["recon"].dtype == jnp.float32
  assert out["ids2"].shape == ids.shape


def test_encode_decode_encode_is_deterministic(tiny):
  _, _, _, _, first, second = tiny
  for name in first:
    np.testing.assert_array_equal(first[name], second[name], err_msg=name)
  np.testing.assert_array_equal(first["recon"], first["recon_again"])


def test_token_order_round_trips():
  m, t = TINY.grid
  grid_ids = jnp.arange(2 * m * t).reshape(2, m * t)
  target = grid_to_target_order(grid_ids, TINY.grid)
  # target position (time j, mel i) holds grid token (mel i, time j)
  assert int(target[0, 1 * m + 2]) == 2 * t + 1
  np.testing.assert_array_equal(target_to_grid_order(target, TINY.grid), grid_ids)


def test_every_param_has_logical_axes(tiny):
  boxed = tiny[1]
  leaves = jax.tree_util.tree_leaves_with_path(
      boxed["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
  for path, leaf in leaves:
    assert isinstance(leaf, nn.Partitioned), f"{jax.tree_util.keystr(path)} has no logical axes"
    assert len(leaf.names) == leaf.value.ndim, jax.tree_util.keystr(path)
  # small and frozen: replicated under every rule set, so no tiny size can fail to divide a mesh
  for fsdp in (False, True):
    specs = partitioning.mesh_specs(boxed["params"], partitioning.axis_rules(fsdp))
    sharded = [jax.tree_util.keystr(p) for p, spec in jax.tree_util.tree_leaves_with_path(
        specs, is_leaf=lambda x: isinstance(x, PartitionSpec)) if any(a is not None for a in spec)]
    assert sharded == [], f"fsdp={fsdp}: sharded tokenizer params {sharded}"


def test_wrong_input_shape_is_rejected(tiny):
  model, _, variables, x, _, _ = tiny
  with pytest.raises(ValueError, match="time, mel"):
    model.apply(variables, x.transpose(0, 2, 1, 3), method=AudioViTVQGAN.encode)
  with pytest.raises(ValueError, match="ids must be"):
    model.apply(variables, jnp.zeros((1, 5), jnp.int32), method=AudioViTVQGAN.decode)
