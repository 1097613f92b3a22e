"""Location tokens: the release's quantisation, an exact inverse on bins, tf == numpy."""

import numpy as np
import pytest
import tensorflow as tf

from unified_io.data.ops import boxes as B

SIZE = 384


def _random_boxes(rng, n, size=SIZE):
  corners = rng.uniform(0, size, size=(n, 2, 2)).astype(np.float32)
  lo, hi = corners.min(1), corners.max(1)
  return np.concatenate([lo, hi], -1)  # (y1, x1, y2, x2)


def test_release_quantisation_and_token_text():
  # v / S * 999 truncated: 0 -> 0, S -> 999, S/2 -> 499, and bins are written <extra_id_{200+q}>.
  boxes = np.array([[0.0, SIZE / 2, SIZE, SIZE * 0.25]], np.float32)
  assert B.boxes_to_bins_np(boxes, SIZE).tolist() == [[0, 499, 999, 249]]
  text = B.boxes_to_text(boxes, SIZE).numpy().decode()
  assert text == "<extra_id_200> <extra_id_699> <extra_id_1199> <extra_id_449>"


def test_bins_to_boxes_to_bins_is_identity_on_every_bin():
  bins = np.arange(B.NUM_LOCATION_BINS, dtype=np.int32)
  bins_n4 = np.stack([bins, bins[::-1], bins, bins[::-1]], 1)
  for size in (SIZE, 256, (384, 512), 7):
    back = B.boxes_to_bins_np(B.bins_to_boxes_np(bins_n4, size), size)
    np.testing.assert_array_equal(back, bins_n4)
    back_tf = B.coords_to_bins(B.bins_to_coords(bins_n4, size), size).numpy()
    np.testing.assert_array_equal(back_tf, bins_n4)


@pytest.mark.parametrize("size", [SIZE, (256, 640)])
def test_boxes_round_trip_error_at_most_half_a_bin(size):
  rng = np.random.default_rng(0)
  h, w = (size, size) if isinstance(size, int) else size
  boxes = _random_boxes(rng, 2000, 1.0) * np.array([h, w, h, w], np.float32)
  boxes[:5] = [[0, 0, h, w]] * 5  # the edges, including bin 999
  back = B.bins_to_boxes_np(B.boxes_to_bins_np(boxes, size), size)
  half_bin = np.array([h, w, h, w], np.float32) / (2 * 999)
  assert np.all(np.abs(back - boxes) <= half_bin * (1 + 1e-5))


def test_tf_and_numpy_twins_agree_on_random_boxes():
  rng = np.random.default_rng(1)
  boxes = _random_boxes(rng, 500)
  np.testing.assert_array_equal(B.coords_to_bins(boxes, SIZE).numpy(),
                                B.boxes_to_bins_np(boxes, SIZE))
  text = B.boxes_to_text(boxes, SIZE)
  np.testing.assert_array_equal(B.text_to_bins(text).numpy(),
                                B.text_to_bins_np(text.numpy()))
  np.testing.assert_allclose(B.text_to_boxes(text, SIZE).numpy(),
                             B.text_to_boxes_np(text.numpy(), SIZE), rtol=0, atol=1e-4)


def test_text_to_boxes_skips_words_sentinels_and_an_incomplete_tail():
  box_text = B.boxes_to_text(np.array([[10, 20, 300, 350]], np.float32), SIZE).numpy().decode()
  text = f"a dog {box_text} <extra_id_5> cat {box_text} <extra_id_300>"
  got = B.text_to_boxes(tf.constant(text), SIZE).numpy()
  assert got.shape == (2, 4)
  np.testing.assert_allclose(got[0], [10, 20, 300, 350], atol=SIZE / 1998 + 1e-4)
  np.testing.assert_array_equal(got, B.text_to_boxes_np(text, SIZE))
  assert B.text_to_boxes(tf.constant("no boxes"), SIZE).numpy().shape == (0, 4)


def test_out_of_image_coordinates_clip_to_the_edge_bins():
  boxes = np.array([[-50, -1, 900, 385]], np.float32)
  assert B.boxes_to_bins_np(boxes, SIZE).tolist() == [[0, 0, 999, 999]]


def test_points_and_per_box_text_inside_a_graph():
  @tf.function
  def fn(points, boxes):
    return B.points_to_text(points, SIZE), B.boxes_to_text_n(boxes, SIZE), B.text_to_points(
        B.points_to_text(points, SIZE), SIZE)

  points = np.array([[0, 192], [384, 96]], np.float32)
  text, per_box, back = fn(points, np.zeros([3, 4], np.float32))
  assert text.numpy().decode() == "<extra_id_200> <extra_id_699> <extra_id_1199> <extra_id_449>"
  assert per_box.shape == (3,)
  assert B.text_to_bins_np(per_box[0].numpy()).tolist() == [0, 0, 0, 0]
  np.testing.assert_array_equal(B.coords_to_bins(back, SIZE).numpy(),
                                B.coords_to_bins_np(points, SIZE))


def test_bins_out_of_range_raise():
  with pytest.raises(ValueError, match="location bins"):
    B.bins_to_boxes_np(np.array([[0, 0, 0, 1000]]), SIZE)
