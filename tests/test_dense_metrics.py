"""Dense-prediction metrics: hand-computed values on tiny maps, then the seqio wrappers end to end
through the dense-label encodings (unified_io/data/dense_labels.py)."""

import math

import numpy as np
import pytest

from unified_io.data import dense_labels
from unified_io.evaluation import dense_metrics as D
from unified_io.evaluation import metric_fns

IGNORE = dense_labels.IGNORE_CLASS


# ---------------------------------------------------------------- depth

def test_depth_counts_only_valid_target_pixels():
  target = np.array([[1.0, 2.0], [4.0, 0.0]])  # 0: no depth
  prediction = np.array([[1.0, 1.0], [5.0, 3.0]])
  # valid pixels d* = 1, 2, 4 with d = 1, 1, 5 (the 3 over the invalid pixel is not counted):
  #   |d - d*| / d*       = 0, 1/2, 1/4        -> abs-rel 0.25
  #   (d - d*)^2          = 0, 1, 1            -> RMSE sqrt(2/3)
  #   max(d/d*, d*/d)     = 1, 2, 1.25         -> delta1 (< 1.25) 1/3, delta2 (< 1.5625) 2/3,
  #                                               delta3 (< 1.953) 2/3
  got = D.depth_metrics([prediction], [target])
  assert got == pytest.approx({"depth_abs_rel": 0.25, "depth_rmse": math.sqrt(2 / 3),
                               "depth_delta1": 1 / 3, "depth_delta2": 2 / 3,
                               "depth_delta3": 2 / 3})


def test_depth_averages_per_image_then_over_images():
  # image A (1x1): d* = 1, d = 2 -> abs-rel 1, RMSE 1
  # image B (1x3): d* = 2, 2, 2, d = 2, 2, 4 -> abs-rel 1/3, RMSE sqrt(4/3)
  # per image: abs-rel (1 + 1/3) / 2 = 2/3, RMSE (1 + sqrt(4/3)) / 2
  # (pooled pixels would give abs-rel 2/4 = 0.5 and RMSE sqrt(5/4))
  got = D.depth_metrics([np.array([[2.0]]), np.array([[2.0, 2.0, 4.0]])],
                        [np.array([[1.0]]), np.array([[2.0, 2.0, 2.0]])])
  assert got["depth_abs_rel"] == pytest.approx(2 / 3)
  assert got["depth_rmse"] == pytest.approx((1 + math.sqrt(4 / 3)) / 2)
  # ratios: A 2; B 1, 1, 2 -> delta1 per image 0 and 2/3 -> 1/3
  assert got["depth_delta1"] == pytest.approx(1 / 3)


def test_depth_clips_predictions_and_skips_images_without_valid_pixels():
  # d = 0 is clipped to 1e-3: abs-rel |1e-3 - 1| / 1 = 0.999, ratio 1000 (finite, fails delta3)
  got = D.depth_metrics([np.array([[0.0]]), np.array([[5.0]])],
                        [np.array([[1.0]]), np.array([[0.0]])])  # 2nd image: nothing valid
  assert got["depth_abs_rel"] == pytest.approx(0.999)
  assert got["depth_delta3"] == 0.0
  with pytest.raises(ValueError, match="depth_metrics: no reference has a valid pixel"):
    D.depth_metrics([np.ones((2, 2))], [np.zeros((2, 2))])


def test_depth_resizes_the_prediction_bilinearly():
  # [[1, 3]] -> 1x4 with half-pixel centres: source x = 0 (clamped), 0.25, 0.75, 1 (clamped)
  #          -> 1, 1.5, 2.5, 3; vs d* = 1: squared errors 0, 0.25, 2.25, 4 -> RMSE sqrt(1.625)
  # (nearest would give 1, 1, 3, 3 -> RMSE sqrt(2))
  got = D.depth_metrics([np.array([[1.0, 3.0]])], [np.ones((1, 4))])
  assert got["depth_rmse"] == pytest.approx(math.sqrt(1.625))
  assert got["depth_abs_rel"] == pytest.approx(1.0)


# ---------------------------------------------------------------- surface normals

def _tilted(degrees, length=1.0):
  """A normal `degrees` away from +z, in the x-z plane."""
  a = math.radians(degrees)
  return [length * math.sin(a), 0.0, length * math.cos(a)]


