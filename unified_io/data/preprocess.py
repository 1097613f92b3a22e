"""Stage 2: the ONE unified preprocessor, raw fields -> tokenized, variable-length model fields.

The pipeline (`unified_io.data.pipeline`) runs `unified_preprocessor` on every task's stage-1
output. It reads the raw fields (docs/data.md) and writes the stage-2 fields below. Sizes come from
the `DataConfig` it is given (the model's data contract); lengths from the task feature lengths
(text_inputs, text_targets, <modality>_input_samples, num_frames); randomness from seqio's
per-example stateless seeds, so the same seed gives the same examples.

Stage-2 fields (N patches, P values per patch, F frames, T target tokens):
  text_inputs                  int32 [L]  [prefix] + prompt tokens + EOS. The prefix is the
                                          target modality's `[Text] [S]` / `[Image] [S]` /
                                          `[Audio] [S]` (denoising later swaps [S] for [R]/[X])
  text_targets                 int32 [T]  answer tokens + EOS; [0] when there is no text target
  image_patches                float32 [N, P]  CLIP-normalised patches, (dh dw c) inside a patch
  image_patch_mask             int32 [N]  1 = the patch overlaps the image (not padding)
  image_patch_pos_ids          int32 [N]  row-major index of the patch in the ViT grid
  audio_patches / _mask / _pos_ids          the same for the log-mel spectrogram (P = p*p)
  image_history_patches        float32 [F, N, P], image_history_patch_mask / _pos_ids [F, N]
  audio_history_patches / _mask / _pos_ids  the same per audio segment
  sensor_patches               float32 [N, patch*C]  the first N chunks of `patch` samples of the
                                          [T, C] signal, (dt c) inside a chunk
  sensor_patch_mask            int32 [N]  1 = the chunk holds signal (a shorter one is zero-padded)
  sensor_patch_pos_ids         int32 [N]  0..N-1, the chunk's place in time
  image_target                 float32 [H, W, 3] in [-1, 1] at the VQGAN size
  image_target_mask            int32 [T]  1 = the token's 8x8 cell overlaps the image
  image_target_loss_mask       int32 [T]  = mask (denoising may change it)
  image_target_task_mask       int32 [T]  zeros (1 = noised by denoising)
  audio_target                 float32 [time, mel, 1], AudioSet-normalised log-mel
  audio_target_mask / _loss_mask / _task_mask   int32 [T], tokens in (time/8, mel/8) order
  meta/<name>                  passed through untouched

An absent modality has a zero-length first axis (0 patches, 0 frames, a [0, 0, 3] image, ...):
cheap to shuffle and mix; the converter fills zeros with masks 0. Patch sampling keeps the
release's rule: with fewer samples than the grid, valid patches first in random order and their
grid index as position id; with the whole grid, patches in grid order.

Audio: a waveform's first 4.08 s (zero-padded when shorter) become the op's 256 x 128 (time x mel)
log-mel spectrogram and its validity mask (bins with zero mel power, i.e. padding and digital
silence, are invalid, as in the release). A model whose spectrogram size differs (the tiny configs
use 128 x 64) gets the spectrogram resized bilinearly to that size, and the mask by nearest
neighbour: the model then sees the same 4.08 s at a coarser time/frequency resolution. Inputs are
normalised with the release's ViT constants, targets with the AudioSet ones (as the tokenizer
expects).

Sensor: the raw `sensor_inputs` [T, C] keeps its units (m/s^2, rad/s); non-finite values become 0
and everything is clipped to +-SENSOR_CLIP. The DataConfig's `sensor_channels` channels and at most
`sensor_length` samples are required: another channel count or a longer signal is refused naming
`sensor_inputs` (when the shape is static, as the dataset is built; otherwise as the example is
read). Chunks are never sampled at random: the first N in time, pos_ids 0..N-1.
"""

import functools
from typing import Dict, Mapping, Optional, Tuple

import seqio
import tensorflow as tf

from unified_io.data import vocab as vocab_lib
from unified_io.contract import DataConfig
from unified_io.modalities import Modality

