"""Faults never lose a run: `uio2-train`'s `main` on a tiny run hit by each fault it must survive.

One MODEL_DIR trained to step 6 (checkpoints 2, 4, 6; tiny text model, world_arithmetic, batch 8: one row per fake device)
is shared; each case copies it and runs `main` in this process, as the command line would:
  - another model's gin (a typo) is one line, exit 2, and MODEL_DIR is left byte for byte as it
    was (run-config.json compared; without it, the checkpoint's parameter shapes);
  - unreadable newest checkpoints (a deleted file, a truncated array file) are named one line
    each, set aside as <step>.corrupt-<time>, and the newest good step resumes bit-exactly;
  - a save that fails with ENOSPC stops the run at once with one line, exit 4, no temporary folder;
  - non-finite steps: `max_consecutive_nonfinite` in a row stop a "skip" run, "stop" stops at the
    first; one line naming the steps, exit 3;
  - SIGTERM during start-up or compilation returns 143 at once, with nothing new saved.
"""

import errno
import glob
import hashlib
import os
import shutil
import signal
import time

import gin
import pytest

from test_train_binary import losses
from unified_io.cli import train as train_cli
from unified_io.training import checkpoints as ckpt_lib
from unified_io.training import trainer


def argv(model_dir, steps, *extra, model="models/tiny.gin"):
  return [f"--gin_file={model}", "--gin_file=runs/pretrain.gin",
          f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='world_arithmetic'",
          "--gin.TASK_FEATURE_LENGTHS={'text_inputs': 16, 'text_targets': 8}",
          f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=8", "--gin.train.log_every=1",
          "--gin.train.checkpoint_every=2", *extra]


def run_main(args, capsys):
  """(exit status, stdout, stderr) of `main(args)` here; gin is left clear."""
  capsys.readouterr()
  try:
    status = train_cli.main(args)
  finally:
    gin.clear_config()
  out, err = capsys.readouterr()
  return status, out, err


def snapshot(model_dir):
  """Every file and folder under `model_dir` with its size, mtime and content hash."""
  out = {}
  for root, dirs, files in os.walk(model_dir):
    for name in dirs + files:
      path = os.path.join(root, name)
      stat = os.stat(path)
      digest = None
      if os.path.isfile(path):
        with open(path, "rb") as f:
          digest = hashlib.sha1(f.read()).hexdigest()
      out[os.path.relpath(path, model_dir)] = (stat.st_size, stat.st_mtime_ns, digest)
  return out


def steps_in(model_dir):
  return sorted(os.listdir(os.path.join(model_dir, "checkpoints")))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("faults") / "trained"
  try:
    assert train_cli.main(argv(model_dir, 6)) == 0
  finally:
    gin.clear_config()
  assert steps_in(model_dir) == ["2", "4", "6"]
  return model_dir


@pytest.fixture
def copy(trained, tmp_path):
  model_dir = tmp_path / "run"
  shutil.copytree(trained, model_dir)
  return model_dir


def test_another_model_is_one_line_and_model_dir_untouched(copy, capsys):
  before = snapshot(copy)
  status, _, err = run_main(argv(copy, 8, model="models/small.gin"), capsys)
  assert status == 2, err
  assert len(err.strip().splitlines()) == 1, err
  assert "another model" in err and "trunk.emb_dim 128 -> 512" in err
  assert snapshot(copy) == before
  # Without run-config.json the checkpoint's parameter shapes are compared to the model's.
  os.remove(copy / "run-config.json")
  before = snapshot(copy)
  status, _, err = run_main(argv(copy, 8, model="models/small.gin"), capsys)
  assert status == 2, err
  assert len(err.strip().splitlines()) == 1, err
  assert "checkpoints/6: parameter " in err and "in the checkpoint but" in err
  assert snapshot(copy) == before


