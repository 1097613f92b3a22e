"""uio2-eval end to end on every real benchmark's fixture data: one eval call over a mixture of
VQAv2, COCO captions, COCO detection, RefCOCO/+/g, Clotho, MSR-VTT captions and MSRVTT-QA.

  .venv/bin/python -m pytest -q tests/test_benchmark_eval.py

The checkpoint is a tiny text/image/audio/video model with random parameters, written as
uio2-train writes a MODEL_DIR (tests/test_run_loader.py `write_run`). Each task's first example is
predicted perfectly: after the real decoder has run, its output is replaced by its target (the
tokenised target decoded, what a model that learned the task generates); the second keeps the
random model's output. So the metrics are neither all 0 nor all 1, and a perfect box prediction,
made in the model's image frame, must come back in the original image's pixels.

Checked per task: each task's jsonl holds the reference its benchmark scores against (the ten VQA
answers, every reference caption, boxes in the original image's pixels with class ids), its
metrics file has the keys its own `metric_fns` give, and those functions on the jsonl's
predictions and references give the numbers written. The eval binary's `main` runs in this process
so that `tfds.testing.mock_data` feeds the TFDS tasks (COCO, RefCOCO) hand-made examples; the file
tasks read files written here in their release layouts.
"""

import contextlib
import csv
import io
import json

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from fixture_media import write_video, write_vqa_v2, write_wav
from test_real_datasets import _refcoco_example, hand_made, picture
from test_run_loader import write_run
from unified_io.cli import eval as eval_cli
from unified_io.data import registry
from unified_io.datasets.directories import DATA_DIR_ENV
from unified_io.evaluation import evaluator as evaluator_lib
from unified_io.evaluation import postprocessors
from unified_io.tasks import coco  # (importing any task module registers them all)

STEP = 1
MIXTURE = "benchmark_eval_fixture"
LENGTHS = {"text_inputs": 32, "text_targets": 16, "image_input_samples": 16,
           "audio_input_samples": 8, "image_history_input_samples": 8,
           "audio_history_input_samples": 4, "num_frames": 2}
# Every row of a batch goes to one of the 8 fake CPU devices (conftest): a batch of 8 holds the
# two examples of a task, padded by repetition.
EVAL_FLAGS = ("--gin_file=runs/eval.gin", "--gin.evaluate.max_examples=2",
              "--gin.evaluate.batch_size=8")

# ---------------------------------------------------------------- fixture data and references

VQA_ANSWERS = {42: ["red"] * 7 + ["maroon"] * 3, 43: ["two"] * 4 + ["2"] * 5 + ["3"]}
COCO_CAPTIONS = [[f"a photo number {i} of thing {j}" for j in range(5)] for i in range(2)]
DETECTIONS = [  # (image size, normalised boxes, class ids)
    ((100, 200), [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]], [2, 0]),
    ((80, 60), [[0.25, 0.5, 0.75, 1.0]], [17]),
]
CLOTHO_CAPTIONS = {"rain.wav": [f"rain falls on a tin roof {i}" for i in range(5)],
                   "wind.wav": [f"wind blows through the tall trees {i}" for i in range(5)]}
MSRVTT_CAPTIONS = {"video0": ["a grey screen slowly turns white", "nothing happens on screen"],
                   "video1": ["a light flashes twice", "the screen gets brighter and brighter"]}
MSRVTT_QA = [{"video_id": 0, "question": "what is shown?", "answer": "screen", "id": 3},
             {"video_id": 1, "question": "what colour is it?", "answer": "grey", "id": 4}]
REFCOCO_BOXES = [[0, 0, 30, 30], [0, 0, 30, 30]]  # the first two expressions' object, 60 x 60 px

TASKS = {  # task: (the metric keys its metric_fns give, the references of its first 2 examples)
    "vqa_v2": (("vqa_accuracy",), [VQA_ANSWERS[42], VQA_ANSWERS[43]]),
    "coco_captions": (("bleu_4", "cider"), COCO_CAPTIONS),
    "coco_detection": (("ap", "ap50", "ap75"), [
        {"boxes": (np.asarray(boxes) * np.tile(hw, 2)).tolist(), "labels": labels,
         "crowd": [False] * len(labels)} for hw, boxes, labels in DETECTIONS]),
    "refcoco": (("acc50", "mean_iou"), REFCOCO_BOXES),
    "refcoco_plus": (("acc50", "mean_iou"), REFCOCO_BOXES),
    "refcocog": (("acc50", "mean_iou"), REFCOCO_BOXES),
    "clotho_captions": (("bleu_4", "cider"), list(CLOTHO_CAPTIONS.values())),
    "msrvtt_captions": (("bleu_4", "cider"), list(MSRVTT_CAPTIONS.values())),
    "msrvtt_qa": (("exact_match",), [qa["answer"] for qa in MSRVTT_QA]),
}


