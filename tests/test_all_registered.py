"""Every task and mixture our package registers yields a batch that is exactly the model's contract.

  cd /work/main && .venv/bin/python -m pytest -q tests/test_all_registered.py

One parametrised test: for each name registered by `import unified_io.tasks` it pulls one converted
batch (batch 2, small feature lengths) through `unified_io.training.input.TrainInput`, the trainer's
input (train split, shuffled, endless, seqio shard 0 of 1), with the DataConfig of the tiny
every-modality model (gin/models/tiny_sensor.gin: tiny_multimodal.gin plus sensor), and checks every feature's name, shape and
dtype against `UnifiedIOModel.batch_spec`. It also checks the data really flowed: every row has a
prompt and something to learn, exactly the modalities the task carries have non-zero masks (the
rest are the contract's zeros), values are finite, and no example was skipped as bad input.

Real-dataset tasks read fixture data written here: TFDS tasks under `tfds.testing.mock_data`
(hand-made examples where TFDS's random ones are geometrically meaningless, as in
tests/test_real_datasets.py), file datasets in their release layouts under $UIO2_DATA_DIR. A task
registered without a fixture below fails, asking for one. No user JSONL manifest is registered by
default ($UIO2_MANIFEST_TASKS unset), so one all-media manifest task registered here stands in.
"""

import contextlib
import csv
import json
import os
from typing import Callable, Dict

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from fixture_media import write_image, write_jsonl, write_video, write_wav
from test_real_datasets import _refcoco_example, hand_made, picture
from tiny_models import TINY_SENSOR
from unified_io.data import bad_input
from unified_io.datasets import manifest
from unified_io.contract import DataConfig
from unified_io.data.converter import UnifiedIOFeatureConverter
from unified_io.datasets.directories import DATA_DIR_ENV
from unified_io.model import UnifiedIOModel
from unified_io.tasks import manifest as manifest_tasks  # (importing any task registers all)
from unified_io.training.input import TrainInput

# What our package registers: at collection nothing else is registered yet (tests register theirs
# inside test functions, after collection).
TASKS = sorted(seqio.TaskRegistry.names())
MIXTURES = sorted(seqio.MixtureRegistry.names())
MANIFEST_STAND_IN = "all_registered_manifest"

BATCH_SIZE = 2
# gin/models/tiny_sensor.gin (every input modality)
MULTIMODAL = TINY_SENSOR
LENGTHS = {"text_inputs": 48, "text_targets": 24, "image_input_samples": 16,
           "audio_input_samples": 16, "image_history_input_samples": 8,
           "audio_history_input_samples": 8, "num_frames": 2, "sensor_input_samples": 16}

