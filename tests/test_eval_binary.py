"""uio2-eval and uio2-infer end to end on the built-in world: a 2-step CLI training run, then the
eval binary on its checkpoints (files written, evaluated checkpoints remembered), the infer binary
(chunks, resumed), and bad input (one line, exit 2; the eval binary's `main` in this process, as
the errors come before anything is evaluated)."""

import dataclasses
import json
import os
import subprocess
import sys

import gin
import pytest

from conftest import REPO_ROOT
from processes import xla_flags
from unified_io.cli import eval as eval_cli

LENGTHS = "{'text_inputs': 32, 'text_targets': 16}"
WORLD_BINDINGS = ("--gin.make_world_config.max_objects=3",
                  "--gin.make_world_config.validation_examples=40")


def _run(module, *flags):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = xla_flags()  # one CPU device, as a user's run
  # (tests/ holds fixture_user_tasks, the user's task module the training gin imports)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "tests"),
                                                    env.get("PYTHONPATH")]))
  result = subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 2-step run on a modified world, its gin importing a user's task module (the evaluations
  below do not depend on either: test_the_run_records_its_data_configuration checks them)."""
  model_dir = tmp_path_factory.mktemp("run") / "model"
  user_gin = model_dir.parent / "user_tasks.gin"
  user_gin.write_text("import fixture_user_tasks\n")
  _run("unified_io.cli.train", "--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin",
       f"--gin_file={user_gin}",
       f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='world_text'",
       f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4",
       "--gin.train.checkpoint_every=1", *WORLD_BINDINGS)
  return model_dir


def _eval_flags(model_dir, out_dir, task="world_text"):
  return ["--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{model_dir}'",
          f"--gin.MIXTURE_OR_TASK_NAME='{task}'", f"--gin.EVAL_OUTPUT_DIR='{out_dir}'",
          "--gin.evaluate.max_examples=5", "--gin.evaluate.batch_size=4"]


def _eval(model_dir, out_dir):
  return _run("unified_io.cli.eval", *_eval_flags(model_dir, out_dir))


def _eval_here(capsys, *flags):
  """(exit status, stderr) of the eval binary's `main` called here; gin is left clear."""
  try:
    status = eval_cli.main(list(flags))
  finally:
    gin.clear_config()
  return status, capsys.readouterr().err


def test_eval_writes_metrics_predictions_and_remembers_checkpoints(trained, tmp_path):
  out = tmp_path / "eval"
  _eval(trained, out)
  steps = sorted(int(d) for d in os.listdir(trained / "checkpoints") if d.isdigit())
  assert steps == [1, 2]
  for task in ("world_arithmetic", "world_text_scene_qa"):
    rows = [json.loads(l) for l in open(out / f"{task}-metrics.jsonl")]
    assert [r["step"] for r in rows] == steps
    assert all(0.0 <= r["exact_match"] <= 1.0 for r in rows)
    predictions = [json.loads(l) for l in open(out / f"{task}-2.jsonl")]
    assert len(predictions) == 5
    assert all({"prompt", "prediction", "reference"} <= set(p) for p in predictions)
    assert all(p["reference"] for p in predictions)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
  assert set(json.load(open(out / "evaluated.json"))) == {"1", "2"}
  again = _eval(trained, out)  # nothing new: nothing re-evaluated
  assert "nothing new to evaluate" in again.stdout + again.stderr
  rows = [json.loads(l) for l in open(out / "world_arithmetic-metrics.jsonl")]
  assert len(rows) == 2


def test_infer_writes_chunks_and_resumes(trained, tmp_path):
  out = tmp_path / "infer"
  flags = ["--gin_file=runs/infer.gin", f"--gin.CHECKPOINT_PATH='{trained}'",
           "--gin.MIXTURE_OR_TASK_NAME='world_arithmetic'", f"--gin.INFER_OUTPUT_DIR='{out}'",
           "--gin.infer.chunk_size=3", "--gin.infer.max_examples=7", "--gin.infer.batch_size=4"]
  _run("unified_io.cli.infer", *flags)
  chunks = sorted(os.listdir(out))
  assert chunks == ["world_arithmetic-test-0000000-0000002.jsonl",
                    "world_arithmetic-test-0000003-0000005.jsonl",
                    "world_arithmetic-test-0000006-0000006.jsonl"]
  indices = [json.loads(l)["index"] for c in chunks for l in open(out / c)]
  assert indices == list(range(7))
  os.remove(out / chunks[1])
  rerun = _run("unified_io.cli.infer", *flags)
  assert rerun.stdout.count("exists, skipped") == 2
  assert sorted(os.listdir(out)) == chunks


