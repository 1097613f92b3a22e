"""Every size the data pipeline needs, in one frozen, gin-configurable dataclass.

The defaults are the release's (`t5x/examples/unified_io/config.py`): 384 px image inputs in 16 px
patches, 256 px history frames, 256 x 128 (time x mel) spectrograms for audio inputs, histories and
targets, 256 px image targets. `DataConfig.from_model(cfg)` reads the sizes a model config implies
(the tiny all-modality config has 128 px images and 128 x 64 spectrograms), so the pipeline always
produces what that model reads. Sizes are (height, width); spectrograms are (time, mel), the
model's audio-input layout.
"""

import dataclasses
from typing import Optional, Tuple

import gin

from unified_io.config import UnifiedIOConfig
from unified_io.modalities import Modality

Size2 = Tuple[int, int]


def _check(ok: bool, field: str, message: str) -> None:
  if not ok:
    raise ValueError(f"DataConfig field `{field}`: {message}")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Sizes of every modality after stage 2 (see docs/data.md)."""

  image_input_size: Size2 = (384, 384)
  image_patch_size: int = 16
  image_history_size: Size2 = (256, 256)
  image_history_max_frames: int = 8
  audio_input_size: Size2 = (256, 128)  # (time frames, mel bins)
  audio_patch_size: int = 16
  audio_history_size: Size2 = (256, 128)
  audio_history_max_frames: int = 8
  image_target_size: Size2 = (256, 256)
  image_target_patch_size: int = 8  # one VQGAN token per 8 x 8 pixels
  audio_target_size: Size2 = (256, 128)  # (time, mel); the VQGAN reads it transposed
  audio_target_patch_size: int = 8
  text_inputs_length: int = 512
  text_targets_length: int = 512
  # The modalities the model reads and writes; the converter emits exactly these.
  input_modalities: Tuple[str, ...] = tuple(m.value for m in Modality)
  target_modalities: Tuple[str, ...] = ("text", "image", "audio")

  def __post_init__(self):
    for name, size, patch in (
        ("image_input_size", self.image_input_size, self.image_patch_size),
        ("image_history_size", self.image_history_size, self.image_patch_size),
        ("audio_input_size", self.audio_input_size, self.audio_patch_size),
        ("audio_history_size", self.audio_history_size, self.audio_patch_size),
        ("image_target_size", self.image_target_size, self.image_target_patch_size),
        ("audio_target_size", self.audio_target_size, self.audio_target_patch_size)):
      object.__setattr__(self, name, tuple(int(s) for s in size))
      _check(len(size) == 2 and all(s > 0 and s % patch == 0 for s in size), name,
             f"{tuple(size)} must be two positive multiples of the patch size {patch}")
    for name in ("image_history_max_frames", "audio_history_max_frames", "text_inputs_length",
                 "text_targets_length"):
      _check(getattr(self, name) > 0, name, "must be positive")
    for name in ("input_modalities", "target_modalities"):
      values = tuple(Modality(m).value for m in getattr(self, name))
      object.__setattr__(self, name, values)
    _check("text" in self.input_modalities, "input_modalities",
           "must contain text (every example has a prompt, possibly empty)")
    for m in self.target_modalities:
      _check(Modality(m).can_be_target, "target_modalities", f"{m} cannot be a target")

  # -- derived sizes --------------------------------------------------------------------------
  def grid(self, modality: str) -> Size2:
    """The patch grid of an input modality's (per-frame) image or spectrogram."""
    size, patch = {
        "image": (self.image_input_size, self.image_patch_size),
        "image_history": (self.image_history_size, self.image_patch_size),
        "audio": (self.audio_input_size, self.audio_patch_size),
        "audio_history": (self.audio_history_size, self.audio_patch_size)}[modality]
    return size[0] // patch, size[1] // patch

  def num_patches(self, modality: str) -> int:
    h, w = self.grid(modality)
    return h * w

  def patch_dim(self, modality: str) -> int:
    """Values per flattened patch: p * p * 3 for images, p * p for spectrograms."""
    if modality.startswith("image"):
      return self.image_patch_size ** 2 * 3
    return self.audio_patch_size ** 2

  def max_frames(self, modality: str) -> int:
    return {"image_history": self.image_history_max_frames,
            "audio_history": self.audio_history_max_frames}[modality]

  def num_target_tokens(self, modality: str) -> int:
    size, patch = {"image": (self.image_target_size, self.image_target_patch_size),
                   "audio": (self.audio_target_size, self.audio_target_patch_size)}[modality]
    return (size[0] // patch) * (size[1] // patch)

  def default_lengths(self) -> dict:
    """Task feature lengths that keep everything: all patches, all frames, the text defaults."""
    lengths = {"text_inputs": self.text_inputs_length, "text_targets": self.text_targets_length}
    for m in ("image", "audio", "image_history", "audio_history"):
      if m in self.input_modalities:
        lengths[f"{m}_input_samples"] = self.num_patches(m)
    frames = [self.max_frames(m) for m in ("image_history", "audio_history")
              if m in self.input_modalities]
    if frames:
      lengths["num_frames"] = min(frames)
    return lengths

  # -- from a model ---------------------------------------------------------------------------
  @classmethod
  def from_model(cls, cfg: UnifiedIOConfig, **overrides) -> "DataConfig":
    """The sizes `cfg` reads and writes; components the config lacks keep the release sizes."""
    sizes = {"input_modalities": tuple(m.value for m in cfg.input_modalities),
             "target_modalities": tuple(m.value for m in cfg.target_modalities),
             "image_history_size": tuple(cfg.image_history_input_size),
             "audio_history_size": tuple(cfg.audio_history_input_size)}
    if cfg.image_vit is not None:
      sizes.update(image_input_size=tuple(cfg.image_vit.default_input_size),
                   image_patch_size=cfg.image_vit.patch_size)
    if cfg.audio_vit is not None:
      sizes.update(audio_input_size=tuple(cfg.audio_vit.default_input_size),
                   audio_patch_size=cfg.audio_vit.patch_size)
    if cfg.image_history is not None:
      sizes["image_history_max_frames"] = cfg.image_history.max_frames
    if cfg.audio_history is not None:
      sizes["audio_history_max_frames"] = cfg.audio_history.max_frames
    if cfg.image_vqgan is not None:
      _check(cfg.image_vqgan.patch_size[0] == cfg.image_vqgan.patch_size[1],
             "image_target_patch_size", f"non-square VQGAN patch {cfg.image_vqgan.patch_size}")
      sizes.update(image_target_size=tuple(cfg.image_vqgan.default_input_size),
                   image_target_patch_size=cfg.image_vqgan.patch_size[0])
    if cfg.audio_vqgan is not None:
      mel, time = cfg.audio_vqgan.default_input_size  # the tokenizer's (mel, time) layout
      _check(cfg.audio_vqgan.patch_size[0] == cfg.audio_vqgan.patch_size[1],
             "audio_target_patch_size", f"non-square VQGAN patch {cfg.audio_vqgan.patch_size}")
      sizes.update(audio_target_size=(time, mel),
                   audio_target_patch_size=cfg.audio_vqgan.patch_size[0])
    sizes.update(overrides)
    return cls(**sizes)


@gin.configurable
def data_config_for_model(model_config: UnifiedIOConfig, **overrides) -> DataConfig:
  """Gin handle on `DataConfig.from_model`:
  `get_data_config.config = @data_config_for_model()`, `data_config_for_model.model_config =
  @make_config()`."""
  return DataConfig.from_model(model_config, **overrides)


_CURRENT: Optional[DataConfig] = None


@gin.configurable
def get_data_config(config: Optional[DataConfig] = None) -> DataConfig:
  """The DataConfig in effect: the gin-bound one, else one set with `set_data_config`, else the
  release sizes. Stage 2 and the converter read it when a dataset is built, after gin parsing."""
  if config is not None:
    return config
  return _CURRENT if _CURRENT is not None else DataConfig()


def set_data_config(config: Optional[DataConfig]) -> None:
  """Make `config` the pipeline's sizes (None: back to the release sizes), e.g. from a model:
  `set_data_config(DataConfig.from_model(model_cfg))`."""
  global _CURRENT
  _CURRENT = config