# Which (side, modality) masks are non-zero in a batch of the task; inputs/text always is.
_I, _T = "inputs", "targets"
_IMAGE_TO_TEXT = {(_I, "image"), (_T, "text")}
_AUDIO_TO_TEXT = {(_I, "audio"), (_T, "text")}
_VIDEO_TO_TEXT = {(_I, "image_history"), (_I, "audio_history"), (_T, "text")}
_TEXT_TO_TEXT = {(_T, "text")}
CARRIES = {
    "world_caption": _IMAGE_TO_TEXT, "world_vqa_colour": _IMAGE_TO_TEXT,
    "world_vqa_shape": _IMAGE_TO_TEXT, "world_vqa_count": _IMAGE_TO_TEXT,
    "world_vqa_position": _IMAGE_TO_TEXT, "world_refexp": _IMAGE_TO_TEXT,
    "world_detection": _IMAGE_TO_TEXT, "world_text_to_image": {(_T, "image")},
    "world_object_mask": {(_I, "image"), (_T, "image")},
    "world_image_denoise": {(_I, "image"), (_T, "image")},
    "world_audio_denoise": {(_I, "audio"), (_T, "audio")},
    "world_video_direction": _VIDEO_TO_TEXT, "world_video_count": _VIDEO_TO_TEXT,
    "world_audio_caption": _AUDIO_TO_TEXT, "world_audio_qa": _AUDIO_TO_TEXT,
    "world_text_to_audio": {(_T, "audio")},
    "world_text_scene_qa": _TEXT_TO_TEXT, "world_arithmetic": _TEXT_TO_TEXT,
    "world_sensor_taps": {(_I, "sensor"), (_T, "text")},
    "world_sensor_gravity": {(_I, "sensor"), (_T, "text")},
    **{f"world_{n}": {(_I, "image"), (_T, "image")}
       for n in ("depth", "normals", "segmentation", "edges", "segmentation_to_image")},
    "world_palette": _IMAGE_TO_TEXT,
    "coco_captions": _IMAGE_TO_TEXT, "coco_detection": _IMAGE_TO_TEXT,
    "coco_image_denoise": {(_I, "image"), (_T, "image")},
    "refcoco": _IMAGE_TO_TEXT, "refcoco_plus": _IMAGE_TO_TEXT, "refcocog": _IMAGE_TO_TEXT,
    "vqa_v2": _IMAGE_TO_TEXT, "clotho_captions": _AUDIO_TO_TEXT,
    # The fixture clip is silent: silence has no mel power, so audio_history masks stay 0.
    "msrvtt_captions": {(_I, "image_history"), (_T, "text")},
    "msrvtt_qa": {(_I, "image_history"), (_T, "text")},
    "nlp_instructions": _TEXT_TO_TEXT,
    MANIFEST_STAND_IN: {(_I, m) for m in ("image", "audio", "image_history")}
                       | {(_T, m) for m in ("text", "image", "audio")},
}


# ------------------------------------------------------------------------- fixture data per task

def _coco_detection_example():
  return {"image": picture(100, 200), "image/filename": tf.constant("000000000001.jpg"),
          "image/id": tf.constant(1, tf.int64),
          "objects": {"bbox": tf.constant([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]]),
                      "label": tf.constant([2, 0], tf.int64),
                      "area": tf.constant([1, 2], tf.int64), "id": tf.constant([5, 6], tf.int64),
                      "is_crowd": tf.constant([False, False])}}


def _vqa_files(root):
  root = root / "vqav2"
  write_image(root / "train2014" / "COCO_train2014_000000000042.jpg", (30, 40))
  (root / "v2_OpenEnded_mscoco_train2014_questions.json").write_text(json.dumps(
      {"questions": [{"image_id": 42, "question": "What colour?", "question_id": 420}]}))
  (root / "v2_mscoco_train2014_annotations.json").write_text(json.dumps(
      {"annotations": [{"question_id": 420, "image_id": 42, "multiple_choice_answer": "red",
                        "answers": [{"answer": "red", "answer_id": i} for i in range(10)]}]}))


def _clotho_files(root):
  root = root / "clotho"
  write_wav(root / "development" / "rain.wav", seconds=0.3, rate=44100)
  with open(root / "clotho_captions_development.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["file_name"] + [f"caption_{i}" for i in range(1, 6)])
    writer.writerow(["rain.wav"] + [f"rain falls {i}" for i in range(5)])


def _msrvtt_files(root):
  root = root / "msrvtt"
  write_video(root / "videos" / "video1.mp4", num_frames=6)
  (root / "train_val_videodatainfo.json").write_text(json.dumps(
      {"videos": [{"video_id": "video1", "split": "train"}],
       "sentences": [{"video_id": "video1", "caption": "a grey screen"}]}))
  (root / "train_qa.json").write_text(json.dumps(
      [{"video_id": 1, "question": "what is shown?", "answer": "screen", "id": 3}]))


def _alpaca_files(root):
  (root / "alpaca").mkdir()
  (root / "alpaca" / "alpaca_data.json").write_text(json.dumps(
      [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}]))


