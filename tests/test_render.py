"""Image and audio target tokens render back to pixels / spectrograms through the model."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from unified_io.interop.check_reference import nest_inputs
from unified_io.interop.params import release_to_params
from unified_io.interop.release import config_from_release
from unified_io.model import UnifiedIOModel
from unified_io.network.vq.vqgan import ImageVQGAN


@pytest.fixture(scope="module")
def model_and_params(golden_full):
  release = {k[len("param/"):]: golden_full[k] for k in golden_full.files if k.startswith("param/")}
  cfg = config_from_release(str(golden_full["meta/config_json"]), release.keys())
  model = UnifiedIOModel(cfg)
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0),
                                          nest_inputs(golden_full)))
  params, unused = release_to_params(release, abstract)
  assert not unused  # decoders included: every release tensor has a home
  return model, params


def test_render_image_tokens_equals_the_tokenizer_decoder(model_and_params, golden_full):
  model, params = model_and_params
  tokens = golden_full["output/image/targets"]  # codes + 2
  pixels = jax.jit(model.render, static_argnums=1)(params, "image", tokens)
  assert pixels.shape == golden_full["input/targets/image/image"].shape
  vqgan = ImageVQGAN(model.cfg.image_vqgan)
  direct = vqgan.apply({"params": params["target_embedders_image"]["vqgan"]}, tokens - 2,
                       method=ImageVQGAN.decode)
  np.testing.assert_allclose(pixels, direct, rtol=1e-5, atol=1e-5)


def test_render_audio_tokens_gives_a_spectrogram(model_and_params, golden_full):
  model, params = model_and_params
  spec = jax.jit(model.render, static_argnums=1)(params, "audio", golden_full["output/audio/targets"])
  assert spec.shape == golden_full["input/targets/audio/audio"].shape
  assert np.isfinite(np.asarray(spec)).all()


def test_render_text_is_a_clear_error(model_and_params):
  model, params = model_and_params
  with pytest.raises(ValueError, match="cannot render 'text'"):
    model.render(params, "text", np.zeros((1, 4), np.int32))


def test_wrong_raw_image_shape_names_modality_and_shape(model_and_params, golden_full):
  model, params = model_and_params
  batch = nest_inputs(golden_full)
  batch["targets"]["image"]["image"] = np.zeros((2, 64, 64, 3), np.float32)
  with pytest.raises(ValueError, match=r"image target: feature `image` has shape \(2, 64, 64, 3\), "
                                       r"expected \[batch, 128, 128, 3\]"):
    jax.eval_shape(model.outputs, params, batch)
