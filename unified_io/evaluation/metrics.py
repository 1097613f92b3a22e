"""Evaluation metrics over python lists / numpy arrays.

Every metric has the signature `metric(predictions, references, **options) -> {name: float}`,
with one prediction and one reference entry per example, in the same order. An empty list of
predictions, a length mismatch, or an example without any reference raises ValueError saying so.
Tasks name them through their seqio `metric_fns` (`metric_fns`, the `fn(targets, predictions)`
wrappers); these are the definitions.

  name                     predictions / references per example                     keys returned
  exact_match              str / str or [str] (any may match)                       exact_match
  vqa_accuracy             str / [str] human answers (or one str)                   vqa_accuracy
  bleu                     str / str or [str]                                       bleu_1 .. _4
  cider                    str / str or [str]                                       cider
  refexp                   box [4] | boxes [n, 4] | None / box [4]                  acc50, mean_iou
  detection_ap             {boxes, labels, scores?} / {boxes, labels, crowd?}       ap, ap50, ap75
  classification_accuracy  label / label                                            accuracy, ..
  token_accuracy           int tokens [L'] / int tokens [L] (+ masks)               token_acc..
  image_error              image [H, W, C] / image [H, W, C]                        pixel_mse, ..
  spectrogram_error        log-mel [T, M] / log-mel [T, M] (+ masks)                spectrogram_..

Boxes are (y1, x1, y2, x2) in pixels, the repo's convention; see `box_metrics` for undoing the
resize-and-pad before comparing, and `caption_metrics` for the BLEU and CIDEr-D definitions.
"""

import math
import re
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from unified_io.evaluation.box_metrics import (box_iou, detection_ap, refexp, resize_transform,
                                               unresize_boxes)
from unified_io.evaluation.caption_metrics import bleu, cider, reference_lists

__all__ = ["exact_match", "vqa_accuracy", "bleu", "cider", "refexp", "detection_ap", "classification_accuracy",
           "token_accuracy", "image_error", "spectrogram_error", "box_iou", "resize_transform",
           "unresize_boxes", "normalize_text", "normalize_vqa_answer"]

MetricFn = Callable[..., Dict[str, float]]
PSNR_CAP_DB = 100.0  # PSNR of identical images (infinite) is reported as this


def _check_lengths(metric: str, predictions: Sequence, references: Sequence) -> None:
  if len(predictions) == 0:  # pylint: disable=g-explicit-length-test  (numpy arrays too)
    raise ValueError(f"{metric}: no predictions given; pass one prediction per example")
  if len(predictions) != len(references):
    raise ValueError(f"{metric}: {len(predictions)} predictions but {len(references)} "
                     f"references; pass one of each per example")


# ---------------------------------------------------------------- text answers

def normalize_text(text: Union[str, bytes]) -> str:
  """Strip, lowercase, collapse runs of whitespace to one space."""
  if isinstance(text, bytes):
    text = text.decode("utf-8")
  return " ".join(str(text).lower().split())


def exact_match(predictions: Sequence[str], references: Sequence[Union[str, Sequence[str]]],
                normalize: bool = True) -> Dict[str, float]:
  """Fraction of predictions equal to one of their references (after `normalize_text` if asked)."""
  refs_per_example = reference_lists("exact_match", predictions, references)
  norm = normalize_text if normalize else (
      lambda t: t.decode("utf-8") if isinstance(t, bytes) else str(t))
  hits = [norm(p) in {norm(r) for r in refs} for p, refs in zip(predictions, refs_per_example)]
  return {"exact_match": float(np.mean(hits))}


# The VQA evaluation's answer normalisation (Antol et al. 2015; the official VQAv2 evaluation code,
# vqaEval.py): punctuation, periods, number words -> digits, articles dropped, contractions
# restored.
_VQA_PUNCTUATION = (";", "/", "[", "]", "\"", "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">",
                    "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# "none" -> "0" is the official map's choice: a count question answered "none" means zero.
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}
_NUMBER_WORDS["none"] = "0"
_ARTICLES = {"a", "an", "the"}
# The contractions the official map restores. A word matches one when it is the contraction with
# exactly one apostrophe left out ("dont", "couldnt've", "couldn'tve"). Left out, as there: the
# forms that are ordinary words without apostrophe (we'll, he'll, it's, i'd, we'd, she'd, ...);
# "I'm", "I've", "I'd've", whose keys are capitalised there and so never match a lowercased word.
_CONTRACTIONS_WITH_APOSTROPHES = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
    "haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't "
    "mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't "
    "she'd've should've shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd "
    "someone'd've someone'll someone's something'd something'd've something'll that's there'd "
    "there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've "
    "we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've "
    "who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll "
    "y'all'd've you'd you'd've you'll you're you've").split()


def _one_apostrophe_dropped(word: str) -> List[str]:
  return [word[:i] + word[i + 1:] for i, c in enumerate(word) if c == "'"]


