"""The main job: train a small all-modality model on the built-in world (`world_main`), evaluate
it on held-out examples, and write a report (HTML + PNGs): loss curves, a metrics table against
targets, and a gallery of predictions.

  python -m unified_io.experiments.main_job                       # = make demo; 15-20 min on 2 CPU cores
  python -m unified_io.experiments.main_job --steps 200 --out /tmp/quick --eval_examples 16
  python -m unified_io.experiments.main_job --mixture world_dense --out /tmp/dense  # dense labels

`--mixture` trains and evaluates another registered mixture the same way (the tokenizer then
learns that mixture's images, dense labels included; the targets table is the main mixture's
only).

It is the same code a user runs by hand: first `uio2-train-tokenizer` (the world's image
tokenizer, 2000 steps, ~4 min; an OUT/tokenizer_image or --tokenizer_dir that already holds them
is reused), then `uio2-train` with that tokenizer grafted in (`train.tokenizers`), with
models/tiny_multimodal.gin and
runs/pretrain.gin on the `world_main` mixture (the gin bindings are printed) with grouped batches
(`train.group_batches`: a step runs only the modalities its batch holds, about 4 steps/s here,
after ~2.5 min of compiling one step per group), then the evaluator
of `uio2-eval` on the test split, then `unified_io.evaluation.report`. Rerunning with the same
--out resumes training from its newest checkpoint. Exit status 0 when the run completed (targets
met or not: the table says), 143 on SIGTERM (after a checkpoint), 1 if training or evaluation
failed.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF (used by seqio for data) is chatty

MIXTURE = "world_main"
EXIT_PREEMPTED = 143  # as uio2-train: 128 + SIGTERM, after the checkpoint
LENGTHS = {"text_inputs": 32, "text_targets": 32, "image_input_samples": 64,
           "audio_input_samples": 32, "image_history_input_samples": 64,
           "audio_history_input_samples": 32, "num_frames": 4}
# (task, metric, threshold, what): the targets for this run, on the held-out split.
TARGETS = (
    ("world_vqa_colour", "vqa_accuracy", 0.9, "VQA colour accuracy"),
    ("world_vqa_shape", "vqa_accuracy", 0.9, "VQA shape accuracy"),
    ("world_refexp", "acc50", 0.5, "referring expression Acc@0.5"),
    ("world_caption", "exact_match", 0.5, "caption exact match"),
    ("world_audio_qa", "accuracy", 0.8, "audio classification accuracy"),
    # 256 image codes: chance is 1/256 ~ 0.004; "well above chance" = 10x that.
    ("world_text_to_image", "token_accuracy", 0.04, "generated-image token accuracy"),
)
# Whether generated pictures show their prompts' objects (drawn_objects; not a target: printed).
DRAWN_TASK = "world_text_to_image"
# A simpler world than the default "easy" one (1-4 objects of 10-28% of the side): one or two
# larger objects, so a few CPU minutes of training can learn what the targets measure.
WORLD_BINDINGS = ("make_world_config.max_objects = 2", "make_world_config.min_object_size = 0.16",
                  "make_world_config.max_object_size = 0.34")
# The image tokenizer learns the world's pictures first, so generated images can be looked at.
TOKENIZER_TASK = "world_text_to_image"
# ~4 min: 64 px crops (train_tokenizer.image_crop), each the most varied of 4 random windows, so
# most crops hold an object. Held-out, the reconstructions keep 95% of the objects (their colour
# at IoU >= 0.5; 79% after 1500 steps, 59% after 2000 steps of uniform crops, 7% after the 1000
# uniform ones this ran before: bench/tokenizer_objects.py).
TOKENIZER_STEPS = 2000
TOKENIZER_BATCH = 4
TOKENIZER_CROP_CANDIDATES = 4


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="main_job_output",
                      help="folder for the model (checkpoints, logs) and the report")
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--learning_rate", type=float, default=0.02,
                      help="Adafactor's relative step size after a linear warmup (then a "
                           "cosine decay to 0 at the last step)")
  parser.add_argument("--warmup_steps", type=int, default=100)
  parser.add_argument("--eval_examples", type=int, default=64,
                      help="held-out examples per task (generation tasks use a quarter)")
  parser.add_argument("--curve_examples", type=int, default=32,
                      help="held-out examples per target task at each earlier checkpoint, for "
                           "the report's learning curves (0: the last checkpoint only)")
  parser.add_argument("--eval_batch_size", type=int, default=16)
  parser.add_argument("--split", default="test")
  parser.add_argument("--mixture", default=MIXTURE,
                      help="the mixture to train and evaluate (targets: world_main's only)")
  parser.add_argument("--tokenizer_steps", type=int, default=TOKENIZER_STEPS,
                      help="steps of the world image tokenizer trained first (uio2-train-"
                           "tokenizer); 0: keep the randomly initialised tokenizer")
  parser.add_argument("--tokenizer_dir", default=None,
                      help="the image tokenizer's folder: reused when it already holds "
                           "--tokenizer_steps steps (e.g. from an earlier run), else trained or "
                           "resumed there (default: OUT/tokenizer_image)")
  parser.add_argument("--gin_file", action="append", default=[],
                      help="extra gin files after models/tiny_multimodal.gin and runs/pretrain.gin")
  parser.add_argument("--verbose", action="store_true",
                      help="let TensorFlow, XLA and absl log as they do by default")
  args, rest = parser.parse_known_args(argv)
  for item in rest:
    if not item.startswith("--gin."):
      parser.error(f"unrecognized argument {item!r} (gin bindings go as --gin.NAME=VALUE)")
  return args, [item[len("--gin."):] for item in rest]


def tokenizer_task(args) -> str:
  """What the image tokenizer learns from: the main mixture's generated pictures, else the
  whole mixture's images (its dense labels included)."""
  return TOKENIZER_TASK if args.mixture == MIXTURE else args.mixture


