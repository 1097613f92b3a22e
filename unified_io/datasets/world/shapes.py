"""Shape rasterisation: which pixels of a window belong to a shape.

Coordinates are normalised to the shape: `v` (down) and `u` (right) are the pixel centre's offset
from the shape centre divided by its radius, so every shape fits in the square [-1, 1]^2 and
touches its border on at least two sides (a shape's pixel box is then about its diameter).
"""

import numpy as np

from unified_io.datasets.world import lexicon

_STAR_POINTS = 5
_STAR_INNER = 0.45  # inner radius of the star / outer radius


def _circle(v, u):
  return v * v + u * u <= 1.0


def _square(v, u):
  return (np.abs(v) <= 0.85) & (np.abs(u) <= 0.85)


def _triangle(v, u):
  # Apex up at v = -1, flat base at v = 0.8; the side slopes reach |u| = 1 at the base.
  return (v <= 0.8) & (np.abs(u) <= (v + 1.0) / 1.8)


def _diamond(v, u):
  return np.abs(v) + np.abs(u) <= 1.0


def _cross(v, u):
  arm = 0.34
  inside = (np.abs(v) <= 0.95) & (np.abs(u) <= 0.95)
  return inside & ((np.abs(v) <= arm) | (np.abs(u) <= arm))


def _ring(v, u):
  r2 = v * v + u * u
  return (r2 <= 1.0) & (r2 >= 0.5 ** 2)


def _star(v, u):
  # A regular 5-point star polygon with one point up: a pixel is inside when it lies on the inner
  # side of the edge (outer vertex -> inner vertex) of the sector its angle falls in.
  sector = np.pi / _STAR_POINTS
  angle = np.mod(np.arctan2(u, -v), 2 * np.pi)  # 0 = up, clockwise
  k = np.floor(angle / sector)
  a0, a1 = k * sector, (k + 1) * sector
  r0 = np.where(k % 2 == 0, 1.0, _STAR_INNER)
  r1 = np.where(k % 2 == 0, _STAR_INNER, 1.0)
  p0u, p0v = r0 * np.sin(a0), -r0 * np.cos(a0)
  p1u, p1v = r1 * np.sin(a1), -r1 * np.cos(a1)
  # The origin is inside; the pixel is inside when it is on the same side of the edge as the origin.
  edge_side = (p1u - p0u) * (v - p0v) - (p1v - p0v) * (u - p0u)
  origin_side = (p1u - p0u) * (0 - p0v) - (p1v - p0v) * (0 - p0u)
  return edge_side * origin_side >= 0


_RASTERISERS = {"circle": _circle, "square": _square, "triangle": _triangle,
                "diamond": _diamond, "cross": _cross, "ring": _ring, "star": _star}
assert tuple(_RASTERISERS) == lexicon.SHAPE_NAMES, "every shape name needs a rasteriser"


def shape_mask(shape: str, v: np.ndarray, u: np.ndarray) -> np.ndarray:
  """Boolean mask (broadcast shape of v and u) of the named shape in normalised coordinates."""
  try:
    rasterise = _RASTERISERS[shape]
  except KeyError:
    raise ValueError(f"shape_mask: unknown shape {shape!r}; known: {lexicon.SHAPE_NAMES}") from None
  return rasterise(v, u)
