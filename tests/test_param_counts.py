"""Trunk parameter counts of every size preset, by shape only (`jax.eval_shape`: no memory).

The count, written out from the architecture (D emb_dim, H heads, K head_dim, F mlp_dim,
N_e / N_d encoder / decoder layers; nothing has a bias):

  encoder layer  = 4*D*H*K  (q, k, v, out)  + 2*K (qk-norm scales)  + 2*D (two pre-norms)
                 + 3*D*F    (SwiGLU wi_0, wi_1, wo)
  decoder layer  = 8*D*H*K  (self + cross attention) + 4*K (their qk-norms) + 3*D (three pre-norms)
                 + 3*D*F
  total          = N_e * encoder layer + N_d * decoder layer
                 + 2*D                             (encoder_norm, decoder_norm)
                 + (33280 + 16512 + 8320) * D      (text, image, audio token tables = tied heads)
                 + 2*D                             (text input and target modality vectors)

For large (D=1024, H=16, K=64, F=2816, 24+24 layers):
  encoder layer = 4,194,304 + 128 + 2,048 + 8,650,752 = 12,847,232;  x24 = 308,333,568
  decoder layer = 8,388,608 + 256 + 3,072 + 8,650,752 = 17,042,688;  x24 = 409,024,512
  + 2,048 + 58,112 * 1,024 (= 59,506,688) + 2,048                    = 776,868,864
For xl (D=2048, H=16, K=128, F=5120):
  encoder layer = 16,777,216 + 256 + 4,096 + 31,457,280 = 48,238,848;  x24 = 1,157,732,352
  decoder layer = 33,554,432 + 512 + 6,144 + 31,457,280 = 65,018,368;  x24 = 1,560,440,832
  + 4,096 + 58,112 * 2,048 (= 119,013,376) + 4,096                   = 2,837,194,752
For xxl (D=3072, H=24, K=128, F=8192):
  encoder layer = 37,748,736 + 256 + 6,144 + 75,497,472 = 113,252,608; x24 = 2,718,062,592
  decoder layer = 75,497,472 + 512 + 9,216 + 75,497,472 = 151,004,672; x24 = 3,624,112,128
  + 6,144 + 58,112 * 3,072 (= 178,520,064) + 6,144                   = 6,520,707,072
"""

import flax.linen as nn
import jax
import numpy as np
import pytest

from unified_io.presets import SIZES, make_config
from unified_io.model import UnifiedIOModel

HAND_DERIVED = {"large": 776_868_864, "xl": 2_837_194_752, "xxl": 6_520_707_072}
# The released totals (README, architecture) add the frozen ViT and VQ tokenizers to the trunk.
DESIGN_TOTAL = {"large": 1.08e9, "xl": 3.18e9, "xxl": 6.86e9}
LENGTHS = {"text_inputs": 4, "text_targets": 4}


def formula_count(size: str) -> int:
  c = make_config(size).trunk
  d, h, k, f = c.emb_dim, c.num_heads, c.head_dim, c.mlp_dim
  encoder_layer = 4 * d * h * k + 2 * k + 2 * d + 3 * d * f
  decoder_layer = 8 * d * h * k + 4 * k + 3 * d + 3 * d * f
  tables = (c.text_vocab_size + c.image_vocab_size + c.audio_vocab_size) * d
  return (c.num_encoder_layers * encoder_layer + c.num_decoder_layers * decoder_layer
          + 2 * d + tables + 2 * d)


def eval_shape_count(size: str) -> int:
  model = UnifiedIOModel(make_config(size))
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0),
                                          model.dummy_batch(1, LENGTHS)))
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(abstract))


def test_presets_use_the_release_vocabularies():
  # The formula's table term assumes these; a preset that overrides them must update it.
  for size in SIZES:
    c = make_config(size).trunk
    assert (c.text_vocab_size, c.image_vocab_size, c.audio_vocab_size) == (33280, 16512, 8320)


@pytest.mark.parametrize("size", ["large", "xl", "xxl"])
def test_released_sizes_count(size):
  count = eval_shape_count(size)
  print(f"{size}: {count:,} trunk parameters")
  assert formula_count(size) == HAND_DERIVED[size]
  assert count == HAND_DERIVED[size]
  total = DESIGN_TOTAL[size]
  assert 0.7 * total < count < total, f"{size}: {count:,} vs the released {total:,.0f}"


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_other_sizes_match_formula(size):
  count = eval_shape_count(size)
  print(f"{size}: {count:,} trunk parameters")
  assert count == formula_count(size)