# Raw fields: name -> (allowed dtypes, rank, what it is). Checked when the dataset is built.
RAW_FIELDS = {
    "text_inputs": ((tf.string,), 0, "the prompt, a scalar string"),
    "text_targets": ((tf.string,), 0, "the text answer, a scalar string"),
    "image_inputs": ((tf.uint8, tf.float32), 3, "an image [h, w, 3]"),
    "image_input_masks": ((tf.bool, tf.float32, tf.int32), 2, "the valid region [H, W]"),
    "image_targets": ((tf.uint8, tf.float32), 3, "an image [h, w, 3]"),
    "image_target_masks": ((tf.bool, tf.float32, tf.int32), 2, "the valid region [H, W]"),
    "audio_inputs": ((tf.float32,), 1, "a 16 kHz waveform [n]"),
    "audio_targets": ((tf.float32,), 1, "a 16 kHz waveform [n]"),
    "image_history": ((tf.uint8, tf.float32), 4, "video frames [F, h, w, 3]"),
    "audio_history": ((tf.float32,), 2, "16 kHz audio segments [F, n]"),
    "sensor_inputs": ((tf.float32,), 2, "a sensor signal [T, C] (time, channels)"),
}
INPUT_FIELDS = ("image_inputs", "audio_inputs", "image_history", "audio_history", "sensor_inputs")
SENSOR_CLIP = 100.0  # +-10 g of acceleration in m/s^2, +-100 rad/s of rotation

# Stage-2 fields: name -> (dtype, rank). registry.py turns these into seqio output features.
PATCH_MODALITIES = tuple(m.value for m in Modality if m.has_patches)
STAGE2_FIELDS: Dict[str, Tuple[tf.DType, int]] = {"text_inputs": (tf.int32, 1),
                                                  "text_targets": (tf.int32, 1)}
for _m in PATCH_MODALITIES:
  _frames = 1 if Modality(_m).is_history else 0
  STAGE2_FIELDS.update({f"{_m}_patches": (tf.float32, 2 + _frames),
                        f"{_m}_patch_mask": (tf.int32, 1 + _frames),
                        f"{_m}_patch_pos_ids": (tf.int32, 1 + _frames)})
for _m, _rank in (("image", 3), ("audio", 3)):
  STAGE2_FIELDS[f"{_m}_target"] = (tf.float32, _rank)
  for _k in ("mask", "loss_mask", "task_mask"):
    STAGE2_FIELDS[f"{_m}_target_{_k}"] = (tf.int32, 1)

_SEEDS = {"image": 0, "audio": 1, "image_history": 2, "audio_history": 3}


# ------------------------------------------------------------------------------------------------
# The preprocessor
# ------------------------------------------------------------------------------------------------
def unified_preprocessor(dataset: tf.data.Dataset,
                         sequence_length: Optional[Mapping[str, int]],
                         output_features: Optional[Mapping[str, seqio.Feature]] = None, *,
                         data_config: DataConfig) -> tf.data.Dataset:
  """Raw fields -> stage-2 fields at `data_config`'s sizes (module docstring); the text
  vocabulary is `output_features["text_inputs"]`'s (default: the project's)."""
  if not isinstance(data_config, DataConfig):
    raise TypeError(f"unified_preprocessor needs a DataConfig, got {type(data_config).__name__}")
  cfg = data_config
  if output_features and "text_inputs" in output_features:
    vocab = output_features["text_inputs"].vocabulary
  else:
    vocab = vocab_lib.get_vocabulary()
  lengths = resolve_lengths(cfg, sequence_length)
  check_raw_fields(dataset.element_spec, cfg)
  # Not through autograph (here and at the project's other dataset maps): the map functions are
  # plain TF ops with Python control flow only on static values, so conversion changes nothing,
  # yet it re-parses the source of every function they call on each pipeline build (a tiny text
  # run's input set-up: 10.9 s with it, 4.3 s without; more for the image and audio paths).
  fn = tf.autograph.experimental.do_not_convert(
      functools.partial(_preprocess_example, cfg=cfg, vocab=vocab, lengths=lengths))
  return seqio.map_over_dataset(num_seeds=len(_SEEDS))(fn)(dataset)


def resolve_lengths(cfg: DataConfig, sequence_length: Optional[Mapping[str, int]]
                    ) -> Dict[str, Optional[int]]:
  """Text lengths (None = untruncated), patch samples and frames, checked against the grids."""
  given = dict(sequence_length or {})
  lengths = {"text_inputs": given.get("text_inputs"), "text_targets": given.get("text_targets"),
             "num_frames": given.get("num_frames")}
  for m in PATCH_MODALITIES:
    name, grid = f"{m}_input_samples", cfg.num_patches(m)
    samples = given.get(name) or grid
    if not 0 < samples <= grid:
      raise ValueError(f"sequence length `{name}` = {samples}: must be in [1, {grid}], the "
                       f"{m} patch grid {cfg.grid(m)} of the DataConfig")
    lengths[name] = samples
  for name in ("text_inputs", "text_targets"):
    if lengths[name] is not None and lengths[name] < 2:
      raise ValueError(f"sequence length `{name}` = {lengths[name]}: needs room for at least "
                       "one token and EOS")
  return lengths