def test_normals_angles_in_degrees_over_valid_target_pixels():
  z, none = [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]
  target = np.array([[z, z, z], [z, z, z], [none, none, none]])
  prediction = np.array([
      [_tilted(0), _tilted(10, length=3.0), _tilted(20)],  # length does not matter
      [_tilted(25), _tilted(45), none],  # a missing prediction on a valid pixel counts as 90
      [_tilted(90), _tilted(180), z],  # under invalid targets: not counted
  ])
  # errors 0, 10, 20, 25, 45, 90: mean 190/6, median (20 + 25)/2, < 11.25: 2, < 22.5: 3, < 30: 4
  got = D.normals_metrics([prediction], [target])
  assert got == pytest.approx({"normals_mean_deg": 190 / 6, "normals_median_deg": 22.5,
                               "normals_within_11_25": 2 / 6, "normals_within_22_5": 3 / 6,
                               "normals_within_30": 4 / 6})


def test_normals_pool_pixels_over_the_dataset():
  z = [0.0, 0.0, 1.0]
  # image A: 1 pixel at 90 degrees; image B: 3 pixels at 0 -> pooled mean 90/4 (per image: 45)
  got = D.normals_metrics([np.array([[_tilted(90)]]), np.array([[z, z, z]])],
                          [np.array([[z]]), np.array([[z, z, z]])])
  assert got["normals_mean_deg"] == pytest.approx(22.5)
  assert got["normals_median_deg"] == pytest.approx(0.0, abs=1e-9)
  with pytest.raises(ValueError, match="normals_metrics: no reference has a valid pixel"):
    D.normals_metrics([np.ones((1, 1, 3))], [np.zeros((1, 1, 3))])


# ---------------------------------------------------------------- segmentation

def test_segmentation_iou_from_the_confusion_matrix_ignoring_unlabelled_pixels():
  target = np.array([[0, 0, 1], [1, 1, 2], [2, IGNORE, 0]])
  prediction = np.array([[0, 1, 1], [1, 1, 2], [0, 2, IGNORE]])
  # (target, predicted) over the 8 labelled pixels:
  #   (0,0) (0,1) (1,1) (1,1) (1,1) (2,2) (2,0) (0,none)   [(ignore, 2) is left out]
  # class 0: TP 1, target 3, predicted 2 -> union 4 -> IoU 1/4
  # class 1: TP 3, target 3, predicted 4 -> union 4 -> IoU 3/4
  # class 2: TP 1, target 2, predicted 1 -> union 2 -> IoU 1/2  (1/3 if the ignore pixel counted)
  # mIoU (1/4 + 3/4 + 1/2) / 3 = 1/2; pixel accuracy 5/8
  expected = {"miou": 0.5, "pixel_accuracy": 5 / 8}
  assert D.segmentation_metrics([prediction], [target], num_classes=3) == pytest.approx(expected)
  # classes 3 and 4 appear nowhere: they are not averaged in
  assert D.segmentation_metrics([prediction], [target], num_classes=5) == pytest.approx(expected)


def test_segmentation_pools_over_images_and_counts_classes_only_predicted():
  # A: target [0, 0], predicted [0, 1]; B (another size): target [[1]], predicted [[1]]
  # pooled: class 0 TP 1, union 2 -> 1/2; class 1 TP 1, union 2 -> 1/2 -> mIoU 1/2, acc 2/3
  # (per image: A (1/2 + 0)/2, B 1 -> 5/8)
  got = D.segmentation_metrics([np.array([[0, 1]]), np.array([[1]])],
                               [np.array([[0, 0]]), np.array([[1]])], num_classes=2)
  assert got == pytest.approx({"miou": 0.5, "pixel_accuracy": 2 / 3})
  with pytest.raises(ValueError, match="segmentation_metrics: example 0: reference class 7"):
    D.segmentation_metrics([np.zeros((1, 1))], [np.array([[7]])], num_classes=3)


def test_segmentation_resizes_the_prediction_by_nearest_neighbour():
  # [[0, 2]] -> 2x4: [[0, 0, 2, 2]] * 2, exact (bilinear would invent class 1)
  got = D.segmentation_metrics([np.array([[0, 2]])], [np.array([[0, 0, 2, 2]] * 2)], 3)
  assert got == {"miou": 1.0, "pixel_accuracy": 1.0}


# ---------------------------------------------------------------- edges

def _column(shape, *cols):
  edges = np.zeros(shape, bool)
  for c in cols:
    edges[:, c] = True
  return edges


