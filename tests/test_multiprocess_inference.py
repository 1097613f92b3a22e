"""Sharded inference in two processes (jax.distributed on 127.0.0.1, gloo, 4 CPU devices each),
over a (data=4, model=2) mesh: the data axis spans the processes, each supplying and holding half
of every batch's rows.

* `sharded_inference` (tests/sharded_inference_worker.py): each process's greedy tokens and
  teacher-forced losses for its own rows, and the tokens and option scores gathered for every
  row, equal the one-device run's (tokens exactly; losses and scores to 1e-4 relative).
* uio2-predict: prints what one process on one device prints; only process 0 prints.
"""

import os
import sys

import jax
import numpy as np
import pytest

from processes import distributed_flags, free_port, run_processes
from test_sharded_inference import BATCH, GREEDY, PROMPT, text_batch, write_initialised_run
from unified_io import decoding
from unified_io.cli import predict
from unified_io.evaluation.run_loader import load_run

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sharded_inference_worker.py")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return write_initialised_run(str(tmp_path_factory.mktemp("two_process_run")))


def _run_two(commands):
  address = f"127.0.0.1:{free_port()}"
  codes, stdouts, stderrs = run_processes(
      [cmd + distributed_flags(address, 2, i) for i, cmd in enumerate(commands)],
      devices_per_process=4, timeout_s=300)
  assert codes == [0, 0], "\n----\n".join(err[-3000:] for err in stderrs)
  return stdouts


def test_two_processes_generate_and_score_their_rows(model_dir, tmp_path):
  outs = [str(tmp_path / f"process_{i}.npz") for i in range(2)]
  _run_two([[sys.executable, WORKER, "--run", model_dir, "--out", out, "--model_parallel", "2"]
            for out in outs])
  run = load_run(model_dir)
  batch, options = text_batch(run.model.cfg.trunk.text_vocab_size)
  tokens = np.asarray(decoding.generate(run.model, run.params, batch["inputs"], "text",
                                        GREEDY).tokens)
  losses = np.asarray(jax.jit(decoding.example_losses, static_argnums=0)(run.model, run.params,
                                                                         batch))
  scores = np.asarray(decoding.score_options(run.model, run.params, batch["inputs"], options))
  got = [np.load(out) for out in outs]
  assert [(int(g["start"]), int(g["stop"])) for g in got] == [(0, BATCH // 2), (BATCH // 2, BATCH)]
  for g in got:
    rows = slice(int(g["start"]), int(g["stop"]))
    np.testing.assert_array_equal(g["own"], tokens[rows])
    np.testing.assert_array_equal(g["gathered"], tokens)
    np.testing.assert_allclose(g["losses"], losses[rows], rtol=1e-4)
    np.testing.assert_allclose(g["scores"], scores, rtol=1e-4)


def _answer(stdout: str) -> str:
  """stdout without gloo's connection messages (written by its C++ threads to stdout, at times
  interleaved mid-line with one another; all before the answer, which follows the collectives)."""
  return "".join(line for line in stdout.splitlines(keepends=True)
                 if "[Gloo]" not in line and "peer ranks" not in line)


def test_two_processes_predict_what_one_process_predicts(model_dir, capsys):
  assert predict.main(["--checkpoint", model_dir, *PROMPT]) == 0
  one_process = capsys.readouterr().out
  assert one_process.strip()
  cmd = [sys.executable, "-m", "unified_io.cli.predict", "--checkpoint", model_dir, *PROMPT,
         "--model_parallel", "2"]
  stdouts = _run_two([cmd, cmd])
  # Process 0 prints the one-process answer as a line of its own; process 1 prints no answer
  # (gloo's interleaved messages can leave stray fragments such as "1" on either stdout).
  answer = one_process.strip()
  assert answer in _answer(stdouts[0]).splitlines(), stdouts[0][-2000:]
  assert answer not in stdouts[1], stdouts[1][-2000:]


def _eval_rows(out_dir, task="world_arithmetic", step=2):
  import json
  predictions = [json.loads(l) for l in open(os.path.join(out_dir, f"{task}-{step}.jsonl"))]
  metrics = [json.loads(l) for l in open(os.path.join(out_dir, f"{task}-metrics.jsonl"))]
  return predictions, metrics


def test_two_process_eval_equals_one_device_eval(model_dir, tmp_path):
  """uio2-eval on one device (the evaluator without a mesh), on the 8 devices of this process
  (data=4, model=2), and in two processes of 4 devices each: the same predictions and metrics;
  process 1 writes nothing."""
  import gin
  import unified_io.tasks  # noqa: F401  (the world)
  from unified_io.cli import eval as eval_cli
  from unified_io.evaluation import evaluator as evaluator_lib
  run = load_run(model_dir)
  lengths = run.task_feature_lengths
  single = evaluator_lib.Evaluator(run.model, ["world_arithmetic"], lengths, batch_size=8,
                                   max_examples=8, log=lambda *_: None)
  expected = single.evaluate(run.params, 2)["world_arithmetic"]

  def flags(out):
    return ["--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{model_dir}/checkpoints/2'",
            "--gin.MIXTURE_OR_TASK_NAME='world_arithmetic'", f"--gin.EVAL_OUTPUT_DIR='{out}'",
            "--gin.evaluate.max_examples=8", "--gin.evaluate.batch_size=8",
            "--gin.inference_mesh.model_parallel=2"]
  here = tmp_path / "here"
  try:
    assert eval_cli.main(flags(here)) == 0
  finally:
    gin.clear_config()
  shared = tmp_path / "two"
  cmd = [sys.executable, "-m", "unified_io.cli.eval", *flags(shared)]
  _run_two([cmd, cmd])
  for out in (here, shared):
    predictions, metrics = _eval_rows(out)
    assert [p["text"] for p in predictions] == [r["text"] for r in expected.records]
    assert [p["reference"] for p in predictions] == [r["reference"] for r in expected.records]
    assert metrics == [{"step": 2, **expected.metrics}]
  def kinds(out):  # (TensorBoard file names hold the time and the pid)
    return sorted("events" if f.startswith("events.out") else f for f in os.listdir(out))
  assert kinds(shared) == kinds(here)  # one events file: process 1 wrote nothing
