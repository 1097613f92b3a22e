"""Mixed versus grouped batches (`train.group_batches`): the trainer's loop on a mixture, both ways.

  python bench/grouped_batches.py                        # world_main, batch 16, 60 timed steps
  python bench/grouped_batches.py --mixture world_default --steps 100

The model is the tiny all-modality one (models/tiny_multimodal.gin, random parameters), the input
the trainer's (`input.open_process_input`, pretrain.gin's feature lengths, which the main job uses
too), the set-up the trainer's (`train_setup.build_train_setup`: the jitted donated Adafactor step
with the batch sharded over `data`, as `train_throughput.trainer_setup` makes it). Per mode, after
the input's first batch:
  groups        distinct batch shapes met (each one compile of the step)
  compile       seconds of the steps that met a new shape (compile + that step)
  steady        seconds per step over the other steps, data included, and examples/s
Grouped batches trade a compile per group for steps that run only what their examples use.
The last line is `grouped_speedup <steady mixed s/step / steady grouped s/step>`.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (run as a script, this folder is on the path)
from train_throughput import CPU_LENGTHS, cpu_config, trainer_setup  # noqa: E402


def run(mode_grouped: bool, args) -> float:
  """Prints one mode's figures; returns its steady seconds per step."""
  import jax

  import unified_io.tasks  # noqa: F401  (registers the world tasks and mixtures)
  from unified_io import partitioning
  from unified_io.model import UnifiedIOModel
  from unified_io.training.input import open_process_input, trim_batch

  model = UnifiedIOModel(cpu_config("tiny"))
  mesh = partitioning.make_mesh()
  data = open_process_input(args.mixture, CPU_LENGTHS, args.batch, model.feature_converter(),
                            mesh, seed=0, input_shards=1, group_batches=mode_grouped)
  to_step = trim_batch if mode_grouped else (lambda b: b)
  # (parameters are created from the full first batch, as the trainer does)
  first = partitioning.global_batch(next(data), mesh, args.batch)
  setup = trainer_setup(model, first, mesh)
  state, rng = setup.state, jax.random.PRNGKey(1)
  seen, compile_s, steady = set(), 0.0, []
  batch = to_step(first)
  # (new batch shapes are traced here, inside the trainer's mesh and logical axis rules)
  with setup.activated():
    for _ in range(args.steps):
      shape = tuple((jax.tree_util.keystr(p), x.shape)
                    for p, x in jax.tree_util.tree_leaves_with_path(batch))
      start = time.perf_counter()
      state, metrics = setup.step(state, batch, rng)
      jax.block_until_ready(metrics)
      batch = partitioning.global_batch(to_step(next(data)), mesh, args.batch)
      seconds = time.perf_counter() - start
      if shape in seen:
        steady.append(seconds)
      else:
        seen.add(shape)
        compile_s += seconds
  name = "grouped" if mode_grouped else "mixed"
  mean = float(np.mean(steady)) if steady else float("nan")
  print(f"{name:8s} groups {len(seen):2d}  compile {compile_s:6.1f} s  steady {mean:.3f} s/step "
        f"({len(steady)} steps), {args.batch / mean:.1f} examples/s", flush=True)
  return mean


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--mixture", default="world_main")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=60, help="steps per mode, compiles included")
  args = parser.parse_args(argv)
  print(f"mixture {args.mixture}, batch {args.batch}, {args.steps} steps per mode, "
        f"{len(os.sched_getaffinity(0))} cores", flush=True)
  mixed = run(False, args)
  grouped = run(True, args)
  print(f"grouped_speedup {mixed / grouped:.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
