"""Image ops for task preprocessors: decode, resize-and-pad with a validity mask, box transforms.

Everything here is graph-safe, so it runs inside seqio preprocessors (tf.data maps).

Decoding. Every path that turns image bytes into pixels (JSONL manifests and the record-based
dataset tasks: VQAv2; uio2-predict --image; `decode_image` / `try_decode_image` in graphs) calls
`decode_image_np`, so training and prediction see the same pixels for the same file:
  * PIL decodes the bytes (JPEG, PNG, GIF: first frame, BMP, WebP, TIFF, ...); a file that is
    cut short or corrupt anywhere raises `ImageDecodeError` (bad input: corrupt_image);
  * the EXIF orientation tag (1-8) is applied, so a phone photo stands the way it was shot;
  * 16-bit grey (I;16, I) maps 0..65535 linearly onto 0..255 (v / 257, rounded), float grey (F)
    maps [0, 1]; 16-bit RGB(A) PNGs keep PIL's 8 bits per channel;
  * palette (P), 1-bit, grey (L), CMYK, YCbCr go through PIL's conversion to RGB;
  * transparency (RGBA, LA, PA, a palette or grey with a transparent index) is composited on
    WHITE: transparent pixels become white, half-transparent ones are blended (straight alpha).
    White because transparent images are mostly logos, drawings, icons and documents made to be
    seen on a white page: dark strokes on a transparent background vanish on black, and dropping
    alpha instead shows whatever colour the encoder left under transparent pixels (often black).
The result is uint8 [h, w, 3]. TFDS tasks (COCO, RefCOCO) keep the pixels TFDS decodes: their
boxes were annotated on the stored pixels (EXIF not applied), which rotating would misplace.

Geometry. `resize_and_pad` scales an image keeping its aspect ratio, optionally crops (train-time
augmentation), and pads to the model size. It returns the affine map it applied as an
`ImageTransform`: a point (y, x) in original pixels lands at `(y, x) * scale_2 + offset_2` in the
model image. Boxes (y1, x1, y2, x2) move with `transform_boxes` and come back, for evaluation,
with `untransform_boxes`, its exact inverse.

Facts kept from the release (`t5x/examples/unified_io/data/data_utils.py: resize_and_pad` and
`config.py`), so images look the way the released weights saw them:
  * the scaled size is `floor(side * scale)` with `scale = min(H / h, W / w)`, bilinear resize with
    antialiasing, values clipped to [0, 1];
  * padding is split evenly between the two sides (`PAD_ONE_SIDE = False` in the release;
    `pad_one_side=True` puts it all at the bottom/right instead), pad value 0;
  * augmentation: a random factor in [0.75, 1.3333] of the model size, per axis rounded down; the
    larger of the two per-axis scales with probability 0.5 (else the smaller), never shrinking the
    short side below 64 px; then a random crop of the model size out of the scaled image.
Differences: our random draws are stateless (a seed in, the same image out); the release also
picked a random resize kernel when training in graph mode, we always use bilinear; and our
transform uses the exact per-axis scale of the resized image (`scaled_side / side`) where the
release moved boxes with the unrounded scale (a difference below one pixel).
"""

import io
from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

# CLIP's pixel statistics, the release's IMAGE_VIT_MEAN / IMAGE_VIT_STD.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The square canvas that real-dataset tasks resize and pad to in stage 1 (the release's input
# size), so their location tokens are fixed before any model is chosen; stage 2 then resizes the
# canvas to the model's size, which leaves normalised box coordinates unchanged.
CANVAS_SIZE = (384, 384)
RANDOM_SCALE_MIN = 0.75
RANDOM_SCALE_MAX = 1.3333
RANDOM_SCALE_USE_MAX_RATE = 0.5  # the release's RANDOM_SCALE_RATIO
MIN_SCALED_SIDE = 64.0


class ImageTransform(NamedTuple):
  """resized (y, x) = original (y, x) * scale_2 + offset_2, in pixels (float32 tensors [2])."""
  scale_2: tf.Tensor
  offset_2: tf.Tensor


class ImageDecodeError(ValueError):
  """Bytes that are not a decodable image (corrupt, truncated, empty or an unknown format)."""