def test_unreadable_newest_steps_are_named_set_aside_and_skipped(trained, copy, capsys):
  os.remove(copy / "checkpoints" / "6" / "state" / "_METADATA")  # partly deleted
  data_files = glob.glob(str(copy / "checkpoints" / "4" / "state" / "ocdbt.process_0" / "d" / "*"))
  largest = max(data_files, key=os.path.getsize)
  with open(largest, "r+b") as f:  # truncated
    f.truncate(os.path.getsize(largest) // 3)
  status, out, err = run_main(argv(copy, 6), capsys)
  assert status == 0, err
  lines = [l for l in err.splitlines() if "is corrupt" in l]
  assert len(lines) == 2, err
  assert lines[0].startswith("checkpoint step 6 is corrupt: ") and "6/state/_METADATA: missing" in lines[0]
  assert lines[0].endswith("resuming from step 4")
  assert lines[1].startswith("checkpoint step 4 is corrupt: ") and "4/state: array " in lines[1]
  assert lines[1].endswith("resuming from step 2")
  assert len(err.strip().splitlines()) <= 4, err  # (no tracebacks)
  assert "resumed from step 2" in out
  names = steps_in(copy)
  assert [n for n in names if "corrupt" not in n] == ["2", "4", "6"]
  assert sorted(n.split(".")[0] for n in names if ".corrupt-" in n) == ["4", "6"]
  expected, got = losses(trained), losses(copy)
  for step in (3, 4, 5, 6):  # the resumed steps are the original run's, bit for bit
    assert got[step] == expected[step], step


def test_a_failed_save_stops_at_once_and_leaves_no_temporary_folder(copy, capsys, monkeypatch):
  def disk_full(self, directory, args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
  monkeypatch.setattr(ckpt_lib.InputStatesHandler, "save", disk_full)
  status, _, err = run_main(argv(copy, 20), capsys)
  assert status == train_cli.EXIT_SAVE_FAILED, err
  assert len(err.strip().splitlines()) == 1, err
  assert "saving checkpoint step 8 " in err and "No space left on device" in err
  assert steps_in(copy) == ["2", "4", "6"]
  assert max(losses(copy)) <= 10  # stopped within two steps of the failed save, not at 20


@pytest.mark.parametrize("policy,steps,words", [
    ("skip", 12, "steps 8-10: 3 consecutive steps with a non-finite loss"),
    ("stop", 12, "step 8: the loss or gradients are not finite (nonfinite_policy='stop')")])
def test_nonfinite_steps_stop_the_run_in_one_line(copy, capsys, policy, steps, words):
  # An infinite learning rate makes step 7's update infinite: every later loss is NaN.
  status, _, err = run_main(argv(copy, steps, f"--gin.train.nonfinite_policy='{policy}'",
                                 "--gin.learning_rate_schedule.base_learning_rate=1e400",
                                 "--gin.train.max_consecutive_nonfinite=3"), capsys)
  assert status == train_cli.EXIT_NONFINITE, err
  assert len(err.strip().splitlines()) == 1 and words in err, err
  last = 10 if policy == "skip" else 8
  assert max(losses(copy)) == last
  assert str(last) in steps_in(copy)  # (the state is checkpointed where it stopped)


@pytest.mark.parametrize("when", ["start-up", "compilation"])
def test_sigterm_before_the_first_step_exits_at_once(copy, capsys, monkeypatch, when):
  """The signal is sent from inside the run (before the restore, or in the first step's call,
  which compiles): `main` returns 143 within seconds, with no step run and nothing saved."""
  sent = {}

  def signal_then(fn):
    def wrapped(*args, **kwargs):
      if not sent:
        sent["at"] = time.time()
        os.kill(os.getpid(), signal.SIGTERM)
      return fn(*args, **kwargs)
    return wrapped

  if when == "start-up":
    monkeypatch.setattr(trainer, "build_train_setup", signal_then(trainer.build_train_setup))
  else:
    real = trainer.build_train_setup

    def build(*args, **kwargs):
      setup = real(*args, **kwargs)
      return setup.__class__(**{**setup.__dict__, "step": signal_then(setup.step)})
    monkeypatch.setattr(trainer, "build_train_setup", build)
  before = steps_in(copy)
  status, out, _ = run_main(argv(copy, 20), capsys)
  assert status == train_cli.EXIT_PREEMPTED
  assert "SIGTERM during start-up: nothing new to save; exiting\n" in out
  assert time.time() - sent["at"] < 10
  assert steps_in(copy) == before and max(losses(copy)) == 6