def test_edges_tolerance_is_one_pixel_on_a_small_image():
  target = _column((10, 10), 3)  # 0.0075 * diagonal 14.1 < 1 -> tolerance 1 pixel
  assert D.edge_metrics([_column((10, 10), 4)], [target]) == {
      "edge_precision": 1.0, "edge_recall": 1.0, "edge_f": 1.0}
  assert D.edge_metrics([_column((10, 10), 5)], [target])["edge_f"] == 0.0
  # 20 predicted pixels, the 10 in column 4 matched: P 1/2; every target pixel found: R 1
  got = D.edge_metrics([_column((10, 10), 4, 8)], [target])
  assert got == pytest.approx({"edge_precision": 0.5, "edge_recall": 1.0, "edge_f": 2 / 3})


def test_edges_tolerance_scales_with_the_diagonal():
  target = _column((200, 200), 100)  # 0.0075 * 282.8 = 2.12 pixels
  assert D.edge_metrics([_column((200, 200), 102)], [target])["edge_f"] == 1.0
  assert D.edge_metrics([_column((200, 200), 103)], [target])["edge_f"] == 0.0


def test_edges_pool_counts_over_the_dataset():
  # A: 1 predicted pixel, matched; B: 3 predicted pixels 2 columns away, 1 target pixel, unmatched
  # pooled P = 1/4, R = 1/2 (per image P would be (1 + 0)/2)
  a = np.array([[True, False, False]])
  b_target = np.array([[True, False, False, False, False]])
  b_prediction = np.array([[False, False, True, True, True]])
  got = D.edge_metrics([a, b_prediction], [a, b_target])
  assert got == pytest.approx({"edge_precision": 0.25, "edge_recall": 0.5,
                               "edge_f": 2 * 0.25 * 0.5 / 0.75})
  nothing = np.zeros((3, 3), bool)
  assert D.edge_metrics([nothing], [nothing])["edge_f"] == 1.0  # nothing to find, none found
  assert D.edge_metrics([nothing], [_column((3, 3), 1)])["edge_f"] == 0.0


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("fn, example", [
    (D.depth_metrics, np.ones((2, 2))),
    (D.normals_metrics, np.ones((2, 2, 3))),
    (lambda p, r: D.segmentation_metrics(p, r, 3), np.zeros((2, 2), int)),
    (D.edge_metrics, np.ones((2, 2), bool)),
])
def test_empty_and_mismatched_inputs_raise_naming_the_metric(fn, example):
  with pytest.raises(ValueError, match=r"_metrics: no predictions given"):
    fn([], [])
  with pytest.raises(ValueError, match=r"_metrics: 1 predictions but 2 references"):
    fn([example], [example, example])


# ---------------------------------------------------------------- seqio wrappers, end to end

def _media(rgb_uint8_or_unit):
  """What generated_media gives: float image in [0, 1] (targets also carry tokens and a mask)."""
  image = np.asarray(rgb_uint8_or_unit)
  if image.dtype == np.uint8:
    image = image.astype(np.float32) / 255.0
  return {"tokens": np.zeros(4, np.int32), "image": image.astype(np.float32),
          "mask": np.ones(4, np.int32)}


def test_depth_error_end_to_end():
  rng = np.random.default_rng(0)
  step = dense_labels.DEFAULT_MAX_DEPTH / 255  # one grey level in metres
  levels = rng.integers(13, 128, size=(5, 6))  # 0.51 .. 4.98 m, twice still drawable
  depth = levels * step
  depth[0, :2] = 0.0  # no depth
  targets = [_media(dense_labels.encode_depth(depth))]
  # the exact depth rendered without 8-bit rounding vs the drawn target: each drawn depth is off
  # by at most half a grey level, so abs-rel <= (step / 2) / min depth (0.51 m) ~ 0.038
  exact = np.repeat((depth / dense_labels.DEFAULT_MAX_DEPTH)[:, :, None], 3, axis=2)
  perfect = metric_fns.depth_error(targets, [_media(exact)])
  assert perfect["depth_abs_rel"] <= (step / 2) / (13 * step) + 1e-6
  assert perfect["depth_delta1"] == 1.0
  # twice the depth, drawn exactly: abs-rel 1, RMSE = sqrt(mean d*^2), no pixel within 1.25^3
  wrong = metric_fns.depth_error(targets, [_media(dense_labels.encode_depth(2 * depth))])
  valid = depth[depth > 0]
  assert wrong["depth_abs_rel"] == pytest.approx(1.0, abs=1e-5)
  assert wrong["depth_rmse"] == pytest.approx(math.sqrt(np.mean(valid ** 2)), rel=1e-5)
  assert wrong["depth_delta3"] == 0.0
  # the same pictures read with a 20 m range: every depth, and so the RMSE, doubles
  twenty = metric_fns.depth_error_for(20.0)
  assert twenty.__name__ == "depth_error_max_20m"
  assert metric_fns.depth_error.__name__ == "depth_error"
  assert twenty(targets, [_media(dense_labels.encode_depth(2 * depth))])["depth_rmse"] == (
      pytest.approx(2 * wrong["depth_rmse"], rel=1e-5))


