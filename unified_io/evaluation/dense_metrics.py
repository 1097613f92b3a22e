"""Dense-prediction metrics as the depth, surface-normal, segmentation and edge papers report them.

Definitions over decoded labels (`unified_io.data.dense_labels.decode_*` turns generated pictures
into labels; `metric_fns` wraps these for seqio). Like `metrics`, each is
`metric(predictions, references, **options) -> {name: float}` with one entry per example, in the
same order; examples may differ in size. An empty list or a length mismatch raises ValueError.

  name                  prediction / reference per example        keys
  depth_metrics         depth [H, W] m / depth [H, W] m (0=none)   depth_abs_rel, depth_rmse,
                                                                   depth_delta1 .. depth_delta3
  normals_metrics       normals [H, W, 3] / normals (0 = none)    normals_mean_deg, _median_deg,
                                                                   normals_within_11_25, _22_5, _30
  segmentation_metrics  class ids [H, W] / class ids [H, W]       miou, pixel_accuracy
                        (IGNORE_CLASS = unlabelled)
  edge_metrics          bool [H, W] / bool [H, W]                 edge_precision, edge_recall,
                                                                   edge_f

A prediction whose size differs from its reference's is resized to the reference's size first
(half-pixel centres, as image libraries do): bilinearly for depth and normals (continuous values;
normals renormalised afterwards), nearest-neighbour for class ids and edge maps (no blending of
labels). Fractions (deltas, "within", accuracy, precision) are in [0, 1], not percent.

How each is averaged, and why:
  depth     per image, then the mean over images (RMSE too: the root per image, then the mean),
            over the reference's valid pixels (d* > 0); predictions clipped to >= MIN_DEPTH.
            Eigen et al.'s NYUv2 protocol as the BTS / AdaBins / DPT / 4M evaluation code runs it.
  normals   pooled over every valid reference pixel of the dataset (the NYUv2 normal protocol of
            Fouhey et al. / Eigen & Fergus). A reference pixel whose prediction has no normal
            (decoded black) counts as 90 degrees: the angle to the zero vector, as if orthogonal.
  segm.     one dataset-level confusion matrix (as mmseg / the Cityscapes toolkit); IoU averaged
            over the classes present in the references or predictions (union > 0). A labelled
            pixel predicted as no class (black, IGNORE_CLASS) is a miss for its reference class.
  edges     counts summed over the dataset, then P, R, F (the BSDS "ODS" at one fixed threshold).
"""

from typing import Dict, List, Sequence, Tuple

import numpy as np
from scipy import ndimage

from unified_io.data.dense_labels import IGNORE_CLASS, normals_valid

Scores = Dict[str, float]

MIN_DEPTH = 1e-3  # metres: predictions are clipped to at least this (keeps d / d* finite)
DELTA_BASE = 1.25  # delta_k: fraction with max(d / d*, d* / d) < 1.25 ** k
NORMAL_THRESHOLDS_DEG = (11.25, 22.5, 30.0)
EDGE_MAX_DIST = 0.0075  # BSDS tolerance, as a fraction of the image diagonal (at least 1 pixel)


def _pairs(metric: str, predictions: Sequence, references: Sequence,
           trailing: Tuple[int, ...] = ()) -> List[Tuple[int, np.ndarray, np.ndarray]]:
  """[(i, prediction, reference)] as numpy; checks count and per-example rank / channels."""
  if len(predictions) == 0:  # pylint: disable=g-explicit-length-test
    raise ValueError(f"{metric}: no predictions given; pass one prediction per example")
  if len(predictions) != len(references):
    raise ValueError(f"{metric}: {len(predictions)} predictions but {len(references)} "
                     f"references; pass one of each per example")
  out = []
  want = "[H, W" + "".join(f", {t}" for t in trailing) + "]"
  for i, (prediction, reference) in enumerate(zip(predictions, references)):
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    for side, a in (("prediction", prediction), ("reference", reference)):
      if a.ndim != 2 + len(trailing) or a.shape[2:] != trailing or 0 in a.shape:
        raise ValueError(f"{metric}: example {i}: {side} shape {a.shape}, expected {want}")
    out.append((i, prediction, reference))
  return out


def _source_coords(n_out: int, n_in: int) -> np.ndarray:
  """Input coordinates of the output pixel centres (half-pixel convention), clipped to the grid."""
  return np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1.0)


