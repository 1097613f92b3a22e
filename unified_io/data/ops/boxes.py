"""Boxes and points <-> location tokens, in TensorFlow (for pipelines) and numpy (for eval/plots).

A coordinate v in pixels of the (resized, padded) model image of side S becomes the bin
q = floor(clip(v / S, 0, 1) * 999) in [0, 999], written `<extra_id_{200 + q}>`. That is the
release's quantisation (`values_to_tokens` / `convert_bboxes_to_str` in
`t5x/examples/unified_io/data/data_utils.py`: 1000 bins, `VOCAB_START = 200`, float32 values
times 999 cast to int32), kept as is so text written here means what the released weights expect.
Boxes are (y1, x1, y2, x2), points (y, x); y is measured against the image height and x against
the width (the release only had square images, where the two agree). The tokens of one box are
joined by spaces, and boxes by spaces too.

The way back puts a bin's value at the CENTRE of the coordinates that quantise to it:
v = (q + 0.5) / 999 * S, and v = S for q = 999 (the only value reaching bin 999 is v = S). Hence
  * bins -> boxes -> bins is the identity on every bin (the centre is half a bin from both edges,
    far beyond float32 rounding), and
  * boxes -> bins -> boxes moves a coordinate by at most half a bin width, S / 1998.
The release read a bin back as q / 999 (its lower edge), which may re-quantise to q - 1 and is off
by up to a whole bin.
"""

import re
from typing import Sequence, Union

import numpy as np
import tensorflow as tf

NUM_LOCATION_BINS = 1000
LOCATION_TOKEN_START = 200  # <extra_id_0..199> are the span-corruption sentinels
_MAX_BIN = NUM_LOCATION_BINS - 1
_TOKEN_PATTERN = re.compile(r"<extra_id_(\d+)>")

Size = Union[int, Sequence[int]]


def _size_hw(size: Size):
  if isinstance(size, (int, np.integer)):
    return float(size), float(size)
  if len(size) != 2:
    raise ValueError(f"location tokens: size must be S or (H, W), got {size!r}")
  return float(size[0]), float(size[1])


