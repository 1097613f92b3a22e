"""uio2-eval and uio2-infer end to end on the built-in world: a 2-step CLI training run, then the
eval binary on its checkpoints (files written, evaluated checkpoints remembered), the infer binary
(chunks, resumed), and bad input (one line, exit 2; the eval binary's `main` in this process, as
the errors come before anything is evaluated)."""

import json
import os
import subprocess
import sys

import gin
import pytest

from conftest import REPO_ROOT
from unified_io.cli import eval as eval_cli

LENGTHS = "{'text_inputs': 32, 'text_targets': 16}"


def _run(module, *flags):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user's run
  result = subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("run") / "model"
  _run("unified_io.cli.train", "--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin",
       f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='world_text'",
       f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4",
       "--gin.train.checkpoint_every=1")
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
