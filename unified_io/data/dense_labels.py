"""Dense labels as pictures: how depth, surface normals, segmentation and edges become image
targets (drawn through the VQ tokenizer like any image) and how generated pixels become labels again.

UIO2 writes every dense prediction as an RGB image; these are the encodings it and 4M use:

  label          encode (label -> uint8 RGB)                  decode (RGB in [0, 1] -> label)
  depth [H, W]   grey = depth / max_depth (clipped to [0, 1])  mean of the channels * max_depth
  (metres)       0 = no depth (invalid pixel)
  normals        RGB = (n + 1) / 2, n unit (x right, y up,      rgb * 2 - 1, normalised
  [H, W, 3]      z towards the camera); (0, 0, 0) = invalid
  segmentation   class c -> PALETTE[c]; IGNORE_CLASS -> black   the nearest palette colour
  [H, W] int
  edges [H, W]   white on black                                 mean of the channels > 0.5

Decoding works on any generated picture (the VQ decoder's output is never exactly a palette
colour), and on the preprocessed reference, so metrics compare both sides the same way.
"""

from typing import Optional

import numpy as np

DEFAULT_MAX_DEPTH = 10.0  # metres: NYUv2's range, the one UIO2 normalises by
IGNORE_CLASS = 255        # segmentation pixels no metric counts (drawn black)

# 20 well-separated colours (class 0 first); a class id >= len(PALETTE) cannot be drawn.
PALETTE = np.array([
    [128, 128, 128], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
    [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60],
    [250, 190, 212], [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200],
    [128, 0, 0], [170, 255, 195], [128, 128, 0], [255, 215, 180], [0, 0, 128],
], np.uint8)
MAX_CLASSES = len(PALETTE)


def _as_unit_rgb(image) -> np.ndarray:
  """uint8 [0, 255] or float [0, 1] RGB (or grey [H, W]) -> float32 [H, W, 3] in [0, 1]."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    image = image.astype(np.float32) / 255.0
  image = np.clip(image.astype(np.float32), 0.0, 1.0)
  if image.ndim == 2:
    image = np.repeat(image[:, :, None], 3, axis=2)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"dense labels: expected an RGB image [H, W, 3], got shape {image.shape}")
  return image


def encode_depth(depth_hw, max_depth: float = DEFAULT_MAX_DEPTH) -> np.ndarray:
  """Depth in metres [H, W] (0 or non-finite = invalid) -> uint8 grey RGB [H, W, 3]."""
  depth = np.nan_to_num(np.asarray(depth_hw, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
  grey = np.round(np.clip(depth / max_depth, 0.0, 1.0) * 255.0).astype(np.uint8)
  return np.repeat(grey[:, :, None], 3, axis=2)


def decode_depth(image, max_depth: float = DEFAULT_MAX_DEPTH) -> np.ndarray:
  """RGB [H, W, 3] -> depth in metres [H, W] (float32; 0 where the picture is black)."""
  return _as_unit_rgb(image).mean(axis=-1) * np.float32(max_depth)


def encode_normals(normals_hw3) -> np.ndarray:
  """Surface normals [H, W, 3] (any length; 0 = invalid) -> uint8 RGB [H, W, 3]."""
  n = np.asarray(normals_hw3, np.float32)
  length = np.linalg.norm(n, axis=-1, keepdims=True)
  valid = length > 1e-6
  unit = np.where(valid, n / np.maximum(length, 1e-6), 0.0)
  rgb = np.round((unit + 1.0) / 2.0 * 255.0).astype(np.uint8)
  return np.where(valid, rgb, 0).astype(np.uint8)


def decode_normals(image) -> np.ndarray:
  """RGB [H, W, 3] -> unit normals [H, W, 3] (float32; 0 where the picture is black)."""
  rgb = _as_unit_rgb(image)
  n = rgb * 2.0 - 1.0
  length = np.linalg.norm(n, axis=-1, keepdims=True)
  black = rgb.max(axis=-1, keepdims=True) < 1.0 / 255.0
  return np.where(black | (length < 1e-6), 0.0, n / np.maximum(length, 1e-6)).astype(np.float32)


def normals_valid(normals_hw3) -> np.ndarray:
  """bool [H, W]: pixels with a normal (decoded black pixels have none)."""
  return np.linalg.norm(np.asarray(normals_hw3, np.float32), axis=-1) > 0.5


def encode_segmentation(classes_hw, num_classes: Optional[int] = None) -> np.ndarray:
  """Class ids [H, W] (IGNORE_CLASS = unlabelled) -> uint8 RGB [H, W, 3] (palette colours)."""
  classes = np.asarray(classes_hw)
  limit = MAX_CLASSES if num_classes is None else num_classes
  if limit > MAX_CLASSES:
    raise ValueError(f"segmentation: {limit} classes, but the palette draws at most {MAX_CLASSES}")
  labelled = classes != IGNORE_CLASS
  bad = labelled & ((classes < 0) | (classes >= limit))
  if bad.any():
    raise ValueError(f"segmentation: class id {int(classes[bad][0])} is outside 0..{limit - 1} "
                     f"(and is not the ignore id {IGNORE_CLASS})")
  rgb = PALETTE[np.where(labelled, classes, 0).astype(np.int64)]
  return np.where(labelled[:, :, None], rgb, 0).astype(np.uint8)


def decode_segmentation(image, num_classes: int = MAX_CLASSES) -> np.ndarray:
  """RGB [H, W, 3] -> class ids [H, W] (int32): the nearest of the first `num_classes` palette
  colours; black (nearer black than any colour) -> IGNORE_CLASS."""
  rgb = _as_unit_rgb(image) * 255.0
  colours = np.concatenate([PALETTE[:num_classes].astype(np.float32),
                            np.zeros((1, 3), np.float32)])
  distance = ((rgb[:, :, None, :] - colours[None, None]) ** 2).sum(-1)
  nearest = distance.argmin(-1)
  return np.where(nearest == num_classes, IGNORE_CLASS, nearest).astype(np.int32)


def encode_edges(edges_hw) -> np.ndarray:
  """bool [H, W] -> uint8 RGB, white edges on black."""
  grey = np.asarray(edges_hw).astype(bool).astype(np.uint8) * 255
  return np.repeat(grey[:, :, None], 3, axis=2)


def decode_edges(image) -> np.ndarray:
  """RGB [H, W, 3] -> bool [H, W]."""
  return _as_unit_rgb(image).mean(axis=-1) > 0.5
