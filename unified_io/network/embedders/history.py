"""Image and audio history (video frames, audio segments): shared ViT -> perceiver resampler.

Axis legend: B batch, F frames, N patches per frame, P patch_dim, V ViT width, R resampler width,
Q latents per frame, D trunk embed, K trunk head_dim.

Features: input [B, F, N, P] float, mask [B, F, N] (1 = real patch), pos_ids [B, F, N] int (patch
index in the frame's grid). Each of the B*F frames goes through the shared ViT (its last layer
only, always detached: the release never trains the ViT through the history path), then
`pre_projection` (V -> R), the resampler (the frame's patch mask masks the context),
`post_projection` (R -> D; the network's shared `UniversalProjection` instead when
`UnifiedIOConfig.input_projection` serves this modality) and the modality vector. Output
[B, F*Q, D], frame-major. A frame is valid iff any of its patches is, and its Q latents inherit
that. RoPE rows are the 2D table over (max_frames, Q) = (frame, latent) at scale 1: the first F*Q
rows, the same for every example. The release's `max_images_per_example` frame compression is
None in every preset, so frames are never compressed here.

With `UnifiedIOConfig.cnn_encoder` serving this history, the modality's own small CNN (`cnn`,
unified_io/network/embedders/cnn.py) reads each frame's patches over the frame's grid in place of
the ViT and gives the [B*F, N, V] features `pre_projection` reads; unlike the ViT it is trained
through this path (it starts from scratch).
"""

from typing import Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from unified_io.config import ResamplerConfig, UnifiedIOConfig
from unified_io.network.embedders.cnn import cnn_encoder
from unified_io.network.embedders.parts import EncoderPart, modality_embedding
from unified_io.network.embedders.resampler import EMBED as RESAMPLER_EMBED
from unified_io.network.embedders.resampler import Resampler
from unified_io.network.embedders.vit import EMBED as VIT_EMBED
from unified_io.network.layers import TokenEmbedder, rope_table_2d
from unified_io.network.layers.dense import Projection
from unified_io.modalities import Modality


