"""Box metrics: IoU, referring expressions (Acc@0.5, mean IoU) and COCO-style detection AP.

Boxes follow the repo's convention (unified_io/data/ops/boxes.py): (y1, x1, y2, x2) in pixels,
as continuous coordinates (area = (y2 - y1) * (x2 - x1), no "+1"). A box with y2 <= y1 or
x2 <= x1 has no area and overlaps nothing.

Predictions come out in model-image pixels (the resized and padded image); `unresize_boxes`
maps them back to original-image pixels with the transform `resize_and_pad` reports
(unified_io/data/ops/image.py: `transform_to_tensor` packs it as (scale_y, scale_x, offset_y,
offset_x), original * scale + offset = model), and `resize_transform` recomputes that transform
for an evaluation image (no augmentation) from its original size alone.
"""

import collections
from typing import Dict, Hashable, List, Mapping, NamedTuple, Optional, Sequence

import numpy as np

AP_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # COCO's .50:.05:.95
AP_RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's 101-point interpolation
MAX_DETECTIONS = 100


def as_boxes(boxes, what: str = "boxes") -> np.ndarray:
  """Array-like [4] or [n, 4] (None = no box) -> float64 [n, 4]."""
  if boxes is None:
    return np.zeros([0, 4])
  boxes = np.asarray(boxes, np.float64)
  if boxes.size == 0:
    return np.zeros([0, 4])
  if boxes.shape[-1] != 4 or boxes.ndim not in (1, 2):
    raise ValueError(f"{what}: expected (y1, x1, y2, x2) boxes shaped [4] or [n, 4], got shape "
                     f"{boxes.shape}")
  return boxes.reshape(-1, 4)


def box_area(boxes_n4) -> np.ndarray:
  """[n] areas of (y1, x1, y2, x2) boxes; inverted boxes have area 0."""
  boxes_n4 = as_boxes(boxes_n4)
  return (np.maximum(boxes_n4[:, 2] - boxes_n4[:, 0], 0) *
          np.maximum(boxes_n4[:, 3] - boxes_n4[:, 1], 0))


def box_intersection(boxes_a_n4, boxes_b_m4) -> np.ndarray:
  """[n, m] areas of the intersections of two sets of (y1, x1, y2, x2) boxes."""
  a_n4, b_m4 = as_boxes(boxes_a_n4, "box_iou"), as_boxes(boxes_b_m4, "box_iou")
  top_left = np.maximum(a_n4[:, None, :2], b_m4[None, :, :2])
  bottom_right = np.minimum(a_n4[:, None, 2:], b_m4[None, :, 2:])
  return np.prod(np.maximum(bottom_right - top_left, 0), axis=-1)


def box_iou(boxes_a_n4, boxes_b_m4) -> np.ndarray:
  """[n, m] intersection over union of two sets of (y1, x1, y2, x2) boxes (0 where union is 0)."""
  a_n4, b_m4 = as_boxes(boxes_a_n4, "box_iou"), as_boxes(boxes_b_m4, "box_iou")
  inter_nm = box_intersection(a_n4, b_m4)
  union_nm = box_area(a_n4)[:, None] + box_area(b_m4)[None, :] - inter_nm
  return np.where(union_nm > 0, inter_nm / np.where(union_nm > 0, union_nm, 1), 0.0)


# ---------------------------------------------------------------- undoing the resize

def resize_transform(original_hw: Sequence[int], model_hw: Sequence[int],
                     pad_one_side: bool = False) -> np.ndarray:
  """float32 [4] (scale_y, scale_x, offset_y, offset_x) that `resize_and_pad` applies at eval.

  The numpy twin of the no-augmentation branch of unified_io/data/ops/image.py: scale =
  min(H / h, W / w), the scaled side floor(side * scale) (at least 1), the per-axis scale
  scaled / side, padding split evenly (the extra pixel after) unless `pad_one_side`.
  """
  hw = np.asarray(original_hw, np.float32)
  size = np.asarray(model_hw, np.float32)
  if hw.shape != (2,) or size.shape != (2,) or np.any(hw <= 0) or np.any(size <= 0):
    raise ValueError(f"resize_transform: sizes must be positive (height, width), got original "
                     f"{original_hw} and model {model_hw}")
  scale = np.min(size / hw)
  scaled_hw = np.maximum(np.floor(hw * scale), 1)
  offset = np.zeros(2, np.float32) if pad_one_side else (size - scaled_hw) // 2
  return np.concatenate([scaled_hw / hw, offset]).astype(np.float32)