def _manifest_task(root):
  write_image(root / "a.png", (20, 30))
  write_image(root / "b.png", (16, 16), color=(0, 90, 200))
  write_wav(root / "a.wav", seconds=0.5, rate=22050)
  write_video(root / "a.mp4", num_frames=4)
  path = write_jsonl(root / "train.jsonl", [
      {"prompt": "What is it?", "target": "a red box", "image": "a.png", "audio": "a.wav",
       "video": "a.mp4", "target_image": "b.png", "target_audio": "a.wav"}])
  manifest.add_manifest_task(MANIFEST_STAND_IN, {"train": str(path)}, num_video_frames=2,
                             replace=True)


def _write_tfds_info(tfds_name: str, split: str, data_dir: str) -> None:
  """A prepared dataset's dataset_info.json with one one-shard split: seqio lists a TFDS source's
  shards to shard it per process (the trainer always passes a ShardInfo), and mock_data without
  metadata knows no splits."""
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  template = tfds.core.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name=builder.name,
                                           split=split, filetype_suffix="tfrecord")
  builder.info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(
      name=split, shard_lengths=[1], num_bytes=0, filename_template=template)]))
  tf.io.gfile.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)


def _tfds(**mock_kwargs) -> Callable:
  """TFDS tasks: mock_data (random examples, or hand-made ones through `as_dataset_fn`) over the
  metadata of a prepared train split."""
  def setup(root, task_name):
    source = seqio.get_mixture_or_task(task_name).source
    data_dir = str(root / "tfds")
    # seqio keeps the TFDS builders it made (per name and data dir) for the process: one made
    # under another test's mock (without files) would be handed to this one.
    seqio.LazyTfdsLoader._MEMOIZED_BUILDERS.clear()  # pylint: disable=protected-access
    # Our train split is TFDS's "train" in every TFDS task (tasks/coco.py, tasks/refcoco.py).
    _write_tfds_info(source.tfds_dataset.name, "train", data_dir)
    return tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir,
                                  **mock_kwargs)
  return setup


def _files(write: Callable) -> Callable:
  def setup(root, task_name):
    del task_name
    write(root)
    return contextlib.nullcontext()
  return setup


# task -> setup(data_root, task name): a context to pull the batch in. $UIO2_DATA_DIR = data_root.
FIXTURES: Dict[str, Callable] = {
    "coco_captions": _tfds(num_examples=2),
    "coco_image_denoise": _tfds(num_examples=2),
    "coco_detection": _tfds(as_dataset_fn=hand_made([_coco_detection_example()])),
    "refcoco": _tfds(as_dataset_fn=hand_made([_refcoco_example()])),
    "refcoco_plus": _tfds(as_dataset_fn=hand_made([_refcoco_example()])),
    "refcocog": _tfds(as_dataset_fn=hand_made([_refcoco_example()])),
    "vqa_v2": _files(_vqa_files),
    "clotho_captions": _files(_clotho_files),
    "msrvtt_captions": _files(_msrvtt_files),
    "msrvtt_qa": _files(_msrvtt_files),
    "nlp_instructions": _files(_alpaca_files),
    MANIFEST_STAND_IN: _files(_manifest_task),
}


def _all_tasks_of(mixture: str) -> Callable:
  """A mixture of real-dataset tasks: every task's fixture at once (one TFDS mock at most)."""
  def setup(root, name):
    del name
    stack = contextlib.ExitStack()
    for task in seqio.get_mixture_or_task(mixture).tasks:
      stack.enter_context(FIXTURES[task.name](root, task.name))
    return stack
  return setup


FIXTURES["pretrain_mod_real"] = _all_tasks_of("pretrain_mod_real")


def user_manifests() -> set:
  """Tasks registered from $UIO2_MANIFEST_TASKS (unset in CI): they read the user's files."""
  spec = os.environ.get(manifest_tasks.SPEC_ENV)
  return set(manifest_tasks.read_spec(spec)) if spec else set()


def brings_own_data(name: str) -> bool:
  return name.startswith("world_") or name in user_manifests()


# ------------------------------------------------------------------------- the test

@pytest.fixture(autouse=True)
def multimodal_sizes():
  bad_input.reset_counts()
  yield


