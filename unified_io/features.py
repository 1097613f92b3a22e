"""The feature contract: every feature the model reads, its shape and dtype, per modality.

The data pipeline (docs/data.md) produces exactly this: stage 1 (task preprocessors) writes raw
fields, stage 2 (`unified_io.data.preprocess.unified_preprocessor`) tokenises, normalises and
patchifies them into variable-length fields, and stage 3 (`unified_io.data.converter.
UnifiedIOFeatureConverter`) pads/trims those to the shapes below, flat as `inputs/text/tokens`
etc.; `unified_io.data.converter.nest_batch` nests them as batch[side][modality][feature].

Names follow the release's batch layout. Lengths (the seqio task feature lengths):
  text_inputs / text_targets            L / T of the text parts
  image_input_samples (N)               sampled image patches (<= the ViT grid)
  audio_input_samples (N)               sampled spectrogram patches
  image_history_input_samples (N)       patches per history frame; num_frames (F) frames
  audio_history_input_samples (N)       patches per audio segment; num_frames (F) segments

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

from typing import Dict, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from unified_io.config import UnifiedIOConfig
from unified_io.modalities import Modality

Spec = Dict[str, Dict[str, Dict[str, jax.ShapeDtypeStruct]]]


def default_lengths(cfg: UnifiedIOConfig) -> Dict[str, int]:
  """Full-size lengths for this config: every patch, every frame, 32 text tokens."""
  lengths = {"text_inputs": 32, "text_targets": 32}
  if cfg.image_vit is not None:
    h, w = cfg.image_vit.grid
    lengths["image_input_samples"] = h * w
    hh, hw = (s // cfg.image_vit.patch_size for s in cfg.image_history_input_size)
    lengths["image_history_input_samples"] = hh * hw
  if cfg.audio_vit is not None:
    h, w = cfg.audio_vit.grid
    lengths["audio_input_samples"] = h * w
    ah, aw = (s // cfg.audio_vit.patch_size for s in cfg.audio_history_input_size)
    lengths["audio_history_input_samples"] = ah * aw
  frames = [r.max_frames for r in (cfg.image_history, cfg.audio_history) if r is not None]
  if frames:
    lengths["num_frames"] = min(frames)
  return lengths


def batch_spec(cfg: UnifiedIOConfig, batch_size: int,
               lengths: Optional[Mapping[str, int]] = None) -> Spec:
  """Shapes and dtypes of a batch for the config's modalities."""
  n = {**default_lengths(cfg), **(lengths or {})}
  i32, f32 = jnp.int32, jnp.float32

  def s(shape, dtype=i32):
    return jax.ShapeDtypeStruct((batch_size,) + tuple(shape), dtype)

  def patches(samples, patch_dim, frames=()):
    return {"input": s(frames + (samples, patch_dim), f32), "mask": s(frames + (samples,)),
            "pos_ids": s(frames + (samples,))}

  inputs = {}
  for m in cfg.input_modalities:
    if m == Modality.TEXT:
      inputs[m.value] = {k: s((n["text_inputs"],)) for k in ("tokens", "mask", "pos_ids")}
    elif m in (Modality.IMAGE, Modality.AUDIO):
      vit = cfg.image_vit if m == Modality.IMAGE else cfg.audio_vit
      dim = vit.patch_dim * (3 if m == Modality.IMAGE else 1)
      inputs[m.value] = patches(n[f"{m.value}_input_samples"], dim)
    else:
      vit = cfg.image_vit if m == Modality.IMAGE_HISTORY else cfg.audio_vit
      dim = vit.patch_dim * (3 if m == Modality.IMAGE_HISTORY else 1)
      inputs[m.value] = patches(n[f"{m.value}_input_samples"], dim, (n["num_frames"],))

  targets = {}
  for m in cfg.target_modalities:
    if m == Modality.TEXT:
      targets[m.value] = {k: s((n["text_targets"],)) for k in ("inputs", "targets", "mask",
                                                                "loss_mask")}
      continue
    if m == Modality.IMAGE:
      vq = cfg.image_vqgan
      raw = {"image": s(tuple(vq.default_input_size) + (3,), f32)}
    else:
      vq = cfg.audio_vqgan
      mel, time = vq.default_input_size
      raw = {"audio": s((time, mel, 1), f32)}
    tokens = vq.grid[0] * vq.grid[1]
    targets[m.value] = {**raw, "mask": s((tokens,)), "loss_mask": s((tokens,))}
  return {"inputs": inputs, "targets": targets}


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
