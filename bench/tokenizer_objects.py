"""How many of the world's objects the tiny image tokenizer keeps, by training steps, crop size
and crop candidates: the measurement behind the main job's tokenizer settings.

Held-out PSNR barely sees small objects on flat backgrounds (a tokenizer at 24.9 dB gave back 7%
of the world's objects), so each setting is also scored by `drawn_objects`: of the objects in 64
held-out test images (the main job's world: one or two objects of 16-34% of the side), the share
whose colour comes back at IoU >= 0.5 in the reconstruction (`objects_kept`), and the mean IoU.

Each setting is one `uio2-train-tokenizer` run (models/tiny_multimodal.gin,
runs/train_tokenizer.gin, batch 4 on `world_text_to_image`, the main job's world bindings,
`train_tokenizer.object_palette = @world_palette()`) into a fresh temporary folder.

  .venv/bin/python bench/tokenizer_objects.py                      # the settings below, ~15 min
  .venv/bin/python bench/tokenizer_objects.py --setting 3000,64,1  # steps,crop,candidates

Prints per setting: steps, crop (px), candidates, wall seconds of the run (compiling and the
held-out measures included), held-out PSNR, objects_kept, object_iou; last line
`best_objects_kept <value> <setting>`.
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SETTINGS = ("1000,64,1", "2000,64,1", "2000,64,4", "3000,64,1")


def run_setting(steps: int, crop: int, candidates: int, batch_size: int) -> dict:
  import gin  # pylint: disable=import-outside-toplevel
  from unified_io.cli import gin_flags  # pylint: disable=import-outside-toplevel
  from unified_io.experiments.main_job import WORLD_BINDINGS  # pylint: disable=import-outside-toplevel
  from unified_io.tokenizer_training import trainer  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as folder:
    bindings = [f"MODEL_DIR = '{folder}/tokenizer'",
                "MIXTURE_OR_TASK_NAME = 'world_text_to_image'", "TOKENIZER = 'image'",
                f"TRAIN_STEPS = {steps}", f"BATCH_SIZE = {batch_size}",
                f"train_tokenizer.image_crop = {crop}",
                f"train_tokenizer.crop_candidates = {candidates}",
                "train_tokenizer.object_palette = @world_palette()",
                "train_tokenizer.eval_every = 0", "train_tokenizer.log_every = 500",
                "train_tokenizer.eval_split = 'test'", *WORLD_BINDINGS]
    gin_flags.parse_gin(["models/tiny_multimodal.gin", "runs/train_tokenizer.gin"], bindings)
    start = time.perf_counter()
    try:
      measures = trainer.train_tokenizer()
    finally:
      gin.clear_config()
    return {"seconds": time.perf_counter() - start, **measures}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--setting", action="append", default=None,
                      help="steps,crop,candidates (repeatable; default: %s)" % " ".join(SETTINGS))
  parser.add_argument("--batch_size", type=int, default=4)
  args = parser.parse_args()
  import unified_io.tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  rows = []
  for setting in args.setting or SETTINGS:
    steps, crop, candidates = (int(v) for v in setting.split(","))
    got = run_setting(steps, crop, candidates, args.batch_size)
    rows.append((got["eval/objects_kept"], setting))
    print(f"steps {steps:5d}  crop {crop:3d}  candidates {candidates}  {got['seconds']:6.0f} s  "
          f"psnr {got['eval/psnr']:.2f} dB  objects_kept {got['eval/objects_kept']:.3f}  "
          f"object_iou {got['eval/object_iou']:.3f}", flush=True)
  best = max(rows)
  print(f"best_objects_kept {best[0]:.3f} {best[1]}")


if __name__ == "__main__":
  main()
