"""Mixed versus grouped batches (`train.group_batches`): the trainer's loop on a mixture, both ways.

  python bench/grouped_batches.py                        # world_main, batch 16, 60 timed steps
  python bench/grouped_batches.py --mixture world_default --steps 100

The model is the tiny all-modality one (models/tiny_multimodal.gin, random parameters), the input
the trainer's (`partitioned.open_process_input`, pretrain.gin's feature lengths, which the main job
uses too), the step the trainer's jitted donated Adafactor step with the batch sharded over `data`
(all from `train_throughput.py`). Per mode, after the
input's first batch:
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
from train_throughput import CPU_LENGTHS, build_trainer_step, cpu_config  # noqa: E402


def run(mode_grouped: bool, args) -> float:
  """Prints one mode's figures; returns its steady seconds per step."""
  import flax.linen as nn
  import jax

  import unified_io.tasks  # noqa: F401  (registers the world tasks and mixtures)
  from unified_io import partitioning
  from unified_io import contract as data_config
  from unified_io.data.converter import UnifiedIOFeatureConverter
  from unified_io.model import UnifiedIOModel
  from unified_io.training.input import trim_batch
  from unified_io.training.partitioned import global_batch, open_process_input

  cfg = cpu_config("tiny")
  model = UnifiedIOModel(cfg)
  data_config.set_data_config(data_config.data_config_for_model(cfg))
  data = open_process_input(args.mixture, CPU_LENGTHS, args.batch, UnifiedIOFeatureConverter(),
                            partitioning.make_mesh(), seed=0, input_shards=1,
                            group_batches=mode_grouped)
  to_step = trim_batch if mode_grouped else (lambda b: b)
  # (parameters are created from the full first batch, as the trainer does)
  state, step, mesh, first = build_trainer_step(model, next(data))
  rng = jax.random.PRNGKey(1)
  seen, compile_s, steady = set(), 0.0, []
  batch = to_step(first)
  # (new batch shapes are traced here, inside the trainer's mesh and logical axis rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.axis_rules(False)):
    for _ in range(args.steps):
      shape = tuple((jax.tree_util.keystr(p), x.shape)
                    for p, x in jax.tree_util.tree_leaves_with_path(batch))
      start = time.perf_counter()
      state, metrics = step(state, batch, rng)
      jax.block_until_ready(metrics)
      batch = global_batch(to_step(next(data)), mesh, args.batch)
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