def _extent(size: Size, coords: int) -> np.ndarray:
  """[coords] float32: the image extent each coordinate of a (y, x, y, x, ...) row is measured in."""
  h, w = _size_hw(size)
  return np.array([h, w] * (coords // 2), np.float32)


# ---------------------------------------------------------------- numpy twins (eval, plotting)

def coords_to_bins_np(coords_nc: np.ndarray, size: Size) -> np.ndarray:
  """Pixel coordinates [n, C] (C even, (y, x) pairs) -> int32 bins [n, C]."""
  coords_nc = np.asarray(coords_nc, np.float32)
  fraction = np.clip(coords_nc / _extent(size, coords_nc.shape[-1]), 0.0, 1.0)
  return (fraction * np.float32(_MAX_BIN)).astype(np.int32)


def bins_to_coords_np(bins_nc: np.ndarray, size: Size) -> np.ndarray:
  """int bins [n, C] -> pixel coordinates [n, C] at the bin centres (see the module docstring)."""
  bins_nc = np.asarray(bins_nc)
  if bins_nc.size and (bins_nc.min() < 0 or bins_nc.max() > _MAX_BIN):
    raise ValueError(f"location bins must lie in [0, {_MAX_BIN}], got {bins_nc.min()}.."
                     f"{bins_nc.max()}")
  fraction = np.minimum((bins_nc.astype(np.float32) + np.float32(0.5)) / np.float32(_MAX_BIN), 1.0)
  return (fraction * _extent(size, bins_nc.shape[-1])).astype(np.float32)


def boxes_to_bins_np(boxes_n4: np.ndarray, size: Size) -> np.ndarray:
  """Boxes (y1, x1, y2, x2) in pixels [n, 4] -> int32 bins [n, 4]."""
  return coords_to_bins_np(np.reshape(boxes_n4, [-1, 4]), size)


def bins_to_boxes_np(bins_n4: np.ndarray, size: Size) -> np.ndarray:
  """int32 bins [n, 4] -> boxes in pixels [n, 4] (bin centres)."""
  return bins_to_coords_np(np.reshape(bins_n4, [-1, 4]), size)


def text_to_bins_np(text: Union[str, bytes]) -> np.ndarray:
  """All location tokens in `text`, in order -> int32 bins [k] (other extra ids are skipped)."""
  if isinstance(text, bytes):
    text = text.decode("utf-8")
  ids = [int(m) - LOCATION_TOKEN_START for m in _TOKEN_PATTERN.findall(text)]
  return np.array([q for q in ids if 0 <= q <= _MAX_BIN], np.int32)


def text_to_boxes_np(text: Union[str, bytes], size: Size) -> np.ndarray:
  """Text with location tokens -> boxes [n, 4] in pixels; a trailing incomplete box is dropped."""
  bins = text_to_bins_np(text)
  bins = bins[:len(bins) // 4 * 4].reshape(-1, 4)
  return bins_to_boxes_np(bins, size)


def bins_to_text_np(bins_nc: np.ndarray) -> str:
  """int bins (any shape) -> location tokens joined by spaces."""
  return " ".join(f"<extra_id_{LOCATION_TOKEN_START + int(q)}>" for q in np.ravel(bins_nc))


# ---------------------------------------------------------------- TensorFlow (pipelines)

def coords_to_bins(coords_nc: tf.Tensor, size: Size) -> tf.Tensor:
  """Pixel coordinates [n, C] -> int32 bins [n, C], the same numbers as `coords_to_bins_np`."""
  coords_nc = tf.cast(tf.convert_to_tensor(coords_nc), tf.float32)
  extent = tf.constant(_extent(size, coords_nc.shape[-1]))
  fraction = tf.clip_by_value(coords_nc / extent, 0.0, 1.0)
  return tf.cast(fraction * float(_MAX_BIN), tf.int32)


def bins_to_coords(bins_nc: tf.Tensor, size: Size) -> tf.Tensor:
  """int bins [n, C] -> pixel coordinates at the bin centres (float32 [n, C])."""
  bins_nc = tf.convert_to_tensor(bins_nc)
  extent = tf.constant(_extent(size, bins_nc.shape[-1]))
  fraction = tf.minimum((tf.cast(bins_nc, tf.float32) + 0.5) / float(_MAX_BIN), 1.0)
  return fraction * extent


def _bins_to_tokens(bins: tf.Tensor) -> tf.Tensor:
  return tf.strings.join(["<extra_id_", tf.strings.as_string(bins + LOCATION_TOKEN_START), ">"])


def boxes_to_text_n(boxes_n4: tf.Tensor, size: Size) -> tf.Tensor:
  """Boxes [n, 4] in pixels -> tf.string [n], one "<extra_id_a> <extra_id_b> ..." per box.

  For tasks that interleave boxes with labels (detection: "box label box label ...").
  """
  boxes_n4 = tf.reshape(tf.convert_to_tensor(boxes_n4), [-1, 4])
  return tf.strings.reduce_join(_bins_to_tokens(coords_to_bins(boxes_n4, size)), axis=-1,
                                separator=" ")


def boxes_to_text(boxes_n4: tf.Tensor, size: Size) -> tf.Tensor:
  """Boxes [n, 4] (y1, x1, y2, x2) in model-image pixels -> tf.string [] of 4n location tokens."""
  return tf.strings.reduce_join(boxes_to_text_n(boxes_n4, size), separator=" ")


def points_to_text(points_n2: tf.Tensor, size: Size) -> tf.Tensor:
  """Points [n, 2] (y, x) in model-image pixels -> tf.string [] of 2n location tokens."""
  points_n2 = tf.reshape(tf.convert_to_tensor(points_n2), [-1, 2])
  tokens = _bins_to_tokens(coords_to_bins(points_n2, size))
  return tf.strings.reduce_join(tf.reshape(tokens, [-1]), separator=" ")


def text_to_bins(text: tf.Tensor) -> tf.Tensor:
  """tf.string [] -> int32 [k], the bins of all location tokens in order (graph-safe)."""
  pieces = tf.strings.split(tf.convert_to_tensor(text), "<extra_id_")[1:]
  is_token = tf.strings.regex_full_match(pieces, r"(?s)[0-9]+>.*")
  numbers = tf.strings.regex_replace(tf.boolean_mask(pieces, is_token), r"(?s)>.*", "")
  bins = tf.strings.to_number(numbers, tf.int32) - LOCATION_TOKEN_START
  return tf.boolean_mask(bins, tf.logical_and(bins >= 0, bins <= _MAX_BIN))


def text_to_boxes(text: tf.Tensor, size: Size) -> tf.Tensor:
  """tf.string [] -> float32 [n, 4] boxes in pixels (bin centres); an incomplete tail is dropped."""
  bins = text_to_bins(text)
  bins = bins[:tf.shape(bins)[0] // 4 * 4]
  return bins_to_coords(tf.reshape(bins, [-1, 4]), size)


def text_to_points(text: tf.Tensor, size: Size) -> tf.Tensor:
  """tf.string [] -> float32 [n, 2] points (y, x) in pixels; an unpaired last token is dropped."""
  bins = text_to_bins(text)
  bins = bins[:tf.shape(bins)[0] // 2 * 2]
  return bins_to_coords(tf.reshape(bins, [-1, 2]), size)
