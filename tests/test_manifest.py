"""The generic JSONL manifest source: every media kind read from files the test writes.

  python -m pytest -q tests/test_manifest.py
"""

import json

import numpy as np
import pytest
import seqio
import tensorflow as tf

from fixture_media import write_image, write_jsonl, write_video, write_wav
from unified_io.data import bad_input, prompts
from unified_io.datasets import manifest
from unified_io.contract import DataConfig
from unified_io.data import pipeline
from unified_io.data.converter import UnifiedIOFeatureConverter
from unified_io.data.ops import audio as audio_ops
from unified_io.tasks import manifest as manifest_tasks

SMALL = DataConfig(image_input_size=(32, 32), image_history_size=(32, 32),
                   image_history_max_frames=2, image_target_size=(32, 32),
                   text_inputs_length=32, text_targets_length=32)
LENGTHS = {"text_inputs": 32, "text_targets": 16, "image_input_samples": 4,
           "audio_input_samples": 8, "image_history_input_samples": 4,
           "audio_history_input_samples": 8, "num_frames": 2}


@pytest.fixture(autouse=True)
def small_sizes():
  bad_input.reset_counts()
  yield SMALL


def stage1(task_name: str, split: str = "train"):
  """The task's stage-1 output (its preprocessors: raw fields, before stage 2), as numpy."""
  task = seqio.get_mixture_or_task(task_name)
  ds = task.source.get_dataset(split, shuffle=False)
  with seqio.utils.map_seed_manager(0):
    for preprocessor in task.preprocessors:
      ds = preprocessor(ds)
  return list(ds.as_numpy_iterator())


def converted_batch(task_name: str, split: str = "train", batch_size: int = 2):
  ds = pipeline.get_dataset(task_name, UnifiedIOFeatureConverter(SMALL), LENGTHS, split=split,
                            shuffle=False, seed=0, num_epochs=1)
  return next(ds.batch(batch_size).as_numpy_iterator())


def fresh_name(base: str) -> str:
  name, i = base, 0
  while name in seqio.TaskRegistry.names():
    i += 1
    name = f"{base}_{i}"
  return name


@pytest.fixture
def all_media_manifest(tmp_path):
  write_image(tmp_path / "img" / "a.png", (20, 30))
  write_image(tmp_path / "img" / "b.jpg", (40, 16), color=(0, 90, 200))
  write_wav(tmp_path / "snd" / "a.wav", seconds=0.5, rate=22050)
  write_video(tmp_path / "vid" / "a.mp4", num_frames=6)
  lines = [{"prompt": "What is it?", "target": "a red box", "image": "img/a.png",
            "audio": "snd/a.wav", "video": "vid/a.mp4", "target_image": "img/b.jpg",
            "target_audio": "snd/a.wav", "id": 7, "task_kind": "demo",
            "meta": {"answers": ["a red box", "red box"]}},
           {"text_inputs": "", "text_targets": "", "image": str(tmp_path / "img" / "b.jpg"),
            "audio": "snd/a.wav", "video": "vid/a.mp4", "target_image": "img/a.png",
            "target_audio": "snd/a.wav", "answers": "one"}]
  return write_jsonl(tmp_path / "train.jsonl", lines)


def test_every_media_kind_is_decoded_from_relative_and_absolute_paths(all_media_manifest):
  name = fresh_name("test_manifest_all_media")
  manifest.add_manifest_task(name, {"train": str(all_media_manifest)}, meta_fields={"answers": 1},
                             num_video_frames=2)
  assert seqio.get_mixture_or_task(name)
  first, second = stage1(name)
  assert first["text_inputs"] == b"What is it?" and first["text_targets"] == b"a red box"
  assert first["image_inputs"].shape == (20, 30, 3) and first["image_inputs"].dtype == np.uint8
  assert first["image_targets"].shape == (40, 16, 3)
  assert second["image_inputs"].shape == (40, 16, 3)  # the absolute path
  # 0.5 s at 22.05 kHz -> 16 kHz mono
  assert first["audio_inputs"].dtype == np.float32 and abs(first["audio_inputs"].size - 8000) <= 2
  assert first["image_history"].shape[:1] == (2,) and first["image_history"].shape[-1] == 3
  assert first["audio_history"].shape == (2, audio_ops.SEGMENT_SAMPLES)
  assert not first["audio_history"].any()  # the clip is silent: silence, not garbage
  assert first["meta/id"] == b"7" and first["meta/task_kind"] == b"demo"
  assert list(first["meta/answers"]) == [b"a red box", b"red box"]
  assert list(second["meta/answers"]) == [b"one"]
  assert first["meta/source"].decode().endswith("train.jsonl:1")
  assert bad_input.counts() == {}


