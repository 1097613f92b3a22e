"""UnIVAL's light CNN encoders: a small ResNet in place of a ViT feature extractor.

Axis legend: B batch, N patches, P patch_dim = p*p*C, G cells of the patch grid (gh*gw), H, W
pixel rows and columns (gh*p, gw*p), C channels (3 RGB, 1 spectrogram), E channels of a conv map,
V the ViT's width (what the features are projected to).

`CnnEncoder` is called like the ViTs, `cnn(x [B, N, P], mask [B, N], pos_ids [B, N])`, and returns
`(last [B, N, V], tap [B, N, V] or None)`, so an embedder swaps one for the other and the rest
(projection to the trunk, the histories' resampler, masks, 2D RoPE rows) is unchanged:

  1. scatter: masked patches are zeroed and every patch is added at its pos_ids cell of a zero
     grid [B, G, P], which is unpatchified (the inverse of `patches.patchify`) into the picture
     [B, H, W, C]. Cells no patch was sampled for stay zero: like the ViT, the CNN never sees them,
     and a masked (padding) patch changes nothing, wherever its pos_ids point.
  2. stem: a 3x3 conv of stride p / 2^S (S = len(widths)) to widths[0] channels, GroupNorm, ReLU;
  3. S stages, each halving the resolution: `blocks_per_stage` basic residual blocks
     (3x3 conv - GN - ReLU - 3x3 conv - GN, plus the input, through a strided 1x1 conv - GN where
     the shape changes; ReLU), so the last map has one cell per patch, [B, gh, gw, widths[-1]];
  4. gather: each patch takes its pos_ids cell of the last map -> `last_projection` to V. The
     `tap` (the ViT's block-1 features beside its last ones) is the map before the last stage,
     2x2 average-pooled to the patch grid, gathered -> `tap_projection` to V; the histories use
     only `last` (as they use only the ViT's last block), and then have no tap parameters.
A patch's feature depends on its own pixels and on its neighbours' within the receptive field
(the context the ViT gets from attention); moving every patch by whole cells moves the features
with them (away from the picture's border).

Convolutions run in `dtype`; GroupNorm (two-pass, per example: no batch statistics, no mutable
state) and the outputs are float32, as the ViTs'. Parameters (float32, all replicated):
  stem/kernel, stages_{i}_{j}/conv{1,2}/kernel, .../shortcut/kernel [k, k, C_in, C_out]
      (conv_h, conv_w, conv_in, conv_out), bias-free (a GroupNorm follows each)
  */norm*/scale, */norm*/bias [C_out] (conv_out)
  last_projection/kernel, tap_projection/kernel [E, V] (conv_out, vit_embed), */bias [V] (vit_embed)
"""

from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from unified_io.config import CnnEncoderConfig, UnifiedIOConfig
from unified_io.network.embedders.vit import EMBED as VIT_EMBED
from unified_io.network.embedders.vit import Linear
from unified_io.network.vq.vqgan import CHANNEL_AXES, CONV_AXES, GroupNorm

Grid = Tuple[int, int]
PROJECTION_AXES = CHANNEL_AXES + (VIT_EMBED,)  # [E, V] of last_projection and tap_projection


class Conv(nn.Module):
  """A bias-free conv (lecun-normal kernel [k, k, C_in, C_out]), NHWC, padding k // 2.

  The input channels are zero-padded to a multiple of 4 (exact zeros): XLA:CPU's convolution on
  3 RGB channels runs ~3x slower than on 4 (as `vq.vqgan.Conv` does)."""

  features: int
  kernel: int
  strides: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    c_in = x_bhwc.shape[-1]
    kernel = self.param("kernel",
                        nn.with_logical_partitioning(nn.initializers.lecun_normal(), CONV_AXES),
                        (self.kernel, self.kernel, c_in, self.features), jnp.float32)
    if c_in % 4:
      extra = 4 - c_in % 4
      x_bhwc = jnp.pad(x_bhwc, ((0, 0), (0, 0), (0, 0), (0, extra)))
      kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, extra), (0, 0)))
    pad = self.kernel // 2
    return jax.lax.conv_general_dilated(
        x_bhwc.astype(self.dtype), kernel.astype(self.dtype), (self.strides, self.strides),
        ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _norm(groups: int, name: str) -> GroupNorm:
  return GroupNorm(num_groups=groups, eps=1e-5, name=name)


class BasicBlock(nn.Module):
  """relu(GN(conv3x3(relu(GN(conv3x3/s(x))))) + shortcut(x)); the shortcut is GN(conv1x1/s(x))
  where the stride or the channels change, else x."""

  features: int
  strides: int
  groups: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x_bhwe: jax.Array) -> jax.Array:
    h = Conv(self.features, 3, self.strides, self.dtype, name="conv1")(x_bhwe)
    h = nn.relu(_norm(self.groups, "norm1")(h.astype(jnp.float32)))
    h = Conv(self.features, 3, 1, self.dtype, name="conv2")(h)
    h = _norm(self.groups, "norm2")(h.astype(jnp.float32))
    if self.strides != 1 or x_bhwe.shape[-1] != self.features:
      x_bhwe = Conv(self.features, 1, self.strides, self.dtype, name="shortcut")(x_bhwe)
      x_bhwe = _norm(self.groups, "shortcut_norm")(x_bhwe.astype(jnp.float32))
    return nn.relu(h + x_bhwe)


