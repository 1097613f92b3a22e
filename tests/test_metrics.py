"""Evaluation metrics: hand-computed values, properties, and clear errors on bad input."""

import math

import numpy as np
import pytest

from unified_io.evaluation import caption_metrics
from unified_io.evaluation import metrics as M


# ---------------------------------------------------------------- exact match and VQA

def test_exact_match_normalises_whitespace_and_case_unless_asked_not_to():
  preds = ["  The   Red Circle ", "blue", ""]
  refs = ["the red circle", ["green", "Blue"], "square"]
  assert M.exact_match(preds, refs) == {"exact_match": pytest.approx(2 / 3)}
  assert M.exact_match(preds, refs, normalize=False)["exact_match"] == 0.0
  assert M.exact_match([""], [""])["exact_match"] == 1.0  # an empty answer can be right


@pytest.mark.parametrize("answer, expected", [
    ("Two", "2"),
    ("none", "0"),
    ("the dog", "dog"),
    ("A  cat.", "cat"),
    ("2.5", "2.5"),  # a period before a digit stays
    ("1,000", "1000"),  # digit-comma-digit: commas deleted, not spaced
    ("red,blue", "red blue"),  # a comma touching no space becomes a space
    ("red, blue", "red blue"),  # ... and one touching a space is deleted
    ("dont", "don't"),
    ("isnt it", "isn't it"),
    ("well", "well"),  # a real word, not "we'll"
    ("yes!", "yes"),
    ("left\tside\n", "left side"),
])
def test_vqa_answer_normalisation(answer, expected):
  assert M.normalize_vqa_answer(answer) == expected


@pytest.mark.parametrize("agreeing, expected", [
    # 10 humans, `agreeing` gave the prediction. Leaving out one who agreed leaves agreeing - 1,
    # one who did not leaves agreeing; each subset scores min(count / 3, 1):
    (0, 0.0),
    (1, (1 * 0 + 9 * 1 / 3) / 10),  # 0.3
    (2, (2 * 1 / 3 + 8 * 2 / 3) / 10),  # 0.6
    (3, (3 * 2 / 3 + 7 * 1) / 10),  # 0.9
    (4, 1.0),
    (10, 1.0),
])
def test_vqa_accuracy_ten_answers(agreeing, expected):
  # The prediction is normalised ("Two" -> "2"); VQAv2's human answers are stored normalised.
  answers = ["2"] * agreeing + ["3"] * (10 - agreeing)
  assert M.vqa_accuracy(["Two"], [answers])["vqa_accuracy"] == pytest.approx(expected)


def test_vqa_accuracy_takes_human_answers_as_the_official_code_does():
  # Only disagreeing answers are processed, and only for punctuation: a unanimous "two" stays
  # "two" while the prediction "two" becomes "2" (vqaEval.py's behaviour).
  assert M.vqa_accuracy(["two"], [["two"] * 10])["vqa_accuracy"] == 0.0
  # Disagreeing: "yes." -> "yes" (punctuation); "Yes" is not lowercased, so 3 humans match:
  # leaving out one of them (3 subsets) scores 2/3, any other (7) 1 -> (2 + 7) / 10.
  answers = ["yes."] * 3 + ["Yes"] * 3 + ["no"] * 4
  assert M.vqa_accuracy(["yes"], [answers])["vqa_accuracy"] == pytest.approx(0.9)


def test_vqa_accuracy_with_few_answers():
  # One answer: exact match after normalisation.
  assert M.vqa_accuracy(["Two", "the cat", "dog"], ["2", "cat", "cat"])["vqa_accuracy"] == \
      pytest.approx(2 / 3)
  # Two answers: full credit needs the N - 1 = 1 other human; one agreeing scores (0 + 1) / 2.
  assert M.vqa_accuracy(["red"], [["red", "red"]])["vqa_accuracy"] == 1.0
  assert M.vqa_accuracy(["red"], [["red", "blue"]])["vqa_accuracy"] == 0.5


