"""Why the main job's VQA colour stops short of 0.9: its accuracy split by objects in the scene.

  .venv/bin/python bench/colour_needs_shape.py --run_dir main_job_output

A colour question names the object by its shape ("What colour is the square?"). In a one-object
scene the colour alone answers it; in a two-object scene the model must also tell which object is
the square, i.e. read shape, which the main job does not learn (VQA shape near chance). This
reads the run's held-out colour predictions (`eval/world_vqa_colour-<step>.jsonl`, the newest
step), regenerates the same test examples with the run's world settings (`make_world_config.*`
in `model/config.gin`), checks they are the same examples (the answers agree one by one), and
prints accuracy per number of objects, the ceiling when two-object scenes stay at chance (a coin
between the two colours), and the two-object accuracy a 0.9 overall needs.
Last line: `colour_two_object_accuracy <value>`.
"""

import argparse
import collections
import glob
import json
import os
import re
import sys

import gin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

TASK, TARGET = "world_vqa_colour", 0.9


def world_bindings(config_gin: str):
  """The `make_world_config.*` lines of a run's operative config."""
  with open(config_gin) as f:
    return [line.strip() for line in f if re.match(r"\s*make_world_config\.\w+\s*=", line)]


def newest_predictions(run_dir: str) -> str:
  paths = glob.glob(os.path.join(run_dir, "eval", f"{TASK}-*.jsonl"))
  paths = [p for p in paths if re.search(r"-(\d+)\.jsonl$", p)]
  if not paths:
    raise SystemExit(f"no {TASK} predictions under {run_dir}/eval (run the main job first)")
  return max(paths, key=lambda p: int(re.search(r"-(\d+)\.jsonl$", p).group(1)))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--run_dir", default="main_job_output",
                      help="the main job's --out folder")
  args = parser.parse_args(argv)
  import seqio  # pylint: disable=import-outside-toplevel
  import unified_io.tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

  gin.parse_config(world_bindings(os.path.join(args.run_dir, "model", "config.gin")))
  path = newest_predictions(args.run_dir)
  with open(path) as f:
    records = [json.loads(line) for line in f]
  source = seqio.get_mixture_or_task(TASK).source
  examples = source.get_dataset(split="test", shuffle=False).take(len(records))
  by_count = collections.defaultdict(lambda: [0, 0])
  for example, record in zip(examples.as_numpy_iterator(), records):
    answer = example["meta/answer"].decode()
    if answer != record["reference"][0]:
      raise SystemExit(f"example {record['index']}: regenerated answer {answer!r}, the run's "
                       f"{record['reference'][0]!r}: not the run's world settings")
    objects = example["meta/boxes"].shape[0]
    by_count[objects][0] += record["prediction"] in record["reference"]
    by_count[objects][1] += 1
  total = sum(n for _, n in by_count.values())
  print(f"{path}: {total} held-out colour questions")
  for objects, (right, n) in sorted(by_count.items()):
    print(f"  {objects} object(s): {right}/{n} right ({right / n:.3f}), {n / total:.0%} of "
          "the questions")
  single, double = by_count.get(1, [0, 0]), by_count.get(2, [0, 0])
  ceiling = (single[1] + 0.5 * double[1]) / total
  needed = (TARGET * total - single[1]) / double[1] if double[1] else float("nan")
  print(f"overall {sum(r for r, _ in by_count.values()) / total:.3f}; with every one-object "
        f"answer right and two-object scenes at chance: {ceiling:.3f}; {TARGET} overall needs "
        f"{needed:.2f} on two-object scenes, i.e. knowing which object has the named shape")
  print(f"colour_two_object_accuracy {double[0] / max(double[1], 1):.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
