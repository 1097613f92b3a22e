"""The Model: owns the feature contract, the loss, and the jitted-friendly entry points.

Feature contract (text, the only modality so far; names follow the release's batch layout):
  inputs/text/tokens    [B, L] int32   token ids (PAD = 0)
  inputs/text/mask      [B, L] int32   1 = real token
  inputs/text/pos_ids   [B, L] int32   RoPE position of each token (optional, default 0..L-1)
  targets/text/inputs   [B, T] int32   decoder inputs = [BOS=0] + targets[:-1]
  targets/text/targets  [B, T] int32   ids to predict
  targets/text/mask     [B, T] int32   1 = real token
  targets/text/loss_mask[B, T] int32   1 = counts in the loss (optional, default mask)

Loss: per target modality, the token mean over loss_mask of cross-entropy + z_loss * logZ^2, and
the modalities summed (the original UIO2 `multi_modality_loss`, label smoothing 0).
"""

from typing import Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from unified_io.config import UnifiedIOConfig
from unified_io.modalities import Modality
from unified_io.network import TargetOutput, UnifiedIONetwork

# Per modality: {feature: length key}; every feature is int32 [B, lengths[length key]].
FEATURES = {
    ("inputs", Modality.TEXT): {"tokens": "text_inputs", "mask": "text_inputs",
                                "pos_ids": "text_inputs"},
    ("targets", Modality.TEXT): {"inputs": "text_targets", "targets": "text_targets",
                                 "mask": "text_targets", "loss_mask": "text_targets"},
}
DEFAULT_LENGTHS = {"text_inputs": 32, "text_targets": 32}


def modality_loss(logits_btv: jax.Array, targets_bt: jax.Array, loss_mask_bt: jax.Array,
                  z_loss: float) -> jax.Array:
  """Token-mean of (cross-entropy + z_loss * logZ^2) over loss_mask; logits in float32."""
  logits_btv = logits_btv.astype(jnp.float32)
  log_z_bt = jax.nn.logsumexp(logits_btv, axis=-1)
  target_logit_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None].astype(jnp.int32),
                                        axis=-1)[..., 0]
  token_loss_bt = log_z_bt - target_logit_bt + z_loss * jnp.square(log_z_bt)
  weights_bt = loss_mask_bt.astype(jnp.float32)
  return jnp.sum(token_loss_bt * weights_bt) / jnp.maximum(jnp.sum(weights_bt), 1.0)


class UnifiedIOModel:
  """Network + loss + the shapes of a batch. Holds no parameters."""

  def __init__(self, cfg: UnifiedIOConfig):
    self.cfg = cfg
    self.module = UnifiedIONetwork(cfg)

  # -- the feature contract -------------------------------------------------------------------
  def batch_spec(self, batch_size: int, lengths: Optional[Mapping[str, int]] = None
                 ) -> Dict[str, Dict[str, Dict[str, jax.ShapeDtypeStruct]]]:
    """Shapes and dtypes of a batch for these modalities (for init, eval_shape and shardings)."""
    lengths = {**DEFAULT_LENGTHS, **(lengths or {})}
    spec: Dict[str, Dict[str, Dict[str, jax.ShapeDtypeStruct]]] = {"inputs": {}, "targets": {}}
    for side, modalities in (("inputs", self.cfg.input_modalities),
                             ("targets", self.cfg.target_modalities)):
      for m in modalities:
        spec[side][m.value] = {name: jax.ShapeDtypeStruct((batch_size, lengths[key]), jnp.int32)
                               for name, key in FEATURES[(side, m)].items()}
    return spec

  def dummy_batch(self, batch_size: int, lengths: Optional[Mapping[str, int]] = None):
    """An all-valid batch of the contract's shapes (for initialisation and benchmarks)."""
    return jax.tree_util.tree_map(lambda s: np.ones(s.shape, s.dtype),
                                  self.batch_spec(batch_size, lengths))

  # -- parameters -----------------------------------------------------------------------------
  def init(self, rng: jax.Array, batch) -> Dict:
    """Boxed (logically partitioned) parameters; `flax.linen.meta.unbox` strips the boxes."""
    return self.module.init(rng, batch)["params"]

  # -- loss -----------------------------------------------------------------------------------
  def outputs(self, params, batch, dropout_rng: Optional[jax.Array] = None
              ) -> Dict[str, TargetOutput]:
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
    return self.module.apply({"params": params}, batch, deterministic=dropout_rng is None,
                             rngs=rngs)

  def loss_fn(self, params, batch, dropout_rng: Optional[jax.Array] = None
              ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """(total loss, {"loss/<modality>": loss}); dropout is on iff a dropout rng is given."""
    outputs = self.outputs(params, batch, dropout_rng)
    per_modality = {f"loss/{name}": modality_loss(o.logits, o.targets, o.loss_mask,
                                                  self.cfg.trunk.z_loss)
                    for name, o in outputs.items()}
    return sum(per_modality.values()), per_modality