def test_media_default_to_those_of_the_first_line(all_media_manifest):
  assert set(manifest.media_in_first_line(str(all_media_manifest))) == set(manifest.MEDIA_KEYS)


def test_converted_batch_from_a_manifest_task(all_media_manifest):
  name = fresh_name("test_manifest_batch")
  manifest.add_manifest_task(name, {"train": str(all_media_manifest)}, num_video_frames=2)
  batch = converted_batch(name)
  assert batch["inputs/text/tokens"].shape == (2, LENGTHS["text_inputs"])
  assert batch["inputs/image/mask"].shape == (2, 4) and batch["inputs/image/mask"].all()
  assert batch["inputs/image_history/mask"].shape == (2, 2, 4)
  assert batch["inputs/audio/mask"].any()
  assert batch["targets/image/mask"].any() and batch["targets/audio/mask"].any()


def test_text_only_manifest_with_prompt_templates(tmp_path):
  path = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": "Why is the sky blue?", "target": "air"},
                                             {"prompt": "2+2?", "target": "4"}])
  name = fresh_name("test_manifest_text")
  manifest.add_manifest_task(name, {"validation": str(path)}, task_kind="text_instruction")
  examples = stage1(name, "validation")
  assert [e["text_targets"] for e in examples] == [b"air", b"4"]
  question = "Why is the sky blue?"
  expected = {t.replace("{}", question) for t in prompts.templates("text_instruction")}
  assert examples[0]["text_inputs"].decode() in expected
  batch = converted_batch(name, "validation")
  assert batch["inputs/text/mask"].sum(axis=1).min() > 3
  assert not batch["inputs/image/mask"].any()  # no image: the converter fills zeros


def test_missing_manifest_is_a_clear_error(tmp_path):
  name = fresh_name("test_manifest_missing")
  manifest.add_manifest_task(name, {"train": str(tmp_path / "nope.jsonl")}, media=("image",))
  with pytest.raises(manifest.ManifestError, match="nope.jsonl"):
    seqio.get_mixture_or_task(name).get_dataset(None, "train")
  with pytest.raises(manifest.ManifestError, match="nope.jsonl"):
    manifest.add_manifest_task(fresh_name("x"), {"train": str(tmp_path / "nope.jsonl")})


def test_unknown_media_key_is_refused(tmp_path):
  with pytest.raises(manifest.ManifestError, match="depth"):
    manifest.add_manifest_task(fresh_name("x"), {"train": "a.jsonl"}, media=("depth",))


def test_spec_registration(tmp_path):
  write_image(tmp_path / "a.png")
  path = write_jsonl(tmp_path / "m.jsonl", [{"image": "a.png", "target": "a square"}])
  name = fresh_name("test_manifest_spec")
  spec = {name: {"splits": {"train": str(path)}, "task_kind": "image_caption"}}
  assert manifest_tasks.register_manifests(spec) == [name]
  assert manifest_tasks.register_manifests(spec) == []  # already there: left alone
  (example,) = stage1(name)
  assert example["text_inputs"].decode() in prompts.templates("image_caption")
  with pytest.raises(manifest.ManifestError, match="splits"):
    manifest_tasks.register_manifests({fresh_name("y"): {"train": str(path)}})
  with pytest.raises(manifest.ManifestError, match="colour"):
    manifest_tasks.register_manifests({fresh_name("y"): {"splits": {}, "colour": 1}})
  spec_file = tmp_path / "spec.json"
  spec_file.write_text(json.dumps(spec))
  assert manifest_tasks.read_spec(str(spec_file)) == spec
