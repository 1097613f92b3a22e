"""Image input: shared image ViT features -> projection to the trunk + a modality vector; 2D RoPE.

Axis legend: B batch, N patches, P patch_dim, V ViT width, D trunk embed, K trunk head_dim.

Features: input [B, N, P] float (CLIP-normalised patches, (dh dw c)-flattened,
P = patch_size^2 * 3), mask [B, N] int (1 = real patch), pos_ids [B, N] int (row-major index in
the ViT's patch grid).

The path (`ViTInputEmbedder`) is the same for audio, as in the release, which builds both with one
class: the ViT's (last, block 1) features are concatenated [B, N, 2V], projected by a bias-free
`projection` to D (or by the network's shared `UniversalProjection` when
`UnifiedIOConfig.input_projection` serves this modality), and the modality vector is added. RoPE
rows are the 2D table over the ViT's grid at scale sqrt(decoder_max_image_length /
encoder_max_image_length), gathered by pos_ids; audio uses the image ratio too (a release quirk we
keep).

`freeze_vit` applies `stop_gradient` to the ViT outputs, so every ViT parameter gets an exactly zero
gradient from this path (it does not rely on the optimizer to leave the ViT alone).

With `UnifiedIOConfig.cnn_encoder` serving this modality, the modality's own small CNN (`cnn`,
unified_io/network/embedders/cnn.py) reads the same patches over the ViT's grid in place of the
ViT and gives the same two [B, N, V] features (its last map and its tap); it is always trained.
"""

from typing import Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from unified_io.config import UnifiedIOConfig, VitConfig
from unified_io.network.embedders.cnn import cnn_encoder
from unified_io.network.embedders.parts import EncoderPart, modality_embedding
from unified_io.network.embedders.vit import EMBED as VIT_EMBED
from unified_io.network.embedders.vit import validate_patches
from unified_io.network.layers import TokenEmbedder, rope_table_2d
from unified_io.network.layers.dense import Projection
from unified_io.modalities import Modality

FEATURE_KEYS = ("input", "mask", "pos_ids")


class ViTInputEmbedder(nn.Module):
  """An input modality read through a shared ViT; subclasses name the modality and the ViT."""

  # Class attributes, not fields: the embedder contract (see `unified_io.network.embedders`).
  TOKENS = None
  VIT = None  # the UnifiedIOConfig field of the shared ViT (a key of `VITS`)
  MODALITY = None

  cfg: UnifiedIOConfig
  token_embedder: Optional[TokenEmbedder] = None
  vit: Optional[nn.Module] = None
  # The network's shared `UniversalProjection` when this modality is one it serves
  # (`UnifiedIOConfig.projected_modalities`); None = the release's own linear `projection`.
  input_projection: Optional[nn.Module] = None

  @classmethod
  def feature_width(cls, cfg: UnifiedIOConfig) -> int:
    """W, the width of the features projected to the trunk: the ViT's two taps, concatenated."""
    return 2 * getattr(cfg, cls.VIT).emb_dim

  @property
  def vit_cfg(self) -> VitConfig:
    return getattr(self.cfg, self.VIT)

  def _check_features(self, features: Mapping) -> None:
    name = f"{self.MODALITY.value} input"
    if self.vit is None:
      raise ValueError(f"{name}: built without its shared ViT ({self.VIT}); the network passes it")
    patch_dim = self.vit.patch_dim
    missing = [k for k in FEATURE_KEYS if k not in features]
    if missing:
      raise ValueError(f"{name}: features lack {missing}; expected input [B, N, {patch_dim}], "
                       f"mask [B, N] and pos_ids [B, N]")
    validate_patches(name, features["input"], features["mask"], features["pos_ids"], patch_dim,
                     self.vit_cfg.grid)

  @nn.compact
  def __call__(self, features: Mapping, deterministic: bool = True) -> EncoderPart:
    self._check_features(features)
    trunk = self.cfg.trunk
    mask_bn, pos_ids_bn = features["mask"], features["pos_ids"]

    if self.MODALITY in self.cfg.cnn_modalities:
      last_bnv, block1_bnv = cnn_encoder(self.cfg, self.VIT, self.vit_cfg.grid)(
          features["input"], mask_bn, pos_ids_bn)
    else:
      last_bnv, block1_bnv = self.vit(features["input"], mask_bn, pos_ids_bn, deterministic)
      if self.cfg.freeze_vit:
        last_bnv, block1_bnv = jax.lax.stop_gradient((last_bnv, block1_bnv))
    feats_bnw = jnp.concatenate([last_bnv, block1_bnv], axis=-1)  # W = 2V
    if self.input_projection is None:
      embed_bnd = Projection((feats_bnw.shape[-1],), (trunk.emb_dim,), (VIT_EMBED, "embed"),
                             jnp.float32, name="projection")(feats_bnw)
    else:
      embed_bnd, _ = self.input_projection(feats_bnw, self.MODALITY)
    embed_bnd = (embed_bnd + modality_embedding(self, trunk.emb_dim)).astype(trunk.activation_dtype)
    embed_bnd = nn.with_logical_constraint(embed_bnd, ("batch", "length", "embed"))

    table_gk = rope_table_2d(*self.vit_cfg.grid, trunk.head_dim,
                             scale=trunk.image_input_rope_scale, base=trunk.rope_base)
    rope_bnk = jnp.take(jnp.asarray(table_gk), pos_ids_bn, axis=0)
    return EncoderPart(embed_bnd, mask_bn, rope_bnk)


class ImageInputEmbedder(ViTInputEmbedder):
  VIT = "image_vit"
  MODALITY = Modality.IMAGE
