"""Image ops: decoding (and clear errors), resize-and-pad geometry, augmentation, box transforms."""

import numpy as np
import pytest
import tensorflow as tf

from unified_io.data.ops import image as I


def _png(image_hw3):
  return tf.io.encode_png(tf.constant(image_hw3, tf.uint8))


def _square_scene(h, w, box):
  """Black uint8 image with a white filled box (y1, x1, y2, x2), integer pixel edges."""
  image = np.zeros([h, w, 3], np.uint8)
  y1, x1, y2, x2 = box
  image[y1:y2, x1:x2] = 255
  return image


def test_decode_png_and_jpeg():
  image = np.random.default_rng(0).integers(0, 255, [20, 30, 3], dtype=np.uint8)
  np.testing.assert_array_equal(I.decode_image(_png(image)).numpy(), image)
  jpeg = tf.io.encode_jpeg(tf.constant(image), quality=100)
  decoded, ok = I.try_decode_image(jpeg)
  assert bool(ok) and decoded.shape == (20, 30, 3) and decoded.dtype == tf.uint8


@pytest.mark.parametrize("data", [b"", b"not an image at all", None])
def test_corrupt_bytes_are_flagged_and_raise_clearly(data):
  if data is None:  # a truncated JPEG: valid header, missing body
    data = tf.io.encode_jpeg(tf.zeros([64, 64, 3], tf.uint8)).numpy()[:100]
  image, ok = I.try_decode_image(tf.constant(data))
  assert not bool(ok) and image.shape == (1, 1, 3)
  with pytest.raises(ValueError, match="could not decode the image bytes"):
    I.decode_image(tf.constant(data))


def test_corrupt_bytes_inside_tf_data_name_the_problem():
  ds = tf.data.Dataset.from_tensor_slices([_png(np.zeros([4, 4, 3])).numpy(), b"garbage"])
  flagged = [bool(ok) for _, ok in ds.map(I.try_decode_image)]
  assert flagged == [True, False]
  with pytest.raises(tf.errors.InvalidArgumentError, match="decode_image: could not decode"):
    list(ds.map(I.decode_image))


def test_resize_and_pad_keeps_aspect_and_centres_the_padding():
  image = _square_scene(100, 200, (20, 50, 60, 150))
  out, valid, transform = I.resize_and_pad(image, (384, 384))
  assert out.shape == (384, 384, 3) and out.dtype == tf.float32 and valid.dtype == tf.bool
  valid = valid.numpy()
  # scale min(384/100, 384/200) = 1.92 -> 192 x 384 content, padded 96 rows above and below
  np.testing.assert_allclose(transform.scale_2.numpy(), [1.92, 1.92])
  np.testing.assert_allclose(transform.offset_2.numpy(), [96, 0])
  assert valid[96:288].all() and not valid[:96].any() and not valid[288:].any()
  assert float(tf.reduce_max(out[:96])) == 0.0
  box, keep = I.transform_boxes([[20, 50, 60, 150]], transform, (384, 384))
  np.testing.assert_allclose(box.numpy(), [[134.4, 96, 211.2, 288]], rtol=1e-5)
  assert keep.numpy().tolist() == [True]
  y1, x1, y2, x2 = box.numpy()[0]
  inner = out.numpy()[int(y1) + 2:int(y2) - 2, int(x1) + 2:int(x2) - 2]
  assert inner.min() > 0.99


def test_pad_one_side_puts_padding_bottom_right():
  out, valid, transform = I.resize_and_pad(np.ones([50, 100, 3], np.float32), (64, 64),
                                           pad_one_side=True)
  np.testing.assert_allclose(transform.offset_2.numpy(), [0, 0])
  assert valid.numpy()[:32].all() and not valid.numpy()[32:].any()
  assert float(tf.reduce_min(out[:32])) > 0.99


def test_augmentation_is_deterministic_given_the_seed_and_moves_boxes_with_the_pixels():
  box = (30, 40, 90, 120)
  image = _square_scene(128, 160, box)
  outs, checked = [], 0
  for seed in ([1, 2], [1, 2], [3, 4], [5, 6], [7, 8]):
    out, valid, transform = I.resize_and_pad(image, (96, 96), augment=True,
                                             seed=tf.constant(seed, tf.int32))
    outs.append(out.numpy())
    moved, keep = I.transform_boxes([box], transform, (96, 96))
    if keep.numpy()[0]:
      y1, x1, y2, x2 = moved.numpy()[0]
      inner = out.numpy()[int(np.ceil(y1)) + 1:int(y2) - 1, int(np.ceil(x1)) + 1:int(x2) - 1]
      if inner.size:
        assert inner.min() > 0.9
        checked += 1
      # pixels well outside the box are black (or padding)
      mask = np.zeros([96, 96], bool)
      mask[max(int(y1) - 2, 0):int(np.ceil(y2)) + 2, max(int(x1) - 2, 0):int(np.ceil(x2)) + 2] = True
      assert out.numpy()[~mask].max() < 0.1
    assert out.shape == (96, 96, 3) and valid.shape == (96, 96)
  assert checked >= 3
  np.testing.assert_array_equal(outs[0], outs[1])
  assert any(not np.array_equal(outs[0], o) for o in outs[2:])
  with pytest.raises(ValueError, match="stateless `seed`"):
    I.resize_and_pad(image, (96, 96), augment=True)


