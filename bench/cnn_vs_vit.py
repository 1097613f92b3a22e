"""UnIVAL's light CNN encoders against the ViTs: the tiny multimodal model trained both ways.

The commands a user runs: `uio2-train` (as `python -m unified_io.cli.train`, each in its own
process, its command printed) with models/tiny_multimodal.gin and with
models/tiny_multimodal_cnn.gin, on the same task, steps, batch, seed and bindings (runs/pretrain.gin,
grouped batches, the main job's world and learning-rate schedule, `make_config.freeze_vit=False`
so the ViTs learn from scratch as the CNNs do; `--freeze_vit` keeps them frozen at their random
initialisation instead), then the evaluator of `uio2-eval` on the task's held-out split. Prints per
encoder kind the parameters (total, and of the feature extractors: the ViTs or the CNNs), the ms
per training step after the first `--log_every` steps (compilation; the loop with its input, as
the run logged it in train/metrics.jsonl), the last logged training loss and the held-out metrics.

  .venv/bin/python bench/cnn_vs_vit.py                       # 200 steps, about 10 min on 2 cores
  .venv/bin/python bench/cnn_vs_vit.py --steps 600 --task world_vqa_shape --out /tmp/cvv
Last line: `cnn_minus_vit_<metric> <difference>` of the task's first metric.
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # (run from a source checkout: bench/ is not installed)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from unified_io.experiments.main_job import LENGTHS, WORLD_BINDINGS  # noqa: E402

MODELS = {"vit": "models/tiny_multimodal.gin", "cnn": "models/tiny_multimodal_cnn.gin"}


def train(args, kind: str, model_dir: str) -> None:
  """One `uio2-train` run in its own process; its output goes to MODEL_DIR.log."""
  bindings = [f"MODEL_DIR='{model_dir}'", f"MIXTURE_OR_TASK_NAME='{args.task}'",
              f"TASK_FEATURE_LENGTHS={LENGTHS!r}", f"TRAIN_STEPS={args.steps}",
              f"BATCH_SIZE={args.batch_size}", f"train.log_every={args.log_every}",
              f"train.checkpoint_every={args.steps}", "train.group_batches=True",
              "learning_rate_schedule.factors='constant * linear_warmup * cosine_decay'",
              f"learning_rate_schedule.decay_steps={args.steps}",
              f"learning_rate_schedule.base_learning_rate={args.learning_rate}",
              f"learning_rate_schedule.warmup_steps={args.warmup_steps}",
              f"make_config.freeze_vit={args.freeze_vit}",
              *[b.replace(" = ", "=") for b in WORLD_BINDINGS]]
  command = [sys.executable, "-m", "unified_io.cli.train", f"--gin_file={MODELS[kind]}",
             "--gin_file=runs/pretrain.gin"] + [f"--gin.{b}" for b in bindings]
  print("$ uio2-train " + " ".join(command[3:]), flush=True)
  started = time.time()
  with open(model_dir + ".log", "w") as log:
    result = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False)
  lines = open(model_dir + ".log").read().splitlines()
  if result.returncode:
    print("\n".join(lines[-15:]))
    raise SystemExit(f"training failed (exit {result.returncode}); log: {model_dir}.log")
  print(f"  ({time.time() - started:.0f} s)", flush=True)


def step_figures(model_dir: str):
  """(ms per step after the first logged interval, the last logged loss) from train/metrics.jsonl."""
  with open(os.path.join(model_dir, "train", "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  steps, seconds, last = 0, 0.0, records[0]["step"]
  for record in records[1:]:  # (the first interval holds the compilation)
    n = record["step"] - last
    steps, seconds, last = steps + n, seconds + n / record["timing/steps_per_second"], record["step"]
  return (1000.0 * seconds / steps if steps else float("nan")), records[-1]["loss"]


def parameter_counts(params):
  """(total, the feature extractors': leaves of the shared ViTs or of the embedders' CNNs)."""
  import jax  # pylint: disable=import-outside-toplevel
  total = encoder = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    total += leaf.size
    encoder += leaf.size if name.startswith("vits_") or "/cnn/" in name else 0
  return total, encoder


def evaluate(args, model_dir: str):
  """{metric: value} of the trained model on `--eval_examples` of the task's held-out split."""
  from unified_io.evaluation import evaluator as evaluator_lib  # pylint: disable=import-outside-toplevel
  from unified_io.evaluation import run_loader  # pylint: disable=import-outside-toplevel
  from unified_io.training import run_config  # pylint: disable=import-outside-toplevel
  import unified_io.tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  run_config.apply_run_data(model_dir)  # the world the run trained on
  run = run_loader.load_run(model_dir)
  evaluator = evaluator_lib.Evaluator(run.model, [args.task], LENGTHS, split=args.split,
                                      batch_size=16, max_examples=args.eval_examples,
                                      log=lambda *a: None)
  results = evaluator.evaluate(run.params, run.step, os.path.join(model_dir, "eval"))
  return dict(results[args.task].metrics), parameter_counts(run.params)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="/tmp/cnn_vs_vit")
  parser.add_argument("--task", default="world_vqa_colour")
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--learning_rate", type=float, default=0.02)
  parser.add_argument("--warmup_steps", type=int, default=50)
  parser.add_argument("--log_every", type=int, default=25)
  parser.add_argument("--eval_examples", type=int, default=128)
  parser.add_argument("--split", default="test")
  parser.add_argument("--freeze_vit", action="store_true",
                      help="keep the ViTs at their random initialisation (the release's setting)")
  args = parser.parse_args()
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  started = time.time()
  rows = {}
  for kind in MODELS:
    model_dir = os.path.join(out, kind)
    train(args, kind, model_dir)
    ms, loss = step_figures(model_dir)
    metrics, (total, encoder) = evaluate(args, model_dir)
    rows[kind] = dict(ms=ms, loss=loss, total=total, encoder=encoder, **metrics)
  names = sorted(k for k in rows["vit"] if k not in ("ms", "loss", "total", "encoder"))
  print(f"\n{args.task}: {args.steps} steps of batch {args.batch_size} "
        f"(ViTs {'frozen' if args.freeze_vit else 'trained'}); held-out = {args.eval_examples} "
        f"{args.split} examples; total {time.time() - started:.0f} s")
  print(f"{'encoders':9s} {'params':>10s} {'encoder params':>15s} {'ms/step':>8s} "
        f"{'train loss':>10s} " + " ".join(f"{m:>14s}" for m in names))
  for kind, row in rows.items():
    print(f"{kind:9s} {row['total']:10,d} {row['encoder']:15,d} {row['ms']:8.1f} "
          f"{row['loss']:10.3f} " + " ".join(f"{row[m]:14.3f}" for m in names))
  print(f"cnn_minus_vit_{names[0]} {rows['cnn'][names[0]] - rows['vit'][names[0]]:.4f}")


if __name__ == "__main__":
  main()
