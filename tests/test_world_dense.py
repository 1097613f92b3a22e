"""The world's dense labels (depth, normals, segmentation, edges, palette) match the drawn scene.

  cd /work/main && .venv/bin/python -m pytest -q tests/test_world_dense.py
"""

import numpy as np
import pytest

from unified_io.data import dense_labels as DL
from unified_io.datasets.world import dense, generators, lexicon, scenes, shapes
from unified_io.datasets.world.config import make_world_config

SIZE = 64
SMALL = make_world_config("hard", image_size=48, target_size=32)


def _scene(*objects, background="white"):
  """objects: (shape, colour, (cy, cx), radius), painted in this order."""
  return scenes.Scene(objects=tuple(scenes.SceneObject(s, c, yx, r) for s, c, yx, r in objects),
                      background=background, strokes_s4=(), texture_seed=0, noise_seed=0,
                      texture=0.0, pixel_noise=0.0)


def _labels(scene, size=SIZE):
  rendering = scenes.render(scene, size)
  return rendering, dense.dense_labels(scene, rendering)


# Three objects without overlap: a high one (far), a low one (near), one in between.
THREE = _scene(("circle", "red", (0.25, 0.3), 0.15), ("square", "blue", (0.75, 0.7), 0.12),
               ("star", "green", (0.5, 0.75), 0.1))


def test_ground_depth_runs_from_near_at_the_bottom_to_far_at_the_top():
  rendering, labels = _labels(THREE)
  background = ~rendering.masks_nhw.any(0)
  ground = dense.ground_depth(SIZE)
  np.testing.assert_array_equal(labels.depth_hw[background], ground[background])
  column = ground[:, 0]
  assert np.all(np.diff(column) < 0), "rows lower in the picture are nearer"
  assert 1.9 < column[-1] < 2.1 and 7.5 < column[0] < 8.0, (column[-1], column[0])
  assert np.all(ground == column[:, None])
  assert 0 < labels.depth_hw.min() and labels.depth_hw.max() < DL.DEFAULT_MAX_DEPTH


def test_objects_stand_on_the_ground_as_domes():
  rendering, labels = _labels(THREE)
  ground = dense.ground_depth(SIZE)
  means = []
  for obj, mask in zip(THREE.objects, rendering.masks_nhw):
    centre_row = int(obj.center_yx[0] * SIZE)
    object_depth = labels.depth_hw[mask]
    assert np.all(object_depth < ground[centre_row, 0]), obj.name
    # Base = the ground at the bottom edge's row; the centre is raised by about the radius.
    bottom = obj.center_yx[0] + obj.radius * dense.SHAPE_BOTTOM_V[obj.shape]
    base = float(dense.ground_depth_at(bottom))
    assert object_depth.max() <= base + 1e-5
    cy, cx = (int(v * SIZE) for v in obj.center_yx)
    assert base - labels.depth_hw[cy, cx] > 0.5 * obj.radius * base, obj.name
    means.append(object_depth.mean())
  red, blue, green = means
  assert blue < green < red, "lower objects are nearer"


def test_shape_bottoms_match_the_rasteriser():
  v = np.linspace(0.5, 1.05, 276)[:, None]  # steps of 0.002
  u = np.linspace(-1.0, 1.0, 1001)[None, :]
  for shape, bottom in dense.SHAPE_BOTTOM_V.items():
    rows = np.flatnonzero(shapes.shape_mask(shape, v, u).any(1))
    assert abs(v[rows[-1], 0] - bottom) < 5e-3, (shape, v[rows[-1], 0])


def test_normals_are_unit_the_plane_on_the_ground_and_bumps_on_objects():
  rendering, labels = _labels(THREE)
  n = labels.normals_hw3
  np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
  background = ~rendering.masks_nhw.any(0)
  np.testing.assert_allclose(n[background], np.broadcast_to(dense.GROUND_NORMAL,
                                                            n[background].shape), atol=1e-6)
  assert dense.GROUND_NORMAL[1] > 0.5 and dense.GROUND_NORMAL[2] > 0.5  # up and to the camera
  circle = THREE.objects[0]
  cy, cx, r = int(circle.center_yx[0] * SIZE), int(circle.center_yx[1] * SIZE), circle.radius
  d = int(0.7 * r * SIZE)
  assert n[cy, cx, 2] > 0.99, "the dome's top faces the camera"
  assert n[cy, cx + d, 0] > 0.3 and n[cy, cx - d, 0] < -0.3, "right side faces right (x)"
  assert n[cy - d, cx, 1] > 0.3 and n[cy + d, cx, 1] < -0.3, "top side faces up (y)"


def test_segmentation_classes_are_the_shapes_under_their_masks():
  rendering, labels = _labels(THREE)
  assert dense.SEGMENTATION_CLASSES == ("background",) + lexicon.SHAPE_NAMES
  assert np.all(labels.classes_hw[~rendering.masks_nhw.any(0)] == 0)
  for obj, mask in zip(THREE.objects, rendering.masks_nhw):
    assert mask.sum() > 20
    assert np.all(labels.classes_hw[mask] == 1 + lexicon.SHAPE_NAMES.index(obj.shape))


def _owner(rendering):
  masks = rendering.masks_nhw
  return np.where(masks.any(0), masks.argmax(0), -1)


