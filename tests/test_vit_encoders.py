"""The image and audio ViTs and their input embedders against the release's golden activations.

`uio2_full_golden.npz` holds the release's weights (`param/*`), the batch (`input/*`) and every
module's output (`act/*`). Tolerances are relative to max|reference| (the NumPy spec gets ~1e-6).
Also: the block taps on a deeper ViT, the position-table resize, `freeze_vit`, and bad inputs.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unified_io.config import TrunkConfig, UnifiedIOConfig, VitConfig
from unified_io.network.embedders.vit import AudioViT, ImageViT, resize_positions
from unified_io.interop.params import release_to_params
from unified_io.interop.release import config_from_release
from unified_io.modalities import Modality
from unified_io.network.encoder_decoder import UnifiedIONetwork

# Relative to max|reference|. We measure ~1e-6 on CPU; 1e-4 would not notice the image ViT using the
# tanh GELU instead of the exact one (6e-5).
RTOL = 1e-5
VITS = {"image": ImageViT, "audio": AudioViT}
FEATURES = ("input", "mask", "pos_ids")


def _vit_prefix(modality):
  return f"input_embedders.{modality}.image_encoder.vision_transformer"


@pytest.fixture(scope="module")
def golden(reference_dir):
  """The arrays these tests read, from the full golden file (read once for the module)."""
  path = reference_dir / "uio2_full_golden.npz"
  assert path.is_file(), f"{path} is missing from the reference folder"
  wanted = ("param/", "input/inputs/image/", "input/inputs/audio/", "act/input_embedders.image",
            "act/input_embedders.audio", "aux/", "meta/")
  with np.load(path) as data:
    return {k: data[k] for k in data.files if k.startswith(wanted) and "#" not in k}


@pytest.fixture(scope="module")
def release(golden):
  return {k[len("param/"):]: v for k, v in golden.items() if k.startswith("param/")}


@pytest.fixture(scope="module")
def config(golden, release):
  """The golden config with image and audio inputs only (the histories are tested elsewhere)."""
  cfg = config_from_release(str(golden["meta/config_json"]), release.keys())
  return dataclasses.replace(cfg, input_modalities=(Modality.TEXT, Modality.IMAGE, Modality.AUDIO),
                             target_modalities=(Modality.TEXT,))


def _inputs(golden, modality):
  return {k: golden[f"input/inputs/{modality}/{k}"] for k in FEATURES}


def _assert_close(label, ours, ref, rtol=RTOL):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (label, ours.shape, ref.shape)
  err, scale = float(np.abs(ours - ref).max()), float(np.abs(ref).max())
  assert err <= rtol * max(scale, 1.0), f"{label}: max|diff| {err:.3g} (max|ref| {scale:.3g})"


# ------------------------------------------------------------------------------------------------
# the ViTs match the release
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("modality", ["image", "audio"])
def test_vit_matches_release(modality, golden, release, config):
  vit = VITS[modality](getattr(config, f"{modality}_vit"))
  x = _inputs(golden, modality)
  abstract = nn.meta.unbox(jax.eval_shape(vit.init, jax.random.PRNGKey(0), x["input"], x["mask"],
                                          x["pos_ids"]))
  params, unused = release_to_params(release, abstract["params"], prefix=_vit_prefix(modality))
  assert not [n for n in unused if n.startswith(_vit_prefix(modality))], "ViT tensors left unused"

  apply = jax.jit(lambda p, *x: vit.apply(
      p, *x, capture_intermediates=lambda module, _: module.name == "resblocks_0"))
  (last, block1), state = apply({"params": params}, x["input"], x["mask"], x["pos_ids"])
  act = f"act/input_embedders.{modality}.image_encoder"
  _assert_close(f"{modality} last", last, golden[f"{act}/0"])
  _assert_close(f"{modality} block 1", block1, golden[f"{act}/1"])
  # Block 0 with its prefix rows: the tiny ViT has 2 blocks, so last == block 1 above.
  (block0,) = state["intermediates"]["transformer"]["resblocks_0"]["__call__"]
  _assert_close(f"{modality} block 0", block0,
                golden[f"{act}.vision_transformer.transformer.resblocks.0"])


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_embedder_matches_release(modality, golden, release, config):
  """Through the network (shared ViT owned by it), parameters named as the release names them."""
  net = UnifiedIONetwork(config)
  inputs = {modality: _inputs(golden, modality)}
  embed = lambda module, inputs: module.input_embedders[modality](inputs[modality])  # noqa: E731
  abstract = nn.meta.unbox(jax.eval_shape(
      lambda: net.init(jax.random.PRNGKey(0), inputs, method=embed)))
  params, _ = release_to_params(release, abstract["params"])
  part = jax.jit(lambda p, i: net.apply(p, i, method=embed))({"params": params}, inputs)

  act = f"act/input_embedders.{modality}"
  _assert_close(f"{modality} embed", part.embed, golden[f"{act}/embed"])
  _assert_close(f"{modality} position_embed", part.rope, golden[f"{act}/position_embed"])
  np.testing.assert_array_equal(part.mask, golden[f"{act}/mask"])
  assert part.embed.dtype == config.trunk.activation_dtype


# ------------------------------------------------------------------------------------------------
# taps, position table
# ------------------------------------------------------------------------------------------------
TINY_VIT = VitConfig(emb_dim=16, num_heads=2, head_dim=8, num_layers=3, mlp_dim=32, patch_size=2,
                     default_input_size=(8, 8), num_pos=1 + 4 * 4)


def _random_variables(init, *args, seed=0):
  """Variables of `init`'s shapes drawn with NumPy (compiling the flax initializers is slow)."""
  rng = np.random.default_rng(seed)
  abstract = nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0), *args))
  return jax.tree_util.tree_map(
      lambda leaf: (0.5 * rng.normal(size=leaf.shape)).astype(np.float32), abstract)


