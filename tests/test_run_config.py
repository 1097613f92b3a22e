"""run-config.json's data section: what a training run records (world, denoising, directories,
task modules) and what an evaluating process gets from it with `apply_run_data`, its own gin
bindings winning; the data section round trips, a format-1 file still loads, a task module that
cannot be imported is one line. Run configs are written here by hand or through RunConfig (no
training; tests/test_eval_binary.py checks a real uio2-train run's)."""

import dataclasses
import importlib
import json
import os
import sys

import gin
import pytest

from unified_io import config as config_lib
from unified_io.cli import gin_flags
from unified_io.data.denoising import DenoisingConfig
from unified_io.datasets import directories
from unified_io.datasets.world.config import DIFFICULTIES, WorldConfig, make_world_config
from unified_io.presets import make_config
from unified_io.training import run_config
from unified_io.training.run_config import RunConfig, RunConfigError, RunData

LENGTHS = {"text_inputs": 24, "text_targets": 12}
SAVED_WORLD = make_world_config(max_objects=3, image_size=64, validation_examples=11)


@pytest.fixture(autouse=True)
def clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(scope="module")
def tiny():
  return make_config("tiny")


def save_run(model_dir, model, data: RunData):
  """A MODEL_DIR with run-config.json and an (empty) checkpoints/5 folder."""
  os.makedirs(model_dir / "checkpoints" / "5")
  RunConfig(model, LENGTHS, "world_text", data=data).save(str(model_dir))
  return model_dir


def evaluating_process(*bindings: str) -> None:
  """gin as an evaluating binary leaves it before its entry runs: the command line parsed."""
  gin_flags.parse_gin([], list(bindings))


def test_the_data_section_round_trips_as_plain_json(tiny):
  data = RunData(world=make_world_config("hard", image_size=64),
                 denoising=DenoisingConfig(patch_rate=0.3), dataset_root="/data/raw",
                 dataset_overrides={"vqav2": "/elsewhere/vqa"}, tfds_data_dir="/data/tfds",
                 task_modules=("my_tasks",),
                 manifest_tasks={"my_sounds": {"splits": {"train": "/data/train.jsonl"}}})
  saved = RunConfig(tiny, LENGTHS, "world_text", data=data)
  text = saved.to_json()
  plain = json.loads(text)
  assert plain["format"] == run_config.FORMAT == 2
  assert plain["data"]["world"]["max_objects"] == DIFFICULTIES["hard"]["max_objects"]
  assert plain["data"]["denoising"]["text_rates"] == [0.25, 0.5, 0.25]
  assert plain["data"]["task_modules"] == ["my_tasks"]
  assert RunConfig.from_json(text) == saved


def test_a_format_1_run_config_still_loads_and_applies_nothing(tmp_path, tiny):
  (tmp_path / run_config.FILE).write_text(json.dumps(
      {"format": 1, "model": config_lib.to_dict(tiny), "task_feature_lengths": LENGTHS,
       "mixture_or_task_name": "world_text", "vocabulary": None}))
  old = run_config.load(str(tmp_path))
  assert old.model == tiny and old.task_feature_lengths == LENGTHS and old.data is None
  assert run_config.apply_run_data(str(tmp_path)) is None
  assert gin.config_str().strip() == ""
  assert make_world_config() == WorldConfig()


@pytest.mark.parametrize("change, words", [
    ({"format": 3}, "format 3"),
    ({"data": {"world": {"max_objects": 99}}}, "`data.world`: WorldConfig.max_objects = 99"),
    ({"data": {"worlds": {}}}, "`data.worlds` is not a data field"),
])
def test_an_unreadable_data_section_is_one_line(tmp_path, tiny, change, words):
  text = json.loads(RunConfig(tiny, LENGTHS, "world_text", data=RunData()).to_json())
  (tmp_path / run_config.FILE).write_text(json.dumps({**text, **change}))
  with pytest.raises(RunConfigError) as err:
    run_config.load(str(tmp_path))
  assert words in str(err.value) and "\n" not in str(err.value)
  assert str(tmp_path / run_config.FILE) in str(err.value)


