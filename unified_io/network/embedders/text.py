"""Text in and out: token embeddings (shared with the tied text head) plus a modality vector, 1D RoPE.

Input features:  tokens [B, L] int, mask [B, L], pos_ids [B, L] (optional; 0..L-1 by default).
Target features: inputs [B, T] (targets shifted right, BOS = 0), targets [B, T], mask [B, T],
                 loss_mask [B, T] (optional; defaults to mask).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from typing import Optional

from unified_io.config import TrunkConfig, UnifiedIOConfig
from unified_io.modalities import Modality
from unified_io.network.embedders.parts import EncoderPart, TargetPart, modality_embedding
from unified_io.network.layers import TokenEmbedder, rope_table_1d


def _rope_1d(cfg: TrunkConfig, positions_bl: jax.Array) -> jax.Array:
  table = jnp.asarray(rope_table_1d(cfg.max_text_length, cfg.head_dim, cfg.rope_base))
  return jnp.take(table, positions_bl, axis=0)


def _default_positions(tokens_bl: jax.Array) -> jax.Array:
  return jnp.broadcast_to(jnp.arange(tokens_bl.shape[1], dtype=jnp.int32), tokens_bl.shape)


class TextInputEmbedder(nn.Module):
  TOKENS = Modality.TEXT
  VIT = None

  cfg: UnifiedIOConfig
  token_embedder: TokenEmbedder
  vit: Optional[nn.Module] = None

  @nn.compact
  def __call__(self, features, deterministic: bool = True) -> EncoderPart:
    trunk = self.cfg.trunk
    tokens_bl = features["tokens"]
    embed_bld = self.token_embedder(tokens_bl) + modality_embedding(self, trunk.emb_dim).astype(
        trunk.activation_dtype)
    positions_bl = features.get("pos_ids")
    if positions_bl is None:
      positions_bl = _default_positions(tokens_bl)
    return EncoderPart(embed_bld, features["mask"], _rope_1d(trunk, positions_bl))


class TextTargetEmbedder(nn.Module):
  TOKENS = Modality.TEXT
  VIT = None

  cfg: UnifiedIOConfig
  token_embedder: TokenEmbedder
  vit: Optional[nn.Module] = None

  def setup(self):
    self.modality_vector = modality_embedding(self, self.cfg.trunk.emb_dim)

  def grid_width(self) -> int:
    """0: a sequence, without attention patterns."""
    return 0

  def embed_tokens(self, inputs_bt: jax.Array, positions_bt: jax.Array):
    """(embeddings, RoPE rows) of decoder input tokens at the given positions (decoding)."""
    trunk = self.cfg.trunk
    embed_btd = self.token_embedder(inputs_bt) + self.modality_vector.astype(
        trunk.activation_dtype)
    return embed_btd, _rope_1d(trunk, positions_bt)

  def __call__(self, features, deterministic: bool = True) -> TargetPart:
    inputs_bt = features["inputs"]
    # The release restarts positions at 0 for every target part, whatever the batch says.
    embed_btd, rope_btk = self.embed_tokens(inputs_bt, _default_positions(inputs_bt))
    mask_bt = features["mask"]
    loss_mask_bt = features.get("loss_mask", mask_bt)
    return TargetPart(embed_btd, mask_bt, rope_btk, features["targets"], loss_mask_bt)
