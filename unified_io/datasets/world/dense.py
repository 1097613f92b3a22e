"""Exact dense labels of a scene: depth, surface normals, semantic segmentation and edges.

The flat picture is read as a photograph of a ground plane with a camera ~2 m up, pitched down
~40 degrees (focal length = the image side, a ~53 degree field of view). The ground fills the
picture: its depth grows smoothly from NEAR_DEPTH at the bottom row to FAR_DEPTH at the top (a
plane's inverse depth is affine in the image row) and its normal is one constant vector,
GROUND_NORMAL. Every object stands on the ground: its base depth is the ground's depth at the row
of its bottom edge (lower objects are nearer, which the picture shows), and its surface is a dome
raised towards the camera by up to its metric radius at its centre, so its normals are those of a
shaded bump. Only an object's visible pixels (`Rendering.masks_nhw`) carry its labels.

Painter's order (later objects occlude earlier ones) is kept physical: an object whose footprint
overlaps an earlier one is moved towards the camera, as a whole, until it is nowhere farther than
what it covers.

Conventions are those of unified_io/data/dense_labels.py: depth in metres, normals unit with x
right, y up, z towards the camera, segmentation classes SEGMENTATION_CLASSES (0 = background, then
lexicon.SHAPE_NAMES), edges bool. `dense_labels(scene, rendering)` gives all four at the
rendering's size; every function works at any pixel size.
"""

import dataclasses
from typing import List

import numpy as np

from unified_io.data import dense_labels
from unified_io.datasets.world import lexicon
from unified_io.datasets.world.scenes import Rendering, Scene, SceneObject
from unified_io.datasets.world.shapes import shape_mask

NEAR_DEPTH = 2.0   # metres, the ground at the bottom edge of the picture
FAR_DEPTH = 8.0    # metres, the ground at the top edge
FOCAL = 1.0        # focal length / image side
MIN_DEPTH = 0.5    # metres: no object comes nearer (an occluder pushed forward stops here)
assert 0 < MIN_DEPTH < NEAR_DEPTH < FAR_DEPTH < dense_labels.DEFAULT_MAX_DEPTH

# The camera pitch that makes the ground's depth run from NEAR_DEPTH to FAR_DEPTH: for a plane
# 1 / depth = (y cos(pitch) + sin(pitch)) / height, with y = (row - 0.5) / FOCAL.
_PITCH = np.arctan2((1 / NEAR_DEPTH + 1 / FAR_DEPTH) / 2, FOCAL * (1 / NEAR_DEPTH - 1 / FAR_DEPTH))
GROUND_NORMAL = np.array([0.0, np.cos(_PITCH), np.sin(_PITCH)], np.float32)  # up, towards camera

SEGMENTATION_CLASSES = ("background",) + lexicon.SHAPE_NAMES
assert len(SEGMENTATION_CLASSES) <= dense_labels.MAX_CLASSES

# Lowest point of each shape, in its normalised coordinates (v down, 1 = the radius; shapes.py).
SHAPE_BOTTOM_V = {"circle": 1.0, "square": 0.85, "triangle": 0.8, "diamond": 1.0, "cross": 0.95,
                  "ring": 1.0, "star": float(np.cos(np.pi / 5))}
assert tuple(SHAPE_BOTTOM_V) == lexicon.SHAPE_NAMES
# The dome: height = radius * sqrt(1 - rho^2 / DOME^2), rho = distance from the centre / radius.
# DOME exceeds every shape's farthest point (a triangle's base corner, sqrt(0.8^2 + 1) = 1.28), so
# the height stays positive over the whole shape and its rim still faces the camera a little.
_DOME = 1.35


@dataclasses.dataclass(frozen=True)
class DenseLabels:
  depth_hw: np.ndarray      # float32, metres, in (0, dense_labels.DEFAULT_MAX_DEPTH)
  normals_hw3: np.ndarray   # float32, unit
  classes_hw: np.ndarray    # int32, index into SEGMENTATION_CLASSES
  edges_hw: np.ndarray      # bool


def _rows(size: int) -> np.ndarray:
  """[size] float32: pixel-centre positions as fractions of the side (scenes.render's grid)."""
  return (np.arange(size, dtype=np.float32) + 0.5) / size


def ground_depth_at(row_fraction) -> np.ndarray:
  """Depth in metres of the ground at an image row (0 = top edge, 1 = bottom edge)."""
  t = np.asarray(row_fraction, np.float32)
  return 1.0 / (1.0 / FAR_DEPTH + (1.0 / NEAR_DEPTH - 1.0 / FAR_DEPTH) * t)


def ground_depth(size: int) -> np.ndarray:
  """[size, size] float32: the ground's depth, constant along each row."""
  return np.repeat(ground_depth_at(_rows(size))[:, None], size, axis=1).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Surface:
  """An object's whole (unoccluded) footprint and its dome over it, at one pixel size."""
  footprint_hw: np.ndarray   # bool
  depth_hw: np.ndarray       # float32 metres (valid on the footprint)
  normals_hw3: np.ndarray    # float32 unit (valid on the footprint)