# ---------------------------------------------------------------- BLEU

def test_bleu_hand_computed():
  # cand "the cat sat on the mat", ref "the cat is on the mat" (both 6 words, BP = 1):
  # 1-grams 5/6 (only "sat" unmatched), 2-grams 3/5 (the cat, on the, the mat),
  # 3-grams 1/4 (on the mat), 4-grams 0/3.
  # BLEU-2 = sqrt(5/6 * 3/5) = sqrt(1/2); BLEU-3 = (5/6 * 3/5 * 1/4)^(1/3) = (1/8)^(1/3) = 0.5.
  scores = M.bleu(["The cat sat on the mat."], [["the cat is on the mat"]])
  assert scores == pytest.approx({"bleu_1": 5 / 6, "bleu_2": math.sqrt(0.5), "bleu_3": 0.5,
                                  "bleu_4": 0.0})


def test_bleu_clips_counts_by_the_most_in_any_one_reference():
  # Papineni et al.'s example: 7 x "the"; refs hold "the" at most twice -> p1 = 2/7. The closest
  # reference length is 7 (the second reference), so BP = 1.
  scores = M.bleu(["the the the the the the the"],
                  [["the cat is on the mat", "there is a cat on the mat"]])
  assert scores["bleu_1"] == pytest.approx(2 / 7)


def test_bleu_brevity_penalty_and_closest_length_ties_to_the_shorter():
  # "the cat" vs a 6-word reference: p1 = p2 = 1, BP = exp(1 - 6/2) = exp(-2).
  scores = M.bleu(["the cat"], ["the cat sat on the mat"])
  assert scores["bleu_1"] == pytest.approx(math.exp(-2))
  assert scores["bleu_2"] == pytest.approx(math.exp(-2))
  assert scores["bleu_3"] == 0.0  # no 3-gram at all
  # 5 words, references of 4 and 6 words: the tie goes to 4, so c > r and BP = 1 (with 6 it would
  # be exp(1 - 6/5) = 0.82). Every n-gram is in the second reference.
  assert M.bleu(["a b c d e"], [["a b c d", "a b c d e f"]])["bleu_4"] == pytest.approx(1.0)


def test_bleu_is_pooled_over_the_corpus():
  # Example 1 matches fully (4 words), example 2 ("a b" vs "e f") not at all. Pooled 1-grams:
  # 4 of 6 (a mean of sentence scores would give (1 + 0) / 2); 2-grams: 3 of 4. c = r = 6.
  scores = M.bleu(["a b c d", "a b"], [["a b c d"], ["e f"]])
  assert scores["bleu_1"] == pytest.approx(4 / 6)
  assert scores["bleu_2"] == pytest.approx(math.sqrt(4 / 6 * 3 / 4))


def test_bleu_properties_on_random_sentences():
  rng = np.random.default_rng(0)
  words = "a red blue circle square small big on left of the".split()
  sentences = [" ".join(rng.choice(words, size=rng.integers(4, 12))) for _ in range(30)]
  assert M.bleu(sentences, sentences) == pytest.approx({f"bleu_{n}": 1.0 for n in range(1, 5)})
  shuffled = list(rng.permutation(sentences))
  scores = M.bleu(sentences, shuffled)
  assert all(0.0 <= v <= 1.0 for v in scores.values())
  assert scores["bleu_1"] >= scores["bleu_2"] >= scores["bleu_3"] >= scores["bleu_4"]
  # Pairs permuted together: the corpus score does not change.
  order = rng.permutation(len(sentences))
  assert M.bleu([sentences[i] for i in order], [shuffled[i] for i in order]) == \
      pytest.approx(scores)


def test_bleu_empty_candidate_scores_zero():
  assert M.bleu([""], ["a red circle"]) == {f"bleu_{n}": 0.0 for n in range(1, 5)}
  assert M.bleu(["", "a red circle on the left"], ["x", "a red circle on the left"])["bleu_1"] > 0


# ---------------------------------------------------------------- CIDEr-D

