"""The codebook during tokenizer training: nearest codes, moving averages, dead-code restarts.

Codes are not learned by gradients (which reach only the codes that happen to be picked, and let
the others die): each code is the moving average of the encoder outputs assigned to it,

  counts <- decay * counts + (1 - decay) * (latents assigned to each code in this batch)
  sums   <- decay * sums   + (1 - decay) * (their sum)
  code    = sums / counts                       (l2-normalised for the audio tokenizer)

and a code whose average count falls below `restart_below` of an even share (latents per batch /
codes) is restarted on a latent drawn from the batch, with an even share as its count: it gets
another few hundred steps to be picked. Training then keeps most codes in use instead of the few
the random initialisation happens to be near.

The draw favours the latents the codebook serves worst: each is drawn with probability in
proportion to its squared distance to the code it took (k-means++'s D^2 weighting). Drawn
uniformly, restarts land where latents are dense (on the world's images: the background's shades,
90% of the patches) and the rare objects keep sharing a few codes; with D^2 draws the tiny
tokenizer reached 23.0 dB held-out PSNR in 170 s of CPU training where uniform draws reached 20.8.
The draw is keyed by the step, so a resumed run restarts the same codes with the same latents as
an uninterrupted one.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

_EPS = 1e-8


def l2_normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def nearest(z_ne: jax.Array, codebook_ke: jax.Array) -> jax.Array:
  """[N] ids of the nearest code (plain L2, the expansion the tokenizers use at inference)."""
  cross_nk = jnp.einsum("ne,ke->nk", z_ne, codebook_ke, precision=jax.lax.Precision.HIGHEST)
  dist_nk = jnp.sum(z_ne ** 2, -1, keepdims=True) + jnp.sum(codebook_ke ** 2, -1) - 2 * cross_nk
  return jnp.argmin(dist_nk, axis=-1).astype(jnp.int32)


class CodebookUpdate(NamedTuple):
  codebook: jax.Array   # [K, E] the new codes
  counts: jax.Array     # [K]
  sums: jax.Array       # [K, E]
  restarted: jax.Array  # () how many codes were restarted this step
  used: jax.Array       # () how many codes this batch used


def update(counts_k: jax.Array, sums_ke: jax.Array, z_ne: jax.Array, ids_n: jax.Array,
           error_n: jax.Array, key: jax.Array, *, decay: float, restart_below: float,
           normalize: bool = False) -> CodebookUpdate:
  """One moving-average step of the codebook from the batch's latents `z_ne`, their `ids_n` and
  their squared distances `error_n` to the codes they took (the restarts' draw weights)."""
  k = counts_k.shape[0]
  z_ne = jax.lax.stop_gradient(z_ne)
  onehot_nk = jax.nn.one_hot(ids_n, k, dtype=z_ne.dtype)
  batch_counts_k = onehot_nk.sum(0)
  counts_k = decay * counts_k + (1 - decay) * batch_counts_k
  sums_ke = decay * sums_ke + (1 - decay) * jnp.einsum(
      "nk,ne->ke", onehot_nk, z_ne, precision=jax.lax.Precision.HIGHEST)
  even_share = z_ne.shape[0] / k
  dead_k = counts_k < restart_below * even_share
  weight_n = jnp.log(jnp.maximum(jax.lax.stop_gradient(error_n), 0.0) + 1e-12)
  drawn_ke = z_ne[jax.random.categorical(key, weight_n, shape=(k,))]
  counts_k = jnp.where(dead_k, even_share, counts_k)
  sums_ke = jnp.where(dead_k[:, None], drawn_ke * even_share, sums_ke)
  codebook_ke = sums_ke / jnp.maximum(counts_k, _EPS)[:, None]
  if normalize:
    codebook_ke = l2_normalize(codebook_ke)
  return CodebookUpdate(codebook_ke, counts_k, sums_ke, dead_k.sum(),
                        (batch_counts_k > 0).sum())