def test_bad_input_is_one_clear_line(trained, tmp_path, capsys):
  status, err = _eval_here(capsys, *_eval_flags(trained, tmp_path / "e1", task="world_nope"))
  assert status == 2
  assert "world_nope" in err and "Traceback" not in err
  (line,) = [l for l in err.splitlines() if l.startswith("uio2-eval:")]
  assert "world_nope" in line and "MIXTURE_OR_TASK_NAME" in line
  status, err = _eval_here(capsys, *_eval_flags(tmp_path / "no_such_run", tmp_path / "e2"))
  assert status == 2 and "does not exist" in err
  assert "Traceback" not in err
  status, err = _eval_here(capsys, "--gin_file=runs/eval.gin")
  assert status == 2 and "CHECKPOINT_PATH" in err
  # A checkpoint of another config, a mesh that does not divide the devices / the model.
  for flags, words in (
      (["--gin_file=models/small.gin", "--gin.evaluate.model_config=@make_config()"],
       ("parameter", "trained with another config")),
      (["--gin.inference_mesh.model_parallel=3"], ("model=3", "devices")),
      (["--gin.inference_mesh.model_parallel=8"], ("not divisible by model=8",))):
    out = tmp_path / f"bad_{len(words)}_{flags[-1][-2:]}"
    status, err = _eval_here(capsys, *_eval_flags(trained, out), *flags)
    assert status == 2, err
    (line,) = [l for l in err.splitlines() if l.startswith("uio2-eval:")]
    assert all(w in line for w in words), line
    assert "Traceback" not in err
    assert not [f for f in os.listdir(out) if f.endswith(".jsonl")] if out.exists() else True


# ------------------------------------------------------------------------------------------------
# A user's own seqio task: its postprocess_fn and metric_fns are what uio2-eval runs.
# ------------------------------------------------------------------------------------------------
_CALLS = {}
_QUESTIONS = ["What is 2 plus 3?", "What is 1 plus 1?", "What is 4 plus 4?"]
_ANSWERS = ["5", "2", "8"]


def _user_source():
  import seqio
  import tensorflow as tf

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({
        "text_inputs": _QUESTIONS, "text_targets": _ANSWERS,
        "meta/answer_words": [["five", "5"], ["two", "2"], ["eight", "8"]]})
  return seqio.FunctionDataSource(dataset_fn, splits=["validation"])


def _user_postprocess(output, example=None, is_target=False):
  _CALLS.setdefault("postprocess", []).append((output, is_target, sorted(example)))
  if is_target:
    return example["meta/answer_words"]  # every accepted wording
  return output.strip().lower()


def user_accuracy(targets, predictions):
  _CALLS["predict"] = (list(targets), list(predictions))
  return {"user_accuracy": sum(p in t for t, p in zip(targets, predictions)) / len(targets)}


def user_mean_log_likelihood(targets, scores):
  _CALLS["score"] = (list(targets), list(scores))
  import seqio
  return {"mean_log_likelihood": seqio.metrics.Scalar(sum(scores) / len(scores))}


def _register_user_task(name, **kwargs):
  import seqio
  from unified_io.data import registry
  seqio.TaskRegistry.remove(name)
  if kwargs:  # through our registry (answer options are ours)
    registry.add_task(name, _user_source(), [], postprocess_fn=_user_postprocess,
                      metric_fns=[user_accuracy, user_mean_log_likelihood], **kwargs)
  else:  # plain seqio, as a t5x user registers it
    seqio.TaskRegistry.add(name, source=_user_source(), preprocessors=[],
                           output_features=registry.raw_output_features(),
                           postprocess_fn=_user_postprocess,
                           metric_fns=[user_accuracy, user_mean_log_likelihood])


