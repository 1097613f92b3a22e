"""seqio postprocessors: a decoded model output or target -> what a task's metric functions compare.

  registry.add_task("refcoco", source, preprocessors, postprocess_fn=postprocessors.box,
                    metric_fns=[metric_fns.refexp_accuracy])

Every function here has seqio's signature `fn(output, example=None, is_target=False)`. The
evaluator calls it twice per example, as seqio does: on the target (`is_target=True`) and on the
prediction. `example` (built by `postprocess_example`) holds the example's stage-2 `meta/<name>`
fields as plain python (bytes -> str, arrays -> nested lists) and `"model/image_input_hw"`, the
[H, W] of the model's input image: location tokens in predictions and targets are in that frame.

`output` is, for text targets, the decoded string (location tokens as "<extra_id_N>"); for image
targets {"tokens" [L], "mask" [L] (targets only: the reference loss mask), "image" [H, W, 3] in
[0, 1]}; for audio targets {"tokens", "mask" (targets only), "spectrogram" [T, M] log-mel}.

  function          prediction ->                  target ->                  meta fields read
  answer            stripped string                meta/answer (else output)  answer
  vqa_answers       stripped string                the human answers          answers | answer
  captions          stripped string                every reference caption    captions | answer
  box               first box, original pixels     the reference box          box | boxes[0]
                    (None without one)                                        (+ the frame below)
  detections        {boxes [n, 4], labels [n]}     {boxes, labels, crowd?}    boxes, labels,
                                                                              is_crowd (+ frame)
  generated_media   {tokens, image|spectrogram}    {tokens, mask, image|...}  -

Boxes are (y1, x1, y2, x2) in ORIGINAL image pixels. A predicted box goes back from the model's
image in one of two ways (`to_original_pixels`): with meta/transform, the task resized and padded
the image onto the square `CANVAS_SIZE` canvas itself (RefCOCO, COCO detection: meta/transform
maps original -> canvas, and stage 2 only scales the canvas to the model size); without it, stage
2 resized and padded the original (of size meta/image_size) to the model size (the built-in world).
meta/image_size clips predicted boxes to the image in both cases.

A missing or malformed field raises ValueError in one line naming the field and what was expected.
"""

import functools
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from unified_io.data.ops import boxes as box_ops
from unified_io.data.ops.image import CANVAS_SIZE
from unified_io.evaluation.box_metrics import resize_transform, unresize_boxes
from unified_io.evaluation.metrics import normalize_text

MODEL_IMAGE_HW = "model/image_input_hw"
MEDIA_KEYS = ("image", "spectrogram")

_LOCATION_GROUP = re.compile(r"((?:\s*<extra_id_\d+>){4})")


# ---------------------------------------------------------------- the example

def to_python(value):
  """numpy and bytes values -> plain python (what json.dumps takes): str, numbers, nested lists
  and dicts (strings decoded)."""
  if isinstance(value, bytes):
    return value.decode("utf-8", "replace")
  if isinstance(value, np.ndarray):
    return [to_python(v) for v in value.tolist()] if value.dtype.kind in "SO" else value.tolist()
  if isinstance(value, np.generic):
    return to_python(value.item())
  if isinstance(value, (list, tuple)):
    return [to_python(v) for v in value]
  if isinstance(value, Mapping):
    return {k: to_python(v) for k, v in value.items()}
  return value


def postprocess_example(features: Mapping[str, Any], image_input_hw: Sequence[int]
                        ) -> Dict[str, Any]:
  """The `example` postprocessors get: the meta/* fields of a (stage-2) example as python values,
  plus MODEL_IMAGE_HW = [H, W] of the model's input image."""
  example = {k: to_python(v) for k, v in features.items() if k.startswith("meta/")}
  example[MODEL_IMAGE_HW] = [int(image_input_hw[0]), int(image_input_hw[1])]
  return example


def _short(value, limit: int = 80) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _field(example: Optional[Mapping], key: str, why: str):
  if example is None:
    raise ValueError(f"{key} missing: no example given ({why})")
  if key not in example:
    raise ValueError(f"{key} missing ({why})")
  return example[key]


