"""Token embedding tables, also used (tied) as the output projection of their modality."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from unified_io.config import TrunkConfig


class TokenEmbedder(nn.Module):
  """`embedding` [V, D]. `__call__` looks tokens up; `logits` is h @ E.T / sqrt(D) in float32."""

  vocab_size: int
  cfg: TrunkConfig

  def setup(self):
    self.embedding = self.param(
        "embedding",
        nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
        (self.vocab_size, self.cfg.emb_dim), jnp.float32)

  def __call__(self, tokens_bl: jax.Array) -> jax.Array:
    return jnp.take(self.embedding, tokens_bl, axis=0).astype(self.cfg.activation_dtype)

  def logits(self, h_bld: jax.Array) -> jax.Array:
    table = self.embedding.astype(self.cfg.activation_dtype)
    logits_blv = jnp.einsum("BLD,VD->BLV", h_bld, table, preferred_element_type=jnp.float32)
    return logits_blv / jnp.sqrt(jnp.float32(self.cfg.emb_dim))