def test_cider_identical_two_word_captions():
  # Two examples, disjoint words: every n-gram has df = 1 of E = 2, idf = log 2. Each example's
  # 1- and 2-gram vectors equal the reference's (cosine 1), 3- and 4-gram vectors are empty (0);
  # lengths agree (penalty 1): 10 * (1 + 1 + 0 + 0) / 4 = 5.
  assert M.cider(["a b", "c d"], [["a b"], ["c d"]]) == {"cider": pytest.approx(5.0)}


def test_cider_partial_overlap_hand_computed():
  # Example A: cand "a c", ref "a b". 1-grams: cand {a: L, c: L}, ref {a: L, b: L} (c has df 1,
  # from example B), clipped dot L^2, norms sqrt(2) L each -> 1/2. 2-grams "a c" vs "a b" -> 0.
  # A = 10 * (1/2 + 0) / 4 = 1.25; B (identical, as above) = 5; mean 3.125.
  scores = caption_metrics.cider_scores(["a c", "c d"], [["a b"], ["c d"]])
  assert scores == pytest.approx([1.25, 5.0])
  assert M.cider(["a c", "c d"], [["a b"], ["c d"]])["cider"] == pytest.approx(3.125)


def test_cider_clips_repeated_words():
  # cand "a a" vs ref "a b": cand {a: 2L} (norm 2L), ref {a: L, b: L} (norm sqrt(2) L);
  # clipped dot min(2L, L) * L = L^2 -> 1 / (2 sqrt 2) (unclipped it would be 1 / sqrt 2).
  score = caption_metrics.cider_scores(["a a", "c d"], [["a b"], ["c d"]])[0]
  assert score == pytest.approx(10 * (1 / (2 * math.sqrt(2))) / 4)


def test_cider_length_penalty():
  # cand "a b x" (3 words) vs ref "a b" (2): penalty exp(-1 / (2 * 6^2)).
  # 1-grams: cand {a, b, x} (x never in a reference: df -> 1, idf log 2), ref {a, b}:
  # 2 L^2 / (sqrt(3) L * sqrt(2) L) = 2 / sqrt 6. 2-grams: {ab, bx} vs {ab}: 1 / sqrt 2.
  score = caption_metrics.cider_scores(["a b x", "c d"], [["a b"], ["c d"]])[0]
  expected = 10 * math.exp(-1 / 72) * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4
  assert score == pytest.approx(expected)


def test_cider_averages_over_references_and_needs_a_corpus():
  # Refs "a b" and "e f" for example A: the second scores 0, so A = 5 / 2 (df of "a", "e" = 1).
  scores = caption_metrics.cider_scores(["a b", "c d"], [["a b", "e f"], ["c d"]])
  assert scores == pytest.approx([2.5, 5.0])
  # One example: every idf is log(1 / 1) = 0, so CIDEr-D is 0 by definition.
  assert M.cider(["a b"], [["a b"]])["cider"] == 0.0
  assert M.cider(["", "c d"], [["a b"], ["c d"]])["cider"] == pytest.approx(2.5)  # empty = 0


def test_cider_per_example_scores_follow_a_permutation():
  rng = np.random.default_rng(1)
  words = "a red blue circle square small big on left of the".split()
  preds = [" ".join(rng.choice(words, size=5)) for _ in range(12)]
  refs = [[" ".join(rng.choice(words, size=6)) for _ in range(2)] for _ in range(12)]
  scores = caption_metrics.cider_scores(preds, refs)
  order = rng.permutation(12)
  permuted = caption_metrics.cider_scores([preds[i] for i in order], [refs[i] for i in order])
  assert permuted == pytest.approx([scores[i] for i in order])
  assert all(s >= 0 for s in scores)


# ---------------------------------------------------------------- boxes

