"""Audio input: shared audio ViT features -> projection to the trunk + a modality vector; 2D RoPE.

Features: input [B, N, P] float (AudioSet-normalised spectrogram patches, P = patch_size^2, mono),
mask [B, N] int, pos_ids [B, N] int (row-major index in the audio ViT's grid; the ViT transposes it
for its own table, the RoPE rows do not).

The path is the image one (`ViTInputEmbedder`), as in the release; the RoPE scale is the image
ratio. With `UnifiedIOConfig.cnn_encoder` serving audio, its CNN reads the [time, mel] spectrogram
the patches rebuild, as the image's reads the picture.
"""

from unified_io.network.embedders.image import ViTInputEmbedder
from unified_io.modalities import Modality


class AudioInputEmbedder(ViTInputEmbedder):
  VIT = "audio_vit"
  MODALITY = Modality.AUDIO