def test_training_records_the_data_configuration_its_gin_gives(tiny, monkeypatch):
  monkeypatch.setenv(directories.DATA_DIR_ENV, "/env/raw")
  gin_flags.parse_gin([], ["make_world_config.difficulty = 'medium'",
                           "make_world_config.max_objects = 3",
                           "DenoisingConfig.patch_rate = 0.3",
                           "dataset_dir.overrides = {'vqav2': '/elsewhere/vqa'}"])
  gin_flags.bind_tfds_data_dir("/flag/tfds")  # uio2-train's --tfds_data_dir
  data = RunConfig.of_training(tiny, LENGTHS, "world_text", gin_imports=[
      "unified_io.evaluation.runs", "my_tasks", "__gin__.dynamic_registration", "my_tasks"]).data
  assert data.world == make_world_config("medium", max_objects=3)
  assert data.denoising == DenoisingConfig(patch_rate=0.3)
  assert data.dataset_root == "/env/raw"  # ($UIO2_DATA_DIR: no gin binding)
  assert data.dataset_overrides == {"vqav2": "/elsewhere/vqa"}
  assert data.tfds_data_dir == "/flag/tfds"
  assert data.task_modules == ("my_tasks",)
  gin.parse_config("dataset_dir.root = '/gin/raw'")
  assert RunData.of_training().dataset_root == "/gin/raw"


def test_a_bad_world_binding_stops_training_before_anything_is_written(tiny):
  gin.parse_config("make_world_config.max_objects = 99")
  with pytest.raises(RunConfigError, match="WorldConfig.max_objects = 99"):
    RunConfig.of_training(tiny, LENGTHS, "world_text")


def test_the_evaluating_process_draws_from_the_runs_world_its_own_bindings_winning(tmp_path,
                                                                                   tiny):
  model_dir = save_run(tmp_path, tiny, RunData(world=SAVED_WORLD,
                                               denoising=DenoisingConfig(patch_rate=0.3)))
  evaluating_process("make_world_config.image_size = 96")  # the eval command line
  assert make_world_config() == WorldConfig(image_size=96)
  kept = run_config.apply_data(run_config.load(str(model_dir)).data)
  assert kept == ("make_world_config.image_size",)
  assert make_world_config() == dataclasses.replace(SAVED_WORLD, image_size=96)
  assert DenoisingConfig() == DenoisingConfig(patch_rate=0.3)


def test_apply_run_data_finds_the_run_of_a_step_directory(tmp_path, tiny):
  model_dir = save_run(tmp_path / "run", tiny, RunData(world=SAVED_WORLD))
  for path in (model_dir, model_dir / "checkpoints", model_dir / "checkpoints" / "5"):
    assert run_config.find_model_dir(str(path)) == str(model_dir)
  assert run_config.find_model_dir(str(tmp_path)) is None  # e.g. a converted checkpoint
  lines = []
  assert run_config.apply_run_data(str(model_dir / "checkpoints" / "5"), log=lines.append
                                   ).world == SAVED_WORLD
  assert make_world_config() == SAVED_WORLD
  assert lines == [f"data configuration of the run from {model_dir / run_config.FILE}"]


def test_a_difficulty_on_the_command_line_takes_the_presets_fields(tmp_path, tiny):
  model_dir = save_run(tmp_path, tiny, RunData(world=SAVED_WORLD))
  evaluating_process("make_world_config.difficulty = 'hard'")
  kept = run_config.apply_data(run_config.load(str(model_dir)).data)
  assert set(kept) == {f"make_world_config.{name}" for name in DIFFICULTIES["hard"]}
  assert make_world_config() == dataclasses.replace(SAVED_WORLD, **DIFFICULTIES["hard"])
  assert make_world_config().image_size == 64 and make_world_config().validation_examples == 11