_CONTRACTIONS = {key: c for c in _CONTRACTIONS_WITH_APOSTROPHES
                 for key in _one_apostrophe_dropped(c)}
# (sic) The official map sends this one the other way.
_CONTRACTIONS["somebody'd"] = "somebodyd"


def _vqa_punctuation(text: str) -> str:
  """The official `processPunctuation`: each mark of `_VQA_PUNCTUATION` is deleted when it touches
  a space (or the text has a digit-comma-digit, so "1,000" -> "1000"), else it becomes a space; a
  period not followed by a digit is deleted ("2.5" stays)."""
  out = text
  for mark in _VQA_PUNCTUATION:
    touches_space = (mark + " " in text) or (" " + mark in text)
    out = out.replace(mark, "" if touches_space or _DIGIT_COMMA_DIGIT.search(text) else " ")
  return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def _vqa_digits_articles(text: str) -> str:
  """The official `processDigitArticle`: lowercased, word by word number words become digits
  ("two" -> "2", "none" -> "0"), articles (a, an, the) are dropped, contractions written without
  an apostrophe get it back ("dont" -> "don't")."""
  words = []
  for word in text.lower().split():
    word = _NUMBER_WORDS.get(word, word)
    if word not in _ARTICLES:
      words.append(word)
  return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def _vqa_whitespace(text: Union[str, bytes]) -> str:
  if isinstance(text, bytes):
    text = text.decode("utf-8")
  return str(text).replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(answer: Union[str, bytes]) -> str:
  """The VQA answer normalisation the official VQAv2 evaluation applies to a predicted answer.

  Tabs/newlines become spaces; each mark of `_VQA_PUNCTUATION` is deleted when it touches a space
  (or the answer has a digit-comma-digit, so "1,000" -> "1000"), else it becomes a space; a period
  not followed by a digit is deleted ("2.5" stays); then, word by word after lowercasing, number
  words become digits ("two" -> "2", "none" -> "0"), articles (a, an, the) are dropped and
  contractions written without apostrophe get it back ("dont" -> "don't").
  """
  return _vqa_digits_articles(_vqa_punctuation(_vqa_whitespace(answer)))


def _vqa_score(prediction: str, answers: List[str]) -> float:
  """Mean over leave-one-out subsets of min(#answers matching in the subset / needed, 1)."""
  prediction = normalize_vqa_answer(prediction)
  answers = [_vqa_whitespace(a) for a in answers]
  if len(set(answers)) > 1:  # as the official code: only answers that disagree, punctuation only
    answers = [_vqa_punctuation(a) for a in answers]
  matches = [a == prediction for a in answers]
  if len(answers) == 1:
    return float(matches[0])
  needed = min(3, len(answers) - 1)
  total = sum(matches)
  return float(np.mean([min((total - m) / needed, 1.0) for m in matches]))


def vqa_accuracy(predictions: Sequence[str],
                 references: Sequence[Union[str, Sequence[str]]]) -> Dict[str, float]:
  """VQAv2 accuracy: per question, the mean over the 10 leave-one-out subsets of the 10 human
  answers of min(#humans in the subset who gave the prediction / 3, 1).

  Exactly as the official evaluation (vqaEval.py) compares: the prediction goes through
  `normalize_vqa_answer`; the human answers are taken as they are (VQAv2's are stored normalised:
  "2", not "two"), except that when they disagree each goes through the punctuation step only.
  Fewer answers (other datasets): with one it is exact match; with 2 or 3 the humans needed for
  full credit are capped at N - 1 (so full credit stays reachable); from 4 on it is 3.
  """
  refs_per_example = reference_lists("vqa_accuracy", predictions, references)
  scores = [_vqa_score(p, refs) for p, refs in zip(predictions, refs_per_example)]
  return {"vqa_accuracy": float(np.mean(scores))}


# ---------------------------------------------------------------- labels and tokens

def classification_accuracy(predictions: Sequence, references: Sequence, normalize: bool = True,
                            per_class: bool = True) -> Dict[str, float]:
  """{"accuracy", "balanced_accuracy" (mean per-class recall), "accuracy/<label>" per class}.

  Labels may be strings (normalised with `normalize_text` unless `normalize=False`) or ints;
  per-class accuracy is the recall of each reference label.
  """
  _check_lengths("classification_accuracy", predictions, references)
  norm = lambda x: normalize_text(x) if normalize and isinstance(x, (str, bytes)) else x
  preds = [norm(p) for p in predictions]
  refs = [norm(r) for r in references]
  correct = np.array([p == r for p, r in zip(preds, refs)])
  per_label = {}
  for label in sorted(set(refs), key=str):
    per_label[label] = float(np.mean([c for c, r in zip(correct, refs) if r == label]))
  out = {"accuracy": float(np.mean(correct)),
         "balanced_accuracy": float(np.mean(list(per_label.values())))}
  if per_class:
    out.update({f"accuracy/{label}": acc for label, acc in per_label.items()})
  return out


