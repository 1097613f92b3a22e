"""The image VQGAN tokenizer against the release's golden activations, and with random weights.

The full golden file carries the release's tiny VQGAN weights, the image targets it tokenized, every
encoder block's output, the quantizer's input (`quantize/input_z`) and the token ids (+2). It has no
decoder activations, so the decoder is checked against a NumPy float64 re-implementation written
from the release's NCHW code (torch weight layouts, levels run deepest first). Everything runs
jitted, through two functions compiled once for the module.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unified_io.config import ImageVQGANConfig
from unified_io.interop.params import release_to_params
from unified_io.interop.release import config_from_release
from unified_io.network.vq.vqgan import ImageVQGAN, VectorQuantizer, attention_levels

PREFIX = "target_embedders.image.vqgan"
LATENT_RTOL = 1e-4  # of max |reference|
# The tiny golden model's VQGAN (`meta/config_json` section `image_vqgan`).
TINY = ImageVQGANConfig(embed_dim=4, n_embed=256, z_channels=4, resolution=128, ch=32,
                        ch_mult=(1, 1, 2, 2), num_res_blocks=1, attn_resolutions=(16,),
                        default_input_size=(128, 128))
MODEL = ImageVQGAN(TINY)
IMAGE_SHAPE = (2, 128, 128, 3)


def _nhwc(x):
  return np.asarray(x).transpose(0, 2, 3, 1)


def _rel_err(ours, ref):
  return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


@jax.jit
def _encode(params, images):
  """Pre-VQ latents, every encoder block's output (captured) and the ids."""
  latents, state = MODEL.apply({"params": params}, images, method=ImageVQGAN.encode_latents,
                               capture_intermediates=True)
  ids = MODEL.apply({"params": params}, images, method=ImageVQGAN.encode)
  return latents, state["intermediates"]["encoder"], ids


@jax.jit
def _decode(params, ids):
  return MODEL.apply({"params": params}, ids, method=ImageVQGAN.decode)


def _abstract_params():
  return jax.eval_shape(MODEL.init, jax.random.PRNGKey(0), jnp.zeros(IMAGE_SHAPE))["params"]


@pytest.fixture(scope="module")
def golden(reference_dir):
  path = reference_dir / "uio2_full_golden.npz"
  assert path.is_file(), f"{path} is missing from the reference folder"
  with np.load(path) as data:
    return {k: data[k] for k in data.files if "image" in k or k == "meta/config_json"}


@pytest.fixture(scope="module")
def release(golden):
  return {k[len("param/"):]: v for k, v in golden.items() if k.startswith(f"param/{PREFIX}.")}


@pytest.fixture(scope="module")
def params(golden, release):
  """The golden weights in our tree; every release VQGAN tensor must be used."""
  cfg = config_from_release(str(golden["meta/config_json"]), release).image_vqgan
  assert cfg == TINY, "the golden's image_vqgan config changed; update TINY"
  converted, unused = release_to_params(release, nn.meta.unbox(_abstract_params()), prefix=PREFIX)
  assert unused == [], f"release VQGAN tensors not converted: {unused}"
  return converted


@pytest.fixture(scope="module")
def encoded(golden, params):
  return _encode(params, golden["input/targets/image/image"])


# ------------------------------------------------------------------------------------------------
# encoder and quantizer vs the release
# ------------------------------------------------------------------------------------------------
def test_input_range_is_minus_one_to_one(golden, encoded):
  # The release feeds `image * 2 - 1`; the VQGAN does no rescaling, so its first block matches the
  # golden only when we feed the golden images unchanged.
  images = golden["input/targets/image/image"]
  assert images.min() < -0.9 and images.max() > 0.9 and np.abs(images).max() <= 1.0
  ref = _nhwc(golden[f"act/{PREFIX}.encoder.down_0_block_0"])
  assert _rel_err(encoded[1]["down_0_block_0"]["__call__"][0], ref) < LATENT_RTOL


def test_encoder_blocks_match_release(golden, encoded):
  blocks = encoded[1]
  names = [k[len(f"act/{PREFIX}.encoder."):] for k in golden if k.startswith(f"act/{PREFIX}.encoder.")]
  assert len(names) >= 10, names
  for name in names:
    err = _rel_err(blocks[name]["__call__"][0], _nhwc(golden[f"act/{PREFIX}.encoder.{name}"]))
    assert err < LATENT_RTOL, f"encoder.{name}: rel err {err:.2e}"
  err = _rel_err(blocks["__call__"][0], _nhwc(golden[f"act/{PREFIX}.encoder"]))
  assert err < LATENT_RTOL, f"encoder output: rel err {err:.2e}"


