"""Image and audio targets: VQ codes as decoder tokens, predicted through the tied image/audio heads.

Axis legend: B batch, T target tokens, D embed, K head_dim.

Features (the release's names):
  image:  image [B, H, W, 3]  (or targets [B, T] = codes + 2), mask [B, T], loss_mask [B, T],
          task_mask [B, T] (optional: tokens noised by the denoising objective)
  audio:  audio [B, time, mel, 1] (or targets), mask, loss_mask, task_mask

The frozen tokenizer turns the raw target into codes inside the forward pass, as the release does;
gradients never reach it. Codes are shifted by +2 (0 = BOS, 1 = MASK), the decoder input is
[BOS] + targets[:-1], and RoPE uses a 2D table with scale 1 and positions restarting at 0. The
image grid is (H/8, W/8). The audio tokens are ordered (time/8, mel/8), but the release's RoPE
table is laid out on the tokenizer's transposed (mel/8, time/8) grid and taken in index order; we
reproduce that. `grid_width` (the row length of the token order) drives the attention patterns.
"""

from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from unified_io.config import UnifiedIOConfig
from unified_io.network.embedders.parts import TargetPart, modality_embedding
from unified_io.network.layers import TokenEmbedder, rope_table_2d
from unified_io.modalities import Modality
from unified_io.network.vq.audio_vqgan import AudioViTVQGAN
from unified_io.network.vq.vqgan import ImageVQGAN

CODE_OFFSET = 2  # 0 = BOS, 1 = MASK


class _VQTargetEmbedder(nn.Module):
  """Shared logic; subclasses say which tokenizer, raw feature and grids they use."""

  VIT = None
  RAW_FEATURE = ""

  cfg: UnifiedIOConfig
  token_embedder: TokenEmbedder
  vit: Optional[nn.Module] = None

  def make_tokenizer(self) -> nn.Module:
    raise NotImplementedError

  def grids(self) -> Tuple[Tuple[int, int], int]:
    """((rope grid h, w), pattern row width)."""
    raise NotImplementedError

  def grid_width(self) -> int:
    """The row length of the token order (the attention patterns' W)."""
    return self.grids()[1]

  def raw_shape(self) -> Tuple[int, ...]:
    """The raw target's shape without the batch axis."""
    raise NotImplementedError

  def setup(self):
    self.vqgan = self.make_tokenizer()
    self.modality_vector = modality_embedding(self, self.cfg.trunk.emb_dim)

  def render(self, targets_bt: jax.Array) -> jax.Array:
    """Target tokens (codes + 2) -> pixels / spectrogram through the tokenizer's decoder."""
    vocab = self.token_embedder.vocab_size - CODE_OFFSET
    return self.vqgan.decode(jnp.clip(targets_bt.astype(jnp.int32) - CODE_OFFSET, 0, vocab - 1))

  def _rope_table(self) -> jax.Array:
    (rope_h, rope_w), _ = self.grids()
    return jnp.asarray(rope_table_2d(rope_h, rope_w, self.cfg.trunk.head_dim, 1.0,
                                     self.cfg.trunk.rope_base))

  def embed_tokens(self, inputs_bt: jax.Array, positions_bt: jax.Array):
    """(embeddings, RoPE rows) of decoder input tokens at the given positions (decoding)."""
    embed_btd = self.token_embedder(inputs_bt) + self.modality_vector.astype(
        self.cfg.trunk.activation_dtype)
    return embed_btd, jnp.take(self._rope_table(), positions_bt, axis=0)

  def _check_raw_shape(self, raw: jax.Array) -> None:
    expected = self.raw_shape()
    if tuple(raw.shape[1:]) != expected:
      raise ValueError(f"{self.TOKENS.value} target: feature `{self.RAW_FEATURE}` has shape "
                       f"{tuple(raw.shape)}, expected [batch, {', '.join(map(str, expected))}]")

  def __call__(self, features, deterministic: bool = True) -> TargetPart:
    trunk = self.cfg.trunk
    (rope_h, rope_w), grid_width = self.grids()
    num_tokens = rope_h * rope_w
    if self.is_initializing():  # create the decoder's parameters too, so tokens can be rendered
      self.vqgan.decode(jnp.zeros((1, num_tokens), jnp.int32))
    if "targets" in features:
      targets_bt = features["targets"].astype(jnp.int32)
    else:
      self._check_raw_shape(features[self.RAW_FEATURE])
      codes_bt = jax.lax.stop_gradient(self.vqgan.encode(features[self.RAW_FEATURE]))
      targets_bt = codes_bt.astype(jnp.int32) + CODE_OFFSET
    batch, length = targets_bt.shape
    if length != num_tokens:
      raise ValueError(f"{self.TOKENS.value} target: {length} tokens, expected {num_tokens} "
                       f"({rope_h} x {rope_w} grid of the tokenizer config)")
    inputs_bt = jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), targets_bt[:, :-1]], axis=1)
    embed_btd = self.token_embedder(inputs_bt) + self.modality_vector.astype(trunk.activation_dtype)
    rope_btk = jnp.broadcast_to(self._rope_table()[None], (batch, length, trunk.head_dim))
    mask_bt = features["mask"]
    noisy_bt = None
    if "task_mask" in features:  # decoder input t carries target t - 1
      task_bt = features["task_mask"].astype(bool)
      noisy_bt = jnp.concatenate([jnp.zeros((batch, 1), bool), task_bt[:, :-1]], axis=1)
    return TargetPart(embed_btd, mask_bt, rope_btk, targets_bt, features.get("loss_mask", mask_bt),
                      grid_width, noisy_bt)


class ImageTargetEmbedder(_VQTargetEmbedder):
  TOKENS = Modality.IMAGE
  RAW_FEATURE = "image"

  def make_tokenizer(self) -> nn.Module:
    return ImageVQGAN(self.cfg.image_vqgan)

  def grids(self):
    h, w = self.cfg.image_vqgan.grid
    return (h, w), w

  def raw_shape(self):
    return tuple(self.cfg.image_vqgan.default_input_size) + (3,)


class AudioTargetEmbedder(_VQTargetEmbedder):
  TOKENS = Modality.AUDIO
  RAW_FEATURE = "audio"

  def make_tokenizer(self) -> nn.Module:
    return AudioViTVQGAN(self.cfg.audio_vqgan)

  def grids(self):
    mel, time = self.cfg.audio_vqgan.grid  # the tokenizer's (mel/8, time/8) grid
    return (mel, time), mel  # tokens run (time/8, mel/8): a row is `mel` tokens long

  def raw_shape(self):
    mel, time = self.cfg.audio_vqgan.default_input_size
    return (time, mel, 1)