def resize_nearest(image: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
  """[h, w, ...] -> [H, W, ...] by nearest neighbour (labels keep their values)."""
  if image.shape[:2] == tuple(hw):
    return image
  rows = np.minimum(((np.arange(hw[0]) + 0.5) * image.shape[0] / hw[0]).astype(int),
                    image.shape[0] - 1)
  cols = np.minimum(((np.arange(hw[1]) + 0.5) * image.shape[1] / hw[1]).astype(int),
                    image.shape[1] - 1)
  return image[rows][:, cols]


def resize_bilinear(image: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
  """[h, w, ...] -> [H, W, ...] float64, bilinear with half-pixel centres (edges clamped)."""
  image = np.asarray(image, np.float64)
  if image.shape[:2] == tuple(hw):
    return image
  y, x = _source_coords(hw[0], image.shape[0]), _source_coords(hw[1], image.shape[1])
  y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
  y1, x1 = np.minimum(y0 + 1, image.shape[0] - 1), np.minimum(x0 + 1, image.shape[1] - 1)
  wy = (y - y0).reshape((-1, 1) + (1,) * (image.ndim - 2))
  wx = (x - x0).reshape((1, -1) + (1,) * (image.ndim - 2))
  top = image[y0][:, x0] * (1 - wx) + image[y0][:, x1] * wx
  bottom = image[y1][:, x0] * (1 - wx) + image[y1][:, x1] * wx
  return top * (1 - wy) + bottom * wy


# ---------------------------------------------------------------- depth

def depth_metrics(predictions: Sequence[np.ndarray], references: Sequence[np.ndarray],
                  min_depth: float = MIN_DEPTH) -> Scores:
  """Depth in metres -> abs-rel, RMSE (m), delta1..3; each per image over the reference's valid
  pixels (d* > 0 and finite), then averaged over the images that have any. Predictions are
  resized bilinearly and clipped to >= `min_depth`."""
  per_image = []
  for _, prediction, reference in _pairs("depth_metrics", predictions, references):
    reference = reference.astype(np.float64)
    valid = np.isfinite(reference) & (reference > 0)
    if not valid.any():
      continue
    d_star = reference[valid]
    d = np.maximum(np.nan_to_num(resize_bilinear(prediction, reference.shape)[valid],
                                 nan=min_depth), min_depth)
    ratio = np.maximum(d / d_star, d_star / d)
    per_image.append([np.mean(np.abs(d - d_star) / d_star), np.sqrt(np.mean((d - d_star) ** 2))]
                     + [np.mean(ratio < DELTA_BASE ** k) for k in (1, 2, 3)])
  if not per_image:
    raise ValueError("depth_metrics: no reference has a valid pixel (depth > 0)")
  mean = np.mean(per_image, axis=0)
  keys = ("depth_abs_rel", "depth_rmse", "depth_delta1", "depth_delta2", "depth_delta3")
  return {k: float(v) for k, v in zip(keys, mean)}


# ---------------------------------------------------------------- surface normals

def angular_error_deg(prediction: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """Degrees between normals [..., 3] (any nonzero length); 90 where the prediction has none."""
  p, r = prediction.astype(np.float64), reference.astype(np.float64)
  p = p / np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), 1e-12)
  r = r / np.maximum(np.linalg.norm(r, axis=-1, keepdims=True), 1e-12)
  # atan2(|p x r|, p . r) stays accurate near 0 degrees, where arccos(p . r) loses digits.
  angle = np.degrees(np.arctan2(np.linalg.norm(np.cross(p, r), axis=-1), (p * r).sum(-1)))
  return np.where(normals_valid(prediction), angle, 90.0)


def normals_metrics(predictions: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> Scores:
  """Angular error (degrees) pooled over every valid reference pixel (length > 0.5, as
  `dense_labels.normals_valid`): mean, median, fraction < 11.25 / 22.5 / 30. Predictions are
  resized bilinearly and renormalised; a missing predicted normal counts as 90 degrees."""
  errors = []
  for _, prediction, reference in _pairs("normals_metrics", predictions, references, (3,)):
    valid = normals_valid(reference)
    errors.append(angular_error_deg(resize_bilinear(prediction, reference.shape[:2])[valid],
                                    reference[valid]))
  errors = np.concatenate(errors)
  if errors.size == 0:
    raise ValueError("normals_metrics: no reference has a valid pixel (a nonzero normal)")
  out = {"normals_mean_deg": float(errors.mean()), "normals_median_deg": float(np.median(errors))}
  for t in NORMAL_THRESHOLDS_DEG:
    out[f"normals_within_{t:g}".replace(".", "_")] = float(np.mean(errors < t))
  return out


# ---------------------------------------------------------------- semantic segmentation

def confusion_matrix(predictions: Sequence[np.ndarray], references: Sequence[np.ndarray],
                     num_classes: int, metric: str = "confusion_matrix") -> np.ndarray:
  """int64 [num_classes, num_classes + 1]: [reference class, predicted class], pooled over the
  dataset; reference IGNORE_CLASS pixels are left out, and the last column counts labelled pixels
  predicted as no class (IGNORE_CLASS or an id outside 0..num_classes-1). Predictions are resized
  by nearest neighbour."""
  cm = np.zeros((num_classes, num_classes + 1), np.int64)
  for i, prediction, reference in _pairs(metric, predictions, references):
    reference = reference.astype(np.int64)
    labelled = reference != IGNORE_CLASS
    bad = labelled & ((reference < 0) | (reference >= num_classes))
    if bad.any():
      raise ValueError(f"{metric}: example {i}: reference class {int(reference[bad][0])} is "
                       f"outside 0..{num_classes - 1} (and is not the ignore id {IGNORE_CLASS})")
    predicted = resize_nearest(prediction.astype(np.int64), reference.shape)[labelled]
    predicted = np.where((predicted >= 0) & (predicted < num_classes), predicted, num_classes)
    cm += np.bincount(reference[labelled] * (num_classes + 1) + predicted,
                      minlength=num_classes * (num_classes + 1)).reshape(cm.shape)
  return cm


def segmentation_metrics(predictions: Sequence[np.ndarray], references: Sequence[np.ndarray],
                         num_classes: int) -> Scores:
  """mIoU and pixel accuracy from the dataset's confusion matrix (`confusion_matrix`); IoU_c =
  TP / (TP + FP + FN), averaged over classes with a nonzero union."""
  cm = confusion_matrix(predictions, references, num_classes, "segmentation_metrics")
  if cm.sum() == 0:
    raise ValueError("segmentation_metrics: every reference pixel is the ignore class")
  tp = np.diag(cm[:, :num_classes]).astype(np.float64)
  union = cm.sum(axis=1) + cm[:, :num_classes].sum(axis=0) - tp
  present = union > 0
  return {"miou": float(np.mean(tp[present] / union[present])),
          "pixel_accuracy": float(tp.sum() / cm.sum())}


# ---------------------------------------------------------------- edges

def _within(edges: np.ndarray, others: np.ndarray, max_dist: float) -> int:
  """How many `edges` pixels lie within `max_dist` (Euclidean) of some `others` pixel."""
  if not others.any() or not edges.any():
    return 0
  distance_to_others = ndimage.distance_transform_edt(~others)
  return int(np.count_nonzero(edges & (distance_to_others <= max_dist)))


def _ratio(hits: int, total: int, other_total: int) -> float:
  """hits / total; with nothing to count, 1 if the other side is empty too (nothing to find,
  nothing found), else 0."""
  if total == 0:
    return 1.0 if other_total == 0 else 0.0
  return hits / total


def edge_metrics(predictions: Sequence[np.ndarray], references: Sequence[np.ndarray],
                 max_dist: float = EDGE_MAX_DIST) -> Scores:
  """Edge precision, recall and F at the maps' (already thresholded) edges, BSDS-style tolerance:
  an edge pixel is matched when the other map has an edge within max(1, max_dist * diagonal)
  pixels of it (the reference's diagonal). Counts are summed over the dataset before dividing.

  Unlike the BSDS benchmark's one-to-one (bipartite) matching, several predicted pixels may match
  one reference pixel here, so precision, and F, are slightly optimistic (e.g. for thick edges).
  Predictions are resized by nearest neighbour; pass bool maps (nonzero = edge).
  """
  matched_p = n_pred = matched_r = n_ref = 0
  for _, prediction, reference in _pairs("edge_metrics", predictions, references):
    reference = reference.astype(bool)
    prediction = resize_nearest(prediction.astype(bool), reference.shape)
    tolerance = max(1.0, max_dist * float(np.hypot(*reference.shape)))
    matched_p += _within(prediction, reference, tolerance)
    matched_r += _within(reference, prediction, tolerance)
    n_pred += int(prediction.sum())
    n_ref += int(reference.sum())
  precision = _ratio(matched_p, n_pred, n_ref)
  recall = _ratio(matched_r, n_ref, n_pred)
  f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
  return {"edge_precision": precision, "edge_recall": recall, "edge_f": f}
