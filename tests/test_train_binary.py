"""`python -m unified_io.cli.train` end to end: a short run, resume after kill -9, SIGTERM, gin errors.

Each training test runs the binary in a subprocess on the built-in world, exactly as a user would
from the command line: the first on `world_default` with the tiny all-modality model, the others on
the text part of the world (`world_text`) with the tiny text model, which compiles in seconds. The
gin errors, reported before anything is built, run the binary's `main` in this process.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import gin
import pytest

from processes import xla_flags
from unified_io.cli import train as train_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


TEXT_LENGTHS = "{'text_inputs': 32, 'text_targets': 16}"
ALL_LENGTHS = ("{'text_inputs': 32, 'text_targets': 32, 'image_input_samples': 64, "
               "'audio_input_samples': 32, 'image_history_input_samples': 32, "
               "'audio_history_input_samples': 16, 'num_frames': 4}")


def command(model_dir, steps, *extra, model="models/tiny.gin", mixture="world_text",
            lengths=TEXT_LENGTHS):
  return [sys.executable, "-m", "unified_io.cli.train",
          f"--gin_file={model}", "--gin_file=runs/pretrain.gin",
          f"--gin.MODEL_DIR='{model_dir}'",
          f"--gin.MIXTURE_OR_TASK_NAME='{mixture}'",
          f"--gin.TASK_FEATURE_LENGTHS={lengths}",
          f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=8",
          "--gin.learning_rate_schedule.warmup_steps=50",
          "--gin.train.log_every=1", *extra]


def env():
  e = dict(os.environ)
  e["XLA_FLAGS"] = xla_flags()  # one CPU device, as a user's plain run
  e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
  return e


def losses(model_dir):
  """step -> loss; a step logged twice (before and after a resume) keeps its last value."""
  out = {}
  with open(os.path.join(model_dir, "train", "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      out[record["step"]] = record["loss"]
  return out


def wait_for(path, process, timeout=240):
  start = time.time()
  while not os.path.exists(path):
    assert process.poll() is None, "the run ended before reaching the point to interrupt it"
    assert time.time() - start < timeout, f"timed out waiting for {path}"
    time.sleep(0.02)


def test_short_run_writes_everything_and_learns(tmp_path):
  model_dir = tmp_path / "run"
  # 6 steps: the text loss falls from ~11 (uniform over the vocabulary) to ~5-7 by steps 4-6.
  result = subprocess.run(command(model_dir, 6, "--gin.train.checkpoint_every=3",
                                  model="models/tiny_multimodal.gin", mixture="world_default",
                                  lengths=ALL_LENGTHS),
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "step      6/6" in result.stdout
  for name in ("config.gin", "model-info.txt", "run-info.json"):
    assert (model_dir / name).exists(), name
  assert sorted(os.listdir(model_dir / "checkpoints"), key=int) == ["3", "6"]
  assert any(n.startswith("events.out.tfevents") for n in os.listdir(model_dir / "train"))
  info = (model_dir / "model-info.txt").read_text()
  assert "decoder/layers_0/" in info and "P(" in info and "('embed', 'mlp')" in info
  assert "TRAIN_STEPS = 6" in (model_dir / "config.gin").read_text()
  curve = losses(model_dir)
  assert sorted(curve) == list(range(1, 7))
  # Mixture batches differ in which modalities they hold; the text loss is in every one.
  text = {}
  with open(model_dir / "train" / "metrics.jsonl") as f:
    for line in f:
      record = json.loads(line)
      text[record["step"]] = record["loss/text"]
  assert sum(text[s] for s in range(4, 7)) < sum(text[s] for s in range(1, 4))


def test_kill_9_and_resume_gives_the_uninterrupted_losses(tmp_path):
  steps = 40
  straight = tmp_path / "straight"
  subprocess.run(command(straight, steps, "--gin.train.checkpoint_every=8"), cwd=REPO, env=env(),
                 check=True, capture_output=True, timeout=600)
  resumed = tmp_path / "resumed"
  run = subprocess.Popen(command(resumed, steps, "--gin.train.checkpoint_every=8"), cwd=REPO,
                         env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  wait_for(resumed / "checkpoints" / "16", run)
  run.send_signal(signal.SIGKILL)
  run.wait()
  assert max(losses(resumed)) < steps, "killed too late to test anything"
  subprocess.run(command(resumed, steps, "--gin.train.checkpoint_every=8"), cwd=REPO, env=env(),
                 check=True, capture_output=True, timeout=600)
  expected, got = losses(straight), losses(resumed)
  assert sorted(got) == sorted(expected) == list(range(1, steps + 1))
  for step in expected:
    assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-6), step


def test_grouped_batches_train_and_resume_exactly(tmp_path):
  """train.group_batches (grouped tf.data stream, trimmed batches): a run resumed from the step-8
  checkpoint of a straight 16-step run logs that run's losses for steps 9-16 (several groups:
  test_grouped_batches)."""
  grouped = ("--gin.train.group_batches=True", "--gin.train.checkpoint_every=8")
  straight = tmp_path / "straight"
  result = subprocess.run(command(straight, 16, *grouped), cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  resumed = tmp_path / "resumed"  # a MODEL_DIR holding only the straight run's step 8
  shutil.copytree(straight / "checkpoints" / "8", resumed / "checkpoints" / "8")
  result = subprocess.run(command(resumed, 16, *grouped), cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed from step 8" in result.stdout
  expected, got = losses(straight), losses(resumed)
  assert sorted(expected) == list(range(1, 17)) and sorted(got) == list(range(9, 17))
  for step in got:
    assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-6), step
  assert all(0 < loss < 20 for loss in expected.values())


def test_sigterm_checkpoints_the_current_step(tmp_path):
  model_dir = tmp_path / "run"
  run = subprocess.Popen(command(model_dir, 400, "--gin.train.checkpoint_every=1000"), cwd=REPO,
                         env=env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  metrics = model_dir / "train" / "metrics.jsonl"
  wait_for(metrics, run)
  while not metrics.read_text().strip():  # training has begun
    assert run.poll() is None
    time.sleep(0.02)
  run.send_signal(signal.SIGTERM)
  out, _ = run.communicate(timeout=300)
  assert run.returncode == 143, out[-2000:]
  line = [l for l in out.splitlines() if l.startswith("SIGTERM: checkpoint written at step")][0]
  step = int(line.split("step ")[1].split(";")[0])
  assert os.listdir(model_dir / "checkpoints") == [str(step)]
  assert max(losses(model_dir)) == step


def main_in_process(cmd, capsys):
  """(exit status, stderr) of `cmd`'s `main` called here; gin is left clear."""
  assert cmd[1:3] == ["-m", "unified_io.cli.train"]
  try:
    status = train_cli.main(cmd[3:])
  finally:
    gin.clear_config()
  return status, capsys.readouterr().err


