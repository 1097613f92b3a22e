"""Every real-dataset task end to end on mocked TFDS data or tiny files the test writes.

  python -m pytest -q tests/test_real_datasets.py

TFDS tasks run under `tfds.testing.mock_data`. coco_captions uses its random examples; COCO
detection and RefCOCO feed hand-made examples through `as_dataset_fn`, because TFDS's random
examples are geometrically meaningless (boxes with y1 > y2, per-object fields of different
lengths) and could only test that everything is skipped. VQAv2, Clotho, MSR-VTT and Alpaca have no
TFDS builder here: the test writes their files in their release layouts.
"""

import csv
import json

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from fixture_media import write_image, write_video, write_wav
from test_manifest import converted_batch, small_sizes, stage1  # noqa: F401  (fixture)
from unified_io.data import bad_input, prompts
from unified_io.data.ops import image as image_ops
from unified_io.datasets.directories import DATA_DIR_ENV, DatasetMissingError
from unified_io.data.ops import boxes as box_ops
import unified_io.tasks  # noqa: F401  (registers the tasks)
from unified_io.tasks import coco


def hand_made(examples):
  """An `as_dataset_fn` for tfds.testing.mock_data yielding these examples for every split."""
  def as_dataset(self, *args, **kwargs):
    del self, args, kwargs
    datasets = [tf.data.Dataset.from_tensors(ex) for ex in examples]
    ds = datasets[0]
    for other in datasets[1:]:
      ds = ds.concatenate(other)
    return ds
  return as_dataset


def picture(h, w):
  return tf.constant(np.random.default_rng(h * w).integers(0, 255, (h, w, 3)), tf.uint8)


def boxes_from_target(text: bytes):
  return box_ops.text_to_boxes_np(text, image_ops.CANVAS_SIZE)


# ---------------------------------------------------------------- TFDS: COCO, RefCOCO

def test_coco_captions_on_tfds_mock_data():
  with tfds.testing.mock_data(num_examples=3):
    examples = stage1("coco_captions", "validation")
    batch = converted_batch("coco_captions", "validation")
  assert len(examples) == 3
  for ex in examples:
    assert ex["image_inputs"].dtype == np.uint8 and ex["image_inputs"].ndim == 3
    assert ex["text_targets"] in list(ex["meta/captions"])
    assert ex["text_inputs"].decode() in prompts.templates("image_caption")
  assert batch["inputs/image/mask"].any() and batch["targets/text/mask"].any()


def test_coco_detection_on_hand_made_examples():
  image = picture(100, 200)  # resized to the model size: scale = size / 200, padded vertically
  example = {"image": image, "image/filename": tf.constant("000000000001.jpg"),
             "image/id": tf.constant(1, tf.int64),
             "objects": {"bbox": tf.constant([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]]),
                         "label": tf.constant([2, 0], tf.int64),
                         "area": tf.constant([1, 2], tf.int64),
                         "id": tf.constant([5, 6], tf.int64),
                         "is_crowd": tf.constant([False, False])}}
  bad = {**example, "image/filename": tf.constant("bad.jpg"),
         "objects": {**example["objects"], "bbox": tf.constant([[0.1, 0.2, 1.5, 0.6],
                                                                [0.0, 0.0, 1.0, 1.0]])}}
  with tfds.testing.mock_data(as_dataset_fn=hand_made([example, bad])):
    (ex,) = stage1("coco_detection")
    assert bad_input.counts() == {"coco_detection/boxes_outside_image": 1}
    batch = converted_batch("coco_detection", batch_size=1)
  size = image_ops.CANVAS_SIZE[0]
  scale, pad = size / 200, (size - 100 * size / 200) / 2
  expected = np.array([[10 * scale + pad, 40 * scale, 50 * scale + pad, 120 * scale],
                       [pad, 0, 100 * scale + pad, size]])
  np.testing.assert_allclose(boxes_from_target(ex["text_targets"]), expected, atol=size / 999)
  words = [w for w in ex["text_targets"].decode().split() if not w.startswith("<extra_id_")]
  assert words == ["car", "person"]
  np.testing.assert_allclose(ex["meta/boxes"], [[10, 40, 50, 120], [0, 0, 100, 200]], atol=1e-4)
  assert ex["image_inputs"].shape == (size, size, 3) and not ex["image_input_masks"][0].any()
  assert ex["text_inputs"].decode() in prompts.templates("detection")
  assert batch["inputs/image/mask"].shape[0] == 1