def _coco_caption_examples():
  return [{"image": picture(40 + 8 * i, 48), "image/filename": tf.constant(f"{i}.jpg"),
           "image/id": tf.constant(i + 1, tf.int64),
           "captions": {"text": tf.constant(captions), "id": tf.range(5, dtype=tf.int64)}}
          for i, captions in enumerate(COCO_CAPTIONS)]


def _coco_detection_examples():
  return [{"image": picture(*hw), "image/filename": tf.constant(f"{i}.jpg"),
           "image/id": tf.constant(i + 1, tf.int64),
           "objects": {"bbox": tf.constant(boxes, tf.float32),
                       "label": tf.constant(labels, tf.int64),
                       "area": tf.ones([len(labels)], tf.int64),
                       "id": tf.range(len(labels), dtype=tf.int64),
                       "is_crowd": tf.zeros([len(labels)], tf.bool)}}
          for i, (hw, boxes, labels) in enumerate(DETECTIONS)]


def _tfds_examples(builder):
  """The hand-made examples of whichever TFDS builder is read."""
  if builder.name == "ref_coco":  # (every RefCOCO config: the same image and expressions)
    return [_refcoco_example()]
  return {"coco_captions": _coco_caption_examples,
          "coco": _coco_detection_examples}[builder.name]()


def _as_dataset(self, *args, **kwargs):
  """`as_dataset_fn` for mock_data, dispatching on the builder."""
  return hand_made(_tfds_examples(self))(self, *args, **kwargs)