def unpatchify(grid_bgp: jax.Array, grid: Grid, patch: int) -> jax.Array:
  """[B, gh*gw, p*p*C] (row-major cells, (dh dw c) inside) -> [B, gh*p, gw*p, C]."""
  b, _, p_dim = grid_bgp.shape
  channels = p_dim // (patch * patch)
  x = grid_bgp.reshape(b, grid[0], grid[1], patch, patch, channels)
  x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, gh, dh, gw, dw, C]
  return x.reshape(b, grid[0] * patch, grid[1] * patch, channels)


def scatter_patches(x_bnp: jax.Array, mask_bn: jax.Array, pos_ids_bn: jax.Array, num_cells: int
                    ) -> jax.Array:
  """Patches added at their cells of a zero grid [B, G, P]; masked patches add zeros."""
  batch, _, p_dim = x_bnp.shape
  valid_bnp = x_bnp.astype(jnp.float32) * (mask_bn > 0)[..., None]
  rows_b1 = jnp.arange(batch)[:, None]
  return jnp.zeros((batch, num_cells, p_dim), jnp.float32).at[rows_b1, pos_ids_bn].add(valid_bnp)


def gather_cells(map_bhwe: jax.Array, pos_ids_bn: jax.Array) -> jax.Array:
  """[B, gh, gw, E] -> the cell of each patch [B, N, E]."""
  b, gh, gw, e = map_bhwe.shape
  return jnp.take_along_axis(map_bhwe.reshape(b, gh * gw, e), pos_ids_bn[..., None], axis=1)


class CnnEncoder(nn.Module):
  """Patches [B, N, p*p*C] on a `grid` -> (last [B, N, V], tap [B, N, V] or None); see the
  module docstring."""

  cfg: CnnEncoderConfig
  patch_size: int  # p, of the ViT whose patches this reads
  grid: Grid  # (gh, gw): the cells pos_ids index, row-major
  out_dim: int  # V: the width of the ViT features this stands in for
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_bnp: jax.Array, mask_bn: jax.Array, pos_ids_bn: jax.Array,
               tap: bool = True) -> Tuple[jax.Array, Optional[jax.Array]]:
    cfg, p, (gh, gw) = self.cfg, self.patch_size, self.grid
    if x_bnp.shape[-1] % (p * p):
      raise ValueError(f"cnn encoder: patches of {x_bnp.shape[-1]} values are not p*p*C for "
                       f"p = {p}")
    grid_bgp = scatter_patches(x_bnp, mask_bn, pos_ids_bn, gh * gw)
    h = unpatchify(grid_bgp, self.grid, p)  # [B, H, W, C]

    h = Conv(cfg.widths[0], 3, cfg.stem_stride(p), self.dtype, name="stem")(h)
    h = nn.relu(_norm(cfg.norm_groups, "stem_norm")(h.astype(jnp.float32)))
    for i, width in enumerate(cfg.widths):
      before_last = h  # the input of the last stage, at the end: [B, 2gh, 2gw, E]
      for j in range(cfg.blocks_per_stage):
        h = BasicBlock(width, 2 if j == 0 else 1, cfg.norm_groups, self.dtype,
                       name=f"stages_{i}_{j}")(h)
    assert h.shape[1:3] == (gh, gw), (h.shape, self.grid)  # stem stride x 2^S = p

    last_bnv = Linear(self.out_dim, PROJECTION_AXES, name="last_projection")(
        gather_cells(h, pos_ids_bn))
    if not tap:
      return last_bnv, None
    b, hh, ww, e = before_last.shape  # 2x2 means -> [B, gh, gw, E]
    pooled_bhwe = before_last.reshape(b, hh // 2, 2, ww // 2, 2, e).mean(axis=(2, 4))
    tap_bnv = Linear(self.out_dim, PROJECTION_AXES, name="tap_projection")(
        gather_cells(pooled_bhwe, pos_ids_bn))
    return last_bnv, tap_bnv


def cnn_encoder(cfg: UnifiedIOConfig, vit_field: str, grid: Grid) -> CnnEncoder:
  """The CNN (named "cnn") an embedder builds in place of its ViT: `cfg` the model's config,
  `vit_field` the ViT whose patch size and width it keeps, `grid` the cells pos_ids index."""
  vit = getattr(cfg, vit_field)
  return CnnEncoder(cfg.cnn_encoder, vit.patch_size, tuple(grid), vit.emb_dim,
                    cfg.trunk.activation_dtype, name="cnn")