def _describe(encoded: bytes) -> str:
  head = encoded[:8]
  return f"{len(encoded)} bytes starting {head!r}"


def _composite_on_white(rgba_hw4: np.ndarray) -> np.ndarray:
  """uint8 RGBA -> uint8 RGB over a white background (straight, not premultiplied, alpha)."""
  alpha_hw1 = rgba_hw4[..., 3:].astype(np.float32) / 255.0
  rgb_hw3 = rgba_hw4[..., :3].astype(np.float32) * alpha_hw1 + 255.0 * (1.0 - alpha_hw1)
  return np.clip(np.round(rgb_hw3), 0, 255).astype(np.uint8)


def _gray_to_rgb(gray_hw: np.ndarray) -> np.ndarray:
  return np.repeat(gray_hw[..., None], 3, axis=-1)


def pil_to_rgb(image) -> np.ndarray:
  """A PIL image of any mode -> uint8 [h, w, 3] by the decoding rules of the module docstring."""
  mode = image.mode
  if mode.startswith("I;16") or mode == "I":  # 16-bit grey: full range 0..65535 -> 0..255
    values = np.asarray(image).astype(np.float64)
    return _gray_to_rgb(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8))
  if mode == "F":  # float grey: [0, 1] is black to white
    values = np.asarray(image).astype(np.float64)
    return _gray_to_rgb(np.clip(np.round(np.nan_to_num(values) * 255.0), 0, 255).astype(np.uint8))
  has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info
  if has_alpha:  # palette/grey/RGB with alpha or a transparent colour: composite on white
    return _composite_on_white(np.asarray(image.convert("RGBA"), np.uint8))
  return np.asarray(image.convert("RGB"), np.uint8)  # 1, L, P, CMYK, YCbCr, LAB, HSV, RGB


def _exif_upright(image):
  """The image as its EXIF orientation tag says to show it; unreadable EXIF metadata (the pixels
  decoded fine) leaves it as stored."""
  from PIL import ImageOps  # pylint: disable=import-outside-toplevel
  try:
    return ImageOps.exif_transpose(image)
  except (ValueError, TypeError, KeyError, OSError, SyntaxError):
    return image


def decode_image_np(data: bytes) -> np.ndarray:
  """Encoded image bytes -> uint8 [h, w, 3] by the module docstring's decoding rules.

  Raises ImageDecodeError (a ValueError) for bytes that are not a whole, decodable image.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel
  try:
    with Image.open(io.BytesIO(bytes(data))) as image:
      image.load()  # decodes everything now: a truncated file raises here
      array = pil_to_rgb(_exif_upright(image))
  except Exception as err:  # pylint: disable=broad-except  (PIL raises many kinds for bad bytes)
    raise ImageDecodeError(f"could not decode the image bytes (corrupt, truncated, empty or not "
                           f"an image format PIL reads): {_describe(bytes(data))}: "
                           f"{type(err).__name__}: {err}") from err
  if not array.size:
    raise ImageDecodeError(f"the image has no pixels: {_describe(bytes(data))}")
  return array


def load_image(path: str) -> np.ndarray:
  """An image file -> uint8 [h, w, 3] by `decode_image_np`; raises ImageDecodeError (or OSError
  for a file that cannot be read)."""
  with open(path, "rb") as f:
    return decode_image_np(f.read())


def _decode_or_flag(data):
  data = data.item() if isinstance(data, np.ndarray) else data  # numpy_function: a 0-d object array
  try:
    return decode_image_np(data), np.bool_(True)
  except ImageDecodeError:
    return np.zeros([1, 1, 3], np.uint8), np.bool_(False)


def try_decode_image(encoded: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Encoded image bytes (tf.string []) -> (uint8 [h, w, 3], ok: tf.bool), by `decode_image_np`.

  Never raises: corrupt or empty bytes give ok=False and a 1x1 black image, so a tf.data pipeline
  can filter and count them. The decoder runs in a `tf.numpy_function` marked stateless (it is a
  pure function of the bytes), so a tf.data iterator holding it can still save its state.
  """
  image, ok = tf.numpy_function(_decode_or_flag, [encoded], (tf.uint8, tf.bool), stateful=False)
  image = tf.ensure_shape(image, [None, None, 3])
  ok = tf.ensure_shape(ok, [])
  return image, ok


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
  """Encoded image bytes -> uint8 [h, w, 3]; corrupt bytes raise an error that says so.

  Eagerly this raises ValueError; inside a graph (tf.data) it fails an assertion with the same
  message instead of an anonymous decoder error deep in the pipeline.
  """
  if tf.executing_eagerly():
    try:
      return tf.constant(decode_image_np(bytes(tf.convert_to_tensor(encoded).numpy())))
    except ImageDecodeError as err:
      raise ValueError(f"decode_image: {err}") from err
  image, ok = try_decode_image(encoded)
  check = tf.debugging.Assert(ok, ["decode_image: could not decode the image bytes (corrupt, "
                                   "truncated, empty or not an image format PIL reads)"])
  with tf.control_dependencies([check]):
    return tf.identity(image)