def test_edges_lie_on_mask_boundaries():
  scene = _scene(("square", "red", (0.5, 0.5), 0.3), ("circle", "blue", (0.5, 0.8), 0.15))
  rendering, labels = _labels(scene)
  owner, edges = _owner(rendering), labels.edges_hw
  # Every pixel whose right or lower neighbour has another owner is an edge, and so is that
  # neighbour; no edge pixel is farther than the half-width from another owner.
  right, down = owner[:, 1:] != owner[:, :-1], owner[1:] != owner[:-1]
  assert right.any() and down.any()
  assert np.all(edges[:, 1:][right]) and np.all(edges[:, :-1][right])
  assert np.all(edges[1:][down]) and np.all(edges[:-1][down])
  k = dense.edge_half_width(SIZE)
  for y, x in zip(*np.nonzero(edges)):
    window = owner[max(0, y - k):y + k + 1, max(0, x - k):x + k + 1]
    assert np.any(window != owner[y, x]), (y, x)
  # The square's top side (no other object near it) is 2 px thick at this size.
  column = edges[:, int(0.4 * SIZE)]
  assert column[:SIZE // 2].sum() == 2
  assert dense.edge_half_width(128) == 1 and dense.edge_half_width(256) == 2


def test_labels_round_trip_through_the_rgb_encodings():
  rendering, labels = _labels(THREE)
  depth = DL.decode_depth(DL.encode_depth(labels.depth_hw))
  np.testing.assert_allclose(depth, labels.depth_hw, atol=DL.DEFAULT_MAX_DEPTH / 255 / 2 + 1e-5)
  normals = DL.decode_normals(DL.encode_normals(labels.normals_hw3))
  assert np.abs(normals - labels.normals_hw3).max() < 0.02
  classes = DL.decode_segmentation(
      DL.encode_segmentation(labels.classes_hw, len(dense.SEGMENTATION_CLASSES)),
      len(dense.SEGMENTATION_CLASSES))
  np.testing.assert_array_equal(classes, labels.classes_hw)
  np.testing.assert_array_equal(DL.decode_edges(DL.encode_edges(labels.edges_hw)),
                                labels.edges_hw)


def test_palette_lists_the_colours_by_visible_area():
  # Two red objects together outdo one big blue one; the small yellow comes last.
  scene = _scene(("square", "blue", (0.3, 0.3), 0.2), ("circle", "red", (0.75, 0.3), 0.16),
                 ("square", "red", (0.75, 0.75), 0.16), ("diamond", "yellow", (0.3, 0.8), 0.1),
                 background="slate")
  rendering = scenes.render(scene, SIZE)
  area = dense.visible_areas(rendering)
  assert area[1] < area[0] < area[1] + area[2] and area[3] < area[1]
  assert dense.palette_text(scene, rendering) == "slate background; colours: red, blue, yellow"
  hidden = scene.with_objects(scene.objects + (scenes.SceneObject(
      "square", "cyan", (0.3, 0.3), 0.05), scenes.SceneObject("square", "pink", (0.3, 0.3), 0.1)))
  assert dense.palette_text(hidden, scenes.render(hidden, SIZE)).endswith(
      "colours: red, blue, pink, yellow"), "an object hidden by a later one has no colour"


def test_an_occluder_is_never_behind_what_it_covers():
  # The big circle near the bottom is painted first; the star above it, painted over its top, is
  # farther by where it stands, so it must be brought forward where they overlap.
  low = ("circle", "red", (0.7, 0.5), 0.25)
  high = ("star", "blue", (0.42, 0.5), 0.15)
  scene = _scene(low, high)
  rendering, labels = _labels(scene)
  _, alone = _labels(_scene(low))
  covered = rendering.masks_nhw[1] & (alone.classes_hw > 0)
  assert covered.sum() > 20
  assert np.all(labels.depth_hw[covered] <= alone.depth_hw[covered] + 1e-5)
  # Without the painter's-order pass the star would be behind the circle there.
  # pylint: disable-next=protected-access
  star_as_drawn = dense._surface(scene.objects[1], SIZE).depth_hw
  assert np.any(star_as_drawn[covered] > alone.depth_hw[covered] + 0.1)
  # The star keeps its dome shape (moved as a whole) and the ground stays untouched.
  moved = star_as_drawn[rendering.masks_nhw[1]] - labels.depth_hw[rendering.masks_nhw[1]]
  assert np.ptp(moved) < 1e-4 and moved.min() > 0.1
  assert np.all(labels.depth_hw > dense.MIN_DEPTH - 1e-6)


@pytest.mark.parametrize("name", ["depth", "normals", "segmentation", "edges",
                                  "segmentation_to_image", "palette"])
def test_generators_draw_the_labels_of_their_scene(name):
  example = generators.GENERATORS[name].generate(np.random.default_rng(3), SMALL)
  scene = scenes.sample_scene(np.random.default_rng(3), SMALL)  # the generator's first draw
  source = scenes.render(scene, SMALL.image_size)
  target = scenes.render(scene, SMALL.target_size)
  expected_target = {
      "depth": lambda: DL.encode_depth(dense.depth(scene, target)),
      "normals": lambda: DL.encode_normals(dense.normals(scene, target)),
      "segmentation": lambda: DL.encode_segmentation(dense.segmentation(scene, target)),
      "edges": lambda: DL.encode_edges(dense.edges(target)),
      "segmentation_to_image": lambda: target.image_hw3}
  if name == "palette":
    np.testing.assert_array_equal(example["image_inputs"], source.image_hw3)
    assert example["text_targets"].item().decode() == dense.palette_text(scene, source)
    return
  np.testing.assert_array_equal(example["image_targets"], expected_target[name]())
  expected_input = (DL.encode_segmentation(dense.segmentation(scene, source))
                    if name == "segmentation_to_image" else source.image_hw3)
  np.testing.assert_array_equal(example["image_inputs"], expected_input)
  assert example["image_targets"].shape == (32, 32, 3)
  np.testing.assert_array_equal(example["meta/boxes"], source.boxes_n4)