class _HistoryEmbedder(nn.Module):
  """Shared by the image and audio histories; subclasses name the modality and the ViT."""

  # Class attributes, not fields (no annotations): the embedder contract, and which resampler
  # config (`UnifiedIOConfig.<modality>`) this history reads.
  TOKENS = None
  VIT = None  # the UnifiedIOConfig field of the shared ViT (a key of `VITS`)
  MODALITY = None

  cfg: UnifiedIOConfig
  token_embedder: Optional[TokenEmbedder] = None
  vit: Optional[nn.Module] = None
  # The network's shared `UniversalProjection` when this modality is one it serves
  # (`UnifiedIOConfig.projected_modalities`); None = the release's own `post_projection`.
  input_projection: Optional[nn.Module] = None

  @classmethod
  def feature_width(cls, cfg: UnifiedIOConfig) -> int:
    """The width of the features projected to the trunk: the resampler's latents."""
    return getattr(cfg, cls.MODALITY.value).emb_dim

  @property
  def resampler_cfg(self) -> ResamplerConfig:
    return getattr(self.cfg, self.MODALITY.value)

  @property
  def vit_grid(self) -> Tuple[int, int]:
    """The patch grid of a history frame (the release's `default_*_history_vit_size` / patch)."""
    size = getattr(self.cfg, f"{self.MODALITY.value}_input_size")
    patch = getattr(self.cfg, self.VIT).patch_size
    return (size[0] // patch, size[1] // patch)

  def _check_features(self, features: Mapping) -> None:
    name, rc = self.MODALITY.value, self.resampler_cfg
    if self.vit is None:
      raise ValueError(f"{name}: built without its shared ViT ({self.VIT}); the network passes it")
    missing = [k for k in ("input", "mask", "pos_ids") if k not in features]
    if missing:
      raise ValueError(f"{name}: features lack {missing}; expected input [B, F, N, patch_dim], "
                       "mask [B, F, N] and pos_ids [B, F, N]")
    shape = tuple(features["input"].shape)
    if len(shape) != 4:
      raise ValueError(f"{name}: input must be [B, F, N, patch_dim], got shape {shape}")
    for key in ("mask", "pos_ids"):
      if tuple(features[key].shape) != shape[:3]:
        raise ValueError(f"{name}: {key} must have shape [B, F, N] = {shape[:3]} to match input "
                         f"{shape}, got {tuple(features[key].shape)}")
    if shape[1] > rc.max_frames:
      raise ValueError(f"{name}: {shape[1]} frames exceed max_frames = {rc.max_frames}; expected "
                       f"input [B, F <= {rc.max_frames}, N, patch_dim], got {shape}")

  @nn.compact
  def __call__(self, features: Mapping, deterministic: bool = True) -> EncoderPart:
    self._check_features(features)
    trunk, rc = self.cfg.trunk, self.resampler_cfg
    dtype = trunk.activation_dtype
    input_bfnp, mask_bfn = features["input"], features["mask"]
    b, f, n, p = input_bfnp.shape

    # [B, F, N, *] -> [B*F, N, *]: every frame is one ViT / resampler example.
    mask_xn = mask_bfn.reshape(b * f, n)
    input_xnp, pos_ids_xn = input_bfnp.reshape(b * f, n, p), features["pos_ids"].reshape(b * f, n)
    if self.MODALITY in self.cfg.cnn_modalities:
      last_xnv, _ = cnn_encoder(self.cfg, self.VIT, self.vit_grid)(input_xnp, mask_xn, pos_ids_xn,
                                                                   tap=False)
    else:
      # The history frame size may differ from the ViT's own input size (256 vs 384 px in the real
      # model): the ViT resizes its position table to this grid.
      last_xnv, _ = self.vit(input_xnp, mask_xn, pos_ids_xn, deterministic=deterministic,
                             grid=self.vit_grid)
      last_xnv = jax.lax.stop_gradient(last_xnv)
    ctx_xnr = Projection((last_xnv.shape[-1],), (rc.emb_dim,), (VIT_EMBED, RESAMPLER_EMBED), dtype,
                         name="pre_projection")(last_xnv)
    lat_xqr = Resampler(rc, dtype, name="resampler")(ctx_xnr, mask_xn, deterministic)
    if self.input_projection is None:
      embed_xqd = Projection((rc.emb_dim,), (trunk.emb_dim,), (RESAMPLER_EMBED, "embed"), dtype,
                             name="post_projection")(lat_xqr)
    else:
      embed_xqd, _ = self.input_projection(lat_xqr, self.MODALITY)
      embed_xqd = embed_xqd.astype(dtype)
    embed_xqd = embed_xqd + modality_embedding(self, trunk.emb_dim).astype(dtype)
    # [B*F, Q, D] -> [B, F*Q, D], frame-major.
    embed_bld = embed_xqd.reshape(b, f * rc.latents_size, trunk.emb_dim)
    embed_bld = nn.with_logical_constraint(embed_bld, ("batch", "length", "embed"))

    frame_valid_bf = jnp.any(mask_bfn > 0, axis=-1).astype(mask_bfn.dtype)
    mask_bl = jnp.repeat(frame_valid_bf, rc.latents_size, axis=1)  # [B, F*Q]
    table_lk = rope_table_2d(rc.max_frames, rc.latents_size, trunk.head_dim, 1.0, trunk.rope_base)
    rope_blk = jnp.broadcast_to(jnp.asarray(table_lk[:f * rc.latents_size]),
                                (b, f * rc.latents_size, trunk.head_dim))
    return EncoderPart(embed_bld, mask_bl, rope_blk)


class ImageHistoryEmbedder(_HistoryEmbedder):
  VIT = "image_vit"
  MODALITY = Modality.IMAGE_HISTORY


class AudioHistoryEmbedder(_HistoryEmbedder):
  VIT = "audio_vit"
  MODALITY = Modality.AUDIO_HISTORY
