"""Bad input end to end: strict mode stops a binary in one line and exits; skipping counts once.

  python -m pytest -q tests/test_strict_mode.py

A manifest task with one unreadable WAV among good ones. Strict `uio2-train` (a subprocess, as a
user runs it) must exit with one stderr line naming the task, the reason and the file. Its old
hang came from a tf.data iterator left alive to interpreter exit with a python call in flight on a
reader thread; `test_..._exit_does_not_hang` makes that deterministic (slow python calls always in
flight) and shows the reader's way out of it. Default mode reads the stream many times over (an
endless training stream, and seqio's shuffle buffer reads ahead several passes of a tiny
manifest): the broken file is counted once (uio2-train prints that count in its last line and
logs it as bad_input/<task>/<reason>). `visualize` says what it wrote and what it skipped.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from fixture_media import write_garbage, write_jsonl, write_wav
from test_manifest import fresh_name
from unified_io.data import bad_input
from unified_io.datasets import manifest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 120  # seconds: far above a clean run (~20 s on 2 busy cores), far below a hang


@pytest.fixture(autouse=True)
def fresh_counts():
  bad_input.reset_counts()
  yield
  bad_input.set_strict(None)
  bad_input.reset_counts()


def audio_manifest(root, good: int = 2, broken=("broken.wav",)):
  """m.jsonl: `good` lines with a good WAV, then one line per broken WAV."""
  write_wav(root / "good.wav", seconds=0.2)
  lines = [{"audio": "good.wav", "prompt": f"question {i}", "target": f"answer {i}"}
           for i in range(good)]
  for name in broken:
    write_garbage(root / name, b"RIFF\x00\x00 not really a wave file")
    lines.append({"audio": name, "prompt": "question", "target": "answer"})
  return write_jsonl(root / "m.jsonl", lines)


def env():
  e = dict(os.environ)
  for name in ("XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL"):  # as a user's shell (imports here set it)
    e.pop(name, None)
  e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
  return e


def train(tmp_path, *extra):
  """uio2-train of the tiny text model on a manifest task of `tmp_path/m.jsonl` (audio media)."""
  task = fresh_name("strict_mode_task")
  spec = {task: {"splits": {"train": str(tmp_path / "m.jsonl")}, "media": ["audio"],
                 "task_kind": "text_instruction"}}
  cmd = [sys.executable, "-m", "unified_io.cli.train", "--gin_file=models/tiny.gin",
         "--gin_file=runs/pretrain.gin", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
         f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
         "--gin.TASK_FEATURE_LENGTHS={'text_inputs': 16, 'text_targets': 8}",
         "--gin.TRAIN_STEPS=3", "--gin.BATCH_SIZE=2", "--gin.train.log_every=1",
         f"--gin.register_configured_manifests.tasks={json.dumps(spec)}", *extra]
  result = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
  return task, result


def test_strict_uio2_train_stops_in_one_line_and_exits(tmp_path):
  audio_manifest(tmp_path)
  task, result = train(tmp_path, "--gin.bad_input.strict=True")
  assert result.returncode == 5, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr + result.stdout
  assert lines[0].startswith(f"uio2-train: bad input in task '{task}': unreadable_audio")
  assert str(tmp_path / "broken.wav") in lines[0]
  assert not (tmp_path / "run" / "checkpoints").exists() or not os.listdir(
      tmp_path / "run" / "checkpoints")


def test_default_mode_counts_the_broken_file_once_in_an_endless_stream(tmp_path):
  from unified_io.data.converter import UnifiedIOFeatureConverter
  from unified_io.training.input import TrainInput
  from test_manifest import LENGTHS, SMALL
  path = audio_manifest(tmp_path)  # 3 lines, 1 broken
  task = fresh_name("strict_mode_stream")
  manifest.add_manifest_task(task, {"train": str(path)}, media=("audio",))
  stream = TrainInput(task, LENGTHS, 2, UnifiedIOFeatureConverter(SMALL), process_count=1,
                      process_index=0)
  for _ in range(6):  # 12 examples: 6 passes over the 2 good lines (seqio's shuffle reads more)
    next(stream)
  stream.close()
  assert bad_input.counts() == {f"{task}/unreadable_audio": 1}
  assert bad_input.summary() == (f"skipped 1 bad: unreadable_audio 1 "
                                 f"(first: {tmp_path / 'broken.wav'})")


# A pipeline whose python step is always busy (1 s calls, 4 in parallel) and whose first element is
# bad. MODE "raw" lets tf.data's own error escape with the iterator alive; "reader" reads through
# `bad_input.numpy_iterator`. Both leave the error uncaught, as a crashing binary would.
SCRIPT = textwrap.dedent("""
    import sys, time
    import tensorflow as tf
    from unified_io.data import bad_input

    def slow(i):
      time.sleep(1.0)
      return i

    def example(i):
      bad = bad_input.encode_problem("unreadable_audio", "audio", "/data/broken.wav")
      return {"i": tf.py_function(slow, [i], tf.int64),
              bad_input.PROBLEM_KEY: tf.where(tf.equal(i, 0), bad, "")}

    ds = tf.data.Dataset.range(10 ** 6).map(example, num_parallel_calls=4).prefetch(8)
    ds = bad_input.skip_bad_examples(ds, "demo")
    bad_input.set_strict(True)
    reader = ds.as_numpy_iterator() if sys.argv[1] == "raw" else bad_input.numpy_iterator(ds)
    print("reading", flush=True)
    for _ in reader:
      pass
    """)


def start_script(mode: str, stderr_path):
  with open(stderr_path, "w") as stderr:
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, mode], cwd=REPO,
                               env={**env(), "TF_CPP_MIN_LOG_LEVEL": "3"},
                               stdout=subprocess.PIPE, stderr=stderr, text=True)
  return process


def test_a_strict_stop_with_python_calls_in_flight_exit_does_not_hang(tmp_path):
  raw = start_script("raw", tmp_path / "raw.err")
  reader = start_script("reader", tmp_path / "reader.err")
  try:
    assert raw.stdout.readline().strip() == "reading"
    # The hang, made deterministic: tf.data's error is out (printed), the process never ends.
    with pytest.raises(subprocess.TimeoutExpired):
      raw.wait(timeout=10)
    assert "InvalidArgumentError" in (tmp_path / "raw.err").read_text()
    assert reader.wait(timeout=TIMEOUT) == 1
  finally:
    raw.kill()
    reader.kill()
    raw.wait()
    reader.wait()
  last = (tmp_path / "reader.err").read_text().strip().splitlines()[-1]
  assert last.startswith("unified_io.data.bad_input.BadInputError: bad input in task 'demo': "
                         "unreadable_audio (field 'audio' in file '/data/broken.wav')"), last


def test_visualize_says_what_it_wrote_and_skipped(tmp_path, capsys):
  from unified_io.cli import visualize as visualize_cli
  path = audio_manifest(tmp_path, good=2, broken=("broken_1.wav", "broken_2.wav"))
  task = fresh_name("strict_mode_visualize")
  manifest.add_manifest_task(task, {"train": str(path)}, media=("audio",))
  args = [task, "--n", "5", "--out", str(tmp_path / "look"), "--no_shuffle"]
  assert visualize_cli.main(args) == 0
  out = capsys.readouterr().out.strip().splitlines()[-1]
  assert out == (f"wrote 2 of 5 examples to {tmp_path / 'look' / 'index.html'}; skipped 2 bad: "
                 f"unreadable_audio 2 (first: {tmp_path / 'broken_1.wav'})")
  assert sorted(p for p in os.listdir(tmp_path / "look") if p.endswith(".png")) == [
      "example_000.png", "example_001.png"]

  assert visualize_cli.main(args + ["--strict"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f"visualize: bad input in task '{task}': "
                                             "unreadable_audio (field 'audio' in file "), err
  assert str(tmp_path / "broken_1.wav") in err[0]
