"""Seconds to reopen the training input at a checkpoint's position and draw its first batch: by
replay (skipping the batches before it, as resumes did) and from the saved input state.

  python bench/resume_input.py                         # world_default, batch 4, steps 10, 200, 2000
  python bench/resume_input.py --mixture world_text --steps 10,1000

Sizes: the tiny all-modality model's data contract with the determinism test's tiny feature
lengths (tests/test_data_determinism.py). For each step count N a straight `TrainInput` draws N
batches and is checkpointed the trainer's way (`TrainCheckpoints.save(..., input_states=)`,
written and read back); then each way opens a new `TrainInput` at N and draws one batch, timed
from the call to the batch (the pipeline's set-up included), and both batches must equal the
straight run's next one. Prints, per N, the save (in the loop, and the background write), the
state's size in memory and on disk, and the two times; last line
`restore_over_replay_at_<largest N> <restore s / replay s>`.
"""

import argparse
import gc
import os
import sys
import tempfile
import time

# `make install` installs the package; from a bare checkout, fall back on the repository root (last
# on the path, so nothing there shadows an installed package).
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LENGTHS = {"text_inputs": 48, "text_targets": 24, "image_input_samples": 16,
           "audio_input_samples": 16, "image_history_input_samples": 8,
           "audio_history_input_samples": 8, "num_frames": 2}


def make_input(args, **kwargs):
  from unified_io.contract import DataConfig
  from unified_io.data.converter import UnifiedIOFeatureConverter
  from unified_io.modalities import Modality
  from unified_io.presets import make_config
  from unified_io.training.input import TrainInput
  config = make_config("tiny", input_modalities=tuple(m for m in Modality if m.in_release),
                       components="tiny",
                       target_modalities=tuple(m for m in Modality if m.can_be_target))
  return TrainInput(args.mixture, LENGTHS, args.batch,
                    UnifiedIOFeatureConverter(DataConfig.from_model(config)), seed=args.seed,
                    process_index=0, process_count=1, **kwargs)


def timed_first_batch(make):
  start = time.perf_counter()
  data = make()
  batch = next(data)
  return time.perf_counter() - start, data.replayed, batch


def same(a, b) -> bool:
  import jax
  import numpy as np
  return all(x.dtype == y.dtype and np.array_equal(x, y)
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def run_at(args, steps: int, root: str):
  """Prints one step count's figures; returns (replay s, restore s)."""
  import numpy as np
  from unified_io.training.checkpoints import TrainCheckpoints
  from unified_io.training.input import shard_state_name
  name = shard_state_name(0, 1)
  straight = make_input(args)
  for _ in range(steps):
    next(straight)
  checkpoints = TrainCheckpoints(os.path.join(root, str(steps)), save_every=1)
  sizes = []

  def input_states():
    state = straight.state()
    sizes.append(sum(len(v) for v in state.values()))
    return {name: state}
  start = time.perf_counter()
  checkpoints.save(steps, {"w": np.zeros(4, np.float32)}, straight.position(),
                   input_states=input_states)
  in_loop = time.perf_counter() - start
  checkpoints.wait()
  written = time.perf_counter() - start - in_loop
  on_disk = os.path.getsize(os.path.join(checkpoints.directory, str(steps), "input", f"{name}.zip"))
  expected = next(straight)
  straight = None  # (its pipeline freed before the timed reopenings)
  gc.collect()
  print(f"N={steps}: save {in_loop:.1f} s in the loop + {written:.1f} s written in the "
        f"background; state {sizes[0] / 1e6:.1f} MB ({on_disk / 1e6:.1f} MB on disk)", flush=True)

  replay_s, replayed, batch = timed_first_batch(lambda: make_input(args, start_batch=steps))
  assert replayed == steps and same(batch, expected), "replay: not the straight run's batch"
  gc.collect()
  restore_s, replayed, batch = timed_first_batch(lambda: make_input(
      args, start_batch=steps, state=checkpoints.input_states(steps, [name])[name]))
  assert replayed == 0 and same(batch, expected), "restore: not the straight run's batch"
  checkpoints.close()
  gc.collect()
  print(f"N={steps}: first batch at the position by replay {replay_s:.1f} s, from the saved "
        f"state {restore_s:.1f} s (both equal the straight run's)", flush=True)
  return replay_s, restore_s


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--mixture", default="world_default")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--steps", default="10,200,2000", help="comma-separated step counts")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import unified_io.tasks  # noqa: F401  (registers the tasks and mixtures)
  steps = sorted(int(s) for s in args.steps.split(","))
  print(f"{args.mixture}, batch {args.batch}, lengths {LENGTHS}", flush=True)
  with tempfile.TemporaryDirectory() as root:
    results = {n: run_at(args, n, root) for n in steps}
  print("steps  replay_s  restore_s")
  for n, (replay_s, restore_s) in results.items():
    print(f"{n:5d}  {replay_s:8.1f}  {restore_s:9.1f}")
  replay_s, restore_s = results[steps[-1]]
  print(f"restore_over_replay_at_{steps[-1]} {restore_s / replay_s:.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
