"""seqio metric functions: `fn(targets, predictions)` (or `fn(targets, scores)`) -> {name: float}.

  registry.add_task("vqa_v2", ..., postprocess_fn=postprocessors.vqa_answers,
                    metric_fns=[metric_fns.vqa_accuracy])

seqio tells the kinds apart by the argument names: `targets, predictions` for metrics of generated
outputs, `targets, scores` for metrics of the target's log-likelihood. `targets` and `predictions`
are lists, one entry per example, of what the task's postprocessor (`postprocessors`) returned.
These are thin wrappers; the definitions live in `metrics`, `caption_metrics` and `box_metrics`.

  function                 targets / predictions per example           keys
  exact_match              answer str (or [str]) / str                 exact_match
  vqa_accuracy             the human answers [str] / str               vqa_accuracy
  classification_accuracy  label / label                               accuracy, balanced_accuracy,
                                                                       accuracy/<label>
  bleu                     reference captions [str] / str              bleu_1 .. bleu_4
  cider                    reference captions [str] / str              cider (CIDEr-D)
  refexp_accuracy          box [4] / box [4] or None                   acc50, mean_iou
  detection_map            {boxes, labels, crowd?} / {boxes, labels}   ap, ap50, ap75
  token_accuracy           {tokens, mask} / {tokens}                   token_accuracy,
                                                                       sequence_accuracy
  image_error              {image} / {image}                           pixel_mse, pixel_mae, psnr
  spectrogram_error        {spectrogram} / {spectrogram}               spectrogram_l1, _mse
  depth_error              {image} / {image}: depth drawn grey         depth_abs_rel, depth_rmse,
   (depth_error_for(m))                                                depth_delta1 .. _delta3
  normals_error            {image} / {image}: normals drawn as RGB     normals_mean_deg,
                                                                       normals_median_deg,
                                                                       normals_within_11_25,
                                                                       _22_5, _30
  segmentation_miou        {image} / {image}: palette colours          miou, pixel_accuracy
   (segmentation_miou_for(n))
  edge_fscore              {image} / {image}: white edges on black     edge_precision,
                                                                       edge_recall, edge_f
  drawn_objects            {image, reconstruction?} / {image}:         objects_drawn, object_iou,
   (drawn_objects_for(p))  objects in flat palette colours             object_colour_recall,
                                                                       images_drawn, stray_colours,
                                                                       tokenizer_objects_drawn, ..
  log_likelihood           (any) / scores: float                       log_likelihood

Caption benchmarks (COCO captions, Clotho, MSR-VTT) report BLEU-4 and CIDEr-D against all of an
example's references, as the COCO caption toolkit computes them (`caption_metrics`). SPICE and
METEOR need the toolkit's Java programs and are not provided, nor is SPIDEr (Clotho's ranking
metric, the mean of CIDEr-D and SPICE).

Dense labels (depth, normals, segmentation, edges) are generated as pictures: both sides' "image"
is decoded with `dense_labels.decode_*` (the encodings the task drew its targets with), then scored
by `dense_metrics`, which says how each is averaged. Depth's range and the number of classes are
the task's: register `depth_error_for(max_depth)` / `segmentation_miou_for(num_classes)` when they
differ from the defaults (`dense_labels.DEFAULT_MAX_DEPTH`; all `dense_labels.MAX_CLASSES` palette
colours, so a task with fewer classes should name its count, or a stray colour snaps to a class it
does not have and costs IoU).
"""

from typing import Callable, Dict, Mapping, Sequence

import numpy as np

from unified_io.data import dense_labels
from unified_io.evaluation import box_metrics
from unified_io.evaluation import caption_metrics
from unified_io.evaluation import dense_metrics
from unified_io.evaluation import drawn_objects as drawn_objects_lib
from unified_io.evaluation import metrics

Scores = Dict[str, float]
PredictMetric = Callable[[Sequence, Sequence], Scores]  # seqio's fn(targets, predictions)