def token_accuracy(predictions: Sequence[Sequence[int]], references: Sequence[Sequence[int]],
                   masks: Optional[Sequence[Sequence]] = None) -> Dict[str, float]:
  """Generated vs reference tokens -> {"token_accuracy", "sequence_accuracy"}.

  Each example is compared over its reference's length: predicted tokens past it are ignored and
  missing ones count as wrong. `masks` (per example, like the reference; nonzero = counted) leaves
  out padding. token_accuracy pools all counted tokens; sequence_accuracy is the fraction of
  examples whose counted tokens are all right (examples with none counted are left out).
  """
  _check_lengths("token_accuracy", predictions, references)
  if masks is not None and len(masks) != len(references):
    raise ValueError(f"token_accuracy: {len(masks)} masks for {len(references)} references")
  correct = counted = 0
  whole = []
  for i, (prediction, reference) in enumerate(zip(predictions, references)):
    ref = np.asarray(reference).reshape(-1)
    pred = np.asarray(prediction).reshape(-1)[:len(ref)]
    mask = np.ones(len(ref), bool) if masks is None else np.asarray(masks[i]).reshape(-1) != 0
    if mask.shape != ref.shape:
      raise ValueError(f"token_accuracy: example {i}: mask has {mask.size} entries for "
                       f"{ref.size} reference tokens")
    right = np.zeros(len(ref), bool)
    right[:len(pred)] = pred == ref[:len(pred)]
    correct += int(np.sum(right & mask))
    counted += int(np.sum(mask))
    if mask.any():
      whole.append(bool(np.all(right[mask])))
  if counted == 0:
    raise ValueError("token_accuracy: no reference token is counted (empty references or "
                     "all-zero masks)")
  return {"token_accuracy": correct / counted, "sequence_accuracy": float(np.mean(whole))}


# ---------------------------------------------------------------- generated images and audio

def _pairs(metric: str, predictions, references) -> Iterable:
  _check_lengths(metric, predictions, references)
  for i, (prediction, reference) in enumerate(zip(predictions, references)):
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    if prediction.shape != reference.shape:
      raise ValueError(f"{metric}: example {i}: prediction shape {prediction.shape} != reference "
                       f"shape {reference.shape}; resize the prediction first")
    yield i, prediction, reference


def image_error(predictions: Sequence[np.ndarray], references: Sequence[np.ndarray],
                max_value: Optional[float] = None) -> Dict[str, float]:
  """Pixel error of generated images -> {"pixel_mse", "pixel_mae", "psnr"} (means over images).

  Errors are on the [0, 1] scale: values are divided by `max_value`, by default 255 when both
  images are uint8 and 1.0 otherwise (so float images are expected in [0, 1]). PSNR =
  10 log10(1 / mse) per image, PSNR_CAP_DB for identical images.
  """
  mse, mae, psnr = [], [], []
  for _, prediction, reference in _pairs("image_error", predictions, references):
    scale = max_value or (255.0 if prediction.dtype == np.uint8 == reference.dtype else 1.0)
    diff = (prediction.astype(np.float64) - reference.astype(np.float64)) / scale
    mse.append(float(np.mean(diff ** 2)))
    mae.append(float(np.mean(np.abs(diff))))
    psnr.append(min(10 * math.log10(1.0 / mse[-1]), PSNR_CAP_DB) if mse[-1] > 0 else PSNR_CAP_DB)
  return {"pixel_mse": float(np.mean(mse)), "pixel_mae": float(np.mean(mae)),
          "psnr": float(np.mean(psnr))}


def spectrogram_error(predictions: Sequence[np.ndarray], references: Sequence[np.ndarray],
                      masks: Optional[Sequence[np.ndarray]] = None) -> Dict[str, float]:
  """Spectrogram error -> {"spectrogram_l1", "spectrogram_mse"}, pooled over all counted bins.

  Any layout works as long as prediction and reference agree (e.g. log-mel [T, M]); `masks`
  (per example, nonzero = counted) leaves out padding bins.
  """
  abs_sum = sq_sum = count = 0.0
  for i, prediction, reference in _pairs("spectrogram_error", predictions, references):
    diff = prediction.astype(np.float64) - reference.astype(np.float64)
    mask = np.ones(diff.shape, bool) if masks is None else np.asarray(masks[i]) != 0
    if mask.shape != diff.shape:
      raise ValueError(f"spectrogram_error: example {i}: mask shape {mask.shape} != spectrogram "
                       f"shape {diff.shape}")
    abs_sum += float(np.sum(np.abs(diff[mask])))
    sq_sum += float(np.sum(diff[mask] ** 2))
    count += int(mask.sum())
  if count == 0:
    raise ValueError("spectrogram_error: no bin is counted (empty spectrograms or all-zero masks)")
  return {"spectrogram_l1": abs_sum / count, "spectrogram_mse": sq_sum / count}
