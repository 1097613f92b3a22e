"""Scenes of coloured shapes: sampling (in relative units) and rendering (at any pixel size).

A `Scene` is resolution-free: object centres and radii are fractions of the image side. `render`
draws it at S x S pixels and returns, with the image, each object's visible mask and the pixel box
of that mask, so every answer the tasks derive (boxes, masks, counts, colours) is exact for the
pixels the model sees. Objects are painted in order (later ones occlude earlier ones); thin grey
distractor strokes are painted first, under the objects, and are never objects.
"""

import dataclasses
from typing import Optional, Tuple

import numpy as np

from unified_io.datasets.world import lexicon
from unified_io.datasets.world.config import WorldConfig
from unified_io.datasets.world.shapes import shape_mask

_PLACEMENT_TRIES = 60
_EDGE_MARGIN = 0.01      # keep objects this far (fraction of the side) inside the image
_GAP = 0.015             # boxes of non-overlapping objects stay this far apart
_TEXTURE_GRID = 6        # texture profiles are interpolated from 6 random values


@dataclasses.dataclass(frozen=True)
class SceneObject:
  shape: str
  colour: str
  center_yx: Tuple[float, float]   # fraction of the image side
  radius: float                    # fraction of the image side (diameter = 2 * radius)

  @property
  def name(self) -> str:
    return f"{self.colour} {self.shape}"

  def moved(self, dy: float, dx: float) -> "SceneObject":
    return dataclasses.replace(self, center_yx=(self.center_yx[0] + dy, self.center_yx[1] + dx))


@dataclasses.dataclass(frozen=True)
class Scene:
  objects: Tuple[SceneObject, ...]
  background: str
  # Distractor strokes (y0, x0, y1, x1), fractions of the side.
  strokes_s4: Tuple[Tuple[float, float, float, float], ...]
  texture_seed: int
  noise_seed: int
  texture: float      # amplitude, fraction of 255
  pixel_noise: float  # std, fraction of 255

  def with_objects(self, objects) -> "Scene":
    return dataclasses.replace(self, objects=tuple(objects))


@dataclasses.dataclass(frozen=True)
class Rendering:
  image_hw3: np.ndarray   # uint8
  masks_nhw: np.ndarray   # bool, visible pixels of each object
  boxes_n4: np.ndarray    # float32 (y1, x1, y2, x2) pixel edges of each visible mask


def _boxes_overlap_too_much(box, others, max_overlap: float) -> bool:
  """box/others: (y1, x1, y2, x2) fractions. Overlap = intersection / smaller area."""
  gap = _GAP if max_overlap == 0 else 0.0
  for other in others:
    ih = min(box[2], other[2]) - max(box[0], other[0]) + gap
    iw = min(box[3], other[3]) - max(box[1], other[1]) + gap
    if ih <= 0 or iw <= 0:
      continue
    if max_overlap == 0:
      return True
    smaller = min((box[2] - box[0]) * (box[3] - box[1]),
                  (other[2] - other[0]) * (other[3] - other[1]))
    if ih * iw > max_overlap * smaller:
      return True
  return False


def place_objects(rng: np.random.Generator, cfg: WorldConfig, num_objects: int,
                  extent_yx: Tuple[float, float] = (0.0, 0.0)):
  """Centres and radii for up to `num_objects` objects with limited overlap.

  `extent_yx` reserves room for motion: an object and its copy shifted by up to extent stay inside
  the image (video). Returns lists (centres, radii); fewer than asked when the image is full, but
  always at least one.
  """
  centres, radii, boxes = [], [], []
  for i in range(num_objects):
    for attempt in range(_PLACEMENT_TRIES):
      shrink = 1.0 - 0.5 * attempt / _PLACEMENT_TRIES  # crowded scenes get smaller objects
      diameter = rng.uniform(cfg.min_object_size, cfg.max_object_size) * shrink
      r = max(diameter / 2, cfg.min_object_size / 4)
      lo_y = r + _EDGE_MARGIN + max(0.0, -extent_yx[0])
      lo_x = r + _EDGE_MARGIN + max(0.0, -extent_yx[1])
      hi_y = 1 - r - _EDGE_MARGIN - max(0.0, extent_yx[0])
      hi_x = 1 - r - _EDGE_MARGIN - max(0.0, extent_yx[1])
      if hi_y <= lo_y or hi_x <= lo_x:
        continue
      cy, cx = rng.uniform(lo_y, hi_y), rng.uniform(lo_x, hi_x)
      # With motion the whole swept box must not collide.
      box = (cy - r + min(0.0, extent_yx[0]), cx - r + min(0.0, extent_yx[1]),
             cy + r + max(0.0, extent_yx[0]), cx + r + max(0.0, extent_yx[1]))
      if i == 0 or not _boxes_overlap_too_much(box, boxes, cfg.max_overlap):
        centres.append((cy, cx))
        radii.append(r)
        boxes.append(box)
        break
  return centres, radii