def generates_media(task_name: str) -> bool:
  """Whether a task's predictions are generated images / audio (they are slower to evaluate)."""
  import seqio  # pylint: disable=import-outside-toplevel
  from unified_io.evaluation import postprocessors  # pylint: disable=import-outside-toplevel
  return seqio.get_mixture_or_task(task_name).postprocessor is postprocessors.generated_media


def eval_counts(tasks, examples: int):
  """Held-out examples per task: `examples`, a quarter for tasks that generate media (slower)."""
  return {t: max(examples // 4 if generates_media(t) else examples, 1) for t in tasks}


def tokenizer_bindings(args, tokenizer_dir: str):
  bindings = [f"MODEL_DIR = '{tokenizer_dir}'",
              f"MIXTURE_OR_TASK_NAME = '{tokenizer_task(args)}'", "TOKENIZER = 'image'",
              f"TRAIN_STEPS = {args.tokenizer_steps}", f"BATCH_SIZE = {TOKENIZER_BATCH}",
              "train_tokenizer.log_every = 50",
              f"train_tokenizer.eval_every = {max(args.tokenizer_steps // 2, 1)}",
              f"train_tokenizer.eval_split = '{args.split}'",
              f"train_tokenizer.crop_candidates = {TOKENIZER_CROP_CANDIDATES}", *WORLD_BINDINGS]
  if tokenizer_task(args) == TOKENIZER_TASK:  # the world's pictures: are their objects kept?
    bindings.append("train_tokenizer.object_palette = @world_palette()")
  return bindings


def train_tokenizer(args, gin_flags) -> str:
  """Trains (or resumes, or reuses) the world image tokenizer; returns its folder."""
  import gin  # pylint: disable=import-outside-toplevel
  from unified_io.tokenizer_training import trainer as tokenizer_trainer  # pylint: disable=import-outside-toplevel
  tokenizer_dir = os.path.abspath(args.tokenizer_dir or os.path.join(args.out, "tokenizer_image"))
  bindings = tokenizer_bindings(args, tokenizer_dir)
  print("== image tokenizer: uio2-train-tokenizer --gin_file=models/tiny_multimodal.gin "
        "--gin_file=runs/train_tokenizer.gin "
        + " ".join(f'--gin.{b.replace(" = ", "=")}' for b in bindings), flush=True)
  gin_flags.parse_gin(["models/tiny_multimodal.gin", "runs/train_tokenizer.gin"], bindings)
  tokenizer_trainer.train_tokenizer()
  gin.clear_config()
  return tokenizer_dir


def train_bindings(args, model_dir: str):
  return [f"MODEL_DIR = '{model_dir}'", f"MIXTURE_OR_TASK_NAME = '{args.mixture}'",
          f"TASK_FEATURE_LENGTHS = {LENGTHS!r}", f"TRAIN_STEPS = {args.steps}",
          f"BATCH_SIZE = {args.batch_size}",
          "learning_rate_schedule.factors = 'constant * linear_warmup * cosine_decay'",
          f"learning_rate_schedule.decay_steps = {args.steps}",
          f"learning_rate_schedule.base_learning_rate = {args.learning_rate}",
          f"learning_rate_schedule.warmup_steps = {args.warmup_steps}",
          f"train.checkpoint_every = {max(args.steps // 3, 1)}", "train.log_every = 25",
          "train.group_batches = True", *WORLD_BINDINGS]


def main(argv=None) -> int:
  args, extra_bindings = parse_args(sys.argv[1:] if argv is None else argv)
  from unified_io.cli import quiet  # pylint: disable=import-outside-toplevel
  quiet.start(args.verbose)  # (as the binaries: TF's start-up lines and absl warnings held back)
  quiet.import_tensorflow(args.verbose)
  import unified_io.tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  import jax  # pylint: disable=import-outside-toplevel
  from unified_io.cli import gin_flags  # pylint: disable=import-outside-toplevel
  from unified_io.evaluation import evaluator as evaluator_lib  # pylint: disable=import-outside-toplevel
  from unified_io.evaluation import report, run_loader  # pylint: disable=import-outside-toplevel
  from unified_io.training import trainer  # pylint: disable=import-outside-toplevel
  from unified_io.data import registry  # pylint: disable=import-outside-toplevel

  started = time.time()
  model_dir = os.path.abspath(os.path.join(args.out, "model"))
  report_dir = os.path.abspath(os.path.join(args.out, "report"))
  bindings = train_bindings(args, model_dir) + extra_bindings
  tokenizer_dir = None
  if args.tokenizer_steps > 0:
    try:
      tokenizer_dir = train_tokenizer(args, gin_flags)
    except trainer.Preempted as stop:
      print(f"SIGTERM: tokenizer checkpoint written at step {stop.step}; rerun the same command "
            "to resume", flush=True)
      return EXIT_PREEMPTED
    bindings.append(f"train.tokenizers = {{'image': '{tokenizer_dir}'}}")
  tokenized_at = time.time()
  print("== train: uio2-train --gin_file=models/tiny_multimodal.gin --gin_file=runs/pretrain.gin "
        + " ".join(f"--gin_file={f}" for f in args.gin_file)
        + " " + " ".join(f'--gin.{b.replace(" = ", "=")}' for b in bindings), flush=True)
  gin_imports = gin_flags.parse_gin(["models/tiny_multimodal.gin", "runs/pretrain.gin"]
                                    + args.gin_file, bindings)
  try:
    # (the world bindings stay in effect: evaluation draws from the same world)
    trainer.train(gin_imports=gin_imports)
  except trainer.Preempted as stop:
    print(f"SIGTERM: checkpoint written at step {stop.step}; rerun the same command to resume",
          flush=True)
    return EXIT_PREEMPTED
  trained_at = time.time()

  print(f"== evaluate: {args.split} split of every {args.mixture} task", flush=True)
  run = run_loader.load_run(model_dir)
  tasks = registry.task_names(args.mixture)
  evaluator = evaluator_lib.Evaluator(run.model, tasks, LENGTHS, split=args.split,
                                      batch_size=args.eval_batch_size,
                                      max_examples=eval_counts(tasks, args.eval_examples))
  results = evaluator.evaluate(run.params, run.step, os.path.join(args.out, "eval"))
  targets = [report.Target(*t) for t in TARGETS if t[0] in tasks]
  curves = {run.step: results}
  earlier = ([s for s in run_loader.checkpoint_steps(model_dir) if s < run.step]
             if targets and args.curve_examples > 0 else [])
  if earlier:
    print(f"== learning curves: {len(targets)} target tasks at steps "
          f"{', '.join(map(str, earlier))} ({args.curve_examples} examples each)", flush=True)
    curve_tasks = sorted({t.task for t in targets})
    curve_evaluator = evaluator_lib.Evaluator(
        run.model, curve_tasks, LENGTHS, split=args.split, batch_size=args.eval_batch_size,
        max_examples=eval_counts(curve_tasks, args.curve_examples))
    for step in earlier:
      params = run_loader.load_run(model_dir, step=step).params
      curves[step] = curve_evaluator.evaluate(params, step, os.path.join(args.out, "eval_curve"))
  evaluated_at = time.time()

  tokenizer_note = (
      f"The image tokenizer was trained first on {tokenizer_task(args)} images ({args.tokenizer_steps} "
      f"steps of batch {TOKENIZER_BATCH}, {tokenized_at - started:.0f} s; its held-out "
      f"reconstructions: {tokenizer_dir}/report/index.html), so generated images are decoded "
      "by a decoder that has learnt the world's pictures; the audio tokenizer is randomly "
      "initialised, so rendered spectrograms show what the tokens encode through an untrained "
      "decoder." if tokenizer_dir else
      "The VQ tokenizers are randomly initialised (--tokenizer_steps 0), so rendered images and "
      "spectrograms show what the tokens encode through an untrained decoder: compare generated "
      "with reference, not with the data.")
  notes = [f"{run.step} training steps of batch {args.batch_size} on {args.mixture} "
           f"({trained_at - tokenized_at:.0f} s), evaluation on {args.split} examples "
           f"({evaluated_at - trained_at:.0f} s"
           + (f"; steps {', '.join(map(str, earlier))} for the learning curves on "
              f"{args.curve_examples} examples per target task" if earlier else "")
           + f"); the world: {', '.join(WORLD_BINDINGS)}. "
           "Model: models/tiny_multimodal.gin "
           f"({sum(x.size for x in jax.tree_util.tree_leaves(run.params)):,} "
           "parameters). " + tokenizer_note]
  rates = registry.rates(args.mixture) if len(tasks) > 1 else {tasks[0]: 1.0}
  seen = report.training_examples_per_task(rates, run.step, args.batch_size)
  path = report.write_report(report_dir, results, evaluator.data_config,
                             os.path.join(model_dir, "train", "metrics.jsonl"), targets,
                             notes=notes, curves=curves, training_examples=seen)
  print("== targets (held-out; training examples of the task drawn in expectation):")
  for t in targets:
    value, passed = report.target_status(results, t)
    shown = "missing" if value is None else f"{value:.3f}"
    mark = "met" if passed else "MISSED"
    print(f"  {t.label:34s} {shown:>7s}  (target >= {t.threshold})  {mark:6s}  "
          f"{seen.get(t.task, 0):7,.0f} examples")
  drawn = getattr(results.get(DRAWN_TASK), "metrics", {})
  if "objects_drawn" in drawn:
    print(f"== generated images ({DRAWN_TASK}): {drawn['objects_drawn']:.3f} of the prompted "
          f"objects drawn (their colour at IoU >= 0.5 with the reference's); the reference's own "
          f"tokens decoded draw {drawn.get('tokenizer_objects_drawn', float('nan')):.3f}")
  print(f"== report: {path}  (total {time.time() - started:.0f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