def _random_scale(hw_f, size_f, seed):
  """The release's scale augmentation, stateless: (scale, crop offset yx in scaled pixels)."""
  seeds = tf.random.experimental.stateless_split(seed, 4)
  factor = tf.random.stateless_uniform([], seeds[0], RANDOM_SCALE_MIN, RANDOM_SCALE_MAX)
  per_axis = tf.floor(factor * size_f) / hw_f
  use_max = tf.random.stateless_uniform([], seeds[1]) < RANDOM_SCALE_USE_MAX_RATE
  scale = tf.where(use_max, tf.reduce_max(per_axis), tf.reduce_min(per_axis))
  scale = tf.maximum(scale, MIN_SCALED_SIDE / tf.reduce_min(hw_f))
  scaled_hw = tf.floor(hw_f * scale)
  slack = tf.maximum(scaled_hw - size_f, 0.0)
  fraction = tf.stack([tf.random.stateless_uniform([], seeds[2]),
                       tf.random.stateless_uniform([], seeds[3])])
  return scale, tf.floor(slack * fraction)


def resize_and_pad(image: tf.Tensor, size: Sequence[int], *, augment: bool = False,
                   seed: Optional[tf.Tensor] = None, pad_one_side: bool = False
                   ) -> Tuple[tf.Tensor, tf.Tensor, ImageTransform]:
  """Image [h, w, 3] (or frames [F, h, w, 3]) -> (float32 [H, W, 3] in [0, 1], valid [H, W], transform).

  uint8 images are scaled to [0, 1]; float images must already be in [0, 1]. `valid` is True on
  image pixels and False on padding. With `augment`, `seed` (a stateless seed, int32 [2]) drives
  the random scale and crop, so the same seed gives the same output.
  """
  height, width = int(size[0]), int(size[1])
  size_f = tf.constant([height, width], tf.float32)
  image = tf.convert_to_tensor(image)
  if image.shape.rank not in (3, 4):
    raise ValueError(f"resize_and_pad: image must be [h, w, 3] or [F, h, w, 3], got shape "
                     f"{image.shape}")
  image = tf.image.convert_image_dtype(image, tf.float32)
  hw = tf.shape(image)[-3:-1]
  hw_f = tf.cast(hw, tf.float32)

  if augment:
    if seed is None:
      raise ValueError("resize_and_pad: augment=True needs a stateless `seed` (int32 [2]) so the "
                       "augmentation is reproducible")
    scale, crop_2 = _random_scale(hw_f, size_f, tf.cast(seed, tf.int32))
  else:
    scale = tf.reduce_min(size_f / hw_f)
    crop_2 = tf.zeros([2], tf.float32)
  scaled_hw = tf.maximum(tf.cast(tf.floor(hw_f * scale), tf.int32), 1)

  image = tf.image.resize(image, scaled_hw, method=tf.image.ResizeMethod.BILINEAR, antialias=True)
  image = tf.clip_by_value(image, 0.0, 1.0)
  crop = tf.cast(crop_2, tf.int32)
  image = image[..., crop[0]:crop[0] + height, crop[1]:crop[1] + width, :]
  kept_hw = tf.shape(image)[-3:-1]

  if pad_one_side:
    pad_before = tf.zeros([2], tf.int32)
  else:
    pad_before = (tf.constant([height, width]) - kept_hw) // 2
  pad_after = tf.constant([height, width]) - kept_hw - pad_before
  spatial = tf.stack([pad_before, pad_after], axis=1)  # [2 (y, x), 2 (before, after)]
  lead = tf.zeros([image.shape.rank - 3, 2], tf.int32)
  image = tf.pad(image, tf.concat([lead, spatial, tf.zeros([1, 2], tf.int32)], 0))
  image = tf.ensure_shape(image, image.shape[:-3].concatenate([height, width, 3]))
  valid = tf.pad(tf.ones(kept_hw, tf.bool), spatial)
  valid = tf.ensure_shape(valid, [height, width])

  transform = ImageTransform(
      scale_2=tf.cast(scaled_hw, tf.float32) / hw_f,
      offset_2=tf.cast(pad_before, tf.float32) - crop_2)
  return image, valid, transform