def unresize_boxes(boxes_n4, transform_4, clip_hw: Optional[Sequence[float]] = None) -> np.ndarray:
  """Boxes in model-image pixels -> original-image pixels: (box - offset) / scale per axis.

  `transform_4` is (scale_y, scale_x, offset_y, offset_x) (the `meta/` field written by
  `transform_to_tensor`, or `resize_transform`). `clip_hw` = (h, w) of the original image clips
  the result to it (a predicted box reaching into the padding would otherwise stick out).
  """
  boxes_n4 = as_boxes(boxes_n4, "unresize_boxes")
  transform_4 = np.asarray(transform_4, np.float64).reshape(-1)
  if transform_4.shape != (4,) or np.any(transform_4[:2] <= 0):
    raise ValueError(f"unresize_boxes: transform must be (scale_y, scale_x, offset_y, offset_x) "
                     f"with positive scales, got {transform_4.tolist()}")
  scale_4, offset_4 = np.tile(transform_4[:2], 2), np.tile(transform_4[2:], 2)
  out_n4 = (boxes_n4 - offset_4) / scale_4
  if clip_hw is not None:
    out_n4 = np.clip(out_n4, 0, np.tile(np.asarray(clip_hw, np.float64), 2))
  return out_n4


# ---------------------------------------------------------------- referring expressions

def refexp(predictions: Sequence, references: Sequence,
           iou_threshold: float = 0.5) -> Dict[str, float]:
  """Referring-expression grounding -> {"acc50": Acc@iou_threshold, "mean_iou": mean IoU}.

  Args:
    predictions: per example, the predicted box [4] or boxes [n, 4] (the FIRST is scored, as the
      model's answer is its first box), or None / an empty array when the model gave no box
      (IoU 0).
    references: per example, the one ground-truth box [4] (or [1, 4]), same pixel frame.
    iou_threshold: the IoU at or above which a prediction counts as correct.
  """
  if len(predictions) == 0:  # pylint: disable=g-explicit-length-test
    raise ValueError("refexp: no predictions given; pass one box (or None) per example")
  if len(predictions) != len(references):
    raise ValueError(f"refexp: {len(predictions)} predictions but {len(references)} references")
  ious = []
  for i, (prediction, reference) in enumerate(zip(predictions, references)):
    gt = as_boxes(reference, f"refexp reference {i}")
    if len(gt) != 1:
      raise ValueError(f"refexp: example {i} must have exactly one ground-truth box, got {len(gt)}")
    pred = as_boxes(prediction, f"refexp prediction {i}")
    ious.append(float(box_iou(pred[:1], gt)[0, 0]) if len(pred) else 0.0)
  ious = np.asarray(ious)
  return {"acc50": float(np.mean(ious >= iou_threshold)), "mean_iou": float(np.mean(ious))}


# ---------------------------------------------------------------- detection AP

class _Image(NamedTuple):
  """One image's detections (ranked, capped) and ground truth, validated."""
  boxes_d4: np.ndarray
  labels_d: List[Hashable]
  scores_d: np.ndarray
  gt_boxes_g4: np.ndarray
  gt_labels_g: List[Hashable]
  gt_crowd_g: np.ndarray  # bool: a crowd region (COCO's iscrowd), matched but never counted


