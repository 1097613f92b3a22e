"""The Model: the network, the loss, and the data contract it owns (`unified_io.contract`).

Loss: per target modality, the token mean over loss_mask of cross-entropy + z_loss * logZ^2, and
the modalities summed (the original UIO2 `multi_modality_loss`, label smoothing 0).

Pair packing (`cfg.pack_pairs`) is a training layout: `loss_fn` packs, while `outputs`, scoring
and decoding run one example per row (`inference_module`) with the same parameters; an example's
numbers are the same either way (save tokens a packed row had no slot for).
"""

import dataclasses
from typing import Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from unified_io import contract
from unified_io.config import UnifiedIOConfig
from unified_io.network.encoder_decoder import TargetOutput, UnifiedIONetwork

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
    self.module = UnifiedIONetwork(cfg)  # the training layout (packs pairs if the config says so)
    # One example per row, for evaluation, scoring and decoding: packing off, same parameters.
    self.inference_module = self.module
    if cfg.pack_pairs:
      self.inference_module = UnifiedIONetwork(dataclasses.replace(
          cfg, pack_pairs=False, packed_encoder_length=None, packed_decoder_length=None))
    self._abstract_params = None  # (`abstract_params`, traced on first use)

  # -- the data contract (unified_io/contract.py) --------------------------------------------
  @property
  def data_config(self) -> contract.DataConfig:
    """The sizes and modalities this model reads and writes: what the data pipeline produces."""
    return contract.DataConfig.from_model(self.cfg)

  def feature_converter(self, **options):
    """The seqio feature converter to this model's batches (t5x: `FEATURE_CONVERTER_CLS`);
    `options` (e.g. `task_masks=True`) and gin bindings of `UnifiedIOFeatureConverter` apply."""
    # Imported here: the converter brings TensorFlow, which the network and loss never need.
    from unified_io.data.converter import UnifiedIOFeatureConverter  # pylint: disable=import-outside-toplevel
    converter = UnifiedIOFeatureConverter(data_config=self.data_config, **options)
    if converter.task_masks and not self.cfg.dynamic_masking:
      raise ValueError("UnifiedIOFeatureConverter.task_masks is on but make_config.dynamic_masking "
                       "is off: the model would ignore the denoising task masks; turn "
                       "dynamic_masking on (runs/pretrain_mod.gin does) or task_masks off")
    return converter

  def batch_spec(self, batch_size: int, lengths: Optional[Mapping[str, int]] = None):
    """Shapes and dtypes of a batch for this config (for init, eval_shape and shardings)."""
    return contract.batch_spec(self.cfg, batch_size, lengths)

  def dummy_batch(self, batch_size: int, lengths: Optional[Mapping[str, int]] = None):
    """A batch of the contract's shapes with every token valid (for init and benchmarks)."""
    return contract.dummy_batch(self.cfg, batch_size, lengths)

  # -- parameters -----------------------------------------------------------------------------
  def abstract_params(self) -> Dict:
    """`init`'s boxed parameters as `jax.ShapeDtypeStruct`s (shapes and logical axes, by
    `jax.eval_shape`: nothing is allocated or compiled). Traced once per model (a second
    ~2.5 s for the tiny all-modality one, in every run that checks its mesh and then sets up);
    each call returns its own tree."""
    if self._abstract_params is None:
      self._abstract_params = jax.eval_shape(self.init, jax.random.PRNGKey(0), self.batch_spec(1))
    return jax.tree_util.tree_map(lambda leaf: leaf, self._abstract_params)

  def init(self, rng: jax.Array, batch) -> Dict:
    """Boxed (logically partitioned) parameters; `flax.linen.meta.unbox` strips the boxes.
    (Made unpacked: the parameters do not depend on packing, and any batch size works.)"""
    return self.inference_module.init(rng, batch)["params"]

  # -- loss -----------------------------------------------------------------------------------
  def outputs(self, params, batch, dropout_rng: Optional[jax.Array] = None
              ) -> Dict[str, TargetOutput]:
    """Each example's outputs on its own row (evaluation, scoring): never packed."""
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
    return self.inference_module.apply({"params": params}, batch, rngs=rngs,
                                       deterministic=dropout_rng is None)

  def training_outputs(self, params, batch, dropout_rng: Optional[jax.Array] = None
                       ) -> Tuple[Dict[str, TargetOutput], Dict[str, jax.Array]]:
    """The training forward: (outputs, in the unpacked layout; with pair packing its statistics,
    `packing/*`, see unified_io.network.packing)."""
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
    kwargs = dict(deterministic=dropout_rng is None, rngs=rngs)
    if not self.cfg.pack_pairs:
      return self.module.apply({"params": params}, batch, **kwargs), {}
    outputs, state = self.module.apply({"params": params}, batch, mutable=["intermediates"],
                                       **kwargs)
    (stats,) = state["intermediates"]["packing"]
    return outputs, stats.as_metrics()

  def render(self, params, modality: str, tokens) -> jax.Array:
    """Target tokens of an image or audio target (codes + 2) -> pixels or spectrogram."""
    return self.module.apply({"params": params}, modality, tokens,
                             method=UnifiedIONetwork.render)

  def loss_fn(self, params, batch, dropout_rng: Optional[jax.Array] = None
              ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """(total loss, {"loss/<modality>": loss, and "packing/*" statistics when packing});
    dropout is on iff a dropout rng is given."""
    outputs, metrics = self.training_outputs(params, batch, dropout_rng)
    per_modality = {f"loss/{name}": modality_loss(o.logits, o.targets, o.loss_mask,
                                                  self.cfg.trunk.z_loss)
                    for name, o in outputs.items()}
    return sum(per_modality.values()), {**per_modality, **metrics}