def test_box_iou_hand_values_and_properties():
  # [0,0,2,2] vs [1,1,3,3]: intersection 1, union 4 + 4 - 1 = 7.
  iou = M.box_iou([[0, 0, 2, 2]], [[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6], [1, 1, 1, 3]])
  np.testing.assert_allclose(iou, [[1 / 7, 1.0, 0.0, 0.0]])
  rng = np.random.default_rng(2)
  corners = rng.uniform(0, 100, size=(50, 2, 2))
  boxes = np.concatenate([corners.min(1), corners.max(1)], -1)
  iou = M.box_iou(boxes, boxes)
  np.testing.assert_allclose(iou, iou.T)
  np.testing.assert_allclose(np.diag(iou), 1.0)
  assert np.all((iou >= 0) & (iou <= 1))


def test_resize_transform_matches_resize_and_pad_and_unresize_inverts_it():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from unified_io.data.ops import image as image_ops  # pylint: disable=import-outside-toplevel
  boxes = np.array([[10.0, 20.0, 50.0, 70.0], [0.0, 0.0, 30.0, 80.0]], np.float32)
  for hw in [(30, 80), (97, 61), (384, 384)]:
    _, _, transform = image_ops.resize_and_pad(tf.zeros(list(hw) + [3], tf.uint8), (64, 64))
    packed = image_ops.transform_to_tensor(transform).numpy()
    np.testing.assert_allclose(M.resize_transform(hw, (64, 64)), packed, rtol=1e-6)
    inside = np.minimum(boxes, np.array(hw * 2, np.float32))
    moved, _ = image_ops.transform_boxes(inside, transform, (64, 64))
    np.testing.assert_allclose(M.unresize_boxes(moved.numpy(), packed), inside, atol=1e-3)


def test_unresize_boxes_hand_case_and_clip():
  # A 100 x 200 image into 64 x 64: scale 0.32, scaled 32 x 64, padding (64 - 32) // 2 = 16 on y.
  transform = M.resize_transform((100, 200), (64, 64))
  np.testing.assert_allclose(transform, [0.32, 0.32, 16.0, 0.0])
  np.testing.assert_allclose(M.unresize_boxes([16, 0, 48, 64], transform), [[0, 0, 100, 200]],
                             atol=1e-4)
  # A box reaching into the top padding: y1 = -50 in original pixels, clipped to 0.
  np.testing.assert_allclose(M.unresize_boxes([0, 0, 48, 64], transform, clip_hw=(100, 200)),
                             [[0, 0, 100, 200]], atol=1e-4)
  with pytest.raises(ValueError, match="scale"):
    M.unresize_boxes([0, 0, 1, 1], [0, 1, 0, 0])


def test_refexp_acc50_and_mean_iou():
  gt = [[0, 0, 10, 10]] * 4
  preds = [[0, 0, 10, 10],  # IoU 1
           [[0, 0, 10, 5], [0, 0, 10, 10]],  # the first box counts: IoU 0.5 (>= 0.5: correct)
           None,  # no box generated: IoU 0
           [0, 0, 10, 4]]  # IoU 0.4
  assert M.refexp(preds, gt) == pytest.approx({"acc50": 0.5, "mean_iou": (1 + 0.5 + 0 + 0.4) / 4})
  with pytest.raises(ValueError, match="exactly one ground-truth box"):
    M.refexp([[0, 0, 1, 1]], [[[0, 0, 1, 1], [0, 0, 2, 2]]])
  with pytest.raises(ValueError, match=r"\[4\] or \[n, 4\]"):
    M.refexp([[0, 0, 1]], [[0, 0, 1, 1]])


# ---------------------------------------------------------------- detection AP

def _det(boxes, labels, scores=None):
  out = {"boxes": np.asarray(boxes, np.float64).reshape(-1, 4), "labels": labels}
  if scores is not None:
    out["scores"] = scores
  return out


def test_detection_ap_perfect_is_one_on_random_scenes():
  rng = np.random.default_rng(3)
  refs, preds = [], []
  for _ in range(6):
    n = int(rng.integers(1, 5))
    corners = rng.uniform(0, 100, size=(n, 2, 2))
    boxes = np.concatenate([corners.min(1), corners.max(1) + 1], -1)
    labels = list(rng.choice(["circle", "square"], size=n))
    refs.append(_det(boxes, labels))
    preds.append(_det(boxes, labels, rng.uniform(size=n)))
  assert M.detection_ap(preds, refs) == pytest.approx({"ap": 1.0, "ap50": 1.0, "ap75": 1.0})