def _field(name: str, items: Sequence[Mapping], key: str, side: str) -> list:
  """items[i][key] for every i; a missing key raises naming the metric and the example."""
  out = []
  for i, item in enumerate(items):
    if not isinstance(item, Mapping) or key not in item:
      have = sorted(item) if isinstance(item, Mapping) else type(item).__name__
      raise ValueError(f"{name}: {side} {i} has no {key!r} (has {have}); use the "
                       f"generated_media postprocessor")
    out.append(item[key])
  return out


def exact_match(targets, predictions) -> Scores:
  """Fraction of predictions equal to their target (or one of them) after lowercasing and
  collapsing whitespace: MSRVTT-QA's accuracy."""
  return metrics.exact_match(predictions, targets)


def vqa_accuracy(targets, predictions) -> Scores:
  """VQAv2 accuracy over the human answers, as the official evaluation computes it."""
  return metrics.vqa_accuracy(predictions, targets)


def classification_accuracy(targets, predictions) -> Scores:
  return metrics.classification_accuracy(predictions, targets)


def bleu(targets, predictions) -> Scores:
  """Corpus BLEU-1..4 against every reference of each example."""
  return caption_metrics.bleu(predictions, targets)


def cider(targets, predictions) -> Scores:
  """Corpus CIDEr-D against every reference of each example (idf over the evaluated examples)."""
  return caption_metrics.cider(predictions, targets)


def refexp_accuracy(targets, predictions) -> Scores:
  """Referring expressions: Acc@0.5 (IoU >= 0.5 with the reference box) and mean IoU, in
  original image pixels; a None prediction (no box generated) is a miss with IoU 0."""
  return box_metrics.refexp(predictions, targets)


def detection_map(targets, predictions) -> Scores:
  """COCO box AP@[.5:.95], AP50, AP75 (`box_metrics.detection_ap`), at most 100 detections per
  image. Generated detections carry no scores: the order in the text ranks them, earlier being
  more confident."""
  return box_metrics.detection_ap(predictions, targets)


def token_accuracy(targets, predictions) -> Scores:
  """Generated VQ tokens vs the reference's, counted where the target's loss mask is nonzero."""
  name = "token_accuracy"
  return metrics.token_accuracy(_field(name, predictions, "tokens", "prediction"),
                                _field(name, targets, "tokens", "target"),
                                masks=_field(name, targets, "mask", "target"))


def image_error(targets, predictions) -> Scores:
  """Pixel MSE / MAE / PSNR of generated images vs the reference, both in [0, 1]."""
  name = "image_error"
  return metrics.image_error(_field(name, predictions, "image", "prediction"),
                             _field(name, targets, "image", "target"))


def spectrogram_error(targets, predictions) -> Scores:
  """L1 / MSE of generated log-mel spectrograms vs the reference."""
  name = "spectrogram_error"
  return metrics.spectrogram_error(_field(name, predictions, "spectrogram", "prediction"),
                                   _field(name, targets, "spectrogram", "target"))


def _decoded(name: str, targets, predictions, decode) -> tuple:
  """(decoded predictions, decoded targets) from the generated_media dicts' "image"."""
  return ([decode(image) for image in _field(name, predictions, "image", "prediction")],
          [decode(image) for image in _field(name, targets, "image", "target")])


def _named(fn: PredictMetric, name: str, doc: str) -> PredictMetric:
  fn.__name__ = fn.__qualname__ = name
  fn.__doc__ = doc
  return fn


def _number_name(value: float) -> str:
  return f"{value:g}".replace(".", "_").replace("-", "minus_")


def depth_error_for(max_depth: float) -> PredictMetric:
  """The depth metric fn for pictures drawn with `dense_labels.encode_depth(..., max_depth)`."""
  name = ("depth_error" if max_depth == dense_labels.DEFAULT_MAX_DEPTH
          else f"depth_error_max_{_number_name(max_depth)}m")

  def depth_error_fn(targets, predictions) -> Scores:
    decode = lambda image: dense_labels.decode_depth(image, max_depth)
    return dense_metrics.depth_metrics(*_decoded(name, targets, predictions, decode))

  return _named(depth_error_fn, name,
                f"Depth (grey = depth / {max_depth:g} m): abs-rel, RMSE in metres, delta1..3, "
                f"per image then averaged (`dense_metrics.depth_metrics`).")