def _surface(obj: SceneObject, size: int) -> _Surface:
  # The same float32 grid as scenes.render, so the footprint holds every visible pixel.
  v = ((_rows(size) - obj.center_yx[0]) / obj.radius)[:, None]
  u = ((_rows(size) - obj.center_yx[1]) / obj.radius)[None, :]
  v, u = np.broadcast_arrays(v, u)
  footprint = shape_mask(obj.shape, v, u)
  g = np.sqrt(np.clip(1.0 - (v * v + u * u) / _DOME ** 2, 0.0, 1.0))   # dome height / radius
  base = ground_depth_at(obj.center_yx[0] + obj.radius * SHAPE_BOTTOM_V[obj.shape])
  radius_m = obj.radius * base / FOCAL
  depth = base - radius_m * g
  # Height h = radius_m * g(u, v), u right and v down in radii: n ~ (-dg/du, dg/dv, 1), which
  # times DOME^2 * g is (u, -v, DOME^2 * g).
  normals = np.stack([u, -v, _DOME ** 2 * g], axis=-1)
  normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
  return _Surface(footprint, depth.astype(np.float32), normals.astype(np.float32))


def _surfaces(scene: Scene, size: int) -> List[_Surface]:
  """Each object's surface, moved towards the camera where it would be farther than an earlier
  object it overlaps (painter's order: later objects are in front)."""
  placed: List[_Surface] = []
  for obj in scene.objects:
    surface = _surface(obj, size)
    shift = 0.0
    for earlier in placed:
      overlap = surface.footprint_hw & earlier.footprint_hw
      if overlap.any():
        shift = max(shift, float((surface.depth_hw[overlap] - earlier.depth_hw[overlap]).max()))
    if shift > 0:
      surface = dataclasses.replace(
          surface, depth_hw=np.maximum(surface.depth_hw - shift, MIN_DEPTH).astype(np.float32))
    placed.append(surface)
  return placed


def depth(scene: Scene, rendering: Rendering) -> np.ndarray:
  """[S, S] float32 metres: the ground, and each object's dome on its visible pixels."""
  size = rendering.masks_nhw.shape[-1]
  out = ground_depth(size)
  for surface, visible in zip(_surfaces(scene, size), rendering.masks_nhw):
    out[visible] = surface.depth_hw[visible]
  return out


def normals(scene: Scene, rendering: Rendering) -> np.ndarray:
  """[S, S, 3] float32 unit normals: GROUND_NORMAL, and each object's dome on its visible pixels
  (occlusion moves a dome, never tilts it, so these need no painter's-order pass)."""
  size = rendering.masks_nhw.shape[-1]
  out = np.broadcast_to(GROUND_NORMAL, (size, size, 3)).copy()
  for obj, visible in zip(scene.objects, rendering.masks_nhw):
    if visible.any():
      out[visible] = _surface(obj, size).normals_hw3[visible]
  return out


def segmentation(scene: Scene, rendering: Rendering) -> np.ndarray:
  """[S, S] int32: 0 on the background, 1 + the shape's index in lexicon.SHAPE_NAMES on an
  object's visible pixels."""
  size = rendering.masks_nhw.shape[-1]
  out = np.zeros((size, size), np.int32)
  for obj, visible in zip(scene.objects, rendering.masks_nhw):
    out[visible] = SEGMENTATION_CLASSES.index(obj.shape)
  return out


def edge_half_width(size: int) -> int:
  """Pixels each side of a boundary that are edge: 1 up to 191 px (2 px wide edges at 128 px)."""
  return max(1, int(round(size / 128)))


def edges(rendering: Rendering) -> np.ndarray:
  """[S, S] bool: pixels within `edge_half_width` (Chebyshev) of a pixel of another owner (an
  object's visible mask or the background). The picture's border is no boundary."""
  masks = rendering.masks_nhw
  size = masks.shape[-1]
  if not masks.shape[0]:  # an empty scene: no boundary
    return np.zeros((size, size), bool)
  owner = np.where(masks.any(0), masks.argmax(0), -1)
  k = edge_half_width(size)
  padded = np.pad(owner, k, mode="edge")
  out = np.zeros((size, size), bool)
  for dy in range(-k, k + 1):
    for dx in range(-k, k + 1):
      out |= padded[k + dy:k + dy + size, k + dx:k + dx + size] != owner
  return out


def dense_labels(scene: Scene, rendering: Rendering) -> DenseLabels:
  """All four labels at the rendering's size."""
  return DenseLabels(depth_hw=depth(scene, rendering), normals_hw3=normals(scene, rendering),
                     classes_hw=segmentation(scene, rendering), edges_hw=edges(rendering))


def visible_areas(rendering: Rendering) -> np.ndarray:
  """[n] int: visible pixels of each object."""
  return rendering.masks_nhw.reshape(rendering.masks_nhw.shape[0], -1).sum(-1)


def palette_text(scene: Scene, rendering: Rendering) -> str:
  """The scene's colours: "light grey background; colours: red, blue", object colours by visible
  area (summed over objects of a colour), largest first; ties in painting order; unseen omitted."""
  area = {}
  for obj, pixels in zip(scene.objects, visible_areas(rendering)):
    area[obj.colour] = area.get(obj.colour, 0) + int(pixels)
  colours = sorted((c for c in area if area[c] > 0), key=lambda c: -area[c])
  return f"{scene.background} background; colours: {', '.join(colours) or 'none'}"
