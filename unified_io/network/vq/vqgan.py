"""The image target tokenizer: the release's taming-transformers VQGAN, in NHWC.

  images [B, H, W, 3] in [-1, 1] --Encoder--> [B, h, w, z] --quant_conv--> z [B, h, w, E]
  --nearest codebook row (plain L2)--> ids [B, h*w]          (h, w) = (H, W) / 2^(levels - 1)
  ids --codebook--> [B, h, w, E] --post_quant_conv--> --Decoder--> images [B, H, W, out_ch]

Input range: the release's pre-processing maps [0, 1] pixels to [-1, 1] (`image * 2 - 1`, "VQGAN
pre-processing") before the model; the VQGAN itself does no rescaling, so `encode` takes [-1, 1]
images as they are (the golden batch spans [-1, 1], and its first block's activation matches with
no rescaling). `decode` returns the decoder's raw output, nominally in [-1, 1], unclipped.

Ids are raw codebook rows, row-major over the latent grid. The release's target embedder adds 2
(0 = BOS, 1 = MASK); that offset belongs to the embedder, not here.

Parameter names follow the release (`encoder.down_{i}_block_{j}.conv1.weight`, ...), so
`interop.params.release_to_params(..., prefix="target_embedders.image.vqgan")` converts a release
state_dict. The decoder numbers its levels in execution order: `up_0` is the deepest level (the
release's `i_idx = levels - 1 - i_level`), and has num_res_blocks + 1 blocks per level.

Axis legend: B batch, H/W image height/width, h/w a feature map's height/width, C channels,
N codebook size, E code dim (embed_dim), Q/K flattened query/key positions.
"""

from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from unified_io.config import ImageVQGANConfig

# Logical axis names of the VQGAN's parameters. The tokenizer is small and frozen: every one of
# them is replicated. Per-channel vectors (conv biases, GroupNorm scale/bias) use "conv_out".
CONV_AXES = ("conv_h", "conv_w", "conv_in", "conv_out")
CHANNEL_AXES = ("conv_out",)
CODEBOOK_AXES = ("vq_codes", "vq_dim")
_PAD_3X3 = ((1, 1), (1, 1))
# Images the encoder runs at once. Its full-resolution activations are [B, H, W, ch] (16 MB each at
# batch 8 of the tiny config's 128 x 128 images, three alive at a time); a scan over chunks of
# ENCODE_CHUNK images keeps them small. On XLA:CPU the step's temporary buffer is allocated anew on
# every call, and the kernel page-faults in every page of it (~0.4 ms per MB) unless it is small
# enough (< 32 MB) for glibc to reuse its heap: at batch 8 this took the forward step's buffer from
# 61 MB to 28 MB.
ENCODE_CHUNK = 2


class Conv(nn.Module):
  """The release's conv (lecun-normal kernel [k, k, C_in, C_out], zero bias), NHWC.

  Our own rather than `nn.Conv` (same parameters) to zero-pad the input channels to a multiple of 4:
  XLA:CPU's convolution on the 3 RGB channels of `conv_in` ran 3x slower than on 4.
  """

  features: int
  kernel: int
  strides: int = 1
  padding: Tuple[Tuple[int, int], Tuple[int, int]] = _PAD_3X3

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, h, w, C_in] -> [B, h', w', features]
    c_in = x.shape[-1]
    kernel = self.param("kernel",
                        nn.with_logical_partitioning(nn.initializers.lecun_normal(), CONV_AXES),
                        (self.kernel, self.kernel, c_in, self.features), jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, CHANNEL_AXES),
                      (self.features,), jnp.float32)
    if c_in % 4:  # zero channels add exact zeros
      extra = 4 - c_in % 4
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
      kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, extra), (0, 0)))
    y = jax.lax.conv_general_dilated(x, kernel, (self.strides, self.strides),
                                     self.padding if self.kernel > 1 else "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias


def _conv(features: int, kernel: int, name: str, strides: int = 1, padding=_PAD_3X3) -> Conv:
  return Conv(features, kernel, strides, padding, name=name)


class GroupNorm(nn.Module):
  """torch GroupNorm(32, C, eps=1e-6): two-pass variance, as torch computes it; `scale`, `bias`.

  Our own rather than `nn.GroupNorm` (same parameters and numbers): that one reduces a
  [B, h, w, G, C/G] view, which XLA:CPU reduced several times slower than per-channel sums over
  [B, h*w, C] followed by a sum over each group's channels (3 ms of the 37 ms encoder at batch 2).
  """

  num_groups: int = 32
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, h, w, C]
    b, hh, ww, c = x.shape
    per_group = c // self.num_groups
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, CHANNEL_AXES),
                       (c,), jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, CHANNEL_AXES),
                      (c,), jnp.float32)

    def group_mean(sum_bc):  # per-channel sums [B, C] -> their group's mean, per channel [B, C]
      group_bg = sum_bc.reshape(b, self.num_groups, per_group).sum(-1) / (hh * ww * per_group)
      return jnp.repeat(group_bg, per_group, axis=-1)

    x_bnc = x.reshape(b, hh * ww, c)
    centred_bnc = x_bnc - group_mean(jnp.sum(x_bnc, axis=1))[:, None]
    var_bc = group_mean(jnp.sum(jnp.square(centred_bnc), axis=1))
    y_bnc = centred_bnc * (jax.lax.rsqrt(var_bc + self.eps) * scale)[:, None] + bias
    return y_bnc.reshape(x.shape)


