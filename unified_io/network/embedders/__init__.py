"""Per-modality embedders, found through registries keyed by `Modality`.

An input embedder turns one modality's features into an `EncoderPart`; a target embedder turns one
target modality's features into a `TargetPart`. The network concatenates parts in enum order.

Every embedder class is built as `cls(cfg: UnifiedIOConfig, token_embedder=..., vit=...)` and
called as `embedder(features, deterministic)`. Its class attributes say what it shares with
others: `TOKENS` (the `Modality` whose token table it embeds with, or None) and `VIT` (the name of
the shared ViT it runs, a key of `VITS`, or None). With `UnifiedIOConfig.cnn_encoder` serving its
modality, an embedder builds its own CNN (`cnn.py`) in place of the ViT it is given, and reads the
ViT's config only for the patch size, grid and feature width.
"""

from unified_io.network.embedders.audio import AudioInputEmbedder
from unified_io.network.embedders.history import AudioHistoryEmbedder, ImageHistoryEmbedder
from unified_io.network.embedders.image import ImageInputEmbedder
from unified_io.network.embedders.parts import EncoderPart, TargetPart
from unified_io.network.embedders.sensor import SensorInputEmbedder
from unified_io.network.embedders.text import TextInputEmbedder, TextTargetEmbedder
from unified_io.network.embedders.vit import AudioViT, ImageViT
from unified_io.network.embedders.vq_targets import AudioTargetEmbedder, ImageTargetEmbedder
from unified_io.modalities import Modality

# Shared ViTs by the UnifiedIOConfig field that configures them.
VITS = {"image_vit": ImageViT, "audio_vit": AudioViT}
INPUT_EMBEDDERS = {Modality.TEXT: TextInputEmbedder,
                   Modality.IMAGE: ImageInputEmbedder,
                   Modality.AUDIO: AudioInputEmbedder,
                   Modality.IMAGE_HISTORY: ImageHistoryEmbedder,
                   Modality.AUDIO_HISTORY: AudioHistoryEmbedder,
                   Modality.SENSOR: SensorInputEmbedder}
TARGET_EMBEDDERS = {Modality.TEXT: TextTargetEmbedder,
                    Modality.IMAGE: ImageTargetEmbedder,
                    Modality.AUDIO: AudioTargetEmbedder}

__all__ = ["EncoderPart", "INPUT_EMBEDDERS", "TARGET_EMBEDDERS", "TargetPart", "VITS"]