def test_normals_error_end_to_end():
  rng = np.random.default_rng(1)
  normals = rng.normal(size=(6, 6, 3))
  normals[..., 2] = np.abs(normals[..., 2]) + 0.2  # facing the camera
  normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
  normals[0, 0] = 0.0  # no normal
  targets = [_media(dense_labels.encode_normals(normals))]
  # exact colours (n + 1) / 2 vs the 8-bit target: each component is off by at most
  # 2 * (0.5 / 255), so the vector by sqrt(3) / 255 and the angle by asin(sqrt(3) / 255)
  bound = math.degrees(math.asin(math.sqrt(3) / 255))  # ~0.39 degrees
  exact = np.where(np.linalg.norm(normals, axis=-1, keepdims=True) > 0, (normals + 1) / 2, 0.0)
  perfect = metric_fns.normals_error(targets, [_media(exact)])
  assert 0.0 < perfect["normals_mean_deg"] <= bound
  assert perfect["normals_within_11_25"] == 1.0
  # every target normal vs +x drawn, but a black (missing) prediction at one valid pixel
  sideways = dense_labels.encode_normals(np.broadcast_to([1.0, 0.0, 0.0], normals.shape))
  sideways[1, 1] = 0
  wrong = metric_fns.normals_error(targets, [_media(sideways)])
  angles = np.degrees(np.arccos(np.clip(normals[..., 0], -1, 1)))  # to +x, per pixel
  angles[1, 1] = 90.0
  expected = np.mean(np.delete(angles.ravel(), 0))  # pixel (0, 0) has no target normal
  assert wrong["normals_mean_deg"] == pytest.approx(expected, abs=2 * bound)


def test_segmentation_miou_end_to_end():
  rng = np.random.default_rng(2)
  classes = rng.integers(0, 5, size=(7, 7))
  classes[0, :3] = IGNORE
  targets = [_media(dense_labels.encode_segmentation(classes))]
  # a generated picture is never exactly the palette: +-8 levels per channel still decodes
  drawn = dense_labels.encode_segmentation(classes).astype(np.float32) / 255
  noisy = np.clip(drawn + rng.uniform(-8, 8, size=drawn.shape) / 255, 0, 1)
  miou5 = metric_fns.segmentation_miou_for(5)
  assert miou5.__name__ == "segmentation_miou_5_classes"
  assert miou5(targets, [_media(noisy)]) == {"miou": 1.0, "pixel_accuracy": 1.0}
  assert metric_fns.segmentation_miou(targets, [_media(noisy)])["miou"] == 1.0
  shifted = dense_labels.encode_segmentation(np.where(classes == IGNORE, IGNORE,
                                                      (classes + 1) % 5))
  assert miou5(targets, [_media(shifted)]) == {"miou": 0.0, "pixel_accuracy": 0.0}
  with pytest.raises(ValueError, match="segmentation_miou_for: 21 classes"):
    metric_fns.segmentation_miou_for(21)


def test_edge_fscore_end_to_end():
  target = _column((16, 16), 5)
  targets = [_media(dense_labels.encode_edges(target))]
  assert metric_fns.edge_fscore(targets, [_media(dense_labels.encode_edges(target))]) == {
      "edge_precision": 1.0, "edge_recall": 1.0, "edge_f": 1.0}
  far = dense_labels.encode_edges(_column((16, 16), 5, 12))  # column 12: 7 pixels off
  assert metric_fns.edge_fscore(targets, [_media(far)]) == pytest.approx(
      {"edge_precision": 0.5, "edge_recall": 1.0, "edge_f": 2 / 3})
  with pytest.raises(ValueError, match="edge_fscore: prediction 0 has no 'image'"):
    metric_fns.edge_fscore(targets, [{"tokens": np.zeros(4)}])
