"""OneLLM's universal projection module: K shared experts mixed by a per-modality soft router.

Axis legend: N tokens (any leading axes, flattened), W feature width, E experts, H expert hidden
width, D trunk embed, M served modalities.

Built once by the network when `UnifiedIOConfig.input_projection` is set and passed to every
ViT-read input embedder it serves (`UnifiedIOConfig.projected_modalities`), as the ViTs are
shared: image and audio call the same experts, so the parameters live once, under
`input_projection/`:

  router_logits          [M, E]     (projection_modalities, projection_experts)  zeros
  router_token_kernel    [W, E]     (vit_embed, projection_experts)   zeros; "modality_and_token"
  experts_in_kernel      [E, W, H]  (projection_experts, vit_embed, mlp)         "mlp" experts
  experts_in_bias        [E, H]     (projection_experts, mlp)
  experts_out_kernel     [E, H, D]  (projection_experts, mlp, embed)
  experts_out_bias       [E, D]     (projection_experts, embed)
  experts_kernel         [E, W, D]  (projection_experts, vit_embed, embed)       "linear" experts

A token x of modality m becomes sum_e w_e * expert_e(x), w = softmax_e(router_logits[m] + (x @
router_token_kernel for "modality_and_token")). The zero-initialised router starts as the uniform
mixture. W is the widest served feature: narrower features (the histories' resampler latents beside
the image/audio ViT's two concatenated taps) are zero-padded on the right, so they read the first
rows of each expert's input kernel. Parameters are float32; the experts compute in `dtype`, the
router, its softmax and the mixture in float32. Each call also sows its weights [..., E] under
("intermediates", "router_weights_<modality>").
"""

from typing import Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from unified_io.config import (ProjectionExpert, ProjectionRouter, UnifiedIOConfig,
                               UniversalProjectionConfig)
from unified_io.modalities import Modality

EXPERTS, MODALITIES = "projection_experts", "projection_modalities"
FEATURES = "vit_embed"  # W (replicated, as the ViT features it reads)


def _expert_init():
  """Fan-in truncated normal of each expert's [E, in, out] kernel, E a batch axis."""
  return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=-2,
                                          out_axis=-1, batch_axis=(0,))


class UniversalProjection(nn.Module):
  """Features [..., w] (w <= in_dim) of one served modality -> (embeddings [..., emb_dim] float32,
  router weights [..., E])."""

  cfg: UniversalProjectionConfig
  modalities: Tuple[Modality, ...]  # the served modalities: the router's rows, in this order
  in_dim: int  # W: the widest served feature
  emb_dim: int  # D: the trunk's width
  dtype: jnp.dtype = jnp.float32  # the experts' compute dtype

  def _param(self, name, init, axes, shape):
    return self.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)

  def _weights(self, x_nw: jax.Array, modality: Modality) -> jax.Array:
    """Router weights [N, E] (float32, each row sums to one)."""
    e = self.cfg.num_experts
    logits_me = self._param("router_logits", nn.initializers.zeros, (MODALITIES, EXPERTS),
                            (len(self.modalities), e))
    logits_ne = jnp.broadcast_to(logits_me[self.modalities.index(modality)], (x_nw.shape[0], e))
    if self.cfg.router == ProjectionRouter.MODALITY_AND_TOKEN:
      kernel_we = self._param("router_token_kernel", nn.initializers.zeros, (FEATURES, EXPERTS),
                              (self.in_dim, e))
      logits_ne = logits_ne + x_nw.astype(jnp.float32) @ kernel_we
    return jax.nn.softmax(logits_ne, axis=-1)

  def _experts(self, x_nw: jax.Array) -> jax.Array:
    """Every expert's output [N, E, D] (in `dtype`)."""
    e, w, d = self.cfg.num_experts, self.in_dim, self.emb_dim
    x_nw = x_nw.astype(self.dtype)
    if self.cfg.expert == ProjectionExpert.LINEAR:
      kernel_ewd = self._param("experts_kernel", _expert_init(), (EXPERTS, FEATURES, "embed"),
                               (e, w, d))
      return jnp.einsum("NW,EWD->NED", x_nw, kernel_ewd.astype(self.dtype))
    h = self.cfg.hidden_dim(d)
    in_ewh = self._param("experts_in_kernel", _expert_init(), (EXPERTS, FEATURES, "mlp"),
                         (e, w, h))
    in_eh = self._param("experts_in_bias", nn.initializers.zeros, (EXPERTS, "mlp"), (e, h))
    out_ehd = self._param("experts_out_kernel", _expert_init(), (EXPERTS, "mlp", "embed"),
                          (e, h, d))
    out_ed = self._param("experts_out_bias", nn.initializers.zeros, (EXPERTS, "embed"), (e, d))
    hidden_neh = jnp.einsum("NW,EWH->NEH", x_nw, in_ewh.astype(self.dtype))
    hidden_neh = nn.gelu(hidden_neh + in_eh.astype(self.dtype))
    out_ned = jnp.einsum("NEH,EHD->NED", hidden_neh, out_ehd.astype(self.dtype))
    return out_ned + out_ed.astype(self.dtype)

  @nn.compact
  def __call__(self, x: jax.Array, modality: Modality) -> Tuple[jax.Array, jax.Array]:
    if modality not in self.modalities:
      raise ValueError(f"universal projection: {modality.value!r} is not one of the modalities it "
                       f"serves, {[m.value for m in self.modalities]}")
    width = x.shape[-1]
    if width > self.in_dim:
      raise ValueError(f"universal projection: {modality.value} features are {width} wide, more "
                       f"than its input width {self.in_dim}")
    lead = x.shape[:-1]
    x_nw = x.reshape(-1, width)  # [..., w] -> [N, w]
    x_nw = jnp.pad(x_nw, ((0, 0), (0, self.in_dim - width)))  # -> [N, W]
    weights_ne = self._weights(x_nw, modality)
    out_nd = jnp.einsum("NE,NED->ND", weights_ne, self._experts(x_nw).astype(jnp.float32))
    weights = weights_ne.reshape(*lead, self.cfg.num_experts)
    self.sow("intermediates", f"router_weights_{modality.value}", weights)
    return out_nd.reshape(*lead, self.emb_dim), weights


def universal_projection(cfg: UnifiedIOConfig, widths: Mapping[Modality, int]
                         ) -> Optional[UniversalProjection]:
  """The network's one universal projection (None without `cfg.input_projection`); `widths`: the
  feature width each served modality projects (its embedder's `feature_width`)."""
  if cfg.input_projection is None:
    return None
  modalities = cfg.projected_modalities
  missing = [m.value for m in modalities if m not in widths]
  if missing:
    raise ValueError(f"universal projection: no feature width for {missing}")
  return UniversalProjection(cfg.input_projection, modalities,
                             max(widths[m] for m in modalities), cfg.trunk.emb_dim,
                             cfg.trunk.activation_dtype)
