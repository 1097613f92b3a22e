"""Stage 3: a seqio FeatureConverter from stage-2 fields to the model's static-shape batch.

Task feature lengths (the release's names) set every length:
  text_inputs (L), text_targets (T), image_input_samples, audio_input_samples,
  image_history_input_samples, audio_history_input_samples (N per frame), num_frames (F).
Only the lengths of the modalities the converter emits are required; a missing one is an error.

Model features are flat `inputs/<modality>/<feature>` and `targets/<modality>/<feature>`, exactly
`unified_io.features.batch_spec` for the DataConfig's modalities (`nest_batch` nests a numpy
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
the model's pair packing, `unified_io.packing`, not seqio's), a patch length above the ViT grid, a
missing length or stage-2 field.
"""

from typing import Dict, Mapping, Optional, Tuple

import gin
import numpy as np
import seqio
import tensorflow as tf

from unified_io.contract import DataConfig, get_data_config
from unified_io.data.preprocess import STAGE2_FIELDS

_SPEC = seqio.FeatureConverter.FeatureSpec
_PATCH_INPUTS = ("image", "audio", "image_history", "audio_history")


def nest_batch(flat: Mapping[str, np.ndarray]) -> Dict:
  """{"inputs/text/tokens": x, ...} -> {"inputs": {"text": {"tokens": x}}, ...}."""
  nested: Dict = {}
  for key, value in flat.items():
    node = nested
    parts = key.split("/")
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value
  return nested


def _pad_to(x: tf.Tensor, shape) -> tf.Tensor:
  """Trim or zero-pad every axis of `x` to `shape` (static), keeping the leading entries."""
  x = x[tuple(slice(0, n) for n in shape)]
  pads = [[0, n - tf.shape(x)[i]] for i, n in enumerate(shape)]
  return tf.ensure_shape(tf.pad(x, pads), shape)


@gin.configurable
class UnifiedIOFeatureConverter(seqio.FeatureConverter):
  """Stage-2 fields -> the model batch (module docstring)."""

  TASK_FEATURES = {}  # the real specs depend on the DataConfig: see `task_features`
  MODEL_FEATURES = {}
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, pack: bool = False, use_custom_packing_ops: bool = False,
               apply_length_check: bool = True, bos_id: int = 0,
               data_config: Optional[DataConfig] = None, task_masks: bool = False):
    if pack or use_custom_packing_ops:
      raise ValueError(
          "UnifiedIOFeatureConverter: pack=True is not supported here. Packing is model-side "
          "pair packing (unified_io.packing: two examples per row with segment-aware masks); "
          "use pack=False")
    super().__init__(pack=False, apply_length_check=apply_length_check, bos_id=bos_id)
    self._data_config = data_config
    self.task_masks = task_masks

  @property
  def data_config(self) -> DataConfig:
    return self._data_config or get_data_config()

  # -- specs ----------------------------------------------------------------------------------
  def required_lengths(self) -> Tuple[str, ...]:
    cfg = self.data_config
    names = ["text_inputs"]
    names += [f"{m}_input_samples" for m in _PATCH_INPUTS if m in cfg.input_modalities]
    if any(m.endswith("history") for m in cfg.input_modalities):
      names.append("num_frames")
    if "text" in cfg.target_modalities:
      names.append("text_targets")
    return tuple(names)

  def model_shapes(self, lengths: Mapping[str, int]) -> Dict[str, Tuple[Tuple[int, ...], tf.DType]]:
    """Every model feature's shape (without batch) and dtype for these task feature lengths."""
    cfg, i32, f32 = self.data_config, tf.int32, tf.float32
    shapes = {}
    length = lengths["text_inputs"]
    for k in ("tokens", "mask", "pos_ids"):
      shapes[f"inputs/text/{k}"] = ((length,), i32)
    for m in _PATCH_INPUTS:
      if m not in cfg.input_modalities:
        continue
      lead = (lengths["num_frames"],) if m.endswith("history") else ()
      n = lengths[f"{m}_input_samples"]
      shapes[f"inputs/{m}/input"] = (lead + (n, cfg.patch_dim(m)), f32)
      shapes[f"inputs/{m}/mask"] = (lead + (n,), i32)
      shapes[f"inputs/{m}/pos_ids"] = (lead + (n,), i32)
    if "text" in cfg.target_modalities:
      for k in ("inputs", "targets", "mask", "loss_mask"):
        shapes[f"targets/text/{k}"] = ((lengths["text_targets"],), i32)
    for m, raw, size, channels in (("image", "image", cfg.image_target_size, 3),
                                   ("audio", "audio", cfg.audio_target_size, 1)):
      if m not in cfg.target_modalities:
        continue
      shapes[f"targets/{m}/{raw}"] = (tuple(size) + (channels,), f32)
      keys = ("mask", "loss_mask") + (("task_mask",) if self.task_masks else ())
      for k in keys:
        shapes[f"targets/{m}/{k}"] = ((cfg.num_target_tokens(m),), i32)
    return shapes

  def _check_lengths(self, lengths: Mapping[str, int]) -> None:
    cfg = self.data_config
    known = {"text_inputs", "text_targets", "num_frames"} | {
        f"{m}_input_samples" for m in _PATCH_INPUTS}
    for name in lengths:
      if name not in known:
        raise ValueError(f"task feature length `{name}` is unknown; known: {sorted(known)}")
    for name in self.required_lengths():
      if lengths.get(name) is None:
        raise ValueError(f"task feature length `{name}` is missing (required for the "
                         f"DataConfig's modalities); got {dict(lengths)}")
      if lengths[name] <= 0:
        raise ValueError(f"task feature length `{name}` = {lengths[name]} must be positive")
    for m in _PATCH_INPUTS:
      name = f"{m}_input_samples"
      if m in cfg.input_modalities and lengths[name] > cfg.num_patches(m):
        raise ValueError(f"task feature length `{name}` = {lengths[name]} exceeds the {m} ViT "
                         f"grid of {cfg.num_patches(m)} patches {cfg.grid(m)}")
    if "num_frames" in self.required_lengths():
      most = min(cfg.max_frames(m) for m in ("image_history", "audio_history")
                 if m in cfg.input_modalities)
      if lengths["num_frames"] > most:
        raise ValueError(f"task feature length `num_frames` = {lengths['num_frames']} exceeds "
                         f"the resampler's max_frames {most}")

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
    # whole modalities, so we validate here, naming the feature, and convert.
    self._check_lengths(task_feature_lengths)
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
        if key in out:
          continue
        if side == "inputs":
          out[key] = _pad_to(features[f"{modality}_patch_{name}" if name != "input"
                                      else f"{modality}_patches"], shape)
        elif modality == "text":
          targets = _pad_to(features["text_targets"], shape)
          out["targets/text/targets"] = targets
          out["targets/text/inputs"] = seqio.utils.make_autoregressive_inputs(
              targets, bos_id=self.bos_id)
          out["targets/text/mask"] = tf.cast(targets != 0, tf.int32)
          out["targets/text/loss_mask"] = out["targets/text/mask"]
        elif name in ("image", "audio"):
          out[key] = _pad_to(features[f"{modality}_target"], shape)
        else:
          out[key] = _pad_to(features[f"{modality}_target_{name}"], shape)
      return out

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Dict[str, int]:
    """The first (sequence) dimension of every model feature."""
    self._check_lengths(task_feature_lengths)
    return {k: shape[0] for k, (shape, _) in self.model_shapes(task_feature_lengths).items()}
