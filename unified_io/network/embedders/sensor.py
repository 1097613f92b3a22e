"""Sensor input (OneLLM style): a conv tokenizer -> the SHARED image ViT's blocks -> the trunk.

Axis legend: B batch, N chunks (tokens), T = N * p time samples, C channels, p samples per chunk
(`SensorConfig.patch`), V ViT width, W = 2V, D trunk embed, K trunk head_dim.

Features: input [B, N, p*C] float (chunks of the raw [T, C] signal, (dt c)-flattened), mask [B, N]
int (1 = the chunk holds signal), pos_ids [B, N] int (the chunk's place in time, 0..N-1).

The chunks are put back into the signal [B, T, C]; a learned 1-D `tokenizer` conv (kernel
`SensorConfig.kernel` samples, stride p, SAME padding) gives one token [V] per chunk. The tokens go
through the shared image ViT with its patch embedding skipped (`ImageViT(..., embedded=True)`):
class token, position table rows (pos_ids index the ViT grid row-major, so N <= its grid), pre-LN,
blocks. Then, as for images, (last, block 1) features [B, N, 2V] -> the bias-free `projection` to D
(or the network's `UniversalProjection` when `input_projection` serves sensor) + the modality
vector. RoPE rows: the 2D table over a (1, length / patch) grid (scale 1), gathered by pos_ids.

`freeze_vit`: the image path stops the gradient at the ViT outputs; here that would also stop it
reaching the tokenizer, the one part that must learn. So the ViT runs on its parameters with
`stop_gradient` applied to them (a functional call of the same module on its own, bound
variables): every ViT parameter gets an exactly zero gradient from this path, while the gradient
flows through the blocks into the tokenizer. Without `freeze_vit` the ViT is called as is.
"""

from typing import Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from unified_io.config import SensorConfig, UnifiedIOConfig
from unified_io.modalities import Modality
from unified_io.network.embedders.image import FEATURE_KEYS
from unified_io.network.embedders.parts import EncoderPart, modality_embedding
from unified_io.network.embedders.vit import EMBED as VIT_EMBED
from unified_io.network.embedders.vit import validate_patches
from unified_io.network.layers import TokenEmbedder, rope_table_2d
from unified_io.network.layers.dense import Projection

# Logical axes of the tokenizer's kernel [kernel, C, V] (replicated, as the ViT's).
KERNEL_AXES = ("conv_w", "conv_in", VIT_EMBED)


class SensorInputEmbedder(nn.Module):
  """The sensor input through the conv tokenizer and the shared image ViT (module docstring)."""

  TOKENS = None
  VIT = "image_vit"  # SensorConfig.vit (only the image ViT reads embedded tokens)
  MODALITY = Modality.SENSOR

  cfg: UnifiedIOConfig
  token_embedder: Optional[TokenEmbedder] = None
  vit: Optional[nn.Module] = None
  input_projection: Optional[nn.Module] = None

  @classmethod
  def feature_width(cls, cfg: UnifiedIOConfig) -> int:
    """W, the width of the features projected to the trunk: the ViT's two taps, concatenated."""
    return 2 * getattr(cfg, cls.VIT).emb_dim

  @property
  def sensor_cfg(self) -> SensorConfig:
    return self.cfg.sensor

  def _check_features(self, features: Mapping) -> None:
    sensor = self.sensor_cfg
    if self.vit is None:
      raise ValueError(f"sensor input: built without its shared ViT ({self.VIT}); the network "
                       "passes it")
    missing = [k for k in FEATURE_KEYS if k not in features]
    if missing:
      raise ValueError(f"sensor input: features lack {missing}; expected input [B, N, "
                       f"{sensor.patch_dim}], mask [B, N] and pos_ids [B, N]")
    validate_patches("sensor input", features["input"], features["mask"], features["pos_ids"],
                     sensor.patch_dim, (1, sensor.num_tokens))

  def _vit(self, tokens_bnv, mask_bn, pos_ids_bn, deterministic: bool):
    """The shared ViT on embedded tokens; with `freeze_vit`, on stopped-gradient parameters."""
    if not self.cfg.freeze_vit or self.is_initializing():
      return self.vit(tokens_bnv, mask_bn, pos_ids_bn, deterministic, embedded=True)
    variables = dict(self.vit.variables)
    variables["params"] = jax.lax.stop_gradient(variables["params"])
    rngs = {} if deterministic else {"dropout": self.make_rng("dropout")}
    return self.vit.clone(parent=None).apply(variables, tokens_bnv, mask_bn, pos_ids_bn,
                                             deterministic, embedded=True, rngs=rngs)

  @nn.compact
  def __call__(self, features: Mapping, deterministic: bool = True) -> EncoderPart:
    self._check_features(features)
    trunk, sensor, vit_cfg = self.cfg.trunk, self.sensor_cfg, getattr(self.cfg, self.VIT)
    mask_bn, pos_ids_bn = features["mask"], features["pos_ids"]
    batch, n = mask_bn.shape

    # [B, N, (p C)] -> [B, N * p, C]: the chunks are time-major, so this is the signal again.
    signal_btc = features["input"].astype(jnp.float32).reshape(
        batch, n * sensor.patch, sensor.channels)
    tokens_bnv = nn.Conv(
        vit_cfg.emb_dim, (sensor.kernel,), strides=(sensor.patch,), padding="SAME",
        dtype=jnp.float32, param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), KERNEL_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (VIT_EMBED,)),
        name="tokenizer")(signal_btc)  # [B, N, V]

    last_bnv, block1_bnv = self._vit(tokens_bnv, mask_bn, pos_ids_bn, deterministic)
    feats_bnw = jnp.concatenate([last_bnv, block1_bnv], axis=-1)  # W = 2V
    if self.input_projection is None:
      embed_bnd = Projection((feats_bnw.shape[-1],), (trunk.emb_dim,), (VIT_EMBED, "embed"),
                             jnp.float32, name="projection")(feats_bnw)
    else:
      embed_bnd, _ = self.input_projection(feats_bnw, self.MODALITY)
    embed_bnd = (embed_bnd + modality_embedding(self, trunk.emb_dim)).astype(trunk.activation_dtype)
    embed_bnd = nn.with_logical_constraint(embed_bnd, ("batch", "length", "embed"))

    table_gk = rope_table_2d(1, sensor.num_tokens, trunk.head_dim, base=trunk.rope_base)
    rope_bnk = jnp.take(jnp.asarray(table_gk), pos_ids_bn, axis=0)
    return EncoderPart(embed_bnd, mask_bn, rope_bnk)