def test_missing_required_macro_is_named(tmp_path, capsys):
  cmd = [a for a in command(tmp_path, 5) if not a.startswith("--gin.MODEL_DIR")]
  status, err = main_in_process(cmd, capsys)
  assert status == 2
  assert "MODEL_DIR" in err and "required gin values missing" in err


def test_unknown_gin_file_is_named(tmp_path, capsys):
  status, err = main_in_process(command(tmp_path, 5) + ["--gin_file=runs/nope.gin"], capsys)
  assert status == 2 and "runs/nope.gin" in err


BAD_INPUTS = {  # name: (extra flags, model gin, mixture, lengths, expected words)
    "rates": (["--gin.DenoisingConfig.text_rates=(0.5, 0.5, 0.5)"], "models/tiny_multimodal.gin",
              "world_pretrain_mod", ALL_LENGTHS, "must sum to 1"),
    "mode": ([], "models/tiny_multimodal.gin", "captions_and_drawings_mod", ALL_LENGTHS,
             "no task in it can take [R]"),
    "curriculum": ([], "models/tiny.gin", "curriculum_with_a_typo", TEXT_LENGTHS,
                   "'world_arithmetc', which is not registered"),
    "task_masks": (["--gin.UnifiedIOFeatureConverter.task_masks=True"], "models/tiny.gin",
                   "world_text", TEXT_LENGTHS, "dynamic_masking is off"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_configuration_is_one_line_and_writes_nothing(case, tmp_path, capsys):
  from unified_io.data import curriculum, registry
  import unified_io.tasks  # noqa: F401
  extra, model, mixture, lengths, words = BAD_INPUTS[case]
  registry.add_mixture("captions_and_drawings_mod",
                       [("world_caption", 1.0), ("world_text_to_image", 1.0)], denoising=True,
                       replace=True)
  registry.add_mixture("curriculum_with_a_typo", [("world_text_scene_qa", 1.0)], replace=True,
                       curriculum=curriculum.Curriculum((
                           curriculum.Stage(0, (("world_text_scene_qa", 1.0),)),
                           curriculum.Stage(5, (("world_arithmetc", 1.0),)))))
  model_dir = tmp_path / "run"
  status, err = main_in_process(command(model_dir, 5, *extra, model=model, mixture=mixture,
                                        lengths=lengths), capsys)
  assert status == 2, err
  assert words in err and len(err.strip().splitlines()) == 1, err
  assert not model_dir.exists()
