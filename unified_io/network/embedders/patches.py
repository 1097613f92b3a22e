"""Patchify images / spectrograms and sample patches the way the release feeds its ViTs.

Axis legend: B batch, H height, W width, C channels, N patches, P values per patch.

A patch is flattened (dh dw c). The ViTs read a subset of the grid: at training time the release
samples patches at random, VALID patches first (those inside the un-padded image), and keeps each
patch's row-major grid index as its position id, so RoPE and the position table still see where
it came from. Everything here is jittable with static shapes.
"""

from typing import Tuple

import jax
import jax.numpy as jnp


def patchify(images_bhwc: jax.Array, patch: int) -> jax.Array:
  """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], row-major over the patch grid, (dh dw c) inside."""
  b, h, w, c = images_bhwc.shape
  if h % patch or w % patch:
    raise ValueError(f"patchify: image {h}x{w} is not a multiple of the patch size {patch}")
  x = images_bhwc.reshape(b, h // patch, patch, w // patch, patch, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, gh, gw, dh, dw, C]
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def sample_patches(rng: jax.Array, patches_bnp: jax.Array, valid_bn: jax.Array, num: int
                   ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """`num` patches per example: valid ones first in random order, then padding.

  Returns (patches [B, num, P], mask [B, num] int32, pos_ids [B, num] int32). Positions past the
  valid patches are masked out; the ids still point at real grid cells.
  """
  b, n, _ = patches_bnp.shape
  if num > n:
    raise ValueError(f"sample_patches: asked for {num} patches but the grid has only {n}")
  noise_bn = jax.random.uniform(rng, (b, n))
  # Valid patches sort before invalid ones; random order within each group.
  order_bn = jnp.argsort(noise_bn + 2.0 * (1 - valid_bn.astype(jnp.float32)), axis=1)[:, :num]
  picked_bnp = jnp.take_along_axis(patches_bnp, order_bn[..., None], axis=1)
  mask_bn = jnp.take_along_axis(valid_bn.astype(jnp.int32), order_bn, axis=1)
  return picked_bnp, mask_bn, order_bn.astype(jnp.int32)
