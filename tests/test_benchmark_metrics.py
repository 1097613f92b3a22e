"""The real benchmarks scored as their papers score them, through each task's own seqio
`postprocess_fn` and `metric_fns`, against values worked out by hand in the comments.

  .venv/bin/python -m pytest -q tests/test_benchmark_metrics.py

Each benchmark test builds the task's examples from fixture data (TFDS mock data for COCO and
RefCOCO, files in the release layouts for VQAv2, Clotho and MSR-VTT, as
tests/test_real_datasets.py does), turns their meta into the `example` the evaluator hands
postprocessors, postprocesses the real target and a hand-made prediction per example, and runs the
task's metric functions the way seqio does.
"""

import csv
import json
import math

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from fixture_media import write_video, write_vqa_v2, write_wav
from test_manifest import stage1
from test_real_datasets import hand_made, picture
from unified_io.data import bad_input, registry
from unified_io.data.ops import boxes as box_ops
from unified_io.datasets.directories import DATA_DIR_ENV
from unified_io.evaluation import box_metrics, metric_fns, postprocessors
from unified_io.tasks import coco  # (importing any task module registers them all)


@pytest.fixture(autouse=True)
def fresh_counts():
  bad_input.reset_counts()


@pytest.fixture
def data_root(tmp_path, monkeypatch):
  monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
  return tmp_path


def scored(task_name, examples, predictions, image_input_hw=(384, 384)):
  """The task's metrics for these stage-1 examples and predicted texts, seqio's way."""
  task = seqio.get_mixture_or_task(task_name)
  assert len(examples) == len(predictions)
  metas = [postprocessors.postprocess_example(ex, image_input_hw) for ex in examples]
  targets = [task.postprocess_fn(ex["text_targets"].decode(), example=meta, is_target=True)
             for ex, meta in zip(examples, metas)]
  outputs = [task.postprocess_fn(p, example=meta, is_target=False)
             for p, meta in zip(predictions, metas)]
  assert task.metric_fns and not task.score_metric_fns
  out = {}
  for fn in task.predict_metric_fns:
    out.update(fn(targets, outputs))
  return out


def location_text(boxes_n4, size_hw) -> str:
  """Boxes in model-image pixels -> the location tokens a model would generate."""
  return box_ops.bins_to_text_np(box_ops.boxes_to_bins_np(np.asarray(boxes_n4), size_hw))


# ---------------------------------------------------------------- VQAv2

def test_vqa_v2_accuracy_over_the_ten_human_answers(data_root):
  root = data_root / "vqav2"
  answers = {1: ["red"] * 7 + ["maroon"] * 3, 2: ["2"] * 2 + ["3"] * 8, 3: ["yes"] * 10}
  write_vqa_v2(root, answers)
  examples = stage1("vqa_v2", "validation")
  # Per question, the mean over the 10 leave-one-out subsets of min(#matching humans / 3, 1):
  #   "Maroon." -> "maroon", 3 humans: 3 subsets lose one of them (2/3), 7 keep all (1): 0.9
  #   "two" -> "2", 2 humans: 2 subsets keep 1 (1/3), 8 keep 2 (2/3): (2/3 + 16/3) / 10 = 0.6
  #   "no", nobody: 0.        Mean (0.9 + 0.6 + 0) / 3 = 0.5.
  assert scored("vqa_v2", examples, ["Maroon.", "two", "no"]) == pytest.approx(
      {"vqa_accuracy": 0.5})


# ---------------------------------------------------------------- captions: COCO, Clotho