def check_raw_fields(spec: Mapping[str, tf.TensorSpec], cfg: Optional[DataConfig] = None) -> None:
  """Trace-time check of the raw fields' names, dtypes and ranks (and, given the DataConfig, the
  sensor signal's static shape); errors name the field."""
  if "text_inputs" not in spec:
    raise ValueError(f"raw field `text_inputs` (tf.string []) is missing; got {sorted(spec)}")
  for name, s in spec.items():
    if name.startswith("meta/"):
      continue
    if name not in RAW_FIELDS:
      raise ValueError(f"unknown raw field `{name}`; known: {sorted(RAW_FIELDS)} and meta/<name>")
    if not isinstance(s, tf.TensorSpec):
      raise ValueError(f"raw field `{name}` must be a dense tensor, got {s}")
    dtypes, rank, what = RAW_FIELDS[name]
    if s.dtype not in dtypes or s.shape.rank != rank:
      raise ValueError(f"raw field `{name}` must be {what}: rank {rank}, dtype "
                       f"{'/'.join(d.name for d in dtypes)}; got {s.dtype.name} {s.shape}")
  for name in ("image_inputs", "image_targets", "image_history"):
    if name in spec and spec[name].shape[-1] not in (None, 3):
      raise ValueError(f"raw field `{name}` must have 3 channels, got shape {spec[name].shape}")
  for image, mask in (("image_inputs", "image_input_masks"),
                      ("image_targets", "image_target_masks")):
    if mask in spec and image not in spec:
      raise ValueError(f"raw field `{mask}` is given without `{image}`")
  if cfg is not None and "sensor_inputs" in spec:
    samples, channels = spec["sensor_inputs"].shape
    if channels is not None and channels != cfg.sensor_channels:
      raise ValueError(f"raw field `sensor_inputs` must have {cfg.sensor_channels} channels (the "
                       f"DataConfig's sensor_channels), got shape {spec['sensor_inputs'].shape}")
    if samples is not None and samples > cfg.sensor_length:
      raise ValueError(f"raw field `sensor_inputs` has {samples} samples, more than the "
                       f"DataConfig's sensor_length {cfg.sensor_length}")


def _preprocess_example(features, seeds, *, cfg: DataConfig, vocab, lengths) -> Dict:
  out = {k: v for k, v in features.items() if k.startswith("meta/")}
  out["text_inputs"] = _text_inputs(features, vocab, lengths["text_inputs"])
  out["text_targets"] = _text_targets(features, vocab, lengths["text_targets"])
  seed = {m: seeds[i] for m, i in _SEEDS.items()}
  frames = lengths["num_frames"]
  media = {"image": _image_input(features, cfg), "audio": _audio_input(features, cfg),
           "image_history": _image_history(features, cfg, frames),
           "audio_history": _audio_history(features, cfg, frames)}
  for modality, patches in media.items():
    out.update(_patch_fields(modality, patches, cfg, lengths, seed[modality]))
  out.update(_sensor_fields(features, cfg, lengths["sensor_input_samples"]))
  out.update(_image_target(features, cfg))
  out.update(_audio_target(features, cfg))
  return out


# ------------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------------
def target_prefix(features) -> str:
  """The prefix token name for the example's target modality (image > audio > text)."""
  if "image_targets" in features:
    return "[Image] [S]"
  if "audio_targets" in features:
    return "[Audio] [S]"
  return "[Text] [S]"


def _text_inputs(features, vocab, length: Optional[int]) -> tf.Tensor:
  ids = tf.cast(vocab.encode_tf(features["text_inputs"]), tf.int32)
  if length is not None:
    ids = ids[:length - 2]  # room for the prefix and EOS
  # A text answer needs something to answer; image/audio generation may have a null prompt (the
  # 10% classifier-free-guidance drop of prompts.maybe_null_prompt): the prefix still says what to
  # generate.
  if not any(name in features for name in INPUT_FIELDS) and target_prefix(features) == "[Text] [S]":
    check = tf.debugging.assert_positive(
        tf.size(ids), message="raw field `text_inputs` is empty and the example has no other "
                              "input (image_inputs, audio_inputs, image_history, audio_history)")
    with tf.control_dependencies([check]):
      ids = tf.identity(ids)
  prefix = vocab_lib.PREFIX_TOKENS[target_prefix(features)]
  return tf.concat([[prefix], ids, [vocab.eos_id]], axis=0)


