"""The tokenizers' training forward passes and loss (taming's, without the perceptual and GAN terms).

  loss = l1_weight * |x - x'|_1 + |x - x'|_2^2 + commitment * |z - sg(code)|^2   (element means)

l1_weight is 0 by default, not taming's 1. The L1 term's gradient has the same size at every pixel
however small its error, so on images that are mostly background (the world's: 90-95%) the
background's tiny errors outvote the objects' large ones, and objects come back as blobs in a
warm or a cool hue. With L2 alone the gradient follows the error: after the same 1440 steps
(64 px crops, 160 s) held-out PSNR went from 21.0-23.0 to 25.4 dB, and on object pixels from
9-10 to 14.4 dB, red, yellow, pink and blue objects coming back in their colours.

where x' is the reconstruction through the codes, with the straight-through estimator
(z + sg(code - z)) carrying the decoder's gradient to the encoder. The codebook itself follows
moving averages (`codebook.py`), not this loss.

Each kind is one `Objective`: how to encode to latents, which codes they pick, and how to decode
the straight-through codes, written on the tokenizer module so the parameters are the ones the
model uses at inference (`ImageVQGAN`, `AudioViTVQGAN`).
"""

import dataclasses
from typing import Any, Callable, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from unified_io.network.vq import audio_vqgan, vqgan
from unified_io.tokenizer_training import codebook as codebook_lib
from unified_io.tokenizer_training.state import VQConfig


def _image_latents(module: vqgan.ImageVQGAN, images: jax.Array) -> jax.Array:
  # The encoder on the whole batch, not `encode_latents`' scan over chunks: differentiating
  # through that scan was 5-8x slower on XLA:CPU (13.6 s against 1.6 s for 8 images of 128 px).
  return module.quant_conv(module.encoder(images.astype(jnp.float32)))


def _image_decode(module: vqgan.ImageVQGAN, codes: jax.Array) -> jax.Array:
  return module.decoder(module.post_quant_conv(codes))


def _audio_latents(module: audio_vqgan.AudioViTVQGAN, spectrograms: jax.Array) -> jax.Array:
  return audio_vqgan.l2_normalize(module.encode_latents(spectrograms))  # [B, N, E] (M, T) grid


def _audio_decode(module: audio_vqgan.AudioViTVQGAN, codes_bne: jax.Array) -> jax.Array:
  with jax.default_matmul_precision(audio_vqgan.MATMUL_PRECISION):
    return module.decoder(codes_bne).transpose(0, 2, 1, 3)  # (mel, time) -> [B, time, mel, C]


@dataclasses.dataclass(frozen=True)
class Objective:
  """One tokenizer kind: its module, the shape of one example, and the training forward pass."""

  kind: str
  module: nn.Module
  example_shape: Tuple[int, ...]     # one input, e.g. (128, 128, 3) or (time, mel, 1)
  latents: Callable                  # (module, x) -> z [..., E]
  decode: Callable                   # (module, codes [..., E]) -> reconstruction like x
  normalized_codes: bool             # codes live on the unit sphere (the audio tokenizer)

  def codebook(self, params) -> jax.Array:
    return params["quantize"]["embedding"]["embedding"]

  def with_codebook(self, params, codebook: jax.Array):
    quantize = {**params["quantize"], "embedding": {"embedding": codebook}}
    return {**params, "quantize": quantize}

  def init(self, key: jax.Array):
    return nn.unbox(self.module.init(key, jnp.zeros((1, *self.example_shape)))["params"])

  def forward(self, params, x: jax.Array):
    """(reconstruction, latents z [N, E], their ids [N], the codes they took [N, E])."""
    z = self.module.apply({"params": params}, x, method=self.latents)
    codes_ke = self.codebook(params)
    if self.normalized_codes:
      codes_ke = codebook_lib.l2_normalize(codes_ke)
    z_ne = z.reshape(-1, z.shape[-1])
    ids_n = codebook_lib.nearest(jax.lax.stop_gradient(z_ne), jax.lax.stop_gradient(codes_ke))
    code_ne = jax.lax.stop_gradient(codes_ke)[ids_n]
    straight_through = (z_ne + jax.lax.stop_gradient(code_ne - z_ne)).reshape(z.shape)
    reconstruction = self.module.apply({"params": params}, straight_through, method=self.decode)
    return reconstruction, z_ne, ids_n, code_ne

  def loss(self, params, x: jax.Array, commitment: float,
           l1_weight: float = 0.0) -> Tuple[jax.Array, Dict[str, Any]]:
    reconstruction, z_ne, ids_n, code_ne = self.forward(params, x)
    error = reconstruction - x
    code_error_n = jnp.sum(jnp.square(z_ne - code_ne), axis=-1)
    terms = {"l1": jnp.mean(jnp.abs(error)), "l2": jnp.mean(jnp.square(error)),
             "commitment": jnp.mean(code_error_n) / z_ne.shape[-1]}
    loss = l1_weight * terms["l1"] + terms["l2"] + commitment * terms["commitment"]
    return loss, {"terms": terms, "z": z_ne, "ids": ids_n, "code_error": code_error_n}


def objective(kind: str, config: VQConfig) -> Objective:
  if kind == "image":
    height, width = config.default_input_size
    return Objective("image", vqgan.ImageVQGAN(config), (height, width, config.in_channels),
                     _image_latents, _image_decode, normalized_codes=False)
  if kind == "audio":
    mel, time = config.default_input_size
    return Objective("audio", audio_vqgan.AudioViTVQGAN(config),
                     (time, mel, config.output_channel), _audio_latents, _audio_decode,
                     normalized_codes=True)
  raise ValueError(f"tokenizer kind {kind!r}: expected 'image' or 'audio'")


def reconstruct(obj: Objective, params, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """(reconstruction, ids [B, tokens]) through the module's own inference path (encode, decode)."""
  ids = obj.module.apply({"params": params}, x, method=type(obj.module).encode)
  return obj.module.apply({"params": params}, ids, method=type(obj.module).decode), ids
