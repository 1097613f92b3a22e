"""Stage 3: a seqio FeatureConverter from stage-2 fields to the model's static-shape batch.

Task feature lengths (the release's names) set every length:
  text_inputs (L), text_targets (T), image_input_samples, audio_input_samples,
  image_history_input_samples, audio_history_input_samples (N per frame), num_frames (F).
Only the lengths of the modalities the converter emits are required; a missing one is an error.

Model features are flat `inputs/<modality>/<feature>` and `targets/<modality>/<feature>`, exactly
the data contract's `DataConfig.feature_specs` (`unified_io.contract`; `contract.nest_batch` nests a numpy
batch for `model.loss_fn`):
  inputs/text/{tokens, mask, pos_ids}                      [L]
  inputs/{image,audio}/{input [N, P], mask [N], pos_ids [N]}
  inputs/{image,audio}_history/{input [F, N, P], mask [F, N], pos_ids [F, N]}
  targets/text/{inputs, targets, mask, loss_mask}          [T]; inputs = targets shifted, BOS 0
  targets/image/{image [H, W, 3], mask [Ti], loss_mask [Ti]}
  targets/audio/{audio [time, mel, 1], mask [Ta], loss_mask [Ta]}
With `task_masks=True` (for the denoising objective), targets/{image,audio}/task_mask [T] too.

Everything is padded with zeros (masks 0) or trimmed to the lengths; absent modalities come out
all zeros. What the converter cannot honour it refuses, naming the feature: pack=True (packing is
the model's pair packing, `unified_io.network.packing`, not seqio's), a patch length above the ViT grid, a
missing length or stage-2 field.
"""

from typing import Dict, Mapping, Tuple

import gin
import seqio
import tensorflow as tf

from unified_io.contract import DataConfig
from unified_io.data.preprocess import STAGE2_FIELDS
from unified_io.modalities import Modality


def _pad_to(x: tf.Tensor, shape) -> tf.Tensor:
  """Trim or zero-pad every axis of `x` to `shape` (static), keeping the leading entries."""
  x = x[tuple(slice(0, n) for n in shape)]
  pads = [[0, n - tf.shape(x)[i]] for i, n in enumerate(shape)]
  return tf.ensure_shape(tf.pad(x, pads), shape)


@gin.configurable(denylist=["data_config"])
class UnifiedIOFeatureConverter(seqio.FeatureConverter):
  """Stage-2 fields -> the model batch (module docstring). Made by the model
  (`UnifiedIOModel.feature_converter()`), which passes its data contract."""

  TASK_FEATURES = {}  # the real specs depend on the DataConfig: see `model_shapes`
  MODEL_FEATURES = {}
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, data_config: DataConfig, pack: bool = False,
               use_custom_packing_ops: bool = False, apply_length_check: bool = True,
               bos_id: int = 0, task_masks: bool = False):
    if not isinstance(data_config, DataConfig):
      raise TypeError("UnifiedIOFeatureConverter needs the model's DataConfig (use "
                      f"UnifiedIOModel.feature_converter()); got {type(data_config).__name__}")
    if pack or use_custom_packing_ops:
      raise ValueError(
          "UnifiedIOFeatureConverter: pack=True is not supported here. Packing is model-side "
          "pair packing (unified_io.network.packing: two examples per row with segment-aware masks); "
          "use pack=False")
    super().__init__(pack=False, apply_length_check=apply_length_check, bos_id=bos_id)
    self.data_config = data_config
    self.task_masks = task_masks

  # -- specs ----------------------------------------------------------------------------------
  def model_shapes(self, lengths: Mapping[str, int]) -> Dict[str, Tuple[Tuple[int, ...], tf.DType]]:
    """Every model feature's shape (without batch) and tf dtype for these task feature lengths:
    the data contract's `feature_specs`."""
    specs = self.data_config.feature_specs(lengths, task_masks=self.task_masks)
    return {name: (shape, tf.as_dtype(dtype)) for name, (shape, dtype) in specs.items()}

  @staticmethod
  def _check_stage2(spec) -> None:
    for name, (dtype, rank) in STAGE2_FIELDS.items():
      if name not in spec:
        raise ValueError(f"stage-2 field `{name}` is missing: does the task end with "
                         f"unified_io.data.preprocess.unified_preprocessor? got {sorted(spec)}")
      if spec[name].dtype != dtype or spec[name].shape.rank != rank:
        raise ValueError(f"stage-2 field `{name}` must be {dtype.name} of rank {rank}, got "
                         f"{spec[name].dtype.name} {spec[name].shape}")

  # -- seqio API ------------------------------------------------------------------------------
  def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
               ) -> tf.data.Dataset:
    # seqio's generic validation assumes one task feature per length; ours are lengths of
    # whole modalities, so the contract validates them, naming the feature, and we convert.
    self.data_config.check_lengths(task_feature_lengths)
    self._check_stage2(ds.element_spec)
    return self._convert_features(ds, task_feature_lengths)
  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
                        ) -> tf.data.Dataset:
    shapes = self.model_shapes(task_feature_lengths)

    def convert(features):
      out = {}
      tokens = _pad_to(features["text_inputs"], shapes["inputs/text/tokens"][0])
      out["inputs/text/tokens"] = tokens
      out["inputs/text/mask"] = tf.cast(tokens != 0, tf.int32)
      out["inputs/text/pos_ids"] = tf.range(tf.shape(tokens)[0], dtype=tf.int32)
      for key, (shape, _) in shapes.items():
        side, modality, name = key.split("/")
        modality = Modality(modality)
        if key in out:
          continue
        if side == "inputs":
          out[key] = _pad_to(features[f"{modality.value}_patch_{name}" if name != "input"
                                      else f"{modality.value}_patches"], shape)
        elif modality == Modality.TEXT:
          targets = _pad_to(features["text_targets"], shape)
          out["targets/text/targets"] = targets
          out["targets/text/inputs"] = seqio.utils.make_autoregressive_inputs(
              targets, bos_id=self.bos_id)
          out["targets/text/mask"] = tf.cast(targets != 0, tf.int32)
          out["targets/text/loss_mask"] = out["targets/text/mask"]
        elif name == modality.value:  # the raw target: targets/image/image, targets/audio/audio
          out[key] = _pad_to(features[f"{modality.value}_target"], shape)
        else:
          out[key] = _pad_to(features[f"{modality.value}_target_{name}"], shape)
      return out

    return ds.map(tf.autograph.experimental.do_not_convert(convert),
                  num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Dict[str, int]:
    """The first (sequence) dimension of every model feature."""
    self.data_config.check_lengths(task_feature_lengths)
    return {k: shape[0] for k, (shape, _) in self.model_shapes(task_feature_lengths).items()}
