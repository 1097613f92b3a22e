"""A new input modality aligned to a trained model, then a second one beside it (issue 17).

The commands a user runs (subprocesses; runs/align_modality.gin):
  0. base: `uio2-train` models/tiny_multimodal.gin + runs/pretrain.gin on world_main (images,
     audio, text; the release's linear input projections), then its held-out audio score;
  1. stage 1: models/tiny_sensor.gin + runs/align_modality.gin from the base on world_sensor_gravity:
     the universal projection module replaces the linear projections, and only it, the sensor's
     conv tokenizer and rank-8 LoRA adapters on the trunk's attention train (int8 base);
     `uio2-merge-lora`; held-out sensor score;
  2. stage 2: the same from the merged stage 1 on world_sensor_audio (audio now goes through the
     module too); held-out sensor and audio scores: the sensor keeps its score, audio is aligned.
Prints every command and the table.

  python bench/progressive_alignment.py                  # ~20 min on 2 CPU cores
  python bench/progressive_alignment.py --base_steps 200 --stage_steps 100 --out /tmp/pa
  python bench/progressive_alignment.py --base main_job_output/model/checkpoints/3000
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_LENGTHS = {"text_inputs": 32, "text_targets": 32, "image_input_samples": 64,
                "audio_input_samples": 32, "image_history_input_samples": 64,
                "audio_history_input_samples": 32, "num_frames": 4}
SENSOR_LENGTHS = {**BASE_LENGTHS, "sensor_input_samples": 16}


def run(args, what):
  print("$ " + " ".join(args), flush=True)
  started = time.time()
  result = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True)
  if result.returncode:
    sys.exit(f"{what} failed ({result.returncode}):\n{result.stderr[-3000:]}")
  lines = [l for l in result.stdout.splitlines() if l.startswith(("lora:", "train.trainable"))]
  print("".join(f"  {l}\n" for l in lines) + f"  ({time.time() - started:.0f} s)", flush=True)
  return result.stdout


def train(model_gin, run_gin, model_dir, mixture, lengths, steps, batch, *extra):
  return run(["unified_io.cli.train", f"--gin_file=models/{model_gin}", f"--gin_file=runs/{run_gin}",
              f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{mixture}'",
              f"--gin.TASK_FEATURE_LENGTHS={lengths}", f"--gin.TRAIN_STEPS={steps}",
              f"--gin.BATCH_SIZE={batch}", "--gin.train.log_every=50",
              f"--gin.train.checkpoint_every={steps}", *extra], f"training {model_dir}")


def evaluate(checkpoint, task, out, examples):
  run(["unified_io.cli.eval", "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{checkpoint}'",
       f"--gin.MIXTURE_OR_TASK_NAME='{task}'", f"--gin.EVAL_OUTPUT_DIR='{out}'",
       f"--gin.evaluate.max_examples={examples}"], f"evaluating {checkpoint} on {task}")
  with open(os.path.join(out, f"{task}-metrics.jsonl")) as f:
    return json.loads(f.readlines()[-1])["accuracy"]


def merged_step(merged_dir):
  return glob.glob(os.path.join(merged_dir, "checkpoints", "*"))[0]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="/tmp/progressive_alignment")
  parser.add_argument("--base_steps", type=int, default=600)
  parser.add_argument("--stage_steps", type=int, default=400)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--eval_examples", type=int, default=128)
  parser.add_argument("--learning_rate", type=float, default=3e-3)
  parser.add_argument("--base", default=None,
                      help="a trained tiny_multimodal checkpoint step to align to (default: "
                           "train one for --base_steps on world_main)")
  args = parser.parse_args()
  out = os.path.abspath(args.out)
  path = lambda name: os.path.join(out, name)  # noqa: E731
  scores = {}
  if args.base:  # e.g. the main job's model: OUT/model/checkpoints/3000
    base_ckpt = os.path.abspath(args.base)
  else:
    train("tiny_multimodal.gin", "pretrain.gin", path("base"), "world_main", BASE_LENGTHS,
          args.base_steps, args.batch_size, "--gin.train.group_batches=True",
          "--gin.learning_rate_schedule.warmup_steps=100")
    base_ckpt = os.path.join(path("base"), "checkpoints", str(args.base_steps))
  scores["base"] = {"audio": evaluate(base_ckpt, "world_audio_qa", path("eval_base"),
                                      args.eval_examples)}
  lr = f"--gin.learning_rate_schedule.base_learning_rate={args.learning_rate}"
  train("tiny_sensor.gin", "align_modality.gin", path("stage1"), "world_sensor_gravity",
        SENSOR_LENGTHS, args.stage_steps, args.batch_size,
        f"--gin.INITIAL_CHECKPOINT_PATH='{base_ckpt}'", lr)
  scores["stage 1: sensor"] = {"sensor": evaluate(path("stage1"), "world_sensor_gravity",
                                                  path("eval_stage1"), args.eval_examples)}
  run(["unified_io.cli.merge_lora", "--adapters_dir", path("stage1"), "--output_dir",
       path("stage1_merged"), "--overwrite"], "merging stage 1")
  train("tiny_sensor.gin", "align_modality.gin", path("stage2"), "world_sensor_audio",
        SENSOR_LENGTHS, args.stage_steps, args.batch_size,
        f"--gin.INITIAL_CHECKPOINT_PATH='{merged_step(path('stage1_merged'))}'",
        "--gin.ASSIGNMENT_MAP=[]", lr)
  scores["stage 2: + audio"] = {
      task: evaluate(path("stage2"), f"world_{name}", path(f"eval_stage2_{task}"),
                     args.eval_examples)
      for task, name in (("sensor", "sensor_gravity"), ("audio", "audio_qa"))}
  print(f"\nheld-out accuracy (validation, {args.eval_examples} examples per task); base: "
        f"{base_ckpt}; each stage {args.stage_steps} steps of batch "
        f"{args.batch_size}, only the projection module, the sensor tokenizer and LoRA training")
  print(f"{'stage':22s} {'sensor axis':>12s} {'audio qa':>10s}")
  for stage, row in scores.items():
    print(f"{stage:22s} " + " ".join(f"{row.get(t, float('nan')):>{w}.3f}"
                                     for t, w in (("sensor", 12), ("audio", 10))))
  kept = scores["stage 2: + audio"]["sensor"] / max(scores["stage 1: sensor"]["sensor"], 1e-9)
  print(f"sensor_kept {kept:.3f}")


if __name__ == "__main__":
  main()
