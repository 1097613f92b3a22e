"""Per-modality embedders, found through registries keyed by `Modality`.

An input embedder turns one modality's features into an `EncoderPart`; a target embedder turns one
target modality's features into a `TargetPart`. The network concatenates parts in enum order.
"""

from unified_io.encoders.parts import EncoderPart, TargetPart
from unified_io.encoders.text import TextInputEmbedder, TextTargetEmbedder
from unified_io.modalities import Modality

INPUT_EMBEDDERS = {Modality.TEXT: TextInputEmbedder}
TARGET_EMBEDDERS = {Modality.TEXT: TextTargetEmbedder}

__all__ = ["EncoderPart", "INPUT_EMBEDDERS", "TARGET_EMBEDDERS", "TargetPart"]