def test_pre_vq_latents_match_release(golden, encoded):
  latents = encoded[0]
  ref = _nhwc(golden[f"act/{PREFIX}.quantize/input_z"])
  assert latents.shape == ref.shape == (2, 16, 16, 4) and latents.dtype == jnp.float32
  assert _rel_err(latents, ref) < LATENT_RTOL


def test_ids_match_release_tokens(golden, release, encoded):
  ids = np.asarray(encoded[2])
  ref = golden["act/target_embedders.image/target_tokens"] - 2  # the embedder's +2 (BOS, MASK)
  assert ids.shape == ref.shape == (2, 256) and ids.dtype == np.int32
  np.testing.assert_array_equal(ref.reshape(-1), golden[f"act/{PREFIX}.quantize/2/2"])
  differ = np.argwhere(ids != ref)
  # A flip is acceptable only at a near-tie: both codes (almost) equally close to the release's z.
  z = _nhwc(golden[f"act/{PREFIX}.quantize/input_z"]).astype(np.float64).reshape(2, 256, 4)
  codebook = release[f"{PREFIX}.quantize.embedding.weight"].astype(np.float64)
  for b, t in differ:
    d_ours, d_ref = (np.sum((z[b, t] - codebook[i]) ** 2) for i in (ids[b, t], ref[b, t]))
    assert abs(d_ours - d_ref) < 1e-3, f"id [{b},{t}]: {ids[b, t]} vs {ref[b, t]} is no near-tie"
  assert len(differ) <= 2, f"{len(differ)} of {ids.size} ids differ from the release"


# ------------------------------------------------------------------------------------------------
# decoder vs a NumPy float64 version of the release's NCHW code
# ------------------------------------------------------------------------------------------------
def _np_conv(x, w, b, stride=1, pad=(1, 1, 1, 1)):
  """torch Conv2d: x [B, C, H, W], w [O, C, kh, kw]; pad = (top, bottom, left, right)."""
  x = np.pad(x, ((0, 0), (0, 0), pad[:2], pad[2:]))
  kh, kw = w.shape[2:]
  oh, ow = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
  out = np.zeros((x.shape[0], w.shape[0], oh, ow))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
      out += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j])
  return out + b[None, :, None, None]


