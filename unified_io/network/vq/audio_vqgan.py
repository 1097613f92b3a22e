"""The audio target tokenizer: the release's ViT-VQGAN over log-mel spectrograms (`audio_vqgan`).

Axis legend: B batch, H spectrogram height = time frames, W width = mel bins, C channels (1),
M mel/8 and T time/8 (the token grid), N = M*T tokens, P = 8*8*C patch pixels, D hidden,
Hd heads, K head_dim, F mlp, E proj_dim (the code dimension, 32), V vocab (codebook size).

The spectrogram arrives as the model's audio target [B, H(time), W(mel), 1], ALREADY normalised with
the AudioSet mean/std: that is pre-processing in the release (`TargetAudioVQGANEmbedder.
preprocess_inputs`), not part of the tokenizer, and the golden `input/targets/audio/audio` is the
normalised array. `encode` then does what the release does:

  transpose to (mel, time) -> space-to-depth 8x8, patch pixels flattened (dh dw c) -> linear + bias
  -> + fixed 2D sincos table -> pre-LN blocks (LayerNorm eps 1e-6; bias-free attention, 1/sqrt(K),
  no qk-norm; ReLU MLP with biases) -> final LayerNorm -> ReLU -> `encoder_proj` to E (no bias)
  -> LayerNorm without scale (bias only) = z -> l2-normalise z and the codebook -> argmin of the
  squared distance.

The ids come out on the (M, T) grid and are reordered to (T, M) row-major: that is the order of the
release's audio target tokens (its RoPE grid, however, is (M, T); see the reference README).
`decode` inverts the order, looks the ids up in the l2-normalised codebook, runs the decoder
(`decoder_proj` -> + sincos -> pre-LN blocks -> final LayerNorm -> 8x8 stride-8 transposed conv,
no bias) and transposes the (mel, time) result back to the input layout [B, H(time), W(mel), C].
The release's own generation code returns the (mel, time) layout instead; transpose (0, 2, 1, 3)
for that. Neither denormalises.

Everything is float32 (the release ran its tokenizers in float32), and every matmul is traced at
"highest" precision: the default on GPU/TPU rounds float32 operands (TF32/bf16 passes), which moves
z by ~1e-3 and flips ids at near-ties (the golden file's smallest top-2 distance gap is 5e-6). Parameter names follow the
release's state_dict under `target_embedders.audio.vqgan`, so `interop.params.release_to_params`
converts it with that prefix.
"""

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unified_io.config import AudioVQGANConfig
from unified_io.network.layers.dense import Projection

LN_EPS = 1e-6
L2_EPS = 1e-12  # torch.nn.functional.normalize: x / max(|x|, eps)
MATMUL_PRECISION = "highest"  # true float32 matmuls on every backend (see the module docstring)

# Logical axis names. The tokenizer is small and frozen, so none of these has a partitioning rule:
# every parameter is replicated (the trunk's "embed"/"heads"/"mlp" would shard it, and a tiny
# tokenizer's 2 heads do not divide a model axis of 4). The codebook and conv names are the image
# VQGAN's (`tokenizers/vqgan.py`).
EMBED, HEADS, KV, MLP = "vq_embed", "vq_heads", "vq_kv", "vq_mlp"  # D, Hd, K, F
PATCH = "vq_patch"  # P, rows of the patch embedding
CODE, CODES = "vq_dim", "vq_codes"  # E, V
CONV_H, CONV_W, CONV_OUT = "conv_h", "conv_w", "conv_out"  # ph, pw, C of the transposed conv