def segmentation_miou_for(num_classes: int) -> PredictMetric:
  """The segmentation metric fn for a task with classes 0..num_classes-1 (palette colours)."""
  if not 0 < num_classes <= dense_labels.MAX_CLASSES:
    raise ValueError(f"segmentation_miou_for: {num_classes} classes; the palette draws 1.."
                     f"{dense_labels.MAX_CLASSES}")
  name = ("segmentation_miou" if num_classes == dense_labels.MAX_CLASSES
          else f"segmentation_miou_{num_classes}_classes")

  def segmentation_miou_fn(targets, predictions) -> Scores:
    decode = lambda image: dense_labels.decode_segmentation(image, num_classes)
    return dense_metrics.segmentation_metrics(*_decoded(name, targets, predictions, decode),
                                              num_classes=num_classes)

  return _named(segmentation_miou_fn, name,
                f"Segmentation over {num_classes} classes (nearest palette colour; black = "
                f"ignored): mIoU and pixel accuracy from the dataset's confusion matrix.")


def drawn_objects_for(palette: drawn_objects_lib.Palette) -> PredictMetric:
  """The metric fn asking whether generated images show the reference's objects, found by
  their flat `palette` colours (`drawn_objects`). When the targets carry the reference's own
  tokens decoded ("reconstruction", as the evaluator gives them), the same measures of those
  come as tokenizer_objects_drawn / tokenizer_object_iou: what right tokens would draw."""
  name = "drawn_objects"

  def drawn_objects_fn(targets, predictions) -> Scores:
    references = _field(name, targets, "image", "target")
    scores = drawn_objects_lib.drawn_objects(_field(name, predictions, "image", "prediction"),
                                             references, palette)
    if all(isinstance(t, Mapping) and "reconstruction" in t for t in targets):
      ceiling = drawn_objects_lib.drawn_objects([t["reconstruction"] for t in targets],
                                                references, palette)
      scores.update(tokenizer_objects_drawn=ceiling["objects_drawn"],
                    tokenizer_object_iou=ceiling["object_iou"])
    return scores

  return _named(drawn_objects_fn, name,
                "Generated images vs the reference's objects, found by their palette colours: "
                "objects_drawn (IoU >= 0.5), object_iou, object_colour_recall, images_drawn, "
                "stray_colours (`drawn_objects`).")


depth_error = depth_error_for(dense_labels.DEFAULT_MAX_DEPTH)
segmentation_miou = segmentation_miou_for(dense_labels.MAX_CLASSES)


def normals_error(targets, predictions) -> Scores:
  """Surface normals (RGB = (n + 1) / 2): angular error in degrees pooled over valid target
  pixels, a black (missing) predicted normal counting as 90 (`dense_metrics.normals_metrics`)."""
  return dense_metrics.normals_metrics(
      *_decoded("normals_error", targets, predictions, dense_labels.decode_normals))


def edge_fscore(targets, predictions) -> Scores:
  """Edges (white on black, thresholded at 0.5): precision, recall and F with the BSDS distance
  tolerance, counts pooled over the dataset (`dense_metrics.edge_metrics`)."""
  return dense_metrics.edge_metrics(
      *_decoded("edge_fscore", targets, predictions, dense_labels.decode_edges))


def log_likelihood(targets, scores) -> Scores:
  """Mean log-likelihood of the targets under the model (a score metric: seqio hands it each
  example's summed target log-probability)."""
  if len(scores) == 0:  # pylint: disable=g-explicit-length-test
    raise ValueError("log_likelihood: no scores given; pass one per example")
  if len(scores) != len(targets):
    raise ValueError(f"log_likelihood: {len(scores)} scores for {len(targets)} targets")
  return {"log_likelihood": float(np.mean(np.asarray(scores, np.float64)))}


CAPTIONING = (bleu, cider)  # the caption benchmarks' metric_fns