def test_directories_come_from_the_run_unless_the_evaluating_process_sets_them(tmp_path, tiny,
                                                                             monkeypatch):
  model_dir = save_run(tmp_path, tiny, RunData(dataset_root="/run/raw",
                                               tfds_data_dir="/run/tfds"))
  monkeypatch.delenv(directories.DATA_DIR_ENV, raising=False)
  evaluating_process()
  gin_flags.bind_tfds_data_dir("/eval/tfds")  # the eval binary's --tfds_data_dir
  run_config.apply_run_data(str(model_dir))
  assert directories.tfds_data_dir() == "/eval/tfds"
  assert directories.dataset_dir("vqav2") == "/run/raw/vqav2"
  gin.clear_config()
  monkeypatch.setenv(directories.DATA_DIR_ENV, "/eval/raw")
  run_config.apply_run_data(str(model_dir))
  assert directories.tfds_data_dir() == "/run/tfds"
  assert directories.dataset_dir("vqav2") == "/eval/raw/vqav2"


def test_a_user_task_module_is_imported(tmp_path, tiny, monkeypatch):
  name = "uio2_test_user_tasks"
  (tmp_path / "lib").mkdir()
  (tmp_path / "lib" / f"{name}.py").write_text(
      "import unified_io.tasks\n"
      "from unified_io.data import registry\n"
      "registry.add_mixture('uio2_test_user_mixture', ['world_arithmetic'], default_rate=1.0,\n"
      "                     replace=True)\n")
  monkeypatch.syspath_prepend(str(tmp_path / "lib"))
  monkeypatch.delitem(sys.modules, name, raising=False)
  model_dir = save_run(tmp_path / "run", tiny, RunData(task_modules=(name,)))
  run_config.apply_run_data(str(model_dir))
  assert name in sys.modules
  import seqio  # pylint: disable=import-outside-toplevel
  assert "uio2_test_user_mixture" in seqio.MixtureRegistry.names()
  monkeypatch.delitem(sys.modules, name)


def test_a_task_module_that_cannot_be_imported_is_one_line(tmp_path, tiny):
  model_dir = save_run(tmp_path, tiny, RunData(task_modules=("no_such_user_tasks",)))
  with pytest.raises(RunConfigError) as err:
    run_config.apply_run_data(str(model_dir))
  message = str(err.value)
  assert "\n" not in message
  assert "'no_such_user_tasks'" in message and "PYTHONPATH" in message
  assert str(model_dir / run_config.FILE) in message


def test_parse_gin_returns_what_the_gin_imports(tmp_path):
  (tmp_path / "run.gin").write_text("import unified_io.evaluation.runs\ninclude 'tasks.gin'\n")
  (tmp_path / "tasks.gin").write_text("import json\n")
  imports = gin_flags.parse_gin(["run.gin"], ["import csv", "import json"], str(tmp_path))
  assert imports == ["unified_io.evaluation.runs", "json", "csv"]
  assert RunData.of_training(imports).task_modules == ("json", "csv")


def test_manifest_tasks_bound_at_training_are_registered_for_the_evaluation(tmp_path, tiny):
  import seqio  # pylint: disable=import-outside-toplevel
  importlib.import_module("unified_io.tasks.manifest")  # (gin's register_configured_manifests)
  name = "uio2_test_run_manifest"
  spec = {name: {"splits": {"validation": str(tmp_path / "val.jsonl")}, "media": ["image"]}}
  gin.bind_parameter("register_configured_manifests.tasks", spec)
  data = RunData.of_training()
  assert data.manifest_tasks == spec
  gin.clear_config()
  model_dir = save_run(tmp_path / "run", tiny, data)
  assert name not in seqio.TaskRegistry.names()
  try:
    run_config.apply_run_data(str(model_dir))
    assert name in seqio.TaskRegistry.names()
  finally:
    seqio.TaskRegistry.remove(name)
