"""Rotary position embeddings exactly as the UIO2 release lays them out.

A table row is `[cos t0, sin t0, cos t1, sin t1, ...]` of width head_dim (K), and the rotation acts on
ADJACENT pairs `(x[2i], x[2i+1])` (complex style, not rotate-half).

- 1D (text): t_i = p * base^(-2i/K), i < K/2.
- 2D (image, audio, history): K/4 frequencies base^(-2j/(K/2)); the angles are
  concat(row * f, col * f), so the first half of head_dim rotates with the row and the second half
  with the column. Coordinates are row-major over the grid, start at 0 and are multiplied by `scale`.

Tables are computed once in float64 with NumPy and gathered by position id inside the model, the
way the release gathers its `pos_emb_cache`.
"""

import jax
import jax.numpy as jnp
import numpy as np


def _interleave(angles: np.ndarray) -> np.ndarray:
  """[N, K/2] angles -> [N, K] table of (cos, sin) pairs."""
  return np.stack([np.cos(angles), np.sin(angles)], axis=-1).reshape(angles.shape[0], -1)


def rope_table_1d(num_positions: int, head_dim: int, base: float = 10000.0) -> np.ndarray:
  """[num_positions, head_dim] float32 table for positions 0..num_positions-1."""
  freqs = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # [K/2]
  angles = np.arange(num_positions, dtype=np.float64)[:, None] * freqs[None]
  return _interleave(angles).astype(np.float32)


def rope_table_2d(height: int, width: int, head_dim: int, scale: float = 1.0,
                  base: float = 10000.0) -> np.ndarray:
  """[height * width, head_dim] float32 table, row-major over the (height, width) grid."""
  half = head_dim // 2
  freqs = base ** (-np.arange(0, half, 2, dtype=np.float64) / half)  # [K/4]
  rows, cols = np.meshgrid(np.arange(height) * scale, np.arange(width) * scale, indexing="ij")
  angles = np.concatenate([rows.reshape(-1, 1) * freqs, cols.reshape(-1, 1) * freqs], axis=-1)
  return _interleave(angles).astype(np.float32)


def apply_rope(x_blhk: jax.Array, rope_blk: jax.Array) -> jax.Array:
  """Rotates adjacent pairs of head_dim of x [B, L, H, K] by the table rows rope [B, L, K]; f32."""
  x = x_blhk.astype(jnp.float32)
  pairs = x.reshape(*x.shape[:-1], -1, 2)  # [B, L, H, K/2, 2]
  table = rope_blk.astype(jnp.float32).reshape(rope_blk.shape[0], rope_blk.shape[1], 1, -1, 2)
  cos, sin = table[..., 0], table[..., 1]  # [B, L, 1, K/2]
  even, odd = pairs[..., 0], pairs[..., 1]
  rotated = jnp.stack([even * cos - odd * sin, odd * cos + even * sin], axis=-1)
  return rotated.reshape(x.shape)