CAPTIONS_A = ["rain falls on the roof"] * 4 + ["birds sing in the morning"]
CAPTIONS_B = ["a dog barks at night"] * 5
CAPTION_PREDICTIONS = ["Rain falls on the roof.", "a dog barks loudly at night"]
# No n-gram occurs in the references of both examples, so every n-gram (and every predicted one
# in none) has idf log(2 / 1) = L, every term frequency is 1, and each CIDEr-D_n is a cosine
# |common n-grams| / sqrt(|candidate's| |reference's|), times the length penalty.
# A: equal to 4 references (1 for n = 1..4); vs "birds sing in the morning" only "the" is shared:
#    n=1 1/5, n>1 0, mean 0.05. Score 10 * (4 * 1 + 0.05) / 5 = 8.1.
# B (6 words) vs "a dog barks at night" (5): n=1 5/sqrt(30), n=2 3/sqrt(20) (a dog, dog barks,
#    at night), n=3 1/sqrt(12) (a dog barks), n=4 0; penalty exp(-1 / (2 * 6^2)).
CIDER_B = 10 * (5 / math.sqrt(30) + 3 / math.sqrt(20) + 1 / math.sqrt(12)) / 4 * math.exp(-1 / 72)
CAPTION_CIDER = (8.1 + CIDER_B) / 2  # 6.358
# BLEU, corpus: A matches all its n-grams (5/5, 4/4, 3/3, 2/2); B: 5/6, 3/5, 1/4, 0/3.
# p = 10/11, 7/9, 4/7, 2/5; c = 11 > r = 5 + 5, no brevity penalty.
CAPTION_BLEU4 = (10 / 11 * 7 / 9 * 4 / 7 * 2 / 5) ** 0.25  # (16/99)^(1/4) = 0.634


def _coco_captions_example(image_id, captions):
  return {"image": picture(16, 24), "image/filename": tf.constant(f"{image_id}.jpg"),
          "image/id": tf.constant(image_id, tf.int64),
          "captions": {"id": tf.range(len(captions), dtype=tf.int64),
                       "text": tf.constant(captions)}}


def test_coco_captions_cider_d_and_bleu_4_against_all_five_references():
  examples = [_coco_captions_example(1, CAPTIONS_A), _coco_captions_example(2, CAPTIONS_B)]
  with tfds.testing.mock_data(as_dataset_fn=hand_made(examples)):
    built = stage1("coco_captions", "validation")
  scores = scored("coco_captions", built, CAPTION_PREDICTIONS)
  assert scores["cider"] == pytest.approx(CAPTION_CIDER, rel=1e-9)
  assert scores["bleu_4"] == pytest.approx(CAPTION_BLEU4, rel=1e-9)