def write_files(root):
  """VQAv2, Clotho (validation) and MSR-VTT in their release layouts under `root`."""
  write_vqa_v2(root / "vqav2", VQA_ANSWERS, (30, 40))
  clotho = root / "clotho"
  for seconds, name in enumerate(CLOTHO_CAPTIONS, start=1):
    write_wav(clotho / "validation" / name, seconds=0.2 * seconds, rate=16000)
  with open(clotho / "clotho_captions_validation.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["file_name"] + [f"caption_{i}" for i in range(1, 6)])
    for name, captions in CLOTHO_CAPTIONS.items():
      writer.writerow([name] + captions)
  msrvtt = root / "msrvtt"
  for video_id in MSRVTT_CAPTIONS:
    write_video(msrvtt / "videos" / f"{video_id}.mp4", num_frames=4)
  info = {"videos": [{"video_id": v, "split": "validate"} for v in MSRVTT_CAPTIONS],
          "sentences": [{"video_id": v, "caption": c}
                        for v, captions in MSRVTT_CAPTIONS.items() for c in captions]}
  (msrvtt / "train_val_videodatainfo.json").write_text(json.dumps(info))
  (msrvtt / "val_qa.json").write_text(json.dumps(MSRVTT_QA))


def eval_main(model_dir, out_dir, task):
  """(exit status, stderr) of the eval binary's `main` in this process; gin is left clear."""
  err = io.StringIO()
  try:
    with contextlib.redirect_stderr(err):
      status = eval_cli.main([*EVAL_FLAGS, f"--gin.CHECKPOINT_PATH='{model_dir}'",
                              f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
                              f"--gin.EVAL_OUTPUT_DIR='{out_dir}'"])
  finally:
    gin.clear_config()
  return status, err.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """Random parameters of the tiny model reading text, images, audio and video, writing text."""
  path = tmp_path_factory.mktemp("benchmark_run")
  write_run(str(path), model_gin="models/tiny_multimodal.gin", lengths=LENGTHS, steps=(STEP,),
            bindings=["make_config.target_modalities = ('text',)"])
  return path


def _first_predicted_perfectly(predict):
  """`Evaluator.predict` whose first record's output is its target (the decoder still runs)."""
  def wrapped(self, *args, **kwargs):
    records = predict(self, *args, **kwargs)
    first = records[0]
    first["_output"] = first["text"] = first["_target"]
    return records
  return wrapped


@pytest.fixture(scope="module")
def evaluated(model_dir, tmp_path_factory):
  """The eval output folder of one uio2-eval call over every benchmark (the decoder compiles
  once for all of them)."""
  data_root = tmp_path_factory.mktemp("benchmark_data")
  write_files(data_root)
  out_dir = tmp_path_factory.mktemp("benchmark_eval")
  registry.add_mixture(MIXTURE, list(TASKS), default_rate=1.0, replace=True)
  try:
    with pytest.MonkeyPatch.context() as patch, tfds.testing.mock_data(as_dataset_fn=_as_dataset):
      patch.setenv(DATA_DIR_ENV, str(data_root))
      patch.setattr(evaluator_lib.Evaluator, "predict",
                    _first_predicted_perfectly(evaluator_lib.Evaluator.predict))
      status, err = eval_main(model_dir, out_dir, MIXTURE)
  finally:
    seqio.MixtureRegistry.remove(MIXTURE)
  assert status == 0, err[-3000:]
  return out_dir


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _assert_perfect(task, prediction, reference):
  """The first example's prediction, made from its target text: the reference itself (boxes up to
  the location tokens' resolution, 1000 bins over the model image, mapped back to the original)."""
  if task == "coco_detection":
    assert prediction["labels"] == reference["labels"]
    np.testing.assert_allclose(prediction["boxes"], reference["boxes"], atol=1.0)
  elif task.startswith("refcoco"):
    np.testing.assert_allclose(prediction, reference, atol=1.0)
  elif isinstance(reference, list):  # every reference caption / the ten human answers
    assert prediction in reference
  else:
    assert prediction == reference


@pytest.mark.parametrize("task", list(TASKS))
def test_benchmark_is_scored_by_its_own_metric_fns(evaluated, task):
  keys, references = TASKS[task]
  (metrics,) = _lines(evaluated / f"{task}-metrics.jsonl")
  assert metrics["step"] == STEP
  assert set(keys) <= set(metrics)
  for key in keys:  # example 0 is right, example 1 is noise: above 0, and no metric exceeds 1
    assert 0.0 < metrics[key] and (key == "cider" or metrics[key] <= 1.0), (key, metrics[key])
  records = _lines(evaluated / f"{task}-{STEP}.jsonl")
  assert [r["index"] for r in records] == [0, 1]
  # The reference is what the benchmark scores against, as the fixture gives it.
  got = [r["reference"] for r in records]
  if task == "coco_detection":
    for record, want in zip(got, references):
      assert record["labels"] == want["labels"] and record["crowd"] == want["crowd"]
      np.testing.assert_allclose(record["boxes"], want["boxes"], atol=1e-3)
  elif task.startswith("refcoco"):
    np.testing.assert_allclose(got, references, atol=1e-3)
  else:
    assert got == references
  _assert_perfect(task, records[0]["prediction"], got[0])
  # The written metrics are the task's functions on the written predictions and references.
  seqio_task = seqio.get_mixture_or_task(task)
  assert list(seqio_task.metric_fns) == list(seqio_task.predict_metric_fns)
  recomputed = {}
  for fn in seqio_task.predict_metric_fns:
    recomputed.update(fn(got, [r["prediction"] for r in records]))
  written = {k: v for k, v in metrics.items() if k != "step"}
  assert written == pytest.approx({k: float(v) for k, v in recomputed.items()},
                                  rel=1e-6, abs=1e-9)


def test_the_models_own_predictions_are_in_the_benchmarks_frame(evaluated):
  """The random model's predictions (example 1): boxes in the original image's pixels (inside
  it), detection labels class ids (-1: a name that is no COCO class), text a stripped string."""
  for task in ("refcoco", "refcoco_plus", "refcocog"):
    box = _lines(evaluated / f"{task}-{STEP}.jsonl")[1]["prediction"]
    assert box is None or (len(box) == 4 and all(0 <= v <= 60 for v in box))
  prediction = _lines(evaluated / f"coco_detection-{STEP}.jsonl")[1]["prediction"]
  hw = DETECTIONS[1][0]
  assert all(isinstance(l, int) and -1 <= l < len(coco.COCO_CATEGORIES) for l in prediction["labels"])
  assert len(prediction["boxes"]) == len(prediction["labels"])
  for y1, x1, y2, x2 in prediction["boxes"]:
    assert 0 <= y1 <= y2 <= hw[0] and 0 <= x1 <= x2 <= hw[1]
  for task in ("vqa_v2", "coco_captions", "clotho_captions", "msrvtt_captions", "msrvtt_qa"):
    record = _lines(evaluated / f"{task}-{STEP}.jsonl")[1]
    assert isinstance(record["prediction"], str) and record["prediction"] == record["text"].strip()


# ---------------------------------------------------------------- bad input

def _answerless_source():
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"text_inputs": ["What colour?", "How many?"],
                                               "text_targets": ["red", "two"]})
  return seqio.FunctionDataSource(dataset_fn, splits=["validation"])


def test_examples_without_the_field_the_postprocessor_needs_are_one_line(model_dir, tmp_path):
  """A VQA-scored task whose examples lack meta/answers: exit 2, one line naming the task, the
  example and the field, and nothing written for it."""
  name = "benchmark_eval_vqa_without_answers"
  seqio.TaskRegistry.add(name, source=_answerless_source(), preprocessors=[],
                         output_features=registry.raw_output_features(),
                         postprocess_fn=postprocessors.vqa_answers,
                         metric_fns=list(seqio.get_mixture_or_task("vqa_v2").metric_fns))
  out_dir = tmp_path / "eval"
  try:
    status, err = eval_main(model_dir, out_dir, name)
  finally:
    seqio.TaskRegistry.remove(name)
  assert status == 2, err[-3000:]
  assert "Traceback" not in err
  (line,) = [l for l in err.splitlines() if l.startswith("uio2-eval:")]
  assert name in line and "example 0" in line and "meta/answers" in line
  assert not (out_dir / f"{name}-{STEP}.jsonl").exists()
  assert not (out_dir / f"{name}-metrics.jsonl").exists()
