"""The data contract: what the model reads and writes, derived from its config.

`DataConfig.from_model(cfg)` (also `UnifiedIOModel.data_config`) gives every size and modality
the data pipeline must produce for that model; `DataConfig.feature_specs(lengths)` gives every
model feature's name, shape and dtype for the task feature lengths. Both the feature converter
(`unified_io.data.converter`, tf) and `batch_spec` (jax, for init, eval_shape and shardings) are
built from it, so there is one contract. Nothing here is global: each binary, bench or test hands
the DataConfig of its model to the pipeline explicitly.

Sizes are (height, width); spectrograms are (time, mel), the model's audio-input layout. The
release's sizes (`t5x/examples/unified_io/config.py`): 384 px image inputs in 16 px patches,
256 px history frames, 256 x 128 spectrograms for audio inputs, histories and targets, 256 px
image targets; the tiny all-modality config has 128 px images and 128 x 64 spectrograms.

The feature contract: every feature the model reads, its shape and dtype, per modality.

The data pipeline (docs/data.md) produces exactly this: stage 1 (task preprocessors) writes raw
fields, stage 2 (`unified_io.data.preprocess.unified_preprocessor`) tokenises, normalises and
patchifies them into variable-length fields, and stage 3 (`unified_io.data.converter.
UnifiedIOFeatureConverter`) pads/trims those to the shapes below, flat as `inputs/text/tokens`
etc.; `nest_batch` (below) nests them as batch[side][modality][feature].

Names follow the release's batch layout. Lengths (the seqio task feature lengths):
  text_inputs / text_targets            L / T of the text parts
  image_input_samples (N)               sampled image patches (<= the ViT grid)
  audio_input_samples (N)               sampled spectrogram patches
  image_history_input_samples (N)       patches per history frame; num_frames (F) frames
  audio_history_input_samples (N)       patches per audio segment; num_frames (F) segments
  sensor_input_samples (N)              sensor chunks (<= length / patch), the first N in time

inputs
  text           tokens [B, L] int32 (PAD 0; first token the target's prefix `[Text] [S]` /
                 `[Image] [S]` / `[Audio] [S]` (or [R]/[X] when denoising), last real token EOS 1),
                 mask [B, L] int32, pos_ids [B, L] int32 (optional)
  image          input [B, N, 16*16*3] float32 (CLIP-normalised patches, (dh dw c)),
                 mask [B, N] int32 (1 = the patch overlaps the image), pos_ids [B, N] int32
                 (row-major index in the patch grid; sampled patches keep theirs)
  audio          input [B, N, 16*16] float32 (log-mel patches of the [time, mel] spectrogram,
                 normalised (x + 4.26) / 9.14), mask, pos_ids as image
  image_history  input [B, F, N, 16*16*3], mask [B, F, N], pos_ids [B, F, N]
  audio_history  input [B, F, N, 16*16], mask [B, F, N], pos_ids [B, F, N]
  sensor         input [B, N, patch*C] float32 (chunks of `patch` samples of the [T, C] signal,
                 (dt c)-flattened, raw units clipped to +-100), mask [B, N] int32 (1 = the chunk
                 holds signal; a shorter signal is zero-padded), pos_ids [B, N] int32 (= 0..N-1)
targets
  text           inputs [B, T] int32 ([BOS=0] + targets[:-1]), targets [B, T] (EOS-terminated),
                 mask [B, T], loss_mask [B, T] (optional, default mask)
  image          image [B, H, W, 3] float32 in [-1, 1] (or targets [B, T] = VQ codes + 2),
                 mask [B, T] (1 = the token's 8x8 cell overlaps the image), loss_mask [B, T],
                 task_mask [B, T] (optional: noised tokens)
  audio          audio [B, time, mel, 1] float32 log-mel spectrogram normalised with the AudioSet
                 mean/std (or targets), mask, loss_mask [B, T] (tokens in (time/8, mel/8) order),
                 task_mask (optional)
An absent modality is all zeros with masks 0 (the null-modality property: it changes nothing).
"""

import dataclasses
import difflib
from typing import Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from unified_io.config import UnifiedIOConfig
from unified_io.modalities import Modality

Size2 = Tuple[int, int]


