"""Whether generated pictures show the reference's objects, read from the palette colours
(unified_io.evaluation.drawn_objects and its metric fn)."""

import numpy as np
import pytest

from unified_io.evaluation import drawn_objects as D
from unified_io.evaluation import metric_fns

RED, GREEN, SLATE = (220, 40, 40), (40, 170, 60), (95, 110, 125)
PALETTE = D.Palette.from_rgb255([RED, GREEN], [SLATE])


def scene(*squares, size=32):
  """A slate picture in [0, 1] with (colour, top, left, side) squares drawn on it."""
  image = np.tile(np.asarray(SLATE, np.float32) / 255, (size, size, 1))
  for colour, top, left, side in squares:
    image[top:top + side, left:left + side] = np.asarray(colour, np.float32) / 255
  return image


def test_the_reference_itself_draws_every_object():
  ref = scene((RED, 4, 4, 8), (GREEN, 18, 18, 10))
  got = D.drawn_objects([ref], [ref], PALETTE)
  assert got == {"objects_drawn": 1.0, "object_iou": 1.0, "object_colour_recall": 1.0,
                 "images_drawn": 1.0, "stray_colours": 0.0}


def test_a_background_alone_draws_nothing_and_a_moved_object_is_coloured_not_drawn():
  ref = scene((RED, 4, 4, 8))
  empty = D.drawn_objects([scene()], [ref], PALETTE)
  assert empty["objects_drawn"] == empty["object_iou"] == empty["object_colour_recall"] == 0.0
  moved = D.drawn_objects([scene((RED, 4, 8, 8))], [ref], PALETTE)  # half its width over
  assert moved["object_iou"] == pytest.approx(32 / 96)
  assert moved["objects_drawn"] == 0.0 and moved["object_colour_recall"] == 1.0


def test_one_of_two_objects_drawn_and_a_stray_colour():
  ref = scene((RED, 4, 4, 8), (GREEN, 18, 18, 10))
  got = D.drawn_objects([scene((RED, 4, 4, 8))], [ref], PALETTE)
  assert got["objects_drawn"] == 0.5 and got["images_drawn"] == 0.0
  stray = D.drawn_objects([scene((RED, 4, 4, 8), (GREEN, 20, 20, 6))], [scene((RED, 4, 4, 8))],
                          PALETTE)
  assert stray["objects_drawn"] == 1.0 and stray["stray_colours"] == 1.0


def test_colours_far_from_every_palette_colour_count_for_nothing():
  ref = scene((RED, 4, 4, 8))
  blurred = scene((RED, 4, 4, 8))
  blurred[4:12, 4:12] = (blurred[4:12, 4:12] + np.asarray(SLATE) / 255) / 2  # half-way: neither
  assert D.drawn_objects([blurred], [ref], PALETTE)["object_colour_recall"] == 0.0
  assert D.colour_masks((ref * 255).astype(np.uint8), PALETTE)[0].sum() == 64  # uint8 scaled


def test_bad_input_is_named():
  ref = scene((RED, 4, 4, 8))
  with pytest.raises(ValueError, match="generated image 0 is"):
    D.drawn_objects([scene(size=16)], [ref], PALETTE)
  with pytest.raises(ValueError, match="1 generated images for 2 references"):
    D.drawn_objects([ref], [ref, ref], PALETTE)
  with pytest.raises(ValueError, match="none of the 1 reference images has an object colour"):
    D.drawn_objects([ref], [scene()], PALETTE)
  with pytest.raises(ValueError, match=r"RGB image \[H, W, 3\]"):
    D.colour_masks(ref[..., 0], PALETTE)


def test_metric_fn_adds_what_the_reference_tokens_draw_when_given():
  fn = metric_fns.drawn_objects_for(PALETTE)
  ref = scene((RED, 4, 4, 8))
  targets = [{"image": ref, "reconstruction": scene((RED, 4, 5, 8))}]
  got = fn(targets, [{"image": scene()}])
  assert got["objects_drawn"] == 0.0
  assert got["tokenizer_objects_drawn"] == 1.0 and got["tokenizer_object_iou"] == pytest.approx(
      56 / 72)
  assert "tokenizer_objects_drawn" not in fn([{"image": ref}], [{"image": ref}])
  with pytest.raises(ValueError, match="drawn_objects: prediction 0 has no 'image'"):
    fn([{"image": ref}], [{"tokens": [1]}])