def test_a_users_seqio_task_is_scored_by_its_own_postprocess_and_metric_fns(trained, tmp_path,
                                                                            capsys):
  _register_user_task("user_sums")
  _CALLS.clear()
  out = tmp_path / "user"
  status, err = _eval_here(capsys, *_eval_flags(trained, out, task="user_sums"),
                           "--gin.evaluate.max_examples=3")
  assert status == 0, err
  # Targets went through postprocess_fn with is_target=True and the example's meta fields.
  targets, predictions = _CALLS["predict"]
  assert targets == [["five", "5"], ["two", "2"], ["eight", "8"]]
  assert all(isinstance(p, str) for p in predictions)
  flags = {(is_target, "meta/answer_words" in keys) for _, is_target, keys in _CALLS["postprocess"]}
  assert flags == {(True, True), (False, True)}
  raw_targets = [o for o, is_target, _ in _CALLS["postprocess"] if is_target]
  assert raw_targets[:3] == _ANSWERS  # the tokenised target decoded, as seqio gives it
  score_targets, scores = _CALLS["score"]
  assert score_targets == targets and len(scores) == 3 and all(s < 0 for s in scores)
  rows = [json.loads(l) for l in open(out / "user_sums-metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2]
  last = rows[-1]
  assert last["mean_log_likelihood"] == pytest.approx(sum(scores) / 3, rel=1e-6)
  assert last["user_accuracy"] == sum(p in t for t, p in zip(targets, predictions)) / 3
  lines = [json.loads(l) for l in open(out / "user_sums-2.jsonl")]
  assert [l["reference"] for l in lines] == targets


def test_answer_options_pick_the_most_likely_option(trained, tmp_path, capsys):
  """A closed-vocabulary task is scored, not generated: every prediction is one of the options,
  the one the model finds most likely (checked against scoring each option separately)."""
  from unified_io.evaluation import evaluator as evaluator_lib
  from unified_io.evaluation import run_loader
  options = ("2", "5", "8", "ten")
  _register_user_task("user_sums_options", answer_options=options)
  run = run_loader.load_run(str(trained))
  evaluator = evaluator_lib.Evaluator(run.model, ["user_sums_options"], {"text_inputs": 32,
                                      "text_targets": 16}, batch_size=4, max_examples=3,
                                      log=lambda *_: None)
  result = evaluator.evaluate_task(run.params, "user_sums_options")
  chosen = [r["text"] for r in result.records]
  assert set(chosen) <= set(options)
  data = evaluator.tasks["user_sums_options"]
  batch = data.batches[0]
  import numpy as np
  from unified_io import decoding
  ids = [list(evaluator.vocab.encode(o)) + [decoding.EOS_ID] for o in options]
  width = max(map(len, ids))
  grid = np.zeros([4, len(options), width], np.int32)
  for k, row in enumerate(ids):
    grid[:, k, :len(row)] = row
  losses = np.asarray(decoding.score_options(run.model, run.params, batch["inputs"], grid))
  assert chosen == [options[k] for k in np.argmin(losses, axis=1)[:3]]
  # A missing options field is one line naming the task, the example and the field.
  _register_user_task("user_sums_bad", answer_options="meta/options")
  status, err = _eval_here(capsys, *_eval_flags(trained, tmp_path / "bad", task="user_sums_bad"))
  assert status == 2
  (line,) = [l for l in err.splitlines() if l.startswith("uio2-eval:")]
  assert "user_sums_bad" in line and "example 0" in line and "meta/options" in line
  assert not os.path.exists(tmp_path / "bad" / "user_sums_bad-1.jsonl")


# ------------------------------------------------------------------------------------------------
# The run's data configuration, as an evaluation gets it.
# ------------------------------------------------------------------------------------------------
def test_the_run_records_its_data_configuration_and_an_evaluation_applies_it(trained):
  """run-config.json holds the training run's world (its bindings applied) and its gin's task
  module; an evaluating process (the eval binary's gin parsed, then `apply_run_data` as the eval
  entry calls it) draws from that world, its own command-line binding winning, and has the
  user's tasks."""
  import seqio
  import unified_io.tasks  # noqa: F401  (as the eval binary does before parsing its gin)
  from unified_io.cli import gin_flags
  from unified_io.datasets.world.config import WorldConfig, make_world_config
  from unified_io.training import run_config

  data = run_config.load(str(trained)).data
  world = WorldConfig(max_objects=3, validation_examples=40)
  assert data.world == world
  assert data.task_modules == ("fixture_user_tasks",)
  try:
    gin_flags.parse_gin(["runs/eval.gin"], [
        f"CHECKPOINT_PATH='{trained}'", "MIXTURE_OR_TASK_NAME='user_world_sums'",
        "EVAL_OUTPUT_DIR='/unused'", "make_world_config.validation_examples=8"])
    assert make_world_config() == WorldConfig(validation_examples=8)  # (the defaults, before)
    assert run_config.apply_run_data(str(trained / "checkpoints" / "2")) == data
    assert make_world_config() == dataclasses.replace(world, validation_examples=8)
    assert "user_world_sums" in seqio.MixtureRegistry.names()
  finally:
    gin.clear_config()