def test_clotho_cider_d_and_bleu_4_against_its_five_captions(data_root):
  root = data_root / "clotho"
  root.mkdir()
  with open(root / "clotho_captions_evaluation.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["file_name"] + [f"caption_{i}" for i in range(1, 6)])
    for name, captions in (("a.wav", CAPTIONS_A), ("b.wav", CAPTIONS_B)):
      write_wav(root / "evaluation" / name, seconds=0.1, rate=16000)
      writer.writerow([name] + captions)
  scores = scored("clotho_captions", stage1("clotho_captions", "test"), CAPTION_PREDICTIONS)
  assert scores["cider"] == pytest.approx(CAPTION_CIDER, rel=1e-9)
  assert scores["bleu_4"] == pytest.approx(CAPTION_BLEU4, rel=1e-9)


# ---------------------------------------------------------------- MSR-VTT

def test_msrvtt_captions_against_all_twenty_and_qa_accuracy(data_root):
  root = data_root / "msrvtt"
  for i in range(2):
    write_video(root / "videos" / f"video{i}.mp4", num_frames=2, size_hw=(16, 16))
  sentences = ([{"video_id": "video0", "caption": "a man is cooking food"}] * 19 +
               [{"video_id": "video0", "caption": "a woman sings a song"}] +
               [{"video_id": "video1", "caption": "cars race on a track"}] * 20)
  (root / "train_val_videodatainfo.json").write_text(json.dumps({
      "videos": [{"video_id": f"video{i}", "split": "validate"} for i in range(2)],
      "sentences": sentences}))
  (root / "val_qa.json").write_text(json.dumps([
      {"video_id": 0, "question": "what is shown?", "answer": "screen", "id": 0},
      {"video_id": 1, "question": "who cooks?", "answer": "man", "id": 1}]))

  captions = stage1("msrvtt_captions", "validation")
  assert [len(c["meta/captions"]) for c in captions] == [20, 20]
  scores = scored("msrvtt_captions", captions, ["a woman sings a song", "cars race on the track"])
  # CIDEr-D: "a" is in both videos' references (idf log(2/2) = 0); every other n-gram, and "the"
  # (in none), has idf L. Video 0 equals its 20th reference (1 at every n) and shares nothing
  # weighted with the other 19: 10 * 1 / 20 = 0.5. Video 1 vs each (identical) reference:
  # n=1 4 / (sqrt(5) * 2) (the "a" weight is 0), n=2 2 / (2 * 2), n=3 1/3, n=4 0; equal lengths.
  video1 = 10 * (2 / math.sqrt(5) + 1 / 2 + 1 / 3) / 4
  assert scores["cider"] == pytest.approx((0.5 + video1) / 2, rel=1e-9)  # 2.410
  # BLEU: video 0 matches everything (5/5, 4/4, 3/3, 2/2), video 1: 4/5, 2/4, 1/3, 0/2;
  # p = 9/10, 6/8, 4/6, 2/4, c = r = 10.
  assert scores["bleu_4"] == pytest.approx((9 / 10 * 6 / 8 * 4 / 6 * 2 / 4) ** 0.25, rel=1e-9)

  # MSRVTT-QA: accuracy = exact match after lowercasing and stripping: 1 of 2.
  assert scored("msrvtt_qa", stage1("msrvtt_qa", "validation"), [" Screen ", "woman"]) == \
      pytest.approx({"exact_match": 0.5})


# ---------------------------------------------------------------- RefCOCO

def _refcoco_example():
  # 40 x 80 image (h x w), one object at normalised (0.25, 0.5, 0.75, 1.0) = pixels
  # (10, 40, 30, 80), referred to four times.
  return {"image": picture(40, 80), "image/id": tf.constant(7, tf.int64),
          "objects": {"bbox": tf.constant([[0.25, 0.5, 0.75, 1.0]]),
                      "refexp": {"raw": tf.ragged.constant([["one", "two", "three", "four"]])}}}


@pytest.mark.parametrize("task", ["refcoco", "refcoco_plus", "refcocog"])
def test_refcoco_acc50_in_original_image_pixels(task):
  with tfds.testing.mock_data(as_dataset_fn=hand_made([_refcoco_example()])):
    examples = stage1(task, "validation")
  # Stage 1 resizes onto the 384 canvas: scale min(384/40, 384/80) = 4.8, 192 x 384, padded
  # 96 above: canvas = original * 4.8 + (96, 0). A 192 x 192 model image is the canvas halved:
  # model = original * 2.4 + (48, 0). Predictions, written in that model frame:
  #   (72, 96, 120, 168) = original (10, 40, 30, 70): IoU 20*30 / (20*40) = 0.75
  #   (72, 96, 120, 132) = original (10, 40, 30, 55): IoU 15/40 = 0.375
  #   no box: IoU 0
  #   (0, 96, 120, 192) = original (-20, 40, 30, 80), clipped to (0, 40, 30, 80): IoU 800/1200
  #     = 2/3 (unclipped it would be 800/2000 = 0.4, a miss)
  # Acc@0.5 = 2/4; mean IoU = (0.75 + 0.375 + 0 + 2/3) / 4. Location bins move a model
  # coordinate by at most 192/1998 px, 0.04 original px: the IoUs by < 0.005.
  model_hw = (192, 192)
  predictions = [location_text([[72, 96, 120, 168]], model_hw),
                 "it is " + location_text([[72, 96, 120, 132]], model_hw),
                 "no idea",
                 location_text([[0, 96, 120, 192]], model_hw)]
  scores = scored(task, examples, predictions, model_hw)
  assert scores["acc50"] == 0.5
  assert scores["mean_iou"] == pytest.approx((0.75 + 0.375 + 0 + 2 / 3) / 4, abs=5e-3)


# ---------------------------------------------------------------- COCO detection

def test_coco_detection_map_through_the_task():
  # 100 x 200 image: a car (10, 40, 50, 120), a person filling the image, and a crowd of people
  # at (60, 0, 100, 60) (COCO's iscrowd: matched, never counted).
  example = {"image": picture(100, 200), "image/filename": tf.constant("1.jpg"),
             "image/id": tf.constant(1, tf.int64),
             "objects": {"bbox": tf.constant([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0],
                                              [0.6, 0.0, 1.0, 0.3]]),
                         "label": tf.constant([2, 0, 0], tf.int64),
                         "area": tf.constant([1, 2, 3], tf.int64),
                         "id": tf.constant([5, 6, 7], tf.int64),
                         "is_crowd": tf.constant([False, False, True])}}
  with tfds.testing.mock_data(as_dataset_fn=hand_made([example])):
    examples = stage1("coco_detection", "validation")
  # Canvas (= the 384 model image): scale 1.92, 192 x 384, padded 96 above:
  # model = original * 1.92 + (96, 0). The generated detections, in the text's (= rank) order:
  #   car    (115.2, 76.8, 192, 230.4)  = original (10, 40, 50, 120): IoU ~1
  #   person (230.4, 19.2, 268.8, 96)   = original (70, 10, 90, 50): inside the crowd region
  #          (intersection / own area = 1): ignored at every threshold
  #   person (96, 0, 215.04, 384)       = original (0, 0, 62, 200): IoU 0.62 with the person
  #   unicorn (96, 0, 115.2, 19.2): not a COCO category (-1): counts for no class
  # car AP = 1 at all 10 thresholds; person: a true positive at IoU .50, .55, .60 (AP 1), a
  # false positive from .65 (AP 0): 3/10. AP = (1 + 0.3) / 2, AP50 = (1 + 1) / 2,
  # AP75 = (1 + 0) / 2.
  # (Were the crowd detection a false positive ranked first, person AP@.5 would be 0.5.)
  text = " ".join([location_text([[115.2, 76.8, 192, 230.4]], 384), "car",
                   location_text([[230.4, 19.2, 268.8, 96]], 384), "person",
                   location_text([[96, 0, 215.04, 384]], 384), "person",
                   location_text([[96, 0, 115.2, 19.2]], 384), "unicorn"])
  scores = scored("coco_detection", examples, [text])
  assert scores == pytest.approx({"ap": 0.65, "ap50": 1.0, "ap75": 0.5})