def _detections(predictions, references, max_detections: int) -> List[_Image]:
  """Validated images; each keeps its `max_detections` best-scored detections (order breaks ties,
  and ranks them when no scores are given: earlier = more confident)."""
  if len(predictions) == 0:  # pylint: disable=g-explicit-length-test
    raise ValueError("detection_ap: no predictions given; pass one dict per image")
  if len(predictions) != len(references):
    raise ValueError(f"detection_ap: {len(predictions)} prediction dicts but {len(references)} "
                     f"reference dicts; pass one of each per image")
  has_scores = {pred.get("scores") is not None for pred in predictions}
  if len(has_scores) > 1:
    raise ValueError("detection_ap: some images' predictions have 'scores' and others do not; "
                     "give scores for all images or for none (then the order ranks them)")
  images = []
  for i, (pred, ref) in enumerate(zip(predictions, references)):
    boxes = as_boxes(pred.get("boxes"), f"detection_ap prediction {i}")
    labels = list(pred.get("labels", []))
    scores = (np.asarray(pred["scores"], np.float64).reshape(-1) if True in has_scores
              else -np.arange(len(boxes), dtype=np.float64))  # earlier = more confident
    gt_boxes = as_boxes(ref.get("boxes"), f"detection_ap reference {i}")
    gt_labels = list(ref.get("labels", []))
    crowd = ref.get("crowd")
    crowd = (np.zeros(len(gt_boxes), bool) if crowd is None
             else np.asarray(crowd, bool).reshape(-1))
    if (len(labels) != len(boxes) or len(scores) != len(boxes) or len(gt_labels) != len(gt_boxes)
        or len(crowd) != len(gt_boxes)):
      raise ValueError(f"detection_ap: image {i}: boxes, labels (and scores, crowd) must have the "
                       f"same length; got {len(boxes)} boxes, {len(labels)} labels, "
                       f"{len(scores)} scores predicted and {len(gt_boxes)} boxes, "
                       f"{len(gt_labels)} labels, {len(crowd)} crowd flags in the reference")
    keep = np.argsort(-scores, kind="stable")[:max_detections]
    images.append(_Image(boxes[keep], [labels[j] for j in keep], scores[keep], gt_boxes,
                         gt_labels, crowd))
  return images


def _interpolated_ap(is_tp_d: np.ndarray, num_gt: int) -> float:
  """COCO's 101-point AP from detections sorted by score (True = true positive)."""
  if len(is_tp_d) == 0:
    return 0.0
  tp_d = np.cumsum(is_tp_d)
  recall_d = tp_d / num_gt
  precision_d = tp_d / np.arange(1, len(is_tp_d) + 1)
  envelope_d = np.maximum.accumulate(precision_d[::-1])[::-1]  # best precision at >= this recall
  first_d = np.searchsorted(recall_d, AP_RECALL_POINTS, side="left")
  return float(np.mean(np.where(first_d < len(recall_d),
                                envelope_d[np.minimum(first_d, len(recall_d) - 1)], 0.0)))


def _overlaps(boxes_d4, gt_boxes_g4, crowd_g) -> np.ndarray:
  """[d, g] IoU, except against a crowd region: intersection / detection area (COCO's rule)."""
  inter_dg = box_intersection(boxes_d4, gt_boxes_g4)
  area_d = box_area(boxes_d4)[:, None]
  union_dg = np.where(crowd_g[None, :], area_d, area_d + box_area(gt_boxes_g4)[None, :] - inter_dg)
  return np.where(union_dg > 0, inter_dg / np.where(union_dg > 0, union_dg, 1), 0.0)


def _match(overlap_g: np.ndarray, crowd_g: np.ndarray, taken: set, threshold: float
           ) -> Optional[int]:
  """COCO's greedy match of one detection: the untaken ordinary ground truth with the highest
  overlap >= threshold (ties: the later one); failing that, any crowd region reaching it."""
  best = None
  for wanted_crowd in (False, True):
    for g in np.flatnonzero(crowd_g == wanted_crowd):
      if overlap_g[g] >= threshold and (wanted_crowd or g not in taken):
        if best is None or overlap_g[g] >= overlap_g[best]:
          best = int(g)
    if best is not None:
      return best
  return None


