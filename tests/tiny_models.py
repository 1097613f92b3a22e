"""Model configs the tests share (the same as gin/models/tiny.gin and tiny_multimodal.gin)."""

from unified_io.modalities import Modality
from unified_io.presets import make_config

TINY_TEXT = make_config("tiny")
# Every input and target modality, with the tiny ViTs, resamplers and VQ tokenizers.
TINY_ALL_MODALITIES = make_config(
    "tiny", input_modalities=tuple(Modality),
    target_modalities=tuple(m for m in Modality if m.can_be_target), components="tiny")