def _refcoco_example():
  return {"image": picture(60, 60), "image/id": tf.constant(9, tf.int64),
          "objects": {"bbox": tf.constant([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]),
                      "refexp": {"raw": tf.ragged.constant([["top left thing", "the first"],
                                                            ["bottom right"]])}}}


@pytest.mark.parametrize("task", ["refcoco", "refcoco_plus", "refcocog"])
def test_refcoco_one_example_per_expression(task):
  with tfds.testing.mock_data(as_dataset_fn=hand_made([_refcoco_example()])):
    examples = stage1(task, "validation")
    if task == "refcoco":
      batch = converted_batch(task, "validation", batch_size=3)
      assert batch["targets/text/mask"].sum(axis=1).min() >= 4  # four location tokens + EOS
  size = image_ops.CANVAS_SIZE[0]
  assert [e["meta/expression"] for e in examples] == [b"top left thing", b"the first",
                                                     b"bottom right"]
  for ex, box in zip(examples, ([0, 0, 30, 30], [0, 0, 30, 30], [30, 30, 60, 60])):
    np.testing.assert_allclose(boxes_from_target(ex["text_targets"])[0],
                               np.array(box) * size / 60, atol=size / 999)
    np.testing.assert_allclose(ex["meta/box"], box, atol=1e-4)
    assert ex["meta/expression"].decode() in ex["text_inputs"].decode()


def test_missing_tfds_data_names_dataset_and_directory(tmp_path):
  import gin
  with gin.unlock_config():
    gin.bind_parameter("tfds_data_dir.path", str(tmp_path / "tfds"))
  try:
    with pytest.raises(DatasetMissingError, match=r"coco/2017.*tfds"):
      seqio.get_mixture_or_task("coco_detection").get_dataset(None, "train")
  finally:
    with gin.unlock_config():
      gin.bind_parameter("tfds_data_dir.path", None)


# ------------------------------------------------------- files: VQAv2, Clotho, MSR-VTT, Alpaca

@pytest.fixture
def data_root(tmp_path, monkeypatch):
  monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
  return tmp_path


def test_vqa_v2_from_the_official_json_layout(data_root):
  root = data_root / "vqav2"
  write_image(root / "val2014" / "COCO_val2014_000000000042.jpg", (30, 40))
  questions = {"questions": [{"image_id": 42, "question": "What colour?", "question_id": 420},
                             {"image_id": 43, "question": "Where?", "question_id": 430}]}
  answers = ["red"] * 7 + ["maroon"] * 3
  annotations = {"annotations": [
      {"question_id": 420, "image_id": 42, "multiple_choice_answer": "red",
       "answers": [{"answer": a, "answer_id": i} for i, a in enumerate(answers)]},
      {"question_id": 430, "image_id": 43, "multiple_choice_answer": "here", "answers": []}]}
  (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(questions))
  (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(annotations))
  (ex,) = stage1("vqa_v2", "validation")  # image 43 is missing: skipped and counted
  assert ex["text_targets"] == b"red" and ex["meta/question"] == b"What colour?"
  assert "What colour?" in ex["text_inputs"].decode()
  assert sorted(ex["meta/answers"]) == sorted(a.encode() for a in answers)
  assert ex["image_inputs"].shape == (30, 40, 3)
  assert bad_input.counts() == {"vqa_v2/missing_file": 1}
  batch = converted_batch("vqa_v2", "validation", batch_size=1)
  assert batch["inputs/image/mask"].any()
  with pytest.raises(DatasetMissingError, match=r"vqav2.*train2014_questions"):
    seqio.get_mixture_or_task("vqa_v2").get_dataset(None, "train")


