"""Does the UIO2 pretraining objective help? Denoising pretraining + fine-tuning against scratch.

  python -m unified_io.experiments.pretrain_vs_scratch --out /tmp/pvs
  python -m unified_io.experiments.pretrain_vs_scratch --out /tmp/pvs --pretrain_steps 600 \
      --finetune_steps 600 --batch_size 8 --gin.make_config.freeze_vit=False

On the built-in world, with the tiny all-modality model (models/tiny_multimodal.gin):
  pretrain    `--pretrain_steps` on world_pretrain_mod (gin/runs/pretrain_mod.gin: the mixture of
              denoisers, dynamic masking, pair packing); then the held-out loss of each denoising
              mode at each of its checkpoints (bench/pretrain_mod_losses.py's measure)
  finetune    `--finetune_steps` on world_heldout (VQA, referring expressions, audio QA: tasks the
              pretraining mixture never shows), starting from the pretrained parameters
  scratch     `--pretrain_steps + --finetune_steps` on world_heldout from random parameters (the
              same total steps: the comparison the last line reports)
  short       `--finetune_steps` on world_heldout from random parameters (the same supervised
              steps as the fine-tuning: does pretraining help per supervised step?)
Both supervised runs use runs/pretrain.gin's optimiser (Adafactor, learning rate 0.01 throughout
these short runs), the same batch size and grouped batches (`train.group_batches`); each phase is the documented binary (`uio2-train`, run
as `python -m unified_io.cli.train`) in its own process, and its command is printed. Then both
are evaluated on the test split of every world_heldout task (the world eval specs' metrics) and
one table compares them. The world is the main job's (at most two objects, 16-34 % of the image).
Extra `--gin.NAME=VALUE` bindings apply to every training phase.
The last lines are `heldout_mean_gain_same_supervised <mean over tasks of (pretrained - short)>`
and `heldout_mean_gain <mean over tasks of (pretrained - scratch)>`, of each task's first metric.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from unified_io.experiments.main_job import LENGTHS, WORLD_BINDINGS

HELDOUT = "world_heldout"
PRETRAIN = "world_pretrain_mod"
MODEL_GIN = "models/tiny_multimodal.gin"


def _train(model_dir: str, gin_files, bindings, log_path: str) -> None:
  """One `uio2-train` run in its own process; its output goes to `log_path` (and a tail on error)."""
  command = [sys.executable, "-m", "unified_io.cli.train"] + [f"--gin_file={f}" for f in gin_files]
  command += [f"--gin.{b.replace(' = ', '=')}"
              for b in [f"MODEL_DIR='{model_dir}'", *bindings, *WORLD_BINDINGS]]
  print("$ uio2-train " + " ".join(command[3:]), flush=True)
  started = time.time()
  with open(log_path, "w") as log:
    result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
  lines = open(log_path).read().splitlines()
  steps = [line for line in lines if line.startswith("step ")]
  print(f"  {time.time() - started:.0f} s; " + (steps[-1] if steps else "no step logged"),
        flush=True)
  if result.returncode:
    print("\n".join(lines[-15:]))
    raise SystemExit(f"training failed (exit {result.returncode}); full log: {log_path}")


def _evaluate(model_dir: str, out_dir: str, split: str, examples: int):
  """{task: metrics} of the newest checkpoint of `model_dir` on every world_heldout task."""
  import gin  # pylint: disable=import-outside-toplevel
  import unified_io.tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  from unified_io.data import registry  # pylint: disable=import-outside-toplevel
  from unified_io.evaluation import evaluator as evaluator_lib  # pylint: disable=import-outside-toplevel
  from unified_io.evaluation import run_loader  # pylint: disable=import-outside-toplevel

  gin.clear_config()
  with gin.unlock_config():
    gin.parse_config(list(WORLD_BINDINGS))  # the world the runs trained on
  run = run_loader.load_run(model_dir)
  evaluator = evaluator_lib.Evaluator(run.model, registry.task_names(HELDOUT), LENGTHS,
                                      split=split, batch_size=16, max_examples=examples)
  results = evaluator.evaluate(run.params, run.step, out_dir)
  return {task: dict(result.metrics) for task, result in results.items()}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--pretrain_steps", type=int, default=300)
  parser.add_argument("--finetune_steps", type=int, default=300)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--eval_examples", type=int, default=128)
  parser.add_argument("--split", default="test")
  args, rest = parser.parse_known_args(argv)
  for item in rest:
    if not item.startswith("--gin."):
      parser.error(f"unrecognized argument {item!r} (gin bindings go as --gin.NAME=VALUE)")
  extra = [item[len("--gin."):] for item in rest]  # for every training phase
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  names = ("finetune", "scratch", "short")
  dirs = {name: os.path.join(out, name) for name in ("pretrain",) + names}
  common = [f"BATCH_SIZE={args.batch_size}", "train.log_every=50", *extra]
  # (grouped batches, as the main job trains: a step runs only what its examples use)
  supervised = [f"MIXTURE_OR_TASK_NAME='{HELDOUT}'", f"TASK_FEATURE_LENGTHS={LENGTHS!r}",
                "train.group_batches=True"]
  started = time.time()

  print(f"== pretrain: {args.pretrain_steps} steps of the mixture of denoisers on {PRETRAIN}")
  _train(dirs["pretrain"], [MODEL_GIN, "runs/pretrain_mod.gin"],
         [f"TRAIN_STEPS={args.pretrain_steps}",
          f"train.checkpoint_every={max(args.pretrain_steps // 3, 1)}", *common],
         os.path.join(out, "pretrain.log"))
  losses_script = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__)))), "bench", "pretrain_mod_losses.py")
  if os.path.exists(losses_script):  # (a source checkout; the bench folder is not installed)
    print("== held-out loss per denoising mode at each pretraining checkpoint", flush=True)
    result = subprocess.run([sys.executable, losses_script, dirs["pretrain"]],
                            capture_output=True, text=True, check=False)
    print(result.stdout if result.returncode == 0 else
          f"(failed: {result.stderr.strip().splitlines()[-1:]})", flush=True)

  print(f"== fine-tune the pretrained model: {args.finetune_steps} steps on {HELDOUT}")
  pretrained = os.path.join(dirs["pretrain"], "checkpoints", str(args.pretrain_steps))
  _train(dirs["finetune"], [MODEL_GIN, "runs/pretrain.gin"],
         [*supervised, f"TRAIN_STEPS={args.finetune_steps}",
          f"train.initial_checkpoint_path='{pretrained}'",
          f"train.checkpoint_every={args.finetune_steps}", *common],
         os.path.join(out, "finetune.log"))
  total = args.pretrain_steps + args.finetune_steps
  print(f"== from scratch: {total} steps on {HELDOUT}")
  _train(dirs["scratch"], [MODEL_GIN, "runs/pretrain.gin"],
         [*supervised, f"TRAIN_STEPS={total}", f"train.checkpoint_every={total}", *common],
         os.path.join(out, "scratch.log"))

  print(f"== from scratch, as many steps as the fine-tuning: {args.finetune_steps} on {HELDOUT}")
  _train(dirs["short"], [MODEL_GIN, "runs/pretrain.gin"],
         [*supervised, f"TRAIN_STEPS={args.finetune_steps}",
          f"train.checkpoint_every={args.finetune_steps}", *common],
         os.path.join(out, "short.log"))

  print(f"== evaluate all three on the {args.split} split of every {HELDOUT} task "
        f"({args.eval_examples} examples each)", flush=True)
  results = {name: _evaluate(dirs[name], os.path.join(out, f"eval_{name}"), args.split,
                             args.eval_examples) for name in names}
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  print(f"{'task':20s} {'metric':18s} {'pretrained+ft':>14s} {f'scratch {total}':>13s} "
        f"{f'scratch {args.finetune_steps}':>13s}")
  gains = {"scratch": [], "short": []}
  for task in sorted(results["scratch"]):
    for i, metric in enumerate(sorted(results["scratch"][task])):
      row = [results[n][task].get(metric, float("nan")) for n in names]
      print(f"{task:20s} {metric:18s} {row[0]:14.3f} {row[1]:13.3f} {row[2]:13.3f}")
      if i == 0:
        gains["scratch"].append(row[0] - row[1])
        gains["short"].append(row[0] - row[2])
  print(f"(total {time.time() - started:.0f} s; results.json in {out})")
  print(f"heldout_mean_gain_same_supervised {sum(gains['short']) / len(gains['short']):.4f}")
  print(f"heldout_mean_gain {sum(gains['scratch']) / len(gains['scratch']):.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
