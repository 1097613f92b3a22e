"""The modalities the model reads and writes.

The enum order is the release's sequence order: encoder parts are concatenated text, image,
image_history, audio, audio_history, and decoder parts text, image, audio. Members the release does
not have come after its five (`in_release`), so every release path keeps its order: sensor (an
IMU-like 1-D signal read through a conv tokenizer and the shared image ViT). Code dispatches on
these members through registries, never on strings.
"""

import enum


class Modality(str, enum.Enum):
  TEXT = "text"
  IMAGE = "image"
  IMAGE_HISTORY = "image_history"
  AUDIO = "audio"
  AUDIO_HISTORY = "audio_history"
  SENSOR = "sensor"

  @property
  def is_history(self) -> bool:
    """A sequence of frames (video frames or audio segments) read through the resampler."""
    return self in (Modality.IMAGE_HISTORY, Modality.AUDIO_HISTORY)

  @property
  def is_visual(self) -> bool:
    """Pixels (RGB patches), as opposed to spectrograms or text."""
    return self in (Modality.IMAGE, Modality.IMAGE_HISTORY)

  @property
  def in_release(self) -> bool:
    """A modality of the released model (everything before sensor)."""
    return self != Modality.SENSOR

  @property
  def has_patches(self) -> bool:
    """Read as ViT patches (everything but text; sensor patches are chunks of the signal)."""
    return self != Modality.TEXT

  @property
  def can_be_target(self) -> bool:
    return self in (Modality.TEXT, Modality.IMAGE, Modality.AUDIO)

  @property
  def target_id(self) -> int:
    """The release's `modality_id` of a target part: decoder tokens attend only within one id."""
    return {Modality.TEXT: 0, Modality.IMAGE: 1, Modality.AUDIO: 2}[self]

  def order(self) -> int:
    return list(Modality).index(self)