def _det(boxes, labels, crowd=None):
  out = {"boxes": np.asarray(boxes, np.float64).reshape(-1, 4), "labels": labels}
  if crowd is not None:
    out["crowd"] = crowd
  return out


def test_detection_map_follows_coco_rules():
  targets = [_det([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 2]),
             _det([[0, 0, 10, 10], [50, 50, 100, 100], [30, 30, 50, 50]], [1, 1, 3],
                  crowd=[False, True, False])]
  # No scores: the order ranks, and equal ranks across images keep image order.
  predictions = [_det([[0, 0, 10, 10], [20, 20, 40, 32.4], [60, 60, 70, 70], [60, 60, 70, 70]],
                      [1, 2, -1, 1]),
                 _det([[60, 60, 80, 80], [0, 0, 10, 7.8]], [1, 1])]
  # Class 1 (2 gts; the crowd region is not counted), ranked: image 1 #0 (IoU 1), image 2 #0
  # (inside the crowd: ignored), image 2 #1 (IoU 0.78), image 1 #3 (IoU 0: false positive).
  #   thresholds .50-.75 (6): TP TP FP -> precision 1 up to recall 1: AP 1
  #   thresholds .80-.95 (4): TP FP FP -> recall 0.5 at precision 1, never more: the 51
  #   recall points 0:.01:.5 read 1, the 50 above read 0: AP 51/101
  class1 = (6 * 1 + 4 * 51 / 101) / 10
  # Class 2: one detection with IoU 12.4 * 20 / 400 = 0.62: TP at .50, .55, .60 only: 3/10.
  # Class 3: a ground truth, no detection: 0. Label -1 has no ground truth: not a class.
  expected = {"ap": (class1 + 0.3 + 0) / 3, "ap50": (1 + 1 + 0) / 3, "ap75": (1 + 0 + 0) / 3}
  assert metric_fns.detection_map(targets, predictions) == pytest.approx(expected)


