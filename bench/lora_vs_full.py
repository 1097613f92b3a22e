"""LoRA on an int8 base against full fine-tuning at equal steps, on a held-out world task.

The commands a user runs, as subprocesses: pretrain the tiny text model on one world task
(`uio2-train` + runs/pretrain.gin), fine-tune it on another for the same number of steps with
runs/finetune.gin (every parameter, Adafactor) and with runs/finetune_lora.gin (rank-8 adapters on
q/k/v/o, int8 base, AdamW), then `uio2-eval` the base and both fine-tunings on the second task's
held-out split. Prints each command, the trained-parameter counts and the metrics table.

  python bench/lora_vs_full.py                       # ~5 min on 2 CPU cores
  python bench/lora_vs_full.py --pretrain_steps 200 --finetune_steps 100 --out /tmp/lvf
  # from an existing multimodal run (e.g. bench/progressive_alignment.py's base):
  python bench/lora_vs_full.py --model tiny_multimodal.gin --lengths multimodal \
    --base /tmp/progressive_alignment/base/checkpoints/600 --finetune_task world_vqa_colour
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENGTHS = {"text": {"text_inputs": 32, "text_targets": 16},
           "multimodal": {"text_inputs": 32, "text_targets": 32, "image_input_samples": 64,
                          "audio_input_samples": 32, "image_history_input_samples": 64,
                          "audio_history_input_samples": 32, "num_frames": 4}}


def run(args, what):
  print("$ " + " ".join(args), flush=True)
  started = time.time()
  result = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True)
  if result.returncode:
    sys.exit(f"{what} failed ({result.returncode}):\n{result.stderr[-3000:]}")
  print(f"  ({time.time() - started:.0f} s)", flush=True)
  return result.stdout


def train(args, run_gin, model_dir, task, steps, batch, *extra):
  return run(["unified_io.cli.train", f"--gin_file=models/{args.model}",
              f"--gin_file=runs/{run_gin}",
              f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
              f"--gin.TASK_FEATURE_LENGTHS={LENGTHS[args.lengths]}", f"--gin.TRAIN_STEPS={steps}",
              f"--gin.BATCH_SIZE={batch}", "--gin.train.log_every=50",
              f"--gin.train.checkpoint_every={steps}",
              # (one modality set per batch: a multimodal step runs only what the task reads)
              "--gin.train.group_batches=True", *extra], f"training {model_dir}")


def evaluate(checkpoint, task, out, examples):
  run(["unified_io.cli.eval", "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{checkpoint}'",
       f"--gin.MIXTURE_OR_TASK_NAME='{task}'", f"--gin.EVAL_OUTPUT_DIR='{out}'",
       f"--gin.evaluate.max_examples={examples}"], f"evaluating {checkpoint}")
  with open(os.path.join(out, f"{task}-metrics.jsonl")) as f:
    return json.loads(f.readlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="/tmp/lora_vs_full")
  parser.add_argument("--pretrain_task", default="world_text_scene_qa")
  parser.add_argument("--finetune_task", default="world_arithmetic")
  parser.add_argument("--pretrain_steps", type=int, default=600)
  parser.add_argument("--finetune_steps", type=int, default=400)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--eval_examples", type=int, default=128)
  parser.add_argument("--model", default="tiny.gin", help="a gin file of gin/models/")
  parser.add_argument("--lengths", default="text", choices=sorted(LENGTHS))
  parser.add_argument("--world", nargs="*", default=[],
                      help="world bindings for the fine-tuning runs (and so their evaluation), "
                           "e.g. the main job's: make_world_config.max_objects=2 ...; a base's own "
                           "evaluation uses its run's world")
  parser.add_argument("--base", default=None,
                      help="a checkpoint step to fine-tune from instead of pretraining one")
  args = parser.parse_args()
  out = os.path.abspath(args.out)
  base_dir, full_dir, lora_dir = (os.path.join(out, n) for n in ("base", "full", "lora"))
  if args.base:
    base_ckpt = os.path.abspath(args.base)
    base_dir = os.path.dirname(os.path.dirname(base_ckpt))
  else:
    train(args, "pretrain.gin", base_dir, args.pretrain_task, args.pretrain_steps,
          args.batch_size, "--gin.learning_rate_schedule.warmup_steps=100")
    base_ckpt = os.path.join(base_dir, "checkpoints", str(args.pretrain_steps))
  world = [f"--gin.{b}" for b in args.world]
  train(args, "finetune.gin", full_dir, args.finetune_task, args.finetune_steps, args.batch_size,
        f"--gin.INITIAL_CHECKPOINT_PATH='{base_ckpt}'", *world)
  lora_log = train(args, "finetune_lora.gin", lora_dir, args.finetune_task, args.finetune_steps,
                   args.batch_size, f"--gin.INITIAL_CHECKPOINT_PATH='{base_ckpt}'", *world)
  trained = re.search(r"lora: ([\d,]+) trained parameters \(([\d.]+)% of the base's ([\d,]+)",
                      lora_log)
  rows = {name: evaluate(path, args.finetune_task, os.path.join(out, f"eval_{name}"),
                         args.eval_examples)
          for name, path in (("base (no fine-tuning)", base_ckpt), ("full fine-tuning", full_dir),
                             ("LoRA, int8 base", lora_dir))}
  metric_names = sorted({k for r in rows.values() for k in r if k != "step" and "/" not in k})
  print(f"\n{args.finetune_task}, held-out (validation, {args.eval_examples} examples), "
        f"{args.finetune_steps} fine-tuning steps of batch {args.batch_size} from {base_ckpt}")
  total = trained.group(3) if trained else "?"
  counts = {"base (no fine-tuning)": "0", "full fine-tuning": total,
            "LoRA, int8 base": trained.group(1) if trained else "?"}
  print(f"{'set-up':24s} {'trained params':>15s} " + " ".join(f"{m:>14s}" for m in metric_names))
  for name, metrics in rows.items():
    print(f"{name:24s} {counts[name]:>15s} "
          + " ".join(f"{metrics.get(m, float('nan')):14.3f}" for m in metric_names))
  main_metric = "accuracy" if "accuracy" in metric_names else metric_names[0]
  print(f"lora_minus_full_{main_metric} "
        f"{rows['LoRA, int8 base'][main_metric] - rows['full fine-tuning'][main_metric]:.4f}")


if __name__ == "__main__":
  main()