def _class_ap(label: Hashable, images: Sequence[_Image]) -> List[float]:
  """AP of one class at each threshold of AP_IOU_THRESHOLDS."""
  ranked = []  # (-score, image, overlaps with the image's gts of this class, their crowd flags)
  num_gt = 0
  for index, image in enumerate(images):
    gt_sel = [j for j, l in enumerate(image.gt_labels_g) if l == label]
    crowd_g = image.gt_crowd_g[gt_sel]
    num_gt += int(np.sum(~crowd_g))
    det_sel = [j for j, l in enumerate(image.labels_d) if l == label]
    overlap_dg = _overlaps(image.boxes_d4[det_sel], image.gt_boxes_g4[gt_sel], crowd_g)
    ranked += [(-image.scores_d[j], index, overlap_dg[k], crowd_g) for k, j in enumerate(det_sel)]
  ranked.sort(key=lambda r: r[0])  # stable: equal scores keep image order

  aps = []
  for threshold in AP_IOU_THRESHOLDS:
    taken = collections.defaultdict(set)  # image -> indices of its matched ground truths
    is_tp = []  # a detection matching a crowd region is left out: neither right nor wrong
    for _, index, overlap_g, crowd_g in ranked:
      g = _match(overlap_g, crowd_g, taken[index], threshold)
      if g is None:
        is_tp.append(False)
      elif not crowd_g[g]:
        taken[index].add(g)
        is_tp.append(True)
    aps.append(_interpolated_ap(np.array(is_tp, bool), num_gt))
  return aps


def detection_ap(predictions: Sequence[Mapping], references: Sequence[Mapping],
                 max_detections: int = MAX_DETECTIONS,
                 per_class: bool = False) -> Dict[str, float]:
  """COCO box AP -> {"ap": AP@[.5:.95], "ap50", "ap75"} (+ "ap/<label>" with per_class).

  Args:
    predictions: per image, {"boxes": [n, 4], "labels": [n], "scores": [n] (optional)}. Without
      scores (generated text has none) the order ranks them: an image's first box outranks its
      second, and equal ranks across images keep image order.
    references: per image, {"boxes": [k, 4], "labels": [k], "crowd": [k] bools (optional,
      COCO's iscrowd)}; images without objects are fine.
    max_detections: per image, the highest-ranked detections kept (COCO: 100).
    per_class: also report each class's AP@[.5:.95].

  As COCO's evaluation (pycocotools COCOeval, area range "all") computes it: per class and IoU
  threshold in .50:.05:.95, all detections sorted by score; each takes the unmatched ordinary
  ground truth of its image with the highest IoU >= threshold, else a crowd region it overlaps
  enough (intersection / its own area >= threshold; it is then ignored), else it is a false
  positive. AP: precision made non-increasing, read at 101 recall points 0:.01:1 (0 beyond the
  highest recall), averaged; then averaged over thresholds and over the classes with at least
  one non-crowd ground truth (predicted labels of other classes count for nothing, as in COCO).
  """
  images = _detections(predictions, references, max_detections)
  classes = sorted({l for image in images
                    for l, crowd in zip(image.gt_labels_g, image.gt_crowd_g) if not crowd},
                   key=str)
  if not classes:
    raise ValueError("detection_ap: the references hold no ground-truth boxes (crowd regions "
                     "aside), so AP is undefined")
  ap_ct = np.array([_class_ap(c, images) for c in classes])
  out = {"ap": float(ap_ct.mean()),
         "ap50": float(ap_ct[:, AP_IOU_THRESHOLDS.index(0.5)].mean()),
         "ap75": float(ap_ct[:, AP_IOU_THRESHOLDS.index(0.75)].mean())}
  if per_class:
    out.update({f"ap/{c}": float(ap_ct[i].mean()) for i, c in enumerate(classes)})
  return out