def _check(ok: bool, field: str, message: str) -> None:
  if not ok:
    raise ValueError(f"DataConfig field `{field}`: {message}")


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
  sensor_length: int = 256  # time samples T of the sensor signal
  sensor_channels: int = 6
  sensor_patch_size: int = 16  # samples per chunk (token)
  # The modalities the model reads and writes; the converter emits exactly these. (Default: the
  # release's, which has no sensor.)
  input_modalities: Tuple[Modality, ...] = tuple(m for m in Modality if m.in_release)
  target_modalities: Tuple[Modality, ...] = (Modality.TEXT, Modality.IMAGE, Modality.AUDIO)

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
                 "text_targets_length", "sensor_length", "sensor_channels", "sensor_patch_size"):
      _check(getattr(self, name) > 0, name, "must be positive")
    _check(self.sensor_length % self.sensor_patch_size == 0, "sensor_length",
           f"{self.sensor_length} must be a multiple of sensor_patch_size {self.sensor_patch_size}")
    for name in ("input_modalities", "target_modalities"):
      values = tuple(Modality(m) for m in getattr(self, name))
      object.__setattr__(self, name, values)
    _check(Modality.TEXT in self.input_modalities, "input_modalities",
           "must contain text (every example has a prompt, possibly empty)")
    for m in self.target_modalities:
      _check(Modality(m).can_be_target, "target_modalities", f"{m} cannot be a target")

  # -- derived sizes --------------------------------------------------------------------------
  def grid(self, modality: Modality) -> Size2:
    """The patch grid of an input modality's (per-frame) image or spectrogram; (1, N) for the
    sensor's chunks."""
    if Modality(modality) == Modality.SENSOR:
      return 1, self.sensor_length // self.sensor_patch_size
    size, patch = {
        Modality.IMAGE: (self.image_input_size, self.image_patch_size),
        Modality.IMAGE_HISTORY: (self.image_history_size, self.image_patch_size),
        Modality.AUDIO: (self.audio_input_size, self.audio_patch_size),
        Modality.AUDIO_HISTORY: (self.audio_history_size, self.audio_patch_size)}[Modality(modality)]
    return size[0] // patch, size[1] // patch

  def num_patches(self, modality: Modality) -> int:
    h, w = self.grid(modality)
    return h * w

  def patch_dim(self, modality: Modality) -> int:
    """Values per flattened patch: p * p * 3 for images, p * p for spectrograms, patch * C for
    sensor chunks."""
    if Modality(modality) == Modality.SENSOR:
      return self.sensor_patch_size * self.sensor_channels
    if Modality(modality).is_visual:
      return self.image_patch_size ** 2 * 3
    return self.audio_patch_size ** 2

  def max_frames(self, modality: Modality) -> int:
    return {Modality.IMAGE_HISTORY: self.image_history_max_frames,
            Modality.AUDIO_HISTORY: self.audio_history_max_frames}[Modality(modality)]

  def num_target_tokens(self, modality: Modality) -> int:
    size, patch = {
        Modality.IMAGE: (self.image_target_size, self.image_target_patch_size),
        Modality.AUDIO: (self.audio_target_size, self.audio_target_patch_size)}[Modality(modality)]
    return (size[0] // patch) * (size[1] // patch)

  def target_size(self, modality: Modality) -> Tuple[int, int, int]:
    """The raw target a converted example holds: [H, W, 3] pixels or [time, mel, 1]."""
    if Modality(modality) == Modality.IMAGE:
      return tuple(self.image_target_size) + (3,)
    return tuple(self.audio_target_size) + (1,)

  @property
  def patch_inputs(self) -> Tuple[Modality, ...]:
    return tuple(m for m in self.input_modalities if m.has_patches)

  @property
  def has_history(self) -> bool:
    return any(m.is_history for m in self.input_modalities)

  # -- task feature lengths -------------------------------------------------------------------
  def default_lengths(self) -> Dict[str, int]:
    """Task feature lengths that keep everything: all patches, all frames, the text lengths."""
    lengths = {"text_inputs": self.text_inputs_length, "text_targets": self.text_targets_length}
    for m in self.patch_inputs:
      lengths[f"{m.value}_input_samples"] = self.num_patches(m)
    if self.has_history:
      lengths["num_frames"] = min(self.max_frames(m) for m in self.input_modalities
                                  if m.is_history)
    return lengths

  def required_lengths(self) -> Tuple[str, ...]:
    """The task feature lengths a pipeline for these modalities needs."""
    names = ["text_inputs"] + [f"{m.value}_input_samples" for m in self.patch_inputs]
    if self.has_history:
      names.append("num_frames")
    if Modality.TEXT in self.target_modalities:
      names.append("text_targets")
    return tuple(names)

  def check_lengths(self, lengths: Mapping[str, int]) -> None:
    """Raises ValueError, naming the length, for an unknown, missing or out-of-range length."""
    known = {"text_inputs", "text_targets", "num_frames"} | {
        f"{m.value}_input_samples" for m in Modality if m.has_patches}
    needed = ", ".join(self.required_lengths())
    for name in lengths:
      if name not in known:
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise ValueError(f"task feature length `{name}` is unknown ({hint}this model needs "
                         f"{needed}; known: {', '.join(sorted(known))})")
    for name in self.required_lengths():
      if lengths.get(name) is None:
        raise ValueError(f"task feature length `{name}` is missing: this model's modalities "
                         f"need {needed} (TASK_FEATURE_LENGTHS has "
                         f"{', '.join(lengths) or 'none'})")
      if lengths[name] <= 0:
        raise ValueError(f"task feature length `{name}` = {lengths[name]} must be positive")
    for m in self.patch_inputs:
      name = f"{m.value}_input_samples"
      if lengths[name] > self.num_patches(m):
        raise ValueError(f"task feature length `{name}` = {lengths[name]} exceeds the "
                         f"{m.value} ViT grid of {self.num_patches(m)} patches {self.grid(m)}")
    if self.has_history:
      most = min(self.max_frames(m) for m in self.input_modalities if m.is_history)
      if lengths["num_frames"] > most:
        raise ValueError(f"task feature length `num_frames` = {lengths['num_frames']} exceeds "
                         f"the resampler's max_frames {most}")

  # -- the model features ---------------------------------------------------------------------
  def feature_specs(self, lengths: Optional[Mapping[str, int]] = None, *,
                    task_masks: bool = False) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
    """{"inputs/text/tokens": (shape without batch, dtype), ...}: every model feature for these
    task feature lengths (missing ones take `default_lengths`); `task_masks` adds
    targets/{image,audio}/task_mask (the denoising objective's noised tokens)."""
    n = {**self.default_lengths(), **(lengths or {})}
    i32, f32 = np.dtype(np.int32), np.dtype(np.float32)
    specs = {}
    for m in self.input_modalities:
      if m == Modality.TEXT:
        for k in ("tokens", "mask", "pos_ids"):
          specs[f"inputs/text/{k}"] = ((n["text_inputs"],), i32)
        continue
      lead = (n["num_frames"],) if m.is_history else ()
      samples = n[f"{m.value}_input_samples"]
      specs[f"inputs/{m.value}/input"] = (lead + (samples, self.patch_dim(m)), f32)
      specs[f"inputs/{m.value}/mask"] = (lead + (samples,), i32)
      specs[f"inputs/{m.value}/pos_ids"] = (lead + (samples,), i32)
    for m in self.target_modalities:
      if m == Modality.TEXT:
        for k in ("inputs", "targets", "mask", "loss_mask"):
          specs[f"targets/text/{k}"] = ((n["text_targets"],), i32)
        continue
      specs[f"targets/{m.value}/{m.value}"] = (self.target_size(m), f32)
      for k in ("mask", "loss_mask") + (("task_mask",) if task_masks else ()):
        specs[f"targets/{m.value}/{k}"] = ((self.num_target_tokens(m),), i32)
    return specs

  # -- from a model ---------------------------------------------------------------------------
  @classmethod
  def from_model(cls, cfg: UnifiedIOConfig, **overrides) -> "DataConfig":
    """The sizes `cfg` reads and writes; components the config lacks keep the release sizes."""
    sizes = {"input_modalities": tuple(cfg.input_modalities),
             "target_modalities": tuple(cfg.target_modalities),
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
    if cfg.sensor is not None:
      sizes.update(sensor_length=cfg.sensor.length, sensor_channels=cfg.sensor.channels,
                   sensor_patch_size=cfg.sensor.patch)
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


# ------------------------------------------------------------------------------------------------
# Batches (jax side)
# ------------------------------------------------------------------------------------------------
Spec = Dict[str, Dict[str, Dict[str, jax.ShapeDtypeStruct]]]


def nest_batch(flat: Mapping[str, object]) -> Dict:
  """{"inputs/text/tokens": x, ...} -> {"inputs": {"text": {"tokens": x}}, ...}."""
  nested: Dict = {}
  for key, value in flat.items():
    node = nested
    parts = key.split("/")
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value
  return nested


def batch_spec(cfg: UnifiedIOConfig, batch_size: int,
               lengths: Optional[Mapping[str, int]] = None) -> Spec:
  """Shapes and dtypes of a batch for the config's modalities (the converter's output, batched)."""
  specs = DataConfig.from_model(cfg).feature_specs(lengths)
  return nest_batch({name: jax.ShapeDtypeStruct((batch_size,) + shape, jnp.dtype(dtype))
                     for name, (shape, dtype) in specs.items()})


def dummy_batch(cfg: UnifiedIOConfig, batch_size: int,
                lengths: Optional[Mapping[str, int]] = None):
  """A batch of the contract's shapes: every token valid, positions 0..N-1, zero pixels."""
  def fill(path, spec):
    name = path[-1].key
    if name == "pos_ids":
      return np.broadcast_to(np.arange(spec.shape[-1], dtype=np.int32), spec.shape).copy()
    if spec.dtype == jnp.float32:
      return np.zeros(spec.shape, np.float32)
    return np.ones(spec.shape, np.int32)
  return jax.tree_util.tree_map_with_path(fill, batch_spec(cfg, batch_size, lengths))