def test_detection_ap_keeps_each_images_best_detections():
  # One ground truth; a false positive ranked before the true one. All kept: precision 0 then
  # 1/2 at recall 1 -> AP 0.5. Only the first kept (max_detections=1): AP 0.
  targets = [_det([[0, 0, 10, 10]], ["a"])]
  predictions = [_det([[50, 50, 60, 60], [0, 0, 10, 10]], ["a", "a"])]
  assert box_metrics.detection_ap(predictions, targets, max_detections=2)["ap"] == 0.5
  assert box_metrics.detection_ap(predictions, targets, max_detections=1)["ap"] == 0.0


# ---------------------------------------------------------------- the built-in world's frame

def test_world_boxes_come_back_through_the_stage2_resize():
  # 50 x 100 image, stage 2 resizes and pads it to the 64 x 64 model image: scale 0.64, 32 x 64,
  # padded (64 - 32) // 2 = 16 above: model = original * 0.64 + (16, 0).
  # Original (10, 20, 30, 60) -> model (22.4, 12.8, 35.2, 38.4).
  example = {"meta/image_size": [50, 100], "meta/boxes": [[10.0, 20.0, 30.0, 60.0]],
             "meta/labels": ["Red circle"], "meta/answer": "red circle",
             postprocessors.MODEL_IMAGE_HW: [64, 64]}
  text = location_text([[22.4, 12.8, 35.2, 38.4]], (64, 64))
  assert postprocessors.box(text, example) == pytest.approx([10, 20, 30, 60], abs=0.1)
  assert postprocessors.box("", example, is_target=True) == [10, 20, 30, 60]
  found = postprocessors.detections(text + " Red  Circle", example)
  assert found["labels"] == ["red circle"]
  assert found["boxes"] == [pytest.approx([10, 20, 30, 60], abs=0.1)]
  assert postprocessors.detections("", example, is_target=True) == {
      "boxes": [[10, 20, 30, 60]], "labels": ["red circle"]}
  assert postprocessors.box("no box here", example) is None


# ---------------------------------------------------------------- the contract's edges

def test_missing_or_malformed_fields_name_the_field():
  with pytest.raises(ValueError, match=r"^meta/answers missing \(the VQA accuracy target needs "
                                       r"the ten human answers\)$"):
    postprocessors.vqa_answers("red", example={}, is_target=True)
  with pytest.raises(ValueError, match=r"meta/captions missing"):
    postprocessors.captions("a cat", example={"meta/id": "1"}, is_target=True)
  with pytest.raises(ValueError, match=r"model/image_input_hw missing"):
    postprocessors.box("<extra_id_300>" * 4, example={"meta/image_size": [4, 4]})
  with pytest.raises(ValueError, match=r"meta/image_size missing"):
    postprocessors.box("<extra_id_300>" * 4, example={"meta/transform": [1, 1, 0, 0],
                                                      postprocessors.MODEL_IMAGE_HW: [8, 8]})
  with pytest.raises(ValueError, match=r"meta/transform must be \[4\] numbers"):
    postprocessors.box("<extra_id_300>" * 4, example={
        "meta/transform": [1, 1], "meta/image_size": [4, 4], postprocessors.MODEL_IMAGE_HW: [8, 8]})
  with pytest.raises(ValueError, match=r"meta/labels must be a list with one label per box"):
    postprocessors.detections("", example={"meta/boxes": [[0, 0, 1, 1]], "meta/labels": []},
                              is_target=True)
  with pytest.raises(ValueError, match=r"target lacks mask"):
    postprocessors.generated_media({"tokens": [1], "image": np.zeros([1, 1, 3])},
                                   is_target=True)
  assert postprocessors.vqa_answers(" red ", example={"meta/answer": "red"}, is_target=True) == \
      ["red"]


