"""What the dense metrics give a prediction that knows only the background: the floor a trained
model's held-out dense scores must beat before it has learnt anything about the objects.

  python bench/dense_baselines.py [--n 64] [--split test] [--world make_world_config.max_objects=2 ...]

For held-out examples of world_depth / world_normals / world_segmentation / world_edges, the
"background only" prediction is the scene's label with every object removed (depth: the ground
plane; normals: the ground's normal; segmentation: all background; edges: none). Both sides go
through the same picture encoding and metric functions uio2-eval uses (`dense_labels`,
`metric_fns`). Compare with the `<task>-metrics.jsonl` of a run (e.g. `python -m
unified_io.experiments.main_job --mixture world_dense`). Pass the world bindings the run used
(the main job's: max_objects=2 min_object_size=0.16 max_object_size=0.34).
"""

import argparse

import gin
import numpy as np

from unified_io.data import dense_labels
from unified_io.datasets.world import GENERATORS, dense, make_world_config, scenes
from unified_io.datasets.world.source import example_rng
from unified_io.evaluation import metric_fns

METRICS = {"depth": metric_fns.depth_error, "normals": metric_fns.normals_error,
           "segmentation": metric_fns.segmentation_miou_for(len(dense.SEGMENTATION_CLASSES)),
           "edges": metric_fns.edge_fscore}
LABEL = {"depth": dense.depth, "normals": dense.normals, "segmentation": dense.segmentation,
         "edges": lambda scene, rendering: dense.edges(rendering)}
ENCODE = {"depth": dense_labels.encode_depth, "normals": dense_labels.encode_normals,
          "segmentation": lambda c: dense_labels.encode_segmentation(
              c, len(dense.SEGMENTATION_CLASSES)),
          "edges": dense_labels.encode_edges}


def _as_picture(uint8_image):
  return {"image": uint8_image.astype(np.float32) / 255.0}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--n", type=int, default=64)
  parser.add_argument("--split", default="test")
  parser.add_argument("--world", nargs="*", default=[
      "make_world_config.max_objects=2", "make_world_config.min_object_size=0.16",
      "make_world_config.max_object_size=0.34"])
  args = parser.parse_args()
  gin.parse_config([b.replace("=", " = ", 1) for b in args.world])
  cfg = make_world_config()
  for task, metric in METRICS.items():
    truths, backgrounds = [], []
    for i in range(args.n):
      # The generator's own example i, and its scene (the generator's first draw from the
      # example's rng) without the objects.
      example = GENERATORS[task].generate(example_rng(cfg, task, args.split, i), cfg)
      scene = scenes.sample_scene(example_rng(cfg, task, args.split, i), cfg)
      empty = scene.with_objects(())
      truth = ENCODE[task](LABEL[task](scene, scenes.render(scene, cfg.target_size)))
      assert np.array_equal(truth, example["image_targets"]), f"{task} {i}: not the generator's"
      background = ENCODE[task](LABEL[task](empty, scenes.render(empty, cfg.target_size)))
      truths.append(_as_picture(truth))
      backgrounds.append(_as_picture(background))
    scores = metric(truths, backgrounds)
    print(f"{task:13s} background only: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                      sorted(scores.items())), flush=True)


if __name__ == "__main__":
  main()