# ------------------------------------------------------------------------------------------------
# fixed tables and token order
# ------------------------------------------------------------------------------------------------
def sincos_table_2d(dim: int, grid: Tuple[int, int]) -> np.ndarray:
  """[rows * cols, dim] float32: the release's `get_2d_sincos_pos_embed` (no class token).

  Row-major over the (rows, cols) grid. The first half of `dim` encodes the column (w) and the
  second half the row (h); each half is [sin | cos] (not interleaved) over dim/4 frequencies
  10000^(-j / (dim/4)).
  """
  rows, cols = grid
  col_rc, row_rc = np.meshgrid(np.arange(cols, dtype=np.float64),
                               np.arange(rows, dtype=np.float64), indexing="xy")

  def one_axis(half: int, pos_rc: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(half // 2, dtype=np.float64) / (half / 2))
    angles = pos_rc.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  return np.concatenate([one_axis(dim // 2, col_rc), one_axis(dim // 2, row_rc)],
                        axis=1).astype(np.float32)


def grid_to_target_order(ids_bn: jax.Array, grid: Tuple[int, int]) -> jax.Array:
  """Ids on the tokenizer's (M, T) grid, row-major -> the release's target order, (T, M)."""
  m, t = grid
  return ids_bn.reshape(-1, m, t).transpose(0, 2, 1).reshape(-1, m * t)


def target_to_grid_order(ids_bn: jax.Array, grid: Tuple[int, int]) -> jax.Array:
  """The inverse of `grid_to_target_order`."""
  m, t = grid
  return ids_bn.reshape(-1, t, m).transpose(0, 2, 1).reshape(-1, m * t)


def l2_normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), L2_EPS)


# ------------------------------------------------------------------------------------------------
# layers
# ------------------------------------------------------------------------------------------------
def _layer_norm(name: str, use_scale: bool = True, bias_init=nn.initializers.zeros,
                axis: str = EMBED) -> nn.LayerNorm:
  # Two-pass variance (mean of squared deviations), as torch computes it.
  return nn.LayerNorm(epsilon=LN_EPS, use_scale=use_scale, use_fast_variance=False,
                      dtype=jnp.float32,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis,)),
                      bias_init=nn.with_logical_partitioning(bias_init, (axis,)), name=name)


def _dense_with_bias(features: int, axes: Tuple[str, str], name: str) -> nn.Dense:
  return nn.Dense(features, dtype=jnp.float32,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
                  name=name)


class SelfAttention(nn.Module):
  """Bias-free q/k/v/out, logits (q / sqrt(K)) . k, softmax; no mask, no qk-norm, no RoPE."""

  num_heads: int
  head_dim: int

  @nn.compact
  def __call__(self, x_bnd: jax.Array) -> jax.Array:
    dim = x_bnd.shape[-1]
    qkv = [Projection((dim,), (self.num_heads, self.head_dim), (EMBED, HEADS, KV),
                      name=name)(x_bnd) for name in ("query", "key", "value")]
    q_bnhk, k_bnhk, v_bnhk = qkv
    logits_bhnn = jnp.einsum("BNHK,BMHK->BHNM", q_bnhk / np.sqrt(self.head_dim), k_bnhk)
    weights_bhnn = jax.nn.softmax(logits_bhnn, axis=-1)
    out_bnhk = jnp.einsum("BHNM,BMHK->BNHK", weights_bhnn, v_bnhk)
    return Projection((self.num_heads, self.head_dim), (dim,), (HEADS, KV, EMBED),
                      name="out")(out_bnhk)


class ReluMLP(nn.Module):
  """fc2(relu(fc1(x))), both with biases."""

  mlp_dim: int

  @nn.compact
  def __call__(self, x_bnd: jax.Array) -> jax.Array:
    h_bnf = nn.relu(_dense_with_bias(self.mlp_dim, (EMBED, MLP), "fc1")(x_bnd))
    return _dense_with_bias(x_bnd.shape[-1], (MLP, EMBED), "fc2")(h_bnf)


class Block(nn.Module):
  """x + Attn(LN(x)), then x + fc2(relu(fc1(LN(x))))."""

  num_heads: int
  head_dim: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x_bnd: jax.Array) -> jax.Array:
    x_bnd = x_bnd + SelfAttention(self.num_heads, self.head_dim, name="attn")(
        _layer_norm("ln_1")(x_bnd))
    x_bnd = x_bnd + ReluMLP(self.mlp_dim, name="mlp")(_layer_norm("ln_2")(x_bnd))
    return nn.with_logical_constraint(x_bnd, ("batch", "length", EMBED))


class Transformer(nn.Module):
  """`encoderblock_{i}` blocks then the final LayerNorm `encoder_norm` (also in the decoder)."""

  num_layers: int
  num_heads: int
  head_dim: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x_bnd: jax.Array) -> jax.Array:
    for i in range(self.num_layers):
      x_bnd = Block(self.num_heads, self.head_dim, self.mlp_dim, name=f"encoderblock_{i}")(x_bnd)
    return _layer_norm("encoder_norm")(x_bnd)