def _small_shuffle_buffers(name: str, monkeypatch) -> None:
  """Real tasks register with seqio's 1000-example shuffle buffer, which the trainer's endless
  stream fills by decoding the one-example fixture 1000 times (~45 s a task): 8 keeps the same
  shuffle, repeat and batch path at test speed."""
  for task in seqio.get_subtasks(seqio.get_mixture_or_task(name)):
    assert hasattr(task, "_shuffle_buffer_size"), "seqio renamed Task._shuffle_buffer_size"
    if task._shuffle_buffer_size is not None:  # pylint: disable=protected-access
      monkeypatch.setattr(task, "_shuffle_buffer_size", min(8, task._shuffle_buffer_size))


def _pull(name: str) -> Dict:
  data = TrainInput(name, LENGTHS, BATCH_SIZE, UnifiedIOFeatureConverter(DataConfig.from_model(MULTIMODAL)),
                    seed=0, process_index=0,
                    process_count=1)
  return next(data)


def _flat(tree) -> Dict[str, object]:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {"/".join(k.key for k in path): leaf for path, leaf in leaves}


def _nonzero_masks(flat: Dict[str, np.ndarray]) -> set:
  return {tuple(key.split("/")[:2]) for key, value in flat.items()
          if key.endswith("/mask") and value.any()}


def _check_contract(batch: Dict, spec: Dict) -> None:
  got, want = _flat(batch), _flat(spec)
  missing = set(want) - set(got)
  assert not missing and not set(got) - set(want), (sorted(missing), sorted(set(got) - set(want)))
  for key, value in got.items():
    assert value.shape == want[key].shape and value.dtype == want[key].dtype, (
        key, value.shape, value.dtype, want[key].shape, want[key].dtype)
    if value.dtype.kind == "f":
      assert np.isfinite(value).all(), key


def _restore_tfds_dirs_after(monkeypatch) -> None:
  """Reading a TFDS task points its (process-wide, shared) source at this test's tmp dir and
  memoizes builders (with this test's one-split dataset_info); put every source's data_dir
  override and seqio's builder memo back afterwards so later tests do not read this one's."""
  loader_cls = seqio.utils.LazyTfdsLoader
  monkeypatch.setattr(loader_cls, "_MEMOIZED_BUILDERS", dict(loader_cls._MEMOIZED_BUILDERS))
  for task in seqio.TaskRegistry.names():
    loader = getattr(seqio.TaskRegistry.get(task).source, "tfds_dataset", None)
    if loader is not None:
      monkeypatch.setattr(loader, "_data_dir_override", loader._data_dir_override)


@pytest.mark.parametrize("name", TASKS + [MANIFEST_STAND_IN] + MIXTURES)
def test_one_converted_batch_matches_the_model_contract(name, tmp_path, monkeypatch):
  is_mixture = name in MIXTURES
  if not (is_mixture or brings_own_data(name) or name in FIXTURES):
    pytest.fail(f"task {name!r} is registered but this test has no fixture data for it: add one "
                f"to FIXTURES (and its modalities to CARRIES)")
  monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
  _restore_tfds_dirs_after(monkeypatch)
  with FIXTURES.get(name, _files(lambda root: None))(tmp_path, name):
    _small_shuffle_buffers(name, monkeypatch)
    batch = _pull(name)

  model = UnifiedIOModel(MULTIMODAL)
  _check_contract(batch, model.batch_spec(BATCH_SIZE, LENGTHS))

  flat = _flat(batch)
  assert flat["inputs/text/mask"].sum(axis=1).min() >= 2, "every row has a prompt (+ EOS)"
  target_tokens = sum(flat[f"targets/{m}/mask"].sum(axis=1) for m in ("text", "image", "audio")
                      if f"targets/{m}/mask" in flat)
  assert target_tokens.min() > 0, "every row has something to learn"
  assert bad_input.counts() == {}, "fixture data is valid: nothing may be skipped"
  if not (is_mixture or name in user_manifests()):
    assert name in CARRIES, f"add the modalities {name!r} carries to CARRIES"
    assert _nonzero_masks(flat) == CARRIES[name] | {(_I, "text")}
