"""Why the main job misses VQA colour and referring expressions (colour by objects in the scene;
boxes against one fixed box).

  .venv/bin/python bench/main_job_breakdown.py --run_dir main_job_output

A colour question names the object by its shape ("What colour is the square?"). In a one-object
scene the colour alone answers it; in a two-object scene the model must also tell which object is
the square, i.e. read shape, which the main job does not learn (VQA shape near chance). This
reads the run's held-out colour predictions (`eval/world_vqa_colour-<step>.jsonl`, the newest
step), regenerates the same test examples with the run's world settings (`make_world_config.*`
in `model/config.gin`), checks they are the same examples (the answers agree one by one), and
prints accuracy per number of objects, the ceiling when two-object scenes stay at chance (a coin
between the two colours), and the two-object accuracy a 0.9 overall needs. For referring
expressions (`world_refexp`) it prints Acc@0.5 and mean IoU beside those of one fixed box for
every question (the mean of the held-out reference boxes: the best a model that
has not learnt to localise can do on average).
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

COLOUR, REFEXP, TARGET = "world_vqa_colour", "world_refexp", 0.9


def world_bindings(config_gin: str):
  """The `make_world_config.*` lines of a run's operative config."""
  with open(config_gin) as f:
    return [line.strip() for line in f if re.match(r"\s*make_world_config\.\w+\s*=", line)]


def newest_predictions(run_dir: str, task: str) -> str:
  paths = glob.glob(os.path.join(run_dir, "eval", f"{task}-*.jsonl"))
  paths = [p for p in paths if re.search(r"-(\d+)\.jsonl$", p)]
  if not paths:
    raise SystemExit(f"no {task} predictions under {run_dir}/eval (run the main job first)")
  return max(paths, key=lambda p: int(re.search(r"-(\d+)\.jsonl$", p).group(1)))


def with_objects(task: str, run_dir: str):
  """(record, objects in its scene) for the run's newest held-out predictions of `task`, the
  scene regenerated and checked against the record's reference."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import seqio  # pylint: disable=import-outside-toplevel
  path = newest_predictions(run_dir, task)
  with open(path) as f:
    records = [json.loads(line) for line in f]
  examples = seqio.get_mixture_or_task(task).source.get_dataset(split="test", shuffle=False)
  out = []
  for example, record in zip(examples.take(len(records)).as_numpy_iterator(), records):
    if task == COLOUR:
      same = example["meta/answer"].decode() == record["reference"][0]
    else:  # (the reference box, in pixels, is the referred object's)
      same = any(np.allclose(box, record["reference"], atol=1.0) for box in example["meta/boxes"])
    if not same:
      raise SystemExit(f"{path} example {record['index']}: the regenerated example is another "
                       "(not the run's world settings?)")
    out.append((record, example["meta/boxes"].shape[0]))
  print(f"{path}: {len(out)} held-out examples")
  return out


def iou(a, b) -> float:
  """Intersection over union of two (y1, x1, y2, x2) boxes."""
  h = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  w = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  area = lambda box: max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])  # noqa: E731
  union = area(a) + area(b) - h * w
  return h * w / union if union > 0 else 0.0


def refexp_breakdown(run_dir: str) -> None:
  """(Its examples hold the referred object's box only: no split by objects in the scene.)"""
  rows = [record for record, _ in with_objects(REFEXP, run_dir)]
  references = [r["reference"] for r in rows]
  fixed = [sum(box[i] for box in references) / len(references) for i in range(4)]
  model = [iou(r["prediction"], r["reference"]) for r in rows]
  still = [iou(fixed, r["reference"]) for r in rows]
  n = len(rows)
  print(f"  model: Acc@0.5 {sum(m >= 0.5 for m in model) / n:.3f}, mean IoU {sum(model) / n:.3f}; "
        f"one fixed box ({', '.join(f'{v:.0f}' for v in fixed)}) for every question: Acc@0.5 "
        f"{sum(f >= 0.5 for f in still) / n:.3f}, mean IoU {sum(still) / n:.3f}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--run_dir", default="main_job_output",
                      help="the main job's --out folder")
  args = parser.parse_args(argv)
  import unified_io.tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

  gin.parse_config(world_bindings(os.path.join(args.run_dir, "model", "config.gin")))
  by_count = collections.defaultdict(lambda: [0, 0])
  for record, objects in with_objects(COLOUR, args.run_dir):
    by_count[objects][0] += record["prediction"] in record["reference"]
    by_count[objects][1] += 1
  total = sum(n for _, n in by_count.values())
  for objects, (right, n) in sorted(by_count.items()):
    print(f"  {objects} object(s): {right}/{n} right ({right / n:.3f}), {n / total:.0%} of "
          "the questions")
  single, double = by_count.get(1, [0, 0]), by_count.get(2, [0, 0])
  ceiling = (single[1] + 0.5 * double[1]) / total
  needed = (TARGET * total - single[1]) / double[1] if double[1] else float("nan")
  print(f"overall {sum(r for r, _ in by_count.values()) / total:.3f}; with every one-object "
        f"answer right and two-object scenes at chance: {ceiling:.3f}; {TARGET} overall needs "
        f"{needed:.2f} on two-object scenes, i.e. knowing which object has the named shape")
  refexp_breakdown(args.run_dir)
  print(f"colour_two_object_accuracy {double[0] / max(double[1], 1):.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