def test_detection_ap_one_missed_object():
  # Two objects, one found: precision 1 up to recall 0.5, then nothing. Of the 101 recall points
  # 0, 0.01, ..., 1, the 51 points <= 0.5 read precision 1, the rest 0: AP = 51 / 101.
  refs = [_det([[0, 0, 10, 10], [20, 20, 30, 30]], ["a", "a"])]
  assert M.detection_ap([_det([[0, 0, 10, 10]], ["a"])], refs)["ap"] == pytest.approx(51 / 101)
  # A duplicate of the found box must not match the same object again.
  dup = _det([[0, 0, 10, 10], [0, 0, 10, 10]], ["a", "a"], [0.9, 0.8])
  assert M.detection_ap([dup], refs)["ap"] == pytest.approx(51 / 101)


def test_detection_ap_ranking_with_and_without_scores():
  refs = [_det([[0, 0, 10, 10]], ["a"])]
  boxes = [[50, 50, 60, 60], [0, 0, 10, 10]]  # a false positive, then the true one
  # Ranked FP first: precision 0 at recall 0, then 1/2 at recall 1; the envelope reads 1/2 at all
  # 101 points, AP = 0.5. Without scores the order ranks; swapping the order gives 1.
  assert M.detection_ap([_det(boxes, ["a", "a"])], refs)["ap"] == pytest.approx(0.5)
  assert M.detection_ap([_det(boxes, ["a", "a"], [0.2, 0.9])], refs)["ap"] == pytest.approx(1.0)
  assert M.detection_ap([_det(boxes[::-1], ["a", "a"])], refs)["ap"] == pytest.approx(1.0)


def test_detection_ap_over_iou_thresholds_and_classes():
  # IoU 6.2 / 10 = 0.62: a hit at thresholds 0.5, 0.55, 0.6 and a miss at 0.65 .. 0.95.
  refs = [_det([[0, 0, 10, 10]], ["a"])]
  scores = M.detection_ap([_det([[0, 0, 10, 6.2]], ["a"])], refs)
  assert scores == pytest.approx({"ap": 0.3, "ap50": 1.0, "ap75": 0.0})
  # Class "b" found, class "a" wrongly labelled "c" (ignored: no ground truth): mean (0 + 1) / 2.
  refs = [_det([[0, 0, 10, 10], [20, 20, 30, 30]], ["a", "b"])]
  preds = [_det([[0, 0, 10, 10], [20, 20, 30, 30]], ["c", "b"])]
  scores = M.detection_ap(preds, refs, per_class=True)
  assert scores == pytest.approx({"ap": 0.5, "ap50": 0.5, "ap75": 0.5, "ap/a": 0.0, "ap/b": 1.0})
  # An image with no predictions and one with no objects are both fine.
  refs = [_det([[0, 0, 10, 10]], ["a"]), _det(np.zeros([0, 4]), [])]
  preds = [_det(np.zeros([0, 4]), []), _det([[0, 0, 5, 5]], ["a"])]
  assert M.detection_ap(preds, refs)["ap"] == 0.0


def test_detection_ap_bad_input():
  refs = [_det([[0, 0, 1, 1]], ["a"])] * 2
  with pytest.raises(ValueError, match="no ground-truth boxes"):
    M.detection_ap([_det([[0, 0, 1, 1]], ["a"])], [_det(np.zeros([0, 4]), [])])
  with pytest.raises(ValueError, match="'scores'"):
    M.detection_ap([_det([[0, 0, 1, 1]], ["a"], [1.0]), _det([[0, 0, 1, 1]], ["a"])], refs)
  with pytest.raises(ValueError, match="same length"):
    M.detection_ap([_det([[0, 0, 1, 1]], ["a", "b"])], refs[:1])


