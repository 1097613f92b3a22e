"""What an embedder hands the trunk: one modality's slice of the encoder or decoder sequence."""

from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


class EncoderPart(NamedTuple):
  embed: jax.Array  # [B, L, D] activation dtype
  mask: jax.Array  # [B, L] 1 = real token
  rope: jax.Array  # [B, L, K] RoPE table rows (cos, sin interleaved)


class TargetPart(NamedTuple):
  embed: jax.Array  # [B, T, D] embedded decoder inputs (targets shifted right)
  mask: jax.Array  # [B, T] 1 = real token
  rope: jax.Array  # [B, T, K]
  targets: jax.Array  # [B, T] int token ids to predict
  loss_mask: jax.Array  # [B, T] 1 = counts in the loss
  # For the attention patterns and dynamic masking (used only when the config enables them):
  grid_width: int = 0  # width of the target's token grid; 0 = a sequence without patterns (text)
  noisy: Optional[jax.Array] = None  # [B, T] bool: this decoder input is a masked (noised) token


def modality_embedding(module: nn.Module, dim: int) -> jax.Array:
  """The learned vector added to every token of one modality (the release's `modality_embedding`)."""
  return module.param("modality_embedding",
                      nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
                      (dim,), jnp.float32)