def test_media_and_score_metric_fns():
  targets = [{"tokens": np.array([5, 6, 7, 0]), "mask": np.array([1, 1, 1, 0]),
              "image": np.zeros([2, 2, 3]), "spectrogram": np.array([[0.0, 0.0]])},
             {"tokens": np.array([1, 2]), "mask": np.array([1, 1]),
              "image": np.zeros([2, 2, 3]), "spectrogram": np.array([[0.0, 0.0]])}]
  predictions = [{"tokens": np.array([5, 9, 7, 3]), "image": np.full([2, 2, 3], 0.5),
                  "spectrogram": np.array([[1.0, 2.0]])},
                 {"tokens": np.array([1, 2]), "image": np.full([2, 2, 3], 0.5),
                  "spectrogram": np.array([[1.0, 2.0]])}]
  # Counted tokens: 5 6 7 (2 right) and 1 2 (both): 4/5; whole sequences right: 1 of 2.
  assert metric_fns.token_accuracy(targets, predictions) == pytest.approx(
      {"token_accuracy": 0.8, "sequence_accuracy": 0.5})
  # Every pixel off by 0.5: MSE 0.25, MAE 0.5, PSNR 10 log10(1 / 0.25).
  assert metric_fns.image_error(targets, predictions) == pytest.approx(
      {"pixel_mse": 0.25, "pixel_mae": 0.5, "psnr": 10 * math.log10(4)})
  # Bins off by 1 and 2: L1 1.5, MSE (1 + 4) / 2.
  assert metric_fns.spectrogram_error(targets, predictions) == pytest.approx(
      {"spectrogram_l1": 1.5, "spectrogram_mse": 2.5})
  assert metric_fns.log_likelihood(["a", "b"], [-1.0, -3.0]) == {"log_likelihood": -2.0}


def test_seqio_sorts_every_metric_fn_by_its_argument_names():
  predict = [metric_fns.exact_match, metric_fns.vqa_accuracy, metric_fns.classification_accuracy,
             metric_fns.bleu, metric_fns.cider, metric_fns.refexp_accuracy,
             metric_fns.detection_map, metric_fns.token_accuracy, metric_fns.image_error,
             metric_fns.spectrogram_error]
  source = seqio.FunctionDataSource(
      lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensors({"text_inputs": "x"}),
      splits=("validation",))
  task = registry.add_task("test_benchmark_metrics_all_fns", source, [],
                           metric_fns=predict + [metric_fns.log_likelihood], replace=True)
  assert list(task.predict_metric_fns) == predict
  assert list(task.score_metric_fns) == [metric_fns.log_likelihood]
  expected = {"vqa_v2": [metric_fns.vqa_accuracy], "coco_captions": list(metric_fns.CAPTIONING),
              "clotho_captions": list(metric_fns.CAPTIONING),
              "msrvtt_captions": list(metric_fns.CAPTIONING),
              "msrvtt_qa": [metric_fns.exact_match], "refcoco": [metric_fns.refexp_accuracy],
              "coco_detection": [metric_fns.detection_map]}
  for name, fns in expected.items():
    assert list(seqio.get_mixture_or_task(name).predict_metric_fns) == fns, name
  assert seqio.get_mixture_or_task("coco_detection").postprocessor.keywords == {
      "categories": coco.COCO_CATEGORIES}