def transform_boxes(boxes_n4: tf.Tensor, transform: ImageTransform, size: Sequence[int]
                    ) -> Tuple[tf.Tensor, tf.Tensor]:
  """Boxes (y1, x1, y2, x2) in original pixels -> model-image pixels clipped to it, and keep_n.

  keep_n is False for boxes left with no area (cropped away by augmentation, or degenerate);
  callers drop those with `tf.boolean_mask`. The boxes are returned in their original order.
  """
  boxes_n4 = tf.cast(tf.convert_to_tensor(boxes_n4), tf.float32)
  boxes_n4 = tf.reshape(boxes_n4, [-1, 4])
  scale_4 = tf.tile(transform.scale_2, [2])
  offset_4 = tf.tile(transform.offset_2, [2])
  moved_n4 = boxes_n4 * scale_4 + offset_4
  upper_4 = tf.constant([size[0], size[1], size[0], size[1]], tf.float32)
  clipped_n4 = tf.clip_by_value(moved_n4, 0.0, upper_4)
  keep_n = tf.logical_and(clipped_n4[:, 2] > clipped_n4[:, 0], clipped_n4[:, 3] > clipped_n4[:, 1])
  return clipped_n4, keep_n


def untransform_boxes(boxes_n4: tf.Tensor, transform: ImageTransform) -> tf.Tensor:
  """Boxes in model-image pixels -> original pixels (the inverse of `transform_boxes`' map)."""
  boxes_n4 = tf.reshape(tf.cast(tf.convert_to_tensor(boxes_n4), tf.float32), [-1, 4])
  scale_4 = tf.tile(tf.cast(transform.scale_2, tf.float32), [2])
  offset_4 = tf.tile(tf.cast(transform.offset_2, tf.float32), [2])
  return (boxes_n4 - offset_4) / scale_4


def normalize_clip(image01_hw3: tf.Tensor) -> tf.Tensor:
  """Float image in [0, 1] -> CLIP-normalised (per-channel mean 0, std 1 over CLIP's data)."""
  image01_hw3 = tf.convert_to_tensor(image01_hw3)
  mean = tf.constant(CLIP_MEAN, image01_hw3.dtype)
  std = tf.constant(CLIP_STD, image01_hw3.dtype)
  return (image01_hw3 - mean) / std


def denormalize_clip(image_hw3: tf.Tensor) -> tf.Tensor:
  """Inverse of `normalize_clip` (for looking at model inputs)."""
  image_hw3 = tf.convert_to_tensor(image_hw3)
  return image_hw3 * tf.constant(CLIP_STD, image_hw3.dtype) + tf.constant(CLIP_MEAN, image_hw3.dtype)


def transform_to_tensor(transform: ImageTransform) -> tf.Tensor:
  """[4] float32 (scale_y, scale_x, offset_y, offset_x), for a `meta/` field in the pipeline."""
  return tf.concat([transform.scale_2, transform.offset_2], 0)


def transform_from_tensor(packed_4) -> ImageTransform:
  """Inverse of `transform_to_tensor` (accepts numpy too)."""
  packed_4 = tf.cast(tf.convert_to_tensor(packed_4), tf.float32)
  return ImageTransform(scale_2=packed_4[:2], offset_2=packed_4[2:4])
