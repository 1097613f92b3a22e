"""A seqio FeatureConverter from text-to-text task features to the model's text features.

Task features `inputs` and `targets` (token ids, EOS appended, 0 = PAD) become the flat model
features below; `nest_batch` turns a flat numpy batch into the nested dict the model takes.

  inputs/text/tokens, inputs/text/mask, inputs/text/pos_ids        [L] from `inputs`
  targets/text/inputs, targets/text/targets, targets/text/mask     [T] from `targets`

Decoder inputs are the targets shifted right with BOS = 0, as in the release. Packing is not
implemented here (pairs-per-row packing comes with the multimodal converter); asking for it fails.
"""

from typing import Dict, Mapping

import seqio
import tensorflow as tf

from unified_io.data.converter import nest_batch  # noqa: F401  (this module's batches nest the same way)

_SPEC = seqio.FeatureConverter.FeatureSpec


class TextToTextFeatureConverter(seqio.FeatureConverter):
  TASK_FEATURES = {"inputs": _SPEC(dtype=tf.int32), "targets": _SPEC(dtype=tf.int32)}
  MODEL_FEATURES = {name: _SPEC(dtype=tf.int32) for name in (
      "inputs/text/tokens", "inputs/text/mask", "inputs/text/pos_ids",
      "targets/text/inputs", "targets/text/targets", "targets/text/mask")}
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, pack: bool = False, **kwargs):
    if pack:
      raise ValueError("TextToTextFeatureConverter: pack=True is not supported; "
                       "use pack=False (each example is padded to the feature lengths)")
    super().__init__(pack=False, **kwargs)

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
                        ) -> tf.data.Dataset:
    ds = self._pack_or_pad(ds, task_feature_lengths)

    def convert(features):
      tokens, targets = features["inputs"], features["targets"]
      return {
          "inputs/text/tokens": tokens,
          "inputs/text/mask": tf.cast(tokens != 0, tf.int32),
          "inputs/text/pos_ids": tf.range(tf.shape(tokens)[0], dtype=tf.int32),
          "targets/text/inputs": seqio.utils.make_autoregressive_inputs(targets, bos_id=0),
          "targets/text/targets": targets,
          "targets/text/mask": tf.cast(targets != 0, tf.int32),
      }
    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Dict[str, int]:
    lengths = {}
    for name in self.MODEL_FEATURES:
      side = name.split("/")[0]
      lengths[name] = task_feature_lengths[side]
    return lengths