def _text_targets(features, vocab, length: Optional[int]) -> tf.Tensor:
  if "text_targets" not in features:
    return tf.zeros([0], tf.int32)
  ids = tf.cast(vocab.encode_tf(features["text_targets"]), tf.int32)
  if length is not None:
    ids = ids[:length - 1]
  return tf.concat([ids, [vocab.eos_id]], axis=0)


# ------------------------------------------------------------------------------------------------
# Patches
# ------------------------------------------------------------------------------------------------
def patchify(image_fhwc: tf.Tensor, patch: int) -> tf.Tensor:
  """[..., H, W, C] -> [..., (H/p)*(W/p), p*p*C], grid row-major, (dh dw c) inside a patch."""
  shape = image_fhwc.shape
  h, w, c = shape[-3], shape[-2], shape[-1]
  lead = tf.shape(image_fhwc)[:-3]
  x = tf.reshape(image_fhwc, tf.concat([lead, [h // patch, patch, w // patch, patch, c]], 0))
  perm = list(range(len(shape) - 3))
  n = len(perm)
  x = tf.transpose(x, perm + [n, n + 2, n + 1, n + 3, n + 4])  # [..., gh, gw, dh, dw, C]
  return tf.reshape(x, tf.concat([lead, [(h // patch) * (w // patch), patch * patch * c]], 0))


def patch_validity(valid_fhw: tf.Tensor, patch: int) -> tf.Tensor:
  """Pixel mask [..., H, W] -> [..., N] bool: True where any pixel of the patch is valid."""
  cells = patchify(tf.cast(valid_fhw, tf.float32)[..., None], patch)
  return tf.reduce_max(cells, axis=-1) > 0


def sample_patches(patches_fnp: tf.Tensor, valid_fn: tf.Tensor, num: int, seed: tf.Tensor
                   ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """`num` patches per frame: valid ones first in random order (stateless), then padding.

  Returns (patches [F, num, P], mask int32 [F, num], pos_ids int32 [F, num]). With the whole grid
  the patches keep grid order (the release's eval behaviour).
  """
  n = patches_fnp.shape[-2]
  valid_fn = tf.cast(valid_fn, tf.int32)
  if num == n:
    pos_fn = tf.broadcast_to(tf.range(n, dtype=tf.int32), tf.shape(valid_fn))
    return patches_fnp, valid_fn, pos_fn
  noise_fn = tf.random.stateless_uniform(tf.shape(valid_fn), seed)
  key_fn = noise_fn + 2.0 * tf.cast(1 - valid_fn, tf.float32)  # invalid ones sort last
  pos_fn = tf.argsort(key_fn, axis=-1, stable=True)[..., :num]
  return (tf.gather(patches_fnp, pos_fn, batch_dims=1), tf.gather(valid_fn, pos_fn, batch_dims=1),
          tf.cast(pos_fn, tf.int32))


def _patch_fields(modality: str, frames, cfg: DataConfig, lengths, seed) -> Dict[str, tf.Tensor]:
  """(patches [F, N, P], valid [F, N]) or None -> the sampled stage-2 fields of one modality.

  Absent: zero patches ([0, P]; histories [0 frames, num, P]), so the converter fills masks 0.
  """
  history = Modality(modality).is_history
  num = lengths[f"{modality}_input_samples"]
  if frames is None:
    shape = [0, num] if history else [0]
    patches = tf.zeros(shape + [cfg.patch_dim(modality)], tf.float32)
    mask = pos = tf.zeros(shape, tf.int32)
  else:
    patches, mask, pos = sample_patches(*frames, num, seed)
    if not history:
      patches, mask, pos = patches[0], mask[0], pos[0]
  return {f"{modality}_patches": patches, f"{modality}_patch_mask": mask,
          f"{modality}_patch_pos_ids": pos}


def _sensor_fields(features, cfg: DataConfig, num: int) -> Dict[str, tf.Tensor]:
  """`sensor_inputs` [T, C] -> the first `num` chunks [num, patch*C], their mask and pos_ids."""
  if "sensor_inputs" not in features:
    return _patch_fields("sensor", None, cfg, {"sensor_input_samples": num}, None)
  signal_tc = features["sensor_inputs"]
  shape = tf.shape(signal_tc)
  checks = [tf.debugging.assert_equal(
                shape[1], cfg.sensor_channels,
                message=f"raw field `sensor_inputs` must have {cfg.sensor_channels} channels"),
            tf.debugging.assert_less_equal(
                shape[0], cfg.sensor_length,
                message=f"raw field `sensor_inputs` has more than {cfg.sensor_length} samples")]
  with tf.control_dependencies(checks):
    signal_tc = tf.where(tf.math.is_finite(signal_tc), signal_tc, 0.0)
  signal_tc = tf.clip_by_value(signal_tc, -SENSOR_CLIP, SENSOR_CLIP)
  patch, grid = cfg.sensor_patch_size, cfg.num_patches("sensor")
  signal_tc = tf.pad(signal_tc, [[0, cfg.sensor_length - shape[0]], [0, 0]])
  patches_np = tf.reshape(signal_tc, [grid, patch * cfg.sensor_channels])  # [T, C] -> [N, (dt c)]
  mask_n = tf.cast(tf.range(grid) * patch < shape[0], tf.int32)
  return {"sensor_patches": patches_np[:num], "sensor_patch_mask": mask_n[:num],
          "sensor_patch_pos_ids": tf.range(num, dtype=tf.int32)}


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------
def _image_ops():
  from unified_io.data.ops import image as image_ops  # helper-owned ops, imported when used
  return image_ops


def model_image(image: tf.Tensor, size) -> tf.Tensor:
  """A raw image (uint8, or float in [0, 1]; any size) as every model input and target is made:
  resized and padded to `size`, float32 [H, W, 3] in [0, 1]. The tokenizer trainer reads images
  through this too, so a tokenizer learns the pictures the model will ask it to encode."""
  return _to_model_image(image, None, size, "image")[0]


def _to_model_image(image, mask, size, field: str):
  """(image, optional mask) -> (float32 [.., H, W, 3] in [0, 1], valid [.., H, W] bool)."""
  ops = _image_ops()
  if mask is None:
    image01, valid, _ = ops.resize_and_pad(image, size)
    return image01, valid
  # The task resized + padded onto a canvas itself (geometry tasks: its location tokens are
  # fractions of that canvas), so the canvas may only be scaled to the model's size: the same
  # aspect ratio, which keeps every normalised coordinate where it was.
  for what, shape in ((field, image.shape[-3:-1]), (f"mask of `{field}`", mask.shape)):
    if shape.is_fully_defined() and shape[0] * size[1] != shape[1] * size[0]:
      raise ValueError(f"raw field `{field}` comes with a mask, so it and the mask must have the "
                       f"model's aspect ratio ({size[0]}x{size[1]}, the DataConfig size); {what} "
                       f"is {tuple(shape)}")
  image01 = tf.image.convert_image_dtype(image, tf.float32)
  valid = tf.cast(mask, tf.float32) > 0
  if tuple(image.shape[-3:-1]) != tuple(size):
    hw = tf.shape(image)[-3:-1]
    check = tf.debugging.assert_equal(
        hw[0] * size[1], hw[1] * size[0],
        message=f"raw field `{field}` comes with a mask, so it must have the model's aspect ratio")
    with tf.control_dependencies([check]):
      image01 = tf.clip_by_value(tf.image.resize(image01, size, antialias=True), 0.0, 1.0)
    valid = tf.image.resize(tf.cast(valid, tf.float32)[..., None], size,
                            method=tf.image.ResizeMethod.NEAREST_NEIGHBOR)[..., 0] > 0
  image01 = tf.ensure_shape(image01, list(size) + [3])
  return image01, tf.ensure_shape(valid, list(size))


def _image_input(features, cfg: DataConfig):
  if "image_inputs" not in features:
    return None
  image01, valid = _to_model_image(features["image_inputs"], features.get("image_input_masks"),
                                   cfg.image_input_size, "image_inputs")
  patches = patchify(_image_ops().normalize_clip(image01)[None], cfg.image_patch_size)
  return patches, patch_validity(valid[None], cfg.image_patch_size)


def _image_history(features, cfg: DataConfig, num_frames: Optional[int]):
  if "image_history" not in features:
    return None
  frames = features["image_history"][:num_frames or cfg.image_history_max_frames]
  frames01, valid = _to_model_image(frames, None, cfg.image_history_size, "image_history")
  valid = tf.broadcast_to(valid, tf.shape(frames01)[:-1])
  patches = patchify(_image_ops().normalize_clip(frames01), cfg.image_patch_size)
  return patches, patch_validity(valid, cfg.image_patch_size)


def _image_target(features, cfg: DataConfig) -> Dict[str, tf.Tensor]:
  tokens = cfg.num_target_tokens("image")
  if "image_targets" not in features:
    return _absent_target("image", 3)
  image01, valid = _to_model_image(features["image_targets"], features.get("image_target_masks"),
                                   cfg.image_target_size, "image_targets")
  mask = tf.cast(patch_validity(valid, cfg.image_target_patch_size), tf.int32)
  mask = tf.ensure_shape(mask, [tokens])
  return {"image_target": image01 * 2.0 - 1.0, "image_target_mask": mask,
          "image_target_loss_mask": mask, "image_target_task_mask": tf.zeros([tokens], tf.int32)}


def _absent_target(modality: str, channels: int) -> Dict[str, tf.Tensor]:
  empty = tf.zeros([0], tf.int32)
  return {f"{modality}_target": tf.zeros([0, 0, channels], tf.float32),
          f"{modality}_target_mask": empty, f"{modality}_target_loss_mask": empty,
          f"{modality}_target_task_mask": empty}


# ------------------------------------------------------------------------------------------------
# Audio
# ------------------------------------------------------------------------------------------------
def _audio_ops():
  from unified_io.data.ops import audio as audio_ops  # helper-owned ops, imported when used
  return audio_ops


def spectrogram(waveform_n: tf.Tensor, size: Tuple[int, int]) -> Tuple[tf.Tensor, tf.Tensor]:
  """The first 4.08 s of a 16 kHz waveform -> (log-mel [time, mel] at `size`, valid [time, mel]).

  The op zero-pads shorter audio; `valid` is its mask (False where the mel power is exactly 0:
  padding and digital silence, as the release). Other sizes: bilinear / nearest resize.
  """
  spec, valid = _audio_ops().log_mel_spectrogram_and_mask(waveform_n)
  if tuple(spec.shape) != tuple(size):
    spec = tf.image.resize(spec[..., None], size, method="bilinear")[..., 0]
    valid = tf.image.resize(tf.cast(valid, tf.float32)[..., None], size, method="nearest")[..., 0]
  return tf.ensure_shape(spec, list(size)), tf.ensure_shape(tf.cast(valid, tf.bool), list(size))


def _spectrogram_patches(waves_fn, size, patch):
  """[F, n] waveforms -> (ViT-normalised patches [F, N, P], valid [F, N])."""
  ops = _audio_ops()
  specs, valid = tf.map_fn(lambda w: spectrogram(w, size), waves_fn,
                           fn_output_signature=(tf.float32, tf.bool))
  specs = ops.normalize_spectrogram(specs, ops.AUDIO_VIT_MEAN, ops.AUDIO_VIT_STD)
  return patchify(specs[..., None], patch), patch_validity(valid, patch)


def _audio_input(features, cfg: DataConfig):
  if "audio_inputs" not in features:
    return None
  return _spectrogram_patches(features["audio_inputs"][None], cfg.audio_input_size,
                              cfg.audio_patch_size)


def _audio_history(features, cfg: DataConfig, num_frames: Optional[int]):
  if "audio_history" not in features:
    return None
  waves = features["audio_history"][:num_frames or cfg.audio_history_max_frames]
  return _spectrogram_patches(waves, cfg.audio_history_size, cfg.audio_patch_size)


def _audio_target(features, cfg: DataConfig) -> Dict[str, tf.Tensor]:
  if "audio_targets" not in features:
    return _absent_target("audio", 1)
  spec, valid = spectrogram(features["audio_targets"], cfg.audio_target_size)
  spec = _audio_ops().normalize_spectrogram(spec)  # AudioSet statistics, as the tokenizer expects
  # Tokens run (time/p, mel/p) row-major: the patch grid of the [time, mel] layout.
  mask = tf.cast(patch_validity(valid, cfg.audio_target_patch_size), tf.int32)
  tokens = cfg.num_target_tokens("audio")
  return {"audio_target": spec[..., None], "audio_target_mask": mask,
          "audio_target_loss_mask": mask, "audio_target_task_mask": tf.zeros([tokens], tf.int32)}