# ---------------------------------------------------------------- labels, tokens, pixels, audio

def test_classification_accuracy_and_per_class():
  preds = ["Dog", "cat", "cat", "bird"]
  refs = ["dog", "dog", "cat", "cat"]
  # dog: 1 of 2, cat: 1 of 2 -> balanced 0.5; overall 2 of 4.
  assert M.classification_accuracy(preds, refs) == pytest.approx(
      {"accuracy": 0.5, "balanced_accuracy": 0.5, "accuracy/cat": 0.5, "accuracy/dog": 0.5})
  out = M.classification_accuracy([0, 1, 1], [0, 1, 2], per_class=False)
  assert out == pytest.approx({"accuracy": 2 / 3, "balanced_accuracy": 2 / 3})


def test_token_accuracy_with_masks_and_short_predictions():
  refs = [[5, 6, 7, 0], [8, 9]]
  masks = [[1, 1, 1, 0], [1, 1]]
  preds = [[5, 6, 1, 4], [8]]  # 2 of 3 counted right; 1 of 2 (the missing token is wrong)
  out = M.token_accuracy(preds, refs, masks)
  assert out == pytest.approx({"token_accuracy": 3 / 5, "sequence_accuracy": 0.0})
  out = M.token_accuracy(np.array([[1, 2], [3, 4]]), np.array([[1, 2], [3, 5]]))
  assert out == pytest.approx({"token_accuracy": 3 / 4, "sequence_accuracy": 0.5})
  with pytest.raises(ValueError, match="no reference token is counted"):
    M.token_accuracy([[1]], [[1]], [[0]])


def test_image_error_hand_values():
  ref = np.zeros([2, 2, 1], np.uint8)
  pred = ref.copy()
  pred[0, 0] = 255  # one of 4 values off by the full range: mse = mae = 1/4 on the [0, 1] scale
  out = M.image_error([pred, ref], [ref, ref])
  assert out["pixel_mse"] == pytest.approx(0.125)
  assert out["psnr"] == pytest.approx((10 * math.log10(4) + M.PSNR_CAP_DB) / 2)
  # float images are taken in [0, 1]: the same error.
  assert M.image_error([pred / 255.0], [ref / 255.0])["pixel_mae"] == pytest.approx(0.25)
  with pytest.raises(ValueError, match="resize the prediction"):
    M.image_error([np.zeros([2, 3, 1])], [np.zeros([2, 2, 1])])


def test_spectrogram_error_with_mask():
  ref = np.zeros([2, 3])
  pred = np.array([[1.0, -2.0, 0.0], [0.0, 0.0, 9.0]])
  mask = np.array([[1, 1, 1], [1, 1, 0]])  # the 9 sits in padding
  out = M.spectrogram_error([pred], [ref], [mask])
  assert out == pytest.approx({"spectrogram_l1": 3 / 5, "spectrogram_mse": 5 / 5})


# ---------------------------------------------------------------- registry and bad input

@pytest.mark.parametrize("name", ["exact_match", "vqa_accuracy", "bleu", "cider"])
def test_text_metrics_reject_empty_and_missing_references(name):
  metric = getattr(M, name)
  with pytest.raises(ValueError, match="no predictions"):
    metric([], [])
  with pytest.raises(ValueError, match="example 1 has no references"):
    metric(["a", "b"], [["a"], []])
  with pytest.raises(ValueError, match="2 predictions but 1"):
    metric(["a", "b"], [["a"]])


@pytest.mark.parametrize("name, args", [
    ("refexp", ([], [])),
    ("detection_ap", ([], [])),
    ("classification_accuracy", ([], [])),
    ("token_accuracy", ([], [])),
    ("image_error", ([], [])),
    ("spectrogram_error", ([], [])),
])
def test_other_metrics_reject_no_predictions(name, args):
  with pytest.raises(ValueError, match="no predictions"):
    getattr(M, name)(*args)