def _random_patches(vit, n, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, n, vit.patch_dim)).astype(np.float32)
  mask = np.ones((batch, n), np.int32)
  mask[1, n // 2:] = 0
  pos_ids = np.stack([rng.permutation(n) for _ in range(batch)]).astype(np.int32)
  return x, mask, pos_ids


@pytest.mark.parametrize("cls, n_prefix", [(ImageViT, 1), (AudioViT, 2)])
def test_taps_are_block_1_and_last(cls, n_prefix):
  # The AST table has two prefix rows, the CLIP one one.
  cfg = dataclasses.replace(TINY_VIT, num_pos=n_prefix + 16)
  vit = cls(cfg)
  x, mask, pos_ids = _random_patches(vit, 16)
  variables = _random_variables(vit.init, x, mask, pos_ids)
  (last, block1), state = jax.jit(lambda *a: vit.apply(*a, capture_intermediates=True))(
      variables, x, mask, pos_ids)
  blocks = state["intermediates"]["transformer"]
  np.testing.assert_array_equal(block1, blocks["resblocks_1"]["__call__"][0][:, n_prefix:])
  np.testing.assert_array_equal(last, blocks["resblocks_2"]["__call__"][0][:, n_prefix:])
  assert last.shape == (2, 16, cfg.emb_dim) and last.dtype == jnp.float32


def _pre_ln_input(vit, variables, x, mask, pos_ids):
  """The ViT's outputs, and what it feeds its pre-LN: class token + patch embeddings + positions."""

  def run(variables, x, mask, pos_ids):
    seen = []

    def record(next_fun, args, kwargs, context):
      if context.module.name == "pre_ln" and context.method_name == "__call__":
        seen.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      out = vit.apply(variables, x, mask, pos_ids)
    return out, seen[0]

  return jax.jit(run)(variables, x, mask, pos_ids)


@pytest.mark.parametrize("input_size", [(8, 8), (4, 4), (12, 6)])
def test_position_table_resized_to_grid(input_size):
  """A 4x4 table used on the grid of `input_size` / 2: kept, shrunk, and 6x3 (up and down)."""
  vit = ImageViT(dataclasses.replace(TINY_VIT, default_input_size=input_size))
  h, w = vit.cfg.grid
  x, mask, pos_ids = _random_patches(vit, h * w)
  variables = _random_variables(vit.init, x, mask, pos_ids)
  params = variables["params"]
  # Zero patch embeddings and class token: the pre-LN input is then the position rows themselves.
  params["embedding"]["kernel"] = np.zeros_like(params["embedding"]["kernel"])
  params["class_embedding"] = np.zeros_like(params["class_embedding"])
  (last, block1), seen = _pre_ln_input(vit, variables, x, mask, pos_ids)

  table = params["positional_embedding"]
  expected = np.asarray(jax.image.resize(table[1:].reshape(4, 4, -1), (h, w, table.shape[-1]),
                                         "bicubic")).reshape(h * w, -1)
  np.testing.assert_allclose(seen[:, 0], np.broadcast_to(table[0], seen[:, 0].shape), atol=1e-6)
  np.testing.assert_allclose(seen[:, 1:], expected[pos_ids], atol=1e-6)
  assert last.shape == block1.shape == (2, h * w, vit.cfg.emb_dim)


@pytest.mark.parametrize("key, size", [("up_9x9", 9), ("down_4x4", 4)])
def test_resize_matches_release_interpolation(golden, key, size):
  """The port's F.interpolate(bicubic, antialias=True) agrees with jax.image.resize (a = -0.5)."""
  src_hwc = golden["aux/vit_pos_interp/src_1chw"][0].transpose(1, 2, 0)
  ref_hwc = golden[f"aux/vit_pos_interp/{key}"][0].transpose(1, 2, 0)
  _assert_close(key, resize_positions(jnp.asarray(src_hwc), (size, size)), ref_hwc, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# freeze_vit
# ------------------------------------------------------------------------------------------------
TINY = UnifiedIOConfig(
    trunk=TrunkConfig(emb_dim=32, num_heads=2, head_dim=16, num_encoder_layers=1,
                      num_decoder_layers=1, mlp_dim=64, text_vocab_size=64, image_vocab_size=0,
                      audio_vocab_size=0),
    input_modalities=(Modality.IMAGE, Modality.AUDIO),
    image_vit=dataclasses.replace(TINY_VIT, num_layers=2),
    audio_vit=dataclasses.replace(TINY_VIT, num_layers=2, num_pos=2 + 16))


def _tiny_inputs(cfg):
  inputs = {}
  for name, cls in (("image", ImageViT), ("audio", AudioViT)):
    x, mask, pos_ids = _random_patches(cls(getattr(cfg, f"{name}_vit")), 12)
    inputs[name] = {"input": x, "mask": mask, "pos_ids": pos_ids}
  return inputs


def _embed_all(module, inputs):
  return [module.input_embedders[m](f).embed for m, f in inputs.items()]


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_vit_stops_gradients(freeze):
  cfg = dataclasses.replace(TINY, freeze_vit=freeze)
  net, inputs = UnifiedIONetwork(cfg), _tiny_inputs(cfg)
  params = _random_variables(functools.partial(net.init, method=_embed_all), inputs)["params"]
  weights = [np.random.default_rng(i).normal(size=(2, 12, cfg.trunk.emb_dim)).astype(np.float32)
             for i in range(len(inputs))]

  def loss(p):
    embeds = net.apply({"params": p}, inputs, method=_embed_all)
    return sum(jnp.sum(e * w) for e, w in zip(embeds, weights))

  grads = nn.meta.unbox(jax.jit(jax.grad(loss))(params))
  for vit in ("vits_image_vit", "vits_audio_vit"):
    for path, g in jax.tree_util.tree_leaves_with_path(grads[vit]):
      name = f"{vit}{jax.tree_util.keystr(path)}"
      if freeze:
        assert not np.any(np.asarray(g)), f"{name} gets a gradient with freeze_vit=True"
      else:
        assert np.any(np.asarray(g)), f"{name} gets no gradient with freeze_vit=False"
  for m in ("image", "audio"):  # the projection always trains
    assert np.any(np.asarray(grads[f"input_embedders_{m}"]["projection"]["kernel"]))


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
def _bad(name, batch=2, n=12, patch_dim=None, mask_n=None, pos_n=None, drop=None):
  patch_dim = patch_dim or {"image": 12, "audio": 4}[name]
  features = {"input": jax.ShapeDtypeStruct((batch, n, patch_dim), jnp.float32),
              "mask": jax.ShapeDtypeStruct((batch, mask_n or n), jnp.int32),
              "pos_ids": jax.ShapeDtypeStruct((batch, pos_n or n), jnp.int32)}
  features.pop(drop, None)
  return features


@pytest.mark.parametrize("modality", ["image", "audio"])
@pytest.mark.parametrize("case, kwargs, expected", [
    ("patch_dim", dict(patch_dim=5),
     r"input has shape \(2, 12, 5\), expected input \[B, N, {pd}\]"),
    ("too many patches", dict(n=17), r"input has 17 patches, more than the 4x4 grid's 16"),
    ("mask length", dict(mask_n=11), r"mask has shape \(2, 11\), expected \[B, N\] = \(2, 12\)"),
    ("pos_ids length", dict(pos_n=13), r"pos_ids has shape \(2, 13\), expected \[B, N\]"),
    ("missing key", dict(drop="pos_ids"),
     r"features lack \['pos_ids'\]; expected input \[B, N, {pd}\]"),
])
def test_bad_input_is_rejected_at_trace_time(modality, case, kwargs, expected):
  net = UnifiedIONetwork(TINY)
  good = {m: _bad(m) for m in ("image", "audio")}
  params = jax.eval_shape(lambda f: net.init(jax.random.PRNGKey(0), f, method=_embed_all), good)
  patch_dim = {"image": 12, "audio": 4}[modality]
  bad = dict(good, **{modality: _bad(modality, **kwargs)})
  with pytest.raises(ValueError, match=f"^{modality} input: " + expected.format(pd=patch_dim)):
    jax.eval_shape(lambda p, f: net.apply(p, f, method=_embed_all), params, bad)