def _text(output, what: str = "the decoded output") -> str:
  if isinstance(output, bytes):
    return output.decode("utf-8", "replace")
  if isinstance(output, str):
    return output
  raise ValueError(f"{what} must be text, got {type(output).__name__}")


def _strings(example: Mapping, key: str, why: str) -> List[str]:
  values = _field(example, key, why)
  if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
    raise ValueError(f"{key} must be a list of strings ({why}), got {type(values).__name__}")
  if not values:
    raise ValueError(f"{key} is empty ({why})")
  return [_text(v, f"each entry of {key}") for v in values]


def _array(example: Mapping, key: str, shape: Sequence[Optional[int]], why: str) -> np.ndarray:
  """A numeric meta field as float64 of `shape` (None = any size there)."""
  value = _field(example, key, why)
  try:
    array = np.asarray(value, np.float64)
  except (TypeError, ValueError):
    array = None
  if array is None or array.ndim != len(shape) or any(
      want is not None and got != want for got, want in zip(array.shape, shape)):
    wanted = "[" + ", ".join("n" if s is None else str(s) for s in shape) + "] numbers"
    raise ValueError(f"{key} must be {wanted} ({why}), got {_short(value)}")
  return array


# ---------------------------------------------------------------- text answers

def answer(output, example=None, is_target=False) -> str:
  """The stripped answer; the target is meta/answer when the example has it."""
  if is_target and example is not None and "meta/answer" in example:
    return _text(example["meta/answer"], "meta/answer").strip()
  return _text(output).strip()


def vqa_answers(output, example=None, is_target=False):
  """Prediction: the stripped answer. Target: the human answers (meta/answers, VQAv2's ten), else
  [meta/answer]."""
  if not is_target:
    return _text(output).strip()
  if example is not None and "meta/answer" in example and "meta/answers" not in example:
    return [_text(example["meta/answer"], "meta/answer")]
  return _strings(example, "meta/answers", "the VQA accuracy target needs the ten human answers")


def captions(output, example=None, is_target=False):
  """Prediction: the stripped caption. Target: every reference caption (meta/captions: COCO's
  five, Clotho's five, MSR-VTT's twenty), else [meta/answer]."""
  if not is_target:
    return _text(output).strip()
  if example is not None and "meta/answer" in example and "meta/captions" not in example:
    return [_text(example["meta/answer"], "meta/answer")]
  return _strings(example, "meta/captions", "caption metrics compare with every reference")


# ---------------------------------------------------------------- boxes

_FRAME = "a predicted box is mapped back to the original image's pixels"


def to_original_pixels(boxes_n4, example: Mapping) -> np.ndarray:
  """Boxes [n, 4] in the model's input image -> original image pixels, clipped to the image.

  With meta/transform (scale_y, scale_x, offset_y, offset_x: original -> `CANVAS_SIZE` canvas),
  the model image is the canvas scaled; without, it is the original (meta/image_size) resized and
  padded by stage 2 (`box_metrics.resize_transform`).
  """
  model_hw = _array(example, MODEL_IMAGE_HW, [2], _FRAME)
  image_hw = _array(example, "meta/image_size", [2], f"{_FRAME} and clipped to it")
  boxes_n4 = np.asarray(boxes_n4, np.float64).reshape(-1, 4)
  if "meta/transform" in example:
    transform = _array(example, "meta/transform", [4], _FRAME)
    canvas_per_model_4 = np.tile(np.asarray(CANVAS_SIZE, np.float64) / model_hw, 2)
    return unresize_boxes(boxes_n4 * canvas_per_model_4, transform, clip_hw=image_hw)
  return unresize_boxes(boxes_n4, resize_transform(image_hw, model_hw), clip_hw=image_hw)


def box(output, example=None, is_target=False) -> Optional[List[float]]:
  """Prediction: the first box of the text's location tokens in original pixels, None if it has
  none. Target: meta/box (RefCOCO), else meta/boxes[0] (the built-in world), original pixels."""
  if is_target:
    if example is not None and "meta/box" in example:
      return _array(example, "meta/box", [4], "the referred object's box").tolist()
    boxes = _array(example, "meta/boxes", [None, 4], "the referred object's box is the first")
    if not len(boxes):
      raise ValueError("meta/boxes is empty (the referred object's box is the first)")
    return boxes[0].tolist()
  model_hw = _array(example, MODEL_IMAGE_HW, [2], _FRAME)
  found = box_ops.text_to_boxes_np(_text(output), model_hw)
  if not len(found):
    return None
  return to_original_pixels(found[:1], example)[0].tolist()


