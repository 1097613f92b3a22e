"""The released models' shapes, by `jax.eval_shape` (no memory): large / xl / xxl in full."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from unified_io.interop.release import config_from_release, release_config
from unified_io.model import UnifiedIOModel

# The released checkpoints (README): trunk + ViTs + resamplers + VQ tokenizers of the released checkpoints.
DESIGN_TOTALS = {"large": 1.08e9, "xl": 3.18e9, "xxl": 6.86e9}
EMB = {"large": 1024, "xl": 2048, "xxl": 3072}
RESAMPLER = {"large": 768, "xl": 1024, "xxl": 1024}


@pytest.fixture(scope="module", params=sorted(DESIGN_TOTALS))
def sized(request):
  size = request.param
  model = UnifiedIOModel(config_from_release(release_config(size)))
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), model.batch_spec(1)))
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): leaf.shape
          for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)}
  return size, flat


def test_total_matches_the_release(sized):
  size, flat = sized
  total = sum(int(np.prod(s)) for s in flat.values())
  print(f"{size}: {total:,} parameters")
  assert abs(total - DESIGN_TOTALS[size]) / DESIGN_TOTALS[size] < 0.005, total


def test_known_release_tensor_shapes(sized):
  size, flat = sized
  d, r = EMB[size], RESAMPLER[size]
  expected = {
      "token_embedders_text/embedding": (33280, d),
      "token_embedders_image/embedding": (16512, d),
      "token_embedders_audio/embedding": (8320, d),
      "vits_image_vit/positional_embedding": (197, 768),  # CLIP's 14 x 14 table, resized to 24 x 24
      "vits_audio_vit/positional_embedding": (514, 768),
      "input_embedders_image/projection/kernel": (2 * 768, d),
      "input_embedders_image_history/resampler/perceiver/latents": (32, r),
      "input_embedders_audio_history/resampler/perceiver/latents": (16, r),
      "input_embedders_image_history/post_projection/kernel": (r, d),
      "target_embedders_image/vqgan/quantize/embedding/embedding": (16384, 4),
      "target_embedders_audio/vqgan/quantize/embedding/embedding": (8192, 32),
  }
  for name, shape in expected.items():
    assert name in flat, f"{name} missing; have e.g. {sorted(flat)[:5]}"
    assert tuple(flat[name]) == shape, (name, flat[name], shape)
  scaled_cosine = [n for n in flat if n.endswith("logit_scale")]
  assert bool(scaled_cosine) == (size == "xxl"), scaled_cosine
