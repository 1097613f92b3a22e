"""Model configs the tests share (the same as gin/models/tiny.gin, tiny_multimodal.gin and
tiny_sensor.gin)."""

import numpy as np

from unified_io.modalities import Modality
from unified_io.presets import make_config

TINY_TEXT = make_config("tiny")
# Every input and target modality of the release, with the tiny ViTs, resamplers and VQ tokenizers.
TINY_ALL_MODALITIES = make_config(
    "tiny", input_modalities=tuple(m for m in Modality if m.in_release),
    target_modalities=tuple(m for m in Modality if m.can_be_target), components="tiny")
# Every input modality, the sensor too (its tiny SensorConfig: 256 samples x 6 channels, 16 tokens).
TINY_SENSOR = make_config(
    "tiny", input_modalities=tuple(Modality),
    target_modalities=tuple(m for m in Modality if m.can_be_target), components="tiny")


def random_tokens(batch, seed: int = 0, vocab: int = 256, low: int = 1):
  """`batch` (a model's dummy_batch) with every token / input / target id array drawn from
  [low, vocab), in place; returned for chaining."""
  rng = np.random.default_rng(seed)
  for side in batch.values():
    for features in side.values():
      for name in ("tokens", "inputs", "targets"):
        if name in features:
          features[name] = rng.integers(low, vocab, features[name].shape).astype(np.int32)
  return batch