def parse_detections(text: str, size_hw) -> Dict[str, Any]:
  """'<box> label <box> label ...' -> {"boxes": [n, 4] pixels of an image of `size_hw`, "labels":
  [n] stripped strings}. Text before the first box is ignored; a box without a label gets ""."""
  parts = _LOCATION_GROUP.split(text)
  boxes, labels = [], []
  for i in range(1, len(parts), 2):  # odd parts are the groups of four location tokens
    found = box_ops.text_to_boxes_np(parts[i], size_hw)
    if len(found):
      boxes.append(found[0])
      labels.append(parts[i + 1].strip() if i + 1 < len(parts) else "")
  return {"boxes": np.asarray(boxes, np.float64).reshape(-1, 4), "labels": labels}


def _label(value):
  return normalize_text(value) if isinstance(value, (str, bytes)) else value


def detections(output, example=None, is_target=False,
               categories: Optional[Sequence[str]] = None) -> Dict[str, list]:
  """Prediction: {"boxes": [n, 4] original pixels, "labels": [n]} read from "<box> label ...",
  in the text's order (the metric ranks them by it). Target: meta/boxes, meta/labels and, if
  present, meta/is_crowd as "crowd". String labels are compared after `normalize_text`.

  `categories` (see `detections_for`): the names of the class ids meta/labels holds; predicted
  names become their index there, unknown names -1 (a class no ground truth has: they help no
  class, as a detection of a wrong class in COCO's evaluation).
  """
  if is_target:
    why = "detection AP compares with every ground-truth box and its label"
    boxes = _array(example, "meta/boxes", [None, 4], why)
    labels = _field(example, "meta/labels", why)
    if not isinstance(labels, (list, tuple)) or len(labels) != len(boxes):
      raise ValueError(f"meta/labels must be a list with one label per box of meta/boxes "
                       f"({len(boxes)}), got {_short(labels)}")
    target = {"boxes": boxes.tolist(), "labels": [_label(l) for l in labels]}
    if "meta/is_crowd" in example:
      crowd = _array(example, "meta/is_crowd", [len(boxes)], "one crowd flag per box")
      target["crowd"] = [bool(c) for c in crowd]
    return target
  found = parse_detections(_text(output), _array(example, MODEL_IMAGE_HW, [2], _FRAME))
  labels = [_label(l) for l in found["labels"]]
  if categories is not None:
    ids = {normalize_text(name): i for i, name in enumerate(categories)}
    labels = [ids.get(l, -1) for l in labels]
  return {"boxes": to_original_pixels(found["boxes"], example).tolist(), "labels": labels}


def detections_for(categories: Sequence[str]):
  """`detections` for a task whose meta/labels are ids into `categories` (e.g. COCO's 80)."""
  return functools.partial(detections, categories=tuple(categories))


# ---------------------------------------------------------------- generated images and audio

def generated_media(output, example=None, is_target=False) -> Dict[str, np.ndarray]:
  """Image / audio targets: the dict with its arrays as numpy. Needs "tokens" and "image" or
  "spectrogram"; targets also "mask" (the reference loss mask: token metrics count where != 0)."""
  del example
  side = "target" if is_target else "prediction"
  if not isinstance(output, Mapping):
    raise ValueError(f"a generated-media {side} must be a dict with tokens and image or "
                     f"spectrogram, got {type(output).__name__}")
  needed = ("tokens", "mask") if is_target else ("tokens",)
  missing = [k for k in needed if k not in output]
  if not any(k in output for k in MEDIA_KEYS):
    missing.append(" or ".join(MEDIA_KEYS))
  if missing:
    raise ValueError(f"generated-media {side} lacks {', '.join(missing)}; it has "
                     f"{sorted(output)}")
  return {k: np.asarray(v) for k, v in output.items()}