def test_clotho_captions_from_csv_and_audio(data_root):
  root = data_root / "clotho"
  write_wav(root / "evaluation" / "rain.wav", seconds=0.3, rate=44100)
  with open(root / "clotho_captions_evaluation.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["file_name"] + [f"caption_{i}" for i in range(1, 6)])
    writer.writerow(["rain.wav"] + [f"rain falls {i}" for i in range(5)])
  (ex,) = stage1("clotho_captions", "test")
  assert ex["text_targets"] in list(ex["meta/captions"]) and len(ex["meta/captions"]) == 5
  assert abs(ex["audio_inputs"].size - 4800) <= 2  # 0.3 s at 16 kHz
  assert ex["text_inputs"].decode() in prompts.templates("audio_caption")
  batch = converted_batch("clotho_captions", "test", batch_size=1)
  assert batch["inputs/audio/mask"].any()


def test_msrvtt_captions_and_qa(data_root):
  root = data_root / "msrvtt"
  write_video(root / "videos" / "video0.mp4", num_frames=6)
  write_video(root / "videos" / "video1.mp4", num_frames=6)
  info = {"videos": [{"video_id": "video0", "split": "validate"},
                     {"video_id": "video1", "split": "train"}],
          "sentences": [{"video_id": "video0", "caption": "a grey screen"},
                        {"video_id": "video0", "caption": "nothing happens"},
                        {"video_id": "video1", "caption": "other"}]}
  (root / "train_val_videodatainfo.json").write_text(json.dumps(info))
  (root / "val_qa.json").write_text(json.dumps(
      [{"video_id": 0, "question": "what is shown?", "answer": "screen", "id": 3}]))
  (caption,) = stage1("msrvtt_captions", "validation")
  assert caption["text_targets"] in (b"a grey screen", b"nothing happens")
  assert caption["image_history"].shape[0] == 8 and caption["audio_history"].shape[0] == 8
  (qa,) = stage1("msrvtt_qa", "validation")
  assert qa["text_targets"] == b"screen" and "what is shown?" in qa["text_inputs"].decode()
  batch = converted_batch("msrvtt_qa", "validation", batch_size=1)
  assert batch["inputs/image_history/mask"].any()


def test_nlp_instructions_from_alpaca_json(data_root):
  root = data_root / "alpaca"
  root.mkdir()
  items = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
           {"instruction": "Say hi.", "input": "", "output": "hi"},
           {"instruction": "", "input": "", "output": "orphan"}]
  (root / "alpaca_data.json").write_text(json.dumps(items))
  examples = stage1("nlp_instructions", "train")
  assert [e["text_targets"] for e in examples] == [b"5", b"hi"]
  assert "Add the numbers.\n\n2 and 3" in examples[0]["text_inputs"].decode()
  assert bad_input.counts() == {"nlp_instructions/empty_text": 1}
  batch = converted_batch("nlp_instructions", "train")
  assert batch["targets/text/mask"].any()
  with pytest.raises(Exception, match="instruction_files.paths"):
    seqio.get_mixture_or_task("nlp_instructions").get_dataset(None, "validation")


def test_file_datasets_without_a_data_dir_say_how_to_set_one(monkeypatch):
  monkeypatch.delenv(DATA_DIR_ENV, raising=False)
  with pytest.raises(DatasetMissingError, match=r"clotho.*dataset_dir.root"):
    seqio.get_mixture_or_task("clotho_captions").get_dataset(None, "train")


def test_coco_category_names_are_the_80_of_2017():
  assert len(coco.COCO_CATEGORIES) == 80 == len(set(coco.COCO_CATEGORIES))
