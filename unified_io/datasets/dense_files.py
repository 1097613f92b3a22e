"""Dense label files (depth, surface normals, segmentation) -> the RGB image targets UIO2 learns.

A manifest line's `target_depth`, `target_normals` or `target_segmentation` file is read as stored
(`read_dense_file`) and drawn with `unified_io.data.dense_labels` (`dense_image`). What cannot be
drawn raises `DenseLabelError` with a bad_input reason; the manifest's loader turns it into a
skipped-and-counted example (or, in strict mode, an error naming the file).
"""

from typing import Optional

import numpy as np

from unified_io.data import bad_input
from unified_io.data import dense_labels

# bad_input reasons of dense label files (an unreadable one is corrupt_image)
DENSE_SIZE_MISMATCH = "dense_size_mismatch"  # the label's H x W is not the input image's
DEPTH_NEEDS_SCALE = "depth_needs_scale"      # integer depth, and neither task nor line says units
UNKNOWN_CLASS = "unknown_class"              # a segmentation id >= num_classes (and not 255)
BAD_DENSE_LABEL = "bad_dense_label"          # wrong shape, channels or dtype for its key


class DenseLabelError(Exception):
  """A dense label that cannot be drawn: `reason` is a bad_input reason, `detail` says why."""

  def __init__(self, reason: str, detail: str):
    super().__init__(detail)
    self.reason, self.detail = reason, detail


def read_dense_file(path: str) -> np.ndarray:
  """A dense label file's values as stored: .npy by `np.load`, anything else by PIL with no EXIF
  rotation nor colour or bit-depth conversion ("L" / "P" -> uint8 (palette indices for "P"),
  "I;16" -> uint16, "I" -> int32, "F" -> float32, "RGB" -> uint8 [H, W, 3])."""
  if path.lower().endswith(".npy"):
    return np.load(path, allow_pickle=False)
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(path) as image:
    return np.array(image)


def _dense_depth(array: np.ndarray, scale: Optional[float], max_depth: float) -> np.ndarray:
  if array.ndim != 2:
    raise DenseLabelError(BAD_DENSE_LABEL, f"depth must be one channel [H, W], got shape {array.shape}")
  if np.issubdtype(array.dtype, np.floating):  # metres already
    return dense_labels.encode_depth(array, max_depth)
  if not np.issubdtype(array.dtype, np.integer):
    raise DenseLabelError(BAD_DENSE_LABEL, f"depth must be float metres or integers, got {array.dtype}")
  if not scale:
    bits = {1: "8-bit", 2: "16-bit"}.get(array.dtype.itemsize, "integer")
    raise DenseLabelError(DEPTH_NEEDS_SCALE, f"{bits} depth needs depth_scale")
  return dense_labels.encode_depth(array.astype(np.float64) / scale, max_depth)


def _dense_normals(array: np.ndarray) -> np.ndarray:
  if array.ndim != 3 or array.shape[-1] != 3:
    raise DenseLabelError(BAD_DENSE_LABEL, f"normals must be [H, W, 3], got shape {array.shape}")
  if array.dtype == np.uint8:  # a picture, (n + 1) / 2 * 255 with black = invalid
    return dense_labels.encode_normals(dense_labels.decode_normals(array))
  if not np.issubdtype(array.dtype, np.floating):
    raise DenseLabelError(BAD_DENSE_LABEL, f"normals must be float vectors or an RGB picture, got "
                    f"{array.dtype}")
  return dense_labels.encode_normals(array)


def _dense_segmentation(array: np.ndarray, num_classes: Optional[int]) -> np.ndarray:
  if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
    raise DenseLabelError(BAD_DENSE_LABEL, f"segmentation must be integer class ids [H, W] (an L, I;16 "
                    f"or P PNG), got {array.dtype} {array.shape}")
  limit = num_classes or dense_labels.MAX_CLASSES
  ids = array.astype(np.int64)
  unknown = (ids != dense_labels.IGNORE_CLASS) & ((ids < 0) | (ids >= limit))
  if unknown.any():
    raise DenseLabelError(UNKNOWN_CLASS, f"class id {int(ids[unknown][0])}: not below num_classes="
                    f"{limit} nor the ignore id {dense_labels.IGNORE_CLASS}")
  return dense_labels.encode_segmentation(ids, limit)


def _line_scale(line_scale: str, depth_scale: Optional[float]) -> Optional[float]:
  """The line's own "depth_scale" if it has one, else the task's."""
  if not line_scale:
    return depth_scale
  try:
    scale = float(line_scale)
  except ValueError:
    scale = float("nan")
  if not scale > 0:
    raise DenseLabelError(bad_input.BAD_MANIFEST_LINE, f"depth_scale {line_scale!r} is not a positive "
                    f"number")
  return scale


def dense_image(array: np.ndarray, field: str, line_scale: str, *, depth_scale: Optional[float],
                max_depth: float, num_classes: Optional[int]) -> np.ndarray:
  """A dense label file's array -> uint8 [H, W, 3] for the manifest key `field`; `line_scale` is
  the line's own "depth_scale" ("" if none). Raises DenseLabelError."""
  if array.size == 0:
    raise DenseLabelError(BAD_DENSE_LABEL, f"empty label, shape {array.shape}")
  if field == "target_depth":
    return _dense_depth(array, _line_scale(line_scale, depth_scale), max_depth)
  if field == "target_normals":
    return _dense_normals(array)
  return _dense_segmentation(array, num_classes)
