"""Evaluation throughput on the built-in world: examples per second of `Evaluator.evaluate`.

  python bench/eval_throughput.py                        # world_default, 16 examples per task
  python bench/eval_throughput.py --mixture world_vision --examples 32 --batch_size 8

The model is the tiny all-modality one (models/tiny_multimodal.gin's sizes, random parameters),
the lengths the main job's. Examples are built once (not timed); then `evaluate` runs twice: the
first call includes compiling the decoders, the second is the steady state. Generation tasks
(text-to-image, text-to-audio, object masks) dominate: every one of their examples decodes a full
token grid. Per task and in total, lines `key value`; the last is `examples_per_s <steady>`.
"""

import argparse
import os
import sys
import time

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (run as a script, this folder is on the path)
from train_throughput import CPU_LENGTHS, cpu_config  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--mixture", default="world_default")
  parser.add_argument("--examples", type=int, default=16, help="examples per task")
  parser.add_argument("--batch_size", type=int, default=8)
  args = parser.parse_args(argv)

  import flax.linen as nn
  import jax

  import unified_io.tasks  # noqa: F401  (registers the world)
  from unified_io.data import registry
  from unified_io.evaluation import evaluator as evaluator_lib
  from unified_io.model import UnifiedIOModel

  model = UnifiedIOModel(cpu_config("tiny"))
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0),
                                             model.dummy_batch(1, CPU_LENGTHS)))
  tasks = registry.task_names(args.mixture)
  start = time.perf_counter()
  evaluator = evaluator_lib.Evaluator(model, tasks, CPU_LENGTHS, batch_size=args.batch_size,
                                      max_examples=args.examples, log=lambda *_: None)
  print(f"tasks {len(tasks)}")
  print(f"examples_built_s {time.perf_counter() - start:.1f}")
  total = sum(data.count for data in evaluator.tasks.values())
  for label in ("first_call", "steady"):
    per_task = {}
    start = time.perf_counter()
    for name in evaluator.tasks:
      task_start = time.perf_counter()
      evaluator.evaluate_task(params, name)
      per_task[name] = time.perf_counter() - task_start
    seconds = time.perf_counter() - start
    if label == "steady":
      for name, s in per_task.items():
        print(f"  {name} {evaluator.tasks[name].count / s:.1f} examples/s")
    print(f"{label}_s {seconds:.1f}")
  print(f"examples {total}")
  print(f"examples_per_s {total / seconds:.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