def _group_norm(name: str, groups: int) -> GroupNorm:
  return GroupNorm(num_groups=groups, name=name)


class ResnetBlock(nn.Module):
  """x + conv(swish(norm(conv(swish(norm(x)))))); a 1x1 `nin_shortcut` when channels change."""

  out_ch: int
  groups: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, h, w, C] -> [B, h, w, out_ch]
    h = _conv(self.out_ch, 3, "conv1")(nn.swish(_group_norm("norm1", self.groups)(x)))
    h = _conv(self.out_ch, 3, "conv2")(nn.swish(_group_norm("norm2", self.groups)(h)))
    if x.shape[-1] != self.out_ch:
      x = _conv(self.out_ch, 1, "nin_shortcut")(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all positions of the map, with 1x1-conv q/k/v/proj_out."""

  groups: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, h, w, C]
    b, hh, ww, c = x.shape
    h = _group_norm("norm", self.groups)(x)
    q, k, v = (_conv(c, 1, n)(h).reshape(b, hh * ww, c) for n in ("q", "k", "v"))  # [B, Q|K, C]
    logits = jnp.einsum("bqc,bkc->bqk", q, k) * (c ** -0.5)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(b, hh, ww, c)
    return x + _conv(c, 1, "proj_out")(out)


class Downsample(nn.Module):
  """Zero-pad one row at the bottom and one column at the right, then a stride-2 3x3 conv."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, h, w, C] -> [B, h/2, w/2, C]
    return _conv(x.shape[-1], 3, "conv", strides=2, padding=((0, 1), (0, 1)))(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2 (each pixel becomes a 2x2 block), then a 3x3 conv."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, h, w, C] -> [B, 2h, 2w, C]
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(x.shape[-1], 3, "conv")(x)


def downsample_factor(cfg: ImageVQGANConfig) -> int:
  """Pixels per code along each side: every level but the last halves the map."""
  return 2 ** (len(cfg.ch_mult) - 1)


def attention_levels(cfg: ImageVQGANConfig) -> Tuple[bool, ...]:
  """Whether each level (taming numbering, 0 = full resolution) has attention blocks.

  Decided from the configured `resolution`, not the actual input size, as the release does; the
  encoder and the decoder agree because level i runs at resolution / 2^i in both.
  """
  return tuple(cfg.resolution // 2 ** i in cfg.attn_resolutions for i in range(len(cfg.ch_mult)))


class Encoder(nn.Module):
  """images [B, H, W, in_channels] -> [B, H/f, W/f, z_channels], f = 2^(levels - 1)."""

  cfg: ImageVQGANConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.cfg
    levels, attn = len(cfg.ch_mult), attention_levels(cfg)
    h = _conv(cfg.ch, 3, "conv_in")(x)
    for i, mult in enumerate(cfg.ch_mult):
      for j in range(cfg.num_res_blocks):
        h = ResnetBlock(cfg.ch * mult, cfg.norm_groups, name=f"down_{i}_block_{j}")(h)
        if attn[i]:
          h = AttnBlock(cfg.norm_groups, name=f"down_{i}_attn_{j}")(h)
      if i != levels - 1:
        h = Downsample(name=f"down_{i}_downsample")(h)
    h = _middle(h, cfg.norm_groups)
    return _conv(cfg.z_channels, 3, "conv_out")(nn.swish(_group_norm("norm_out", cfg.norm_groups)(h)))


class Decoder(nn.Module):
  """[B, h, w, z_channels] -> images [B, h*f, w*f, out_ch]; levels run deepest first (`up_0`)."""

  cfg: ImageVQGANConfig

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    cfg = self.cfg
    levels, attn = len(cfg.ch_mult), attention_levels(cfg)
    h = _conv(cfg.ch * cfg.ch_mult[-1], 3, "conv_in")(z)
    h = _middle(h, cfg.norm_groups)
    for k in range(levels):
      level = levels - 1 - k  # taming's i_level; the release names modules by k
      for j in range(cfg.num_res_blocks + 1):
        h = ResnetBlock(cfg.ch * cfg.ch_mult[level], cfg.norm_groups, name=f"up_{k}_block_{j}")(h)
        if attn[level]:
          h = AttnBlock(cfg.norm_groups, name=f"up_{k}_attn_{j}")(h)
      if level != 0:
        h = Upsample(name=f"up_{k}_upsample")(h)
    return _conv(cfg.out_ch, 3, "conv_out")(nn.swish(_group_norm("norm_out", cfg.norm_groups)(h)))


def _middle(h: jax.Array, groups: int) -> jax.Array:
  # Called from Encoder/Decoder's compact __call__, so these modules are named inside them.
  h = ResnetBlock(h.shape[-1], groups, name="mid_block_1")(h)
  h = AttnBlock(groups, name="mid_attn_1")(h)
  return ResnetBlock(h.shape[-1], groups, name="mid_block_2")(h)


class VectorQuantizer(nn.Module):
  """The codebook (`quantize.embedding.weight` [N, E]) and its plain-L2 nearest-row lookup."""

  n_embed: int
  embed_dim: int

  def setup(self):
    # taming's init: uniform(-1/N, 1/N).
    init = nn.initializers.uniform(2.0 / self.n_embed)
    shifted = lambda key, shape, dtype: init(key, shape, dtype) - 1.0 / self.n_embed  # noqa: E731
    self.embedding = nn.Embed(self.n_embed, self.embed_dim,
                              embedding_init=nn.with_logical_partitioning(shifted, CODEBOOK_AXES))

  def __call__(self, z: jax.Array) -> jax.Array:  # [..., E] -> [...] int32 ids
    codebook = self.embedding.embedding  # [N, E]
    # |z|^2 + |e|^2 - 2 z.e, the release's expansion, so near-ties break as they do there.
    # HIGHEST: a bf16/tf32 matmul on an accelerator would flip ids whose distances differ by ~1e-4.
    cross = jnp.einsum("...e,ne->...n", z, codebook, precision=jax.lax.Precision.HIGHEST)
    dist = (jnp.sum(z ** 2, axis=-1, keepdims=True) + jnp.sum(codebook ** 2, axis=-1) - 2 * cross)
    return jnp.argmin(dist, axis=-1).astype(jnp.int32)

  def lookup(self, ids: jax.Array) -> jax.Array:  # [...] -> [..., E]
    return self.embedding(ids)


class ImageVQGAN(nn.Module):
  """The tokenizer's encode (images -> ids) and decode (ids -> images); `__call__` does both."""

  cfg: ImageVQGANConfig

  def setup(self):
    cfg = self.cfg
    self.encoder = Encoder(cfg)
    self.quant_conv = _conv(cfg.embed_dim, 1, "quant_conv")
    self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)
    self.post_quant_conv = _conv(cfg.z_channels, 1, "post_quant_conv")
    self.decoder = Decoder(cfg)

  @property
  def latent_grid(self) -> Tuple[int, int]:
    """(h, w) of the code grid for `default_input_size` images."""
    f = downsample_factor(self.cfg)
    return (self.cfg.default_input_size[0] // f, self.cfg.default_input_size[1] // f)

  def encode_latents(self, images: jax.Array) -> jax.Array:
    """images [B, H, W, in_channels] in [-1, 1] -> pre-VQ z [B, h, w, E] (the quantizer's input)."""
    images = images.astype(jnp.float32)
    batch = images.shape[0]
    if batch <= ENCODE_CHUNK or batch % ENCODE_CHUNK:
      return self.quant_conv(self.encoder(images))
    # [B, ...] -> [B / c, c, ...]: c images at a time, one after the other (see ENCODE_CHUNK).
    chunks = images.reshape(batch // ENCODE_CHUNK, ENCODE_CHUNK, *images.shape[1:])
    encode_chunk = nn.scan(lambda module, carry, x: (carry, module(x)),
                           variable_broadcast="params", split_rngs={"params": False})
    _, z_nc = encode_chunk(self.encoder, None, chunks)
    return self.quant_conv(z_nc.reshape(batch, *z_nc.shape[2:]))

  def encode(self, images: jax.Array) -> jax.Array:
    """images [B, H, W, in_channels] in [-1, 1] -> ids [B, h*w] int32, row-major over (h, w)."""
    ids = self.quantize(self.encode_latents(images))  # [B, h, w]
    return ids.reshape(ids.shape[0], -1)

  def decode(self, ids: jax.Array, grid: Optional[Sequence[int]] = None) -> jax.Array:
    """ids [B, h*w] -> images [B, h*f, w*f, out_ch]; (h, w) is `grid`, by default `latent_grid`."""
    hh, ww = self.latent_grid if grid is None else grid
    if ids.shape[-1] != hh * ww:
      raise ValueError(f"decode: {ids.shape[-1]} ids per example do not fill the {hh}x{ww} grid")
    codes = self.quantize.lookup(ids.reshape(ids.shape[0], hh, ww))  # [B, h, w, E]
    return self.decoder(self.post_quant_conv(codes))

  def __call__(self, images: jax.Array) -> jax.Array:
    """The release's forward: reconstruct images through the codebook (and create every param)."""
    f = downsample_factor(self.cfg)
    return self.decode(self.encode(images), grid=(images.shape[1] // f, images.shape[2] // f))