class Encoder(nn.Module):
  cfg: AudioVQGANConfig

  @nn.compact
  def __call__(self, spectrogram_mtc: jax.Array) -> jax.Array:
    """[B, mel, time, C] (already transposed) -> z [B, N, E], N over the (M, T) grid."""
    cfg = self.cfg
    b, mel, time, c = spectrogram_mtc.shape
    ph, pw = cfg.patch_size
    # space-to-depth: [B, M, ph, T, pw, C] -> [B, M, T, ph, pw, C] -> [B, N, P], P = (dh dw c)
    x_bmptqc = spectrogram_mtc.reshape(b, mel // ph, ph, time // pw, pw, c)
    x_bnp = x_bmptqc.transpose(0, 1, 3, 2, 4, 5).reshape(b, (mel // ph) * (time // pw), ph * pw * c)
    x_bnd = _dense_with_bias(cfg.encoder_hidden_size, (PATCH, EMBED), "embedding")(x_bnp)
    x_bnd = x_bnd + jnp.asarray(sincos_table_2d(cfg.encoder_hidden_size, cfg.grid))
    x_bnd = Transformer(cfg.encoder_num_layers, cfg.encoder_num_heads, cfg.encoder_head_dim,
                        cfg.encoder_mlp_dim, name="transformer")(x_bnd)
    x_bnd = nn.relu(x_bnd)  # the release applies its act_fn AFTER the final LayerNorm
    z_bne = Projection((cfg.encoder_hidden_size,), (cfg.proj_dim,), (EMBED, CODE),
                       name="encoder_proj")(x_bnd)
    return _layer_norm("encoder_norm", use_scale=False, bias_init=nn.initializers.ones,
                       axis=CODE)(z_bne)


class Decoder(nn.Module):
  cfg: AudioVQGANConfig

  @nn.compact
  def __call__(self, codes_bne: jax.Array) -> jax.Array:
    """Codes [B, N, E] on the (M, T) grid -> spectrogram [B, mel, time, C]."""
    cfg = self.cfg
    (m, t), d = cfg.grid, cfg.decoder_hidden_size
    x_bnd = Projection((cfg.proj_dim,), (d,), (CODE, EMBED), name="decoder_proj")(codes_bne)
    # The release sizes this table with encoder_hidden_size (equal in every preset); the add only
    # works when they are equal, so the decoder's own size is the same table.
    x_bnd = x_bnd + jnp.asarray(sincos_table_2d(d, cfg.grid))
    x_bnd = Transformer(cfg.decoder_num_layers, cfg.decoder_num_heads, cfg.decoder_head_dim,
                        cfg.decoder_mlp_dim, name="transformer")(x_bnd)
    x_bmtd = x_bnd.reshape(-1, m, t, d)
    return PatchConvTranspose(cfg.patch_size, cfg.output_channel, name="conv_transpose")(x_bmtd)


class PatchConvTranspose(nn.Module):
  """ConvTranspose2d(D -> C, kernel = stride = patch, no bias): each token paints its own patch.

  Kernel [ph, pw, C, D]: the torch weight [D, C, ph, pw] transposed (2, 3, 1, 0).
  """

  patch_size: Tuple[int, int]
  features: int

  @nn.compact
  def __call__(self, x_bmtd: jax.Array) -> jax.Array:
    """[B, M, T, D] -> [B, M*ph, T*pw, C]."""
    (ph, pw), c, d = self.patch_size, self.features, x_bmtd.shape[-1]
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=-1,
                                            out_axis=(0, 1, 2))
    kernel_pqcd = self.param(
        "kernel", nn.with_logical_partitioning(init, (CONV_H, CONV_W, CONV_OUT, EMBED)),
        (ph, pw, c, d), jnp.float32)
    b, m, t, _ = x_bmtd.shape
    out_bmptqc = jnp.einsum("BMTD,PQCD->BMPTQC", x_bmtd, kernel_pqcd)  # P, Q: row, col in a patch
    return out_bmptqc.reshape(b, m * ph, t * pw, c)


class Quantizer(nn.Module):
  """The codebook `embedding` [V, E]; nearest entry after l2-normalising both sides."""

  cfg: AudioVQGANConfig

  def setup(self):
    self.embedding = nn.Embed(
        self.cfg.vocab_size, self.cfg.proj_dim,
        embedding_init=nn.with_logical_partitioning(nn.initializers.uniform(2.0),
                                                    (CODES, CODE)))

  def codebook(self) -> jax.Array:
    """[V, E], l2-normalised rows."""
    return l2_normalize(self.embedding.embedding)

  def nearest(self, z_bne: jax.Array) -> jax.Array:
    """[B, N] int32 ids: argmin |z' - e'|^2 = |z'|^2 + |e'|^2 - 2 z'.e' (the release's formula)."""
    zn_bne, cb_ve = l2_normalize(z_bne), self.codebook()
    dist_bnv = (jnp.sum(zn_bne ** 2, -1, keepdims=True) + jnp.sum(cb_ve ** 2, -1)
                - 2 * jnp.einsum("BNE,VE->BNV", zn_bne, cb_ve))
    return jnp.argmin(dist_bnv, axis=-1).astype(jnp.int32)

  def lookup(self, ids_bn: jax.Array) -> jax.Array:
    """[B, N, E] l2-normalised codebook rows (the release's `get_codebook_entry`)."""
    return jnp.take(self.codebook(), ids_bn, axis=0)


class AudioViTVQGAN(nn.Module):
  """Spectrogram [B, H(time), W(mel), C] <-> ids [B, T*M] (target order, raw ids: no +2).

  Call as `model.apply(variables, x, method=AudioViTVQGAN.encode)` (or `decode`,
  `encode_latents`); `__call__` runs encode and decode (what `init` needs).
  """

  cfg: AudioVQGANConfig

  def setup(self):
    self.encoder = Encoder(self.cfg)
    self.quantize = Quantizer(self.cfg)
    self.decoder = Decoder(self.cfg)

  def _check_input(self, spectrogram_bhwc: jax.Array) -> None:
    mel, time = self.cfg.default_input_size
    expected = (time, mel, self.cfg.output_channel)
    if spectrogram_bhwc.ndim != 4 or tuple(spectrogram_bhwc.shape[1:]) != expected:
      raise ValueError(f"audio ViT-VQGAN: spectrogram must be [B, time, mel, C] = [B, {time}, "
                       f"{mel}, {self.cfg.output_channel}] (default_input_size (mel, time) = "
                       f"{self.cfg.default_input_size}), got {tuple(spectrogram_bhwc.shape)}")

  def encode_latents(self, spectrogram_bhwc: jax.Array) -> jax.Array:
    """z [B, N, E] on the (M, T) grid (the release's `encoder` output)."""
    self._check_input(spectrogram_bhwc)
    with jax.default_matmul_precision(MATMUL_PRECISION):
      return self.encoder(spectrogram_bhwc.astype(jnp.float32).transpose(0, 2, 1, 3))

  def encode(self, spectrogram_bhwc: jax.Array) -> jax.Array:
    """[B, T*M] int32 codebook ids in the release's target order (time/8, mel/8)."""
    z_bne = self.encode_latents(spectrogram_bhwc)
    with jax.default_matmul_precision(MATMUL_PRECISION):
      ids_grid_bn = self.quantize.nearest(z_bne)
    return grid_to_target_order(ids_grid_bn, self.cfg.grid)

  def decode(self, ids_bn: jax.Array) -> jax.Array:
    """Ids [B, T*M] in target order -> spectrogram [B, H(time), W(mel), C] (still normalised)."""
    m, t = self.cfg.grid
    if ids_bn.ndim != 2 or ids_bn.shape[1] != m * t:
      raise ValueError(f"audio ViT-VQGAN: ids must be [B, {m * t}], got {tuple(ids_bn.shape)}")
    codes_bne = self.quantize.lookup(target_to_grid_order(ids_bn, self.cfg.grid))
    with jax.default_matmul_precision(MATMUL_PRECISION):
      return self.decoder(codes_bne).transpose(0, 2, 1, 3)

  def __call__(self, spectrogram_bhwc: jax.Array) -> Tuple[jax.Array, jax.Array]:
    ids_bn = self.encode(spectrogram_bhwc)
    return ids_bn, self.decode(ids_bn)