def test_augmentation_scale_range_matches_the_release():
  image = np.zeros([200, 300, 3], np.uint8)
  scales = []
  for i in range(40):
    _, _, t = I.resize_and_pad(image, (384, 384), augment=True, seed=tf.constant([i, 0]))
    scales.append(float(t.scale_2[0]))
  lo = np.floor(0.75 * 384) / 300  # smaller per-axis scale at the smallest factor
  hi = np.floor(1.3333 * 384) / 200  # larger per-axis scale at the largest factor
  assert lo - 1e-2 <= min(scales) and max(scales) <= hi + 1e-2
  assert max(scales) / min(scales) > 1.3  # both the min- and the max-side choices happen


def test_untransform_is_the_exact_inverse_of_transform():
  rng = np.random.default_rng(0)
  for i in range(10):
    h, w = rng.integers(32, 400, size=2)
    _, _, transform = I.resize_and_pad(np.zeros([h, w, 3], np.uint8), (256, 256),
                                       augment=bool(i % 2), seed=tf.constant([i, 7]))
    corners = rng.uniform(0, 1, [20, 2, 2]) * [h, w]
    boxes = np.concatenate([corners.min(1), corners.max(1)], -1).astype(np.float32)
    moved = boxes * np.tile(transform.scale_2.numpy(), 2) + np.tile(transform.offset_2.numpy(), 2)
    back = I.untransform_boxes(moved, transform).numpy()
    np.testing.assert_allclose(back, boxes, rtol=1e-5, atol=1e-3)
    clipped, keep = I.transform_boxes(boxes, transform, (256, 256))
    inside = np.all((moved >= 0) & (moved <= 256), axis=1)
    np.testing.assert_allclose(I.untransform_boxes(clipped, transform).numpy()[inside],
                               boxes[inside], rtol=1e-5, atol=1e-3)
    assert np.all(keep.numpy()[inside] == ((boxes[inside, 2] > boxes[inside, 0]) &
                                           (boxes[inside, 3] > boxes[inside, 1])))
    packed = I.transform_to_tensor(transform)
    np.testing.assert_array_equal(I.transform_from_tensor(packed.numpy()).offset_2,
                                  transform.offset_2)


def test_boxes_cropped_away_are_not_kept():
  transform = I.ImageTransform(tf.constant([1.0, 1.0]), tf.constant([-50.0, 0.0]))
  boxes, keep = I.transform_boxes([[0, 0, 40, 40], [40, 0, 80, 40]], transform, (64, 64))
  assert keep.numpy().tolist() == [False, True]
  np.testing.assert_allclose(boxes.numpy()[1], [0, 0, 30, 40])


def test_frames_and_unknown_shapes_inside_tf_data():
  frames = np.zeros([3, 40, 80, 3], np.uint8)
  out, valid, _ = I.resize_and_pad(frames, (32, 32))
  assert out.shape == (3, 32, 32, 3) and valid.numpy().sum() == 16 * 32

  def gen():
    yield np.zeros([30, 50, 3], np.uint8)
    yield np.zeros([70, 20, 3], np.uint8)
  ds = tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
  ds = ds.map(lambda im: I.resize_and_pad(im, (48, 64), augment=True, seed=tf.constant([0, 1]))[:2])
  for image, valid in ds:
    assert image.shape == (48, 64, 3) and valid.shape == (48, 64)


def test_normalize_clip_round_trip():
  image = tf.ones([2, 2, 3]) * tf.constant(I.CLIP_MEAN)
  np.testing.assert_allclose(I.normalize_clip(image).numpy(), 0, atol=1e-6)
  np.testing.assert_allclose(I.normalize_clip(tf.ones([1, 1, 3])).numpy()[0, 0],
                             (1 - np.array(I.CLIP_MEAN)) / np.array(I.CLIP_STD), rtol=1e-6)
  x = tf.random.stateless_uniform([4, 4, 3], [0, 0])
  np.testing.assert_allclose(I.denormalize_clip(I.normalize_clip(x)).numpy(), x.numpy(), atol=1e-6)
