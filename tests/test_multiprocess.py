"""Multi-host training on one machine: two processes x 4 CPU devices (jax.distributed on 127.0.0.1,
gloo collectives) run the real CLI and match a one-process 8-device run of the same command.

Both runs pin `train.input_shards=2`: the global batches are then a function of the seed alone
(see `unified_io.training.input`), each process reads only its own input shard, and the one
process reads both. Losses, gradient norms and target-token counts must agree step for step, and
the checkpoint the two processes wrote together must hold the one-process run's state.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from processes import xla_flags
from unified_io import partitioning
from unified_io.training.input import process_input_shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, BATCH, INPUT_SHARDS = 5, 8, 2
TEXT_LENGTHS = {"text_inputs": 32, "text_targets": 16}
RUN_TIMEOUT_S = 600  # a hung collective fails the test instead of stalling it


def command(model_dir, *extra):
  return [sys.executable, "-m", "unified_io.cli.train",
          "--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin",
          f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='world_text'",
          f"--gin.TASK_FEATURE_LENGTHS={TEXT_LENGTHS}",
          f"--gin.TRAIN_STEPS={STEPS}", f"--gin.BATCH_SIZE={BATCH}",
          "--gin.learning_rate_schedule.warmup_steps=50", "--gin.train.log_every=1",
          "--gin.train.checkpoint_every=3", f"--gin.train.input_shards={INPUT_SHARDS}", *extra]


def env(devices):
  e = dict(os.environ)
  e["XLA_FLAGS"] = xla_flags(devices)
  e["JAX_PLATFORMS"] = "cpu"
  e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
  return e


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def records(model_dir):
  with open(os.path.join(model_dir, "train", "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def restore_numpy(state_dir):
  """A checkpoint's train state as host numpy arrays (any topology can read it)."""
  with ocp.PyTreeCheckpointer() as ckptr:
    metadata = ckptr.metadata(state_dir)
    tree = getattr(metadata, "item_metadata", metadata).tree
    as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(restore_args=as_numpy))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(one-process dir, two-process dir, two processes' outputs)."""
  root = tmp_path_factory.mktemp("multiprocess")
  single = root / "one_process"
  result = subprocess.run(command(single), cwd=REPO, env=env(8), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

  multi = root / "two_processes"
  address = f"127.0.0.1:{free_port()}"
  logs = [open(root / f"process_{i}.log", "w+") for i in range(2)]
  procs = [subprocess.Popen(
      command(multi, f"--coordinator_address={address}", "--num_processes=2",
              f"--process_id={i}", "--cpu_collectives=gloo"),
      cwd=REPO, env=env(4), stdout=logs[i], stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  try:
    codes = [p.wait(timeout=RUN_TIMEOUT_S) for p in procs]
  finally:
    for p in procs:  # on a timeout (or one dying), the survivor would wait for its peer forever
      if p.poll() is None:
        p.kill()
        p.wait()
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read())
    log.close()
  assert codes == [0, 0], "\n----\n".join(out[-3000:] for out in outputs)
  return single, multi, outputs


def test_two_processes_match_one_process_step_for_step(runs):
  single, multi, _ = runs
  one, two = records(single), records(multi)
  assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, STEPS + 1))
  for a, b in zip(one, two):
    assert a["target_tokens"] == b["target_tokens"], a["step"]  # the same examples ...
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), a["step"]  # ... the same numbers
    assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), a["step"]
  assert len({r["loss"] for r in one}) == STEPS  # the parameters change, batches differ


def test_each_process_reads_only_its_input_shard(runs):
  single, multi, outputs = runs
  for i, out in enumerate(outputs):
    rows = f"rows {4 * i}-{4 * i + 3} of each batch of 8"
    assert f"input: process {i} of 2 reads input shards [{i}] of 2 ({rows})" in out, out[-2000:]
  # Only process 0 writes the metrics file and the run files.
  assert "step      5/5" in outputs[0] and "step      5/5" not in outputs[1]
  assert len(records(multi)) == STEPS
  assert (multi / "config.gin").exists() and (multi / "model-info.txt").exists()


def test_the_jointly_written_checkpoint_holds_the_one_process_state(runs):
  single, multi, _ = runs
  for run in (single, multi):
    assert sorted(os.listdir(run / "checkpoints"), key=int) == ["3", "5"]
  state_dir = multi / "checkpoints" / "5" / "state"
  # Each process wrote the shards it owns; one data position for the whole run.
  assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(state_dir))
  position = json.loads((multi / "checkpoints" / "5" / "data" / "metadata").read_text())
  assert position == {"batches_consumed": STEPS, "seed": 0, "input_shards": INPUT_SHARDS}
  want = restore_numpy(str(single / "checkpoints" / "5" / "state"))
  got = restore_numpy(str(state_dir))
  assert int(got["step"]) == STEPS
  flat_want = dict(jax.tree_util.tree_leaves_with_path(want))
  flat_got = dict(jax.tree_util.tree_leaves_with_path(got))
  assert flat_got.keys() == flat_want.keys()
  for key, value in flat_want.items():
    # Five steps of float32 in another summation order: within 1e-4 of each tensor's scale.
    scale = float(np.max(np.abs(value))) if np.size(value) else 0.0
    np.testing.assert_allclose(flat_got[key], value, rtol=1e-4, atol=1e-4 * scale,
                               err_msg=jax.tree_util.keystr(key))


# ------------------------------------------------------------------------------------------------
# which rows and shards a process reads (no processes needed: the rules are arithmetic)
# ------------------------------------------------------------------------------------------------
def test_input_shards_must_cover_whole_blocks_of_a_process_rows():
  assert process_input_shards(range(0, 8), 8, 2) == range(0, 2)
  assert process_input_shards(range(4, 8), 8, 2) == range(1, 2)
  assert process_input_shards(range(4, 8), 8, 4) == range(2, 4)
  with pytest.raises(ValueError, match="holds rows \\[4, 8\\).*multiple of 2"):
    process_input_shards(range(4, 8), 8, 1)
  with pytest.raises(ValueError, match="must divide BATCH_SIZE=8"):
    process_input_shards(range(0, 8), 8, 3)


def test_process_rows_follow_the_mesh():
  assert jax.device_count() == 8 and jax.process_count() == 1
  assert partitioning.process_rows(partitioning.make_mesh(data=2, model=4), 8) == range(0, 8)
  assert partitioning.process_rows(partitioning.make_mesh(data=8), 16) == range(0, 16)


def test_bad_multihost_flags_are_named():
  cmd = command("/tmp/unused", "--num_processes=2", "--process_id=0")
  result = subprocess.run(cmd, cwd=REPO, env=env(4), capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert "--coordinator_address missing" in result.stderr, result.stderr[-2000:]