def _np_decoder(p, cfg, ids):
  g = lambda name: p[f"{PREFIX}.{name}"].astype(np.float64)  # noqa: E731
  conv = lambda x, n, **kw: _np_conv(x, g(n + ".weight"), g(n + ".bias"), **kw)  # noqa: E731
  swish = lambda x: x / (1 + np.exp(-x))  # noqa: E731

  def norm(x, n):  # GroupNorm(32, eps 1e-6)
    b, c, h, w = x.shape
    xg = x.reshape(b, 32, -1)
    xg = (xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + 1e-6)
    return xg.reshape(b, c, h, w) * g(n + ".weight")[:, None, None] + g(n + ".bias")[:, None, None]

  def res(x, n):
    h = conv(swish(norm(x, n + ".norm1")), n + ".conv1")
    h = conv(swish(norm(h, n + ".norm2")), n + ".conv2")
    if f"{PREFIX}.{n}.nin_shortcut.weight" in p:
      x = conv(x, n + ".nin_shortcut", pad=(0, 0, 0, 0))
    return x + h

  def attn(x, n):
    b, c, hh, ww = x.shape
    h = norm(x, n + ".norm")
    q, k, v = (conv(h, f"{n}.{m}", pad=(0, 0, 0, 0)).reshape(b, c, -1) for m in "qkv")
    w = np.einsum("bcq,bck->bqk", q, k) * c ** -0.5
    w = np.exp(w - w.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = np.einsum("bqk,bck->bcq", w, v).reshape(b, c, hh, ww)
    return x + conv(out, n + ".proj_out", pad=(0, 0, 0, 0))

  side = int(np.sqrt(ids.shape[1]))  # the release's decode_code assumes a square grid
  z = g("quantize.embedding.weight")[ids].reshape(ids.shape[0], side, side, -1).transpose(0, 3, 1, 2)
  h = conv(conv(z, "post_quant_conv", pad=(0, 0, 0, 0)), "decoder.conv_in")
  h = attn(res(h, "decoder.mid_block_1"), "decoder.mid_attn_1")
  h = res(h, "decoder.mid_block_2")
  levels, has_attn = len(cfg.ch_mult), attention_levels(cfg)
  for i_level in reversed(range(levels)):
    i_idx = levels - i_level - 1
    for j in range(cfg.num_res_blocks + 1):
      h = res(h, f"decoder.up_{i_idx}_block_{j}")
      if has_attn[i_level]:
        h = attn(h, f"decoder.up_{i_idx}_attn_{j}")
    if i_level != 0:  # F.interpolate(scale_factor=2, mode="nearest"), then a 3x3 conv
      h = conv(h.repeat(2, axis=2).repeat(2, axis=3), f"decoder.up_{i_idx}_upsample.conv")
  return conv(swish(norm(h, "decoder.norm_out")), "decoder.conv_out").transpose(0, 2, 3, 1)


def test_decode_matches_release_code(golden, release, params):
  ids = golden["act/target_embedders.image/target_tokens"] - 2
  images = _decode(params, ids)
  assert images.shape == golden["input/targets/image/image"].shape == IMAGE_SHAPE
  assert images.dtype == jnp.float32
  assert _rel_err(images, _np_decoder(release, TINY, ids)) < LATENT_RTOL


def test_round_trip_with_release_weights(golden, params):
  # Random weights: the decoder is no inverse of the encoder, so few ids survive (9 of 512 when
  # written, chance is 2). What must hold: shapes, dtypes, id range and determinism.
  ids = jnp.asarray(golden["act/target_embedders.image/target_tokens"] - 2)
  again = _encode(params, _decode(params, ids))[2]
  assert again.shape == ids.shape and again.dtype == jnp.int32
  assert int(again.min()) >= 0 and int(again.max()) < TINY.n_embed
  np.testing.assert_array_equal(again, _encode(params, _decode(params, ids))[2])


# ------------------------------------------------------------------------------------------------
# random weights (no reference needed)
# ------------------------------------------------------------------------------------------------
def test_params_carry_logical_axes_at_tiny_shapes():
  abstract = _abstract_params()
  specs = nn.get_partition_spec(abstract)
  shapes = nn.meta.unbox(abstract)
  flat_specs = jax.tree_util.tree_leaves_with_path(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  for (path, spec), leaf in zip(flat_specs, jax.tree_util.tree_leaves(shapes)):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    assert len(spec) == leaf.ndim and all(spec), f"{name}: {spec} for shape {leaf.shape}"
  assert shapes["quantize"]["embedding"]["embedding"].shape == (256, 4)
  assert shapes["encoder"]["conv_in"]["kernel"].shape == (3, 3, 3, 32)
  assert shapes["decoder"]["up_2_block_0"]["nin_shortcut"]["kernel"].shape == (1, 1, 64, 32)
  assert "up_3_upsample" not in shapes["decoder"] and "down_3_downsample" not in shapes["encoder"]


def test_codebook_init_is_taming_uniform():
  # The one initializer of our own (the convs use flax's lecun-normal, as the release does).
  variables = VectorQuantizer(256, 4).init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
  codebook = nn.meta.unbox(variables)["params"]["embedding"]["embedding"]
  assert codebook.shape == (256, 4)
  assert float(jnp.abs(codebook).max()) <= 1 / 256 and float(codebook.min()) < 0 < float(codebook.max())


def test_random_weights_encode_decode_shapes():
  # Random weights drawn in NumPy: a full `init` costs tens of seconds of RNG compilation on CPU.
  rng = np.random.default_rng(0)
  draw = lambda s: rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))  # noqa: E731
  params = jax.tree.map(lambda s: draw(s).astype(np.float32), nn.meta.unbox(_abstract_params()))
  images = rng.uniform(-1, 1, IMAGE_SHAPE).astype(np.float32)
  ids = _encode(params, images)[2]
  assert ids.shape == (2, 16 * 16) and ids.dtype == jnp.int32
  assert int(ids.min()) >= 0 and int(ids.max()) < TINY.n_embed
  decoded = _decode(params, ids)
  assert decoded.shape == IMAGE_SHAPE and decoded.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(decoded)))
  with pytest.raises(ValueError, match="do not fill"):
    jax.eval_shape(_decode, params, ids[:, :-1])
