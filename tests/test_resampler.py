"""The perceiver resampler and the image/audio history embedders against the release's golden file.

`uio2_full_golden.npz` runs both cross-attention variants: the image history's perceiver uses
qk-norm, the audio history's scaled-cosine attention; each has a frame with no valid patch. The
history path's ViT call is the golden file's second call of the shared ViT (`image_encoder#1`).
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unified_io.network.embedders import INPUT_EMBEDDERS
from unified_io.network.embedders.history import AudioHistoryEmbedder, ImageHistoryEmbedder
from unified_io.network.embedders.resampler import LOGIT_SCALE_MAX, PerceiverResampler
from unified_io.interop.params import release_to_params
from unified_io.interop.release import config_from_release
from unified_io.modalities import Modality

FULL_GOLDEN = "uio2_full_golden.npz"
RTOL = 1e-4  # of max |ref|
HISTORIES = {  # modality: (embedder, the ViT input modality whose ViT it shares, variant)
    "image_history": (ImageHistoryEmbedder, "image", "qk_norm"),
    "audio_history": (AudioHistoryEmbedder, "audio", "scaled_cosine"),
}


@pytest.fixture(scope="module")
def golden(reference_dir):
  path = reference_dir / FULL_GOLDEN
  assert path.is_file(), f"{path} is missing from the reference folder"
  with np.load(path) as data:
    wanted = ("param/", "input/inputs/image_history/", "input/inputs/audio_history/",
              "act/input_embedders.image_history", "act/input_embedders.audio_history",
              "act/input_embedders.image.image_encoder#1/",
              "act/input_embedders.audio.image_encoder#1/",
              "meta/config_json")
    return {k: data[k] for k in data.files if k.startswith(wanted)}


@pytest.fixture(scope="module")
def release(golden):
  return {k[len("param/"):]: v for k, v in golden.items() if k.startswith("param/")}


@pytest.fixture(scope="module")
def cfg(golden, release):
  return config_from_release(str(golden["meta/config_json"]), release.keys())


def _features(golden, modality):
  return {k: jnp.asarray(golden[f"input/inputs/{modality}/{k}"])
          for k in ("input", "mask", "pos_ids")}


def _vit_features(golden, vit_modality):
  return golden[f"act/input_embedders.{vit_modality}.image_encoder#1/0"]  # [B*F, N, V]


def _assert_close(ours, ref, label):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (label, ours.shape, ref.shape)
  err, scale = np.abs(ours - ref).max(), np.abs(ref).max()
  assert err <= RTOL * max(scale, 1.0), f"{label}: max |diff| {err:.3e} (max |ref| {scale:.3e})"


# ------------------------------------------------------------------------------------------------
# the resampler alone, on the golden ViT features
# ------------------------------------------------------------------------------------------------
def _resampler_and_params(cfg, release, modality, context, mask):
  module = PerceiverResampler(getattr(cfg, modality))
  abstract = nn.meta.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), context, mask))
  params, _ = release_to_params(release, abstract["params"],
                                prefix=f"input_embedders.{modality}.resampler.perceiver")
  return module, params


def _resampler_inputs(golden, release, modality):
  feats = _vit_features(golden, HISTORIES[modality][1])
  context = feats @ release[f"input_embedders.{modality}.pre_projection.weight"].T
  mask = golden[f"input/inputs/{modality}/mask"].reshape(feats.shape[0], -1)
  return jnp.asarray(context), jnp.asarray(mask)


@pytest.mark.parametrize("modality", sorted(HISTORIES))
def test_resampler_matches_release(golden, release, cfg, modality):
  rc = getattr(cfg, modality)
  variant = HISTORIES[modality][2]
  expected = (True, False) if variant == "qk_norm" else (False, True)
  assert (rc.qk_norm, rc.scaled_cosine) == expected
  context, mask = _resampler_inputs(golden, release, modality)
  assert (mask.sum(-1) == 0).any(), "the golden batch should have a frame with no valid patch"
  module, params = _resampler_and_params(cfg, release, modality, context, mask)
  out = jax.jit(module.apply)({"params": params}, context, mask)
  _assert_close(out, golden[f"act/input_embedders.{modality}.resampler"], f"{modality} resampler")


def test_logit_scale_is_clamped_at_ln_100(golden, release, cfg):
  context, mask = _resampler_inputs(golden, release, "audio_history")
  module, params = _resampler_and_params(cfg, release, "audio_history", context, mask)

  apply = jax.jit(module.apply)

  def run(logit_scale):
    p = jax.tree_util.tree_map(lambda x: x, params)
    for i in range(cfg.audio_history.num_layers):
      p[f"layers_{i}"]["xattention"]["logit_scale"] = np.full_like(
          p[f"layers_{i}"]["xattention"]["logit_scale"], logit_scale)
    return np.asarray(apply({"params": p}, context, mask))

  at_max = run(LOGIT_SCALE_MAX)
  np.testing.assert_array_equal(run(LOGIT_SCALE_MAX + 3.0), at_max)
  assert LOGIT_SCALE_MAX == pytest.approx(math.log(100.0))
  assert np.abs(run(LOGIT_SCALE_MAX - 1.0) - at_max).max() > 1e-3  # below the clamp it matters


def test_scaled_cosine_params_and_init(cfg):
  """logit_scale [heads] starts at ln 10; the scaled-cosine variant has no q/k norms."""
  rc = cfg.audio_history
  variables = jax.jit(PerceiverResampler(rc).init)(
      jax.random.PRNGKey(0), jnp.zeros((2, 5, rc.emb_dim)), jnp.ones((2, 5), jnp.int32))
  attention = nn.meta.unbox(variables["params"])["layers_0"]["xattention"]
  np.testing.assert_allclose(attention["logit_scale"], np.full(rc.num_heads, math.log(10.0)),
                             rtol=1e-6)
  assert "query_norm" not in attention and "key_norm" not in attention


# ------------------------------------------------------------------------------------------------
# the history embedders: a stand-in ViT that returns the golden history ViT features
# ------------------------------------------------------------------------------------------------
def _golden_vit(features_xnv: np.ndarray, grid):
  """A ViT with one parameter (`gain`, ones) whose last layer is `gain *` the golden features.

  It checks that it is called with the history frame's patch grid.
  """

  class GoldenViT(nn.Module):
    @nn.compact
    def __call__(self, x_xnp, mask_xn, pos_ids_xn, deterministic=True, grid=None):
      assert x_xnp.shape[:2] == mask_xn.shape == pos_ids_xn.shape == features_xnv.shape[:2]
      assert grid == expected_grid, (grid, expected_grid)
      gain = self.param("gain", nn.initializers.ones, (features_xnv.shape[-1],), jnp.float32)
      last = jnp.asarray(features_xnv) * gain
      return last, 2.0 * last

  expected_grid = grid
  return GoldenViT()


def _history_grid(cfg, modality, vit_modality):
  size = getattr(cfg, f"{modality}_input_size")
  patch = getattr(cfg, f"{vit_modality}_vit").patch_size
  return (size[0] // patch, size[1] // patch)


def _stub_embedder(golden, cfg, modality):
  cls, vit_modality, _ = HISTORIES[modality]
  vit = _golden_vit(_vit_features(golden, vit_modality), _history_grid(cfg, modality, vit_modality))
  return cls(cfg, vit=vit)


def _ones_vit(abstract):
  return {"gain": np.ones(abstract["gain"].shape, np.float32)}


def _embedder_params(release, module, features, modality, vit_params):
  abstract = nn.meta.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), features))["params"]
  own = {k: v for k, v in abstract.items() if k != "vit"}
  params, _ = release_to_params(release, own, prefix=f"input_embedders.{modality}")
  return {**params, "vit": vit_params(abstract["vit"])}


@pytest.mark.parametrize("modality", sorted(HISTORIES))
def test_history_embedder_matches_release(golden, release, cfg, modality):
  assert INPUT_EMBEDDERS[Modality(modality)] is HISTORIES[modality][0]
  features = _features(golden, modality)
  module = _stub_embedder(golden, cfg, modality)
  params = _embedder_params(release, module, features, modality, _ones_vit)
  part = jax.jit(module.apply)({"params": params}, features)
  prefix = f"act/input_embedders.{modality}"
  _assert_close(part.embed, golden[f"{prefix}/embed"], f"{modality} embed")
  np.testing.assert_array_equal(np.asarray(part.mask), golden[f"{prefix}/mask"])
  assert part.mask.dtype == golden[f"{prefix}/mask"].dtype
  _assert_close(part.rope, golden[f"{prefix}/position_embed"], f"{modality} position_embed")


@pytest.mark.parametrize("modality", sorted(HISTORIES))
def test_no_gradient_into_the_vit(golden, release, cfg, modality):
  """History ViT outputs are always detached, whatever `freeze_vit` says."""
  features = _features(golden, modality)
  module = _stub_embedder(golden, dataclasses.replace(cfg, freeze_vit=False), modality)
  params = _embedder_params(release, module, features, modality, _ones_vit)

  def loss(p):
    return jnp.sum(jnp.square(module.apply({"params": p}, features).embed))

  grads = jax.jit(jax.grad(loss))(params)
  assert np.all(np.asarray(grads["vit"]["gain"]) == 0.0)
  assert np.abs(np.asarray(grads["pre_projection"]["kernel"])).max() > 0  # the rest does learn


# ------------------------------------------------------------------------------------------------
# the history embedders with the real shared ViT (unified_io/network/embedders/vit.py)
# ------------------------------------------------------------------------------------------------
VIT_PREFIX = "input_embedders.{}.image_encoder.vision_transformer"


def _real_vit(cfg, vit_modality):
  vit_lib = pytest.importorskip("unified_io.network.embedders.vit")
  return {"image": vit_lib.ImageViT, "audio": vit_lib.AudioViT}[vit_modality](
      getattr(cfg, f"{vit_modality}_vit"))


@pytest.mark.parametrize("modality", sorted(HISTORIES))
def test_history_embedder_with_vit_matches_release(golden, release, cfg, modality):
  cls, vit_modality, _ = HISTORIES[modality]
  features = _features(golden, modality)
  module = cls(cfg, vit=_real_vit(cfg, vit_modality))
  vit_prefix = VIT_PREFIX.format(vit_modality)
  params = _embedder_params(release, module, features, modality,
                            lambda abstract: release_to_params(release, abstract, vit_prefix)[0])

  def loss(p):
    part = module.apply({"params": p}, features)
    return jnp.sum(jnp.square(part.embed)), part

  grads, part = jax.jit(jax.grad(loss, has_aux=True))(params)
  prefix = f"act/input_embedders.{modality}"
  _assert_close(part.embed, golden[f"{prefix}/embed"], f"{modality} embed")
  np.testing.assert_array_equal(np.asarray(part.mask), golden[f"{prefix}/mask"])
  _assert_close(part.rope, golden[f"{prefix}/position_embed"], f"{modality} position_embed")
  vit_grads = jax.tree_util.tree_leaves(grads["vit"])
  assert vit_grads and all(np.all(np.asarray(g) == 0.0) for g in vit_grads)


# ------------------------------------------------------------------------------------------------
# bad input fails at trace time, naming the modality and the expected shape
# ------------------------------------------------------------------------------------------------
def _trace(module, features):
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), features)


@pytest.mark.parametrize("modality", sorted(HISTORIES))
def test_bad_history_input(golden, cfg, modality):
  module = _stub_embedder(golden, cfg, modality)
  good = _features(golden, modality)
  b, f, n, p = good["input"].shape
  max_frames = getattr(cfg, modality).max_frames

  too_many = max_frames + 1
  frames = {"input": jnp.zeros((b, too_many, n, p)), "mask": jnp.ones((b, too_many, n), jnp.int32),
            "pos_ids": jnp.zeros((b, too_many, n), jnp.int32)}
  expected = rf"{modality}: {too_many} frames exceed max_frames = {max_frames}"
  with pytest.raises(ValueError, match=expected):
    _trace(module, frames)
  with pytest.raises(ValueError, match=rf"{modality}: mask must have shape .*\({b}, {f}, {n}\)"):
    _trace(module, {**good, "mask": good["mask"][:, :, :-1]})
  with pytest.raises(ValueError, match=rf"{modality}: pos_ids must have shape .*\({b}, {f}, {n}\)"):
    _trace(module, {**good, "pos_ids": good["pos_ids"][:, 0]})
  with pytest.raises(ValueError, match=rf"{modality}: input must be \[B, F, N, patch_dim\]"):
    _trace(module, {**good, "input": good["input"][:, 0]})
  with pytest.raises(ValueError, match=rf"{modality}: features lack \['pos_ids'\]"):
    _trace(module, {k: v for k, v in good.items() if k != "pos_ids"})