def sample_scene(rng: np.random.Generator, cfg: WorldConfig, num_objects: Optional[int] = None,
                 extent_yx: Tuple[float, float] = (0.0, 0.0)) -> Scene:
  """A random scene; every object has a distinct (colour, shape) pair."""
  if num_objects is None:
    num_objects = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
  num_kinds = len(lexicon.COLOUR_NAMES) * len(lexicon.SHAPE_NAMES)
  kinds = rng.choice(num_kinds, size=num_objects, replace=False)
  centres, radii = place_objects(rng, cfg, num_objects, extent_yx)
  objects = tuple(
      SceneObject(shape=lexicon.SHAPE_NAMES[k % len(lexicon.SHAPE_NAMES)],
                  colour=lexicon.COLOUR_NAMES[k // len(lexicon.SHAPE_NAMES)],
                  center_yx=(float(c[0]), float(c[1])), radius=float(r))
      for k, c, r in zip(kinds, centres, radii))
  num_strokes = int(rng.integers(0, cfg.max_distractors + 1)) if cfg.max_distractors else 0
  strokes = tuple(tuple(float(v) for v in rng.uniform(0.05, 0.95, size=4))
                  for _ in range(num_strokes))
  background = lexicon.BACKGROUND_NAMES[int(rng.integers(len(lexicon.BACKGROUND_NAMES)))]
  return Scene(objects=objects, background=background,
               strokes_s4=strokes, texture_seed=int(rng.integers(2**31)),
               noise_seed=int(rng.integers(2**31)), texture=cfg.texture,
               pixel_noise=cfg.pixel_noise)


def _smooth_profile(rng: np.random.Generator, size: int) -> np.ndarray:
  """[size] float32 in [-1, 1]: random values on a coarse grid, linearly interpolated."""
  nodes = rng.uniform(-1, 1, _TEXTURE_GRID).astype(np.float32)
  positions = (np.arange(size, dtype=np.float32) + 0.5) / size * (_TEXTURE_GRID - 1)
  return np.interp(positions, np.arange(_TEXTURE_GRID, dtype=np.float32), nodes).astype(np.float32)


def _background(scene: Scene, size: int) -> np.ndarray:
  """uint8 [size, size, 3]: the background colour with a soft plaid texture.

  The texture is built from 1D profiles (outer sums and a product), so it costs a few passes over
  the image rather than a 2D noise field; the same seed gives the same texture at every size.
  """
  base_3 = np.array(lexicon.BACKGROUNDS[scene.background], np.float32)
  if scene.texture <= 0:
    return np.broadcast_to(base_3.astype(np.uint8), (size, size, 3)).copy()
  rng = np.random.default_rng(scene.texture_seed)
  rows_a, cols_a, rows_b, cols_b = (_smooth_profile(rng, size) for _ in range(4))
  texture_hw = 0.35 * (rows_a[:, None] + cols_a[None, :]) + 0.3 * rows_b[:, None] * cols_b[None, :]
  texture_hw *= scene.texture * 255.0
  image = base_3[None, None, :] + texture_hw[:, :, None]
  return np.clip(image, 0, 255).astype(np.uint8)


def _window(center: float, radius: float, size: int) -> Tuple[int, int]:
  lo = max(0, int(np.floor((center - radius) * size)))
  hi = min(size, int(np.ceil((center + radius) * size)) + 1)
  return lo, hi


def _draw_stroke(image_hw3: np.ndarray, stroke, size: int):
  y0, x0, y1, x1 = (v * size for v in stroke)
  width = max(1.0, size / 256)
  ya, yb = int(max(0, min(y0, y1) - width)), int(min(size, max(y0, y1) + width + 1))
  xa, xb = int(max(0, min(x0, x1) - width)), int(min(size, max(x0, x1) + width + 1))
  yy = np.arange(ya, yb, dtype=np.float32)[:, None] + 0.5
  xx = np.arange(xa, xb, dtype=np.float32)[None, :] + 0.5
  dy, dx = y1 - y0, x1 - x0
  t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-6), 0, 1)
  dist2 = (yy - y0 - t * dy) ** 2 + (xx - x0 - t * dx) ** 2
  image_hw3[ya:yb, xa:xb][dist2 <= width * width] = lexicon.DISTRACTOR_GREY


def render(scene: Scene, size: int) -> Rendering:
  """Draws the scene at size x size pixels: image, visible masks, pixel boxes of the masks."""
  image = _background(scene, size)
  for stroke in scene.strokes_s4:
    _draw_stroke(image, stroke, size)
  owner_hw = np.full((size, size), -1, np.int8)
  for index, obj in enumerate(scene.objects):
    (ya, yb), (xa, xb) = (_window(obj.center_yx[0], obj.radius, size),
                          _window(obj.center_yx[1], obj.radius, size))
    v = ((np.arange(ya, yb, dtype=np.float32) + 0.5) / size - obj.center_yx[0]) / obj.radius
    u = ((np.arange(xa, xb, dtype=np.float32) + 0.5) / size - obj.center_yx[1]) / obj.radius
    inside = shape_mask(obj.shape, v[:, None], u[None, :])
    image[ya:yb, xa:xb][inside] = lexicon.COLOURS[obj.colour]
    owner_hw[ya:yb, xa:xb][inside] = index
  if scene.pixel_noise > 0:  # grey (per-pixel, shared by the channels) sensor noise
    noise_hw = np.random.default_rng(scene.noise_seed).standard_normal((size, size), np.float32)
    noisy = image + (scene.pixel_noise * 255.0 * noise_hw)[:, :, None]
    image = np.clip(noisy, 0, 255).astype(np.uint8)
  masks_nhw = owner_hw[None] == np.arange(len(scene.objects), dtype=np.int8)[:, None, None]
  return Rendering(image_hw3=image, masks_nhw=masks_nhw, boxes_n4=mask_boxes(masks_nhw))


def mask_boxes(masks_nhw: np.ndarray) -> np.ndarray:
  """(y1, x1, y2, x2) pixel edges of each mask's extent (y2 = last row + 1); zeros when empty."""
  boxes = np.zeros((masks_nhw.shape[0], 4), np.float32)
  for i, mask in enumerate(masks_nhw):
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size:
      boxes[i] = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
  return boxes
