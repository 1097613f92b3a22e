"""Examples/s of the data pipeline against examples/s the tiny all-modality model's train step eats.

  python bench/data_throughput.py                      # world_default, batch 8, every core
  python bench/data_throughput.py --cpus 1 --batches 200 --steps 40

Three figures, each after warm-up, on the same machine, with the sizes of the tiny all-modality
model (gin/models/tiny_multimodal.gin, its DataConfig) and the pretrain.gin feature lengths:
  pipeline   `TrainInput` (the trainer's input: stage 1 + 2 + 3, shuffled, mixed, batched, nested
             numpy) pulled as fast as it goes, nothing else running;
  train step the trainer's set-up (`train_setup.build_train_setup`: the jitted, donated train step,
             Adafactor, dropout on) on the mesh of all local devices, fed one batch from that
             pipeline over and over (the step's own rate);
  fed loop   the training loop as `uio2-train` runs it: pipeline batches -> global arrays -> step
             (both compete for the same cores; close to the step's rate when input keeps up).
The acceptance target of the data issue is pipeline >= 3 x train step. Prints labelled figures
and ends with one line `pipeline_over_step <ratio>`.
"""

import argparse
import os
import sys
import time

# `make install` installs the package; from a bare checkout, fall back on the repository root (last
# on the path, so nothing there shadows an installed package).
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pretrain.gin's TASK_FEATURE_LENGTHS: every patch and frame of the tiny all-modality model.
LENGTHS = {"text_inputs": 32, "text_targets": 32, "image_input_samples": 64,
           "audio_input_samples": 32, "image_history_input_samples": 64,
           "audio_history_input_samples": 32, "num_frames": 4}
MODALITIES = dict(input_modalities=("text", "image", "audio", "image_history", "audio_history"),
                  target_modalities=("text", "image", "audio"))


def make_model():
  from unified_io.presets import make_config
  from unified_io.model import UnifiedIOModel
  return UnifiedIOModel(make_config("tiny", components="tiny", **MODALITIES))


def make_input(model, mixture: str, batch_size: int, seed: int = 0):
  import unified_io.tasks  # noqa: F401  (registers the tasks and mixtures)
  from unified_io.training.input import TrainInput
  return TrainInput(mixture, LENGTHS, batch_size, model.feature_converter(), seed=seed)


def time_pipeline(data, warmup: int, batches: int):
  """(seconds to the first batch, examples/s over `batches` batches after `warmup` more)."""
  start = time.perf_counter()
  first = next(data)
  first_s = time.perf_counter() - start
  for _ in range(warmup):
    next(data)
  start = time.perf_counter()
  for _ in range(batches):
    next(data)
  return first, first_s, batches * data.local_batch_size / (time.perf_counter() - start)


def time_steps(step, state, batches, rng, iters: int):
  """(state, examples/s) of `iters` steps over `batches()` (a batch per call), blocked at the end
  as the trainer's loop is (no host sync per step)."""
  import jax
  start = time.perf_counter()
  examples = 0
  for _ in range(iters):
    batch = batches()
    state, metrics = step(state, batch, rng)
    examples += jax.tree_util.tree_leaves(batch)[0].shape[0]
  jax.block_until_ready((state, metrics))
  return state, examples / (time.perf_counter() - start)


def run(args) -> None:
  import jax
  from unified_io import partitioning
  from unified_io.training.optim import adafactor, learning_rate_schedule
  from unified_io.training.train_setup import build_train_setup

  model = make_model()
  trunk = model.cfg.trunk
  print(f"model: tiny all-modality ({trunk.num_encoder_layers}+{trunk.num_decoder_layers} layers, "
        f"emb {trunk.emb_dim}, dtype {trunk.dtype}); lengths {LENGTHS}")
  print(f"host: {len(os.sched_getaffinity(0))} of {os.cpu_count()} cores, jax {jax.__version__} "
        f"{jax.devices()[0].device_kind} x{jax.device_count()}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")

  data = make_input(model, args.mixture, args.batch)
  batch, first_s, pipeline_eps = time_pipeline(data, args.warmup, args.batches)
  print(f"pipeline: {args.mixture}, batch {args.batch}: first batch after {first_s:.1f} s; "
        f"{args.batches} batches after {args.warmup} warm-up: {pipeline_eps:.1f} examples/s")

  mesh = partitioning.make_mesh()
  first = partitioning.global_batch(batch, mesh)
  learning_rate = learning_rate_schedule()
  setup = build_train_setup(model, adafactor(learning_rate), learning_rate, first, mesh=mesh)
  state, step, rng = setup.state, setup.step, jax.random.PRNGKey(1)
  start = time.perf_counter()
  with setup.activated():
    state, _ = time_steps(step, state, lambda: first, rng, 1)
    print(f"train step: compile + first step {time.perf_counter() - start:.1f} s")
    state, _ = time_steps(step, state, lambda: first, rng, args.warmup)
    state, step_eps = time_steps(step, state, lambda: first, rng, args.steps)
    print(f"train step: {args.steps} steps after {args.warmup} warm-up: {step_eps:.1f} examples/s "
          f"({1e3 * args.batch / step_eps:.1f} ms per step of {args.batch})")
    state, fed_eps = time_steps(step, state,
                                lambda: partitioning.global_batch(next(data), mesh), rng,
                                args.steps)
  print(f"fed loop: pipeline -> step, {args.steps} steps: {fed_eps:.1f} examples/s "
        f"({fed_eps / step_eps:.2f} of the step's own rate)")
  ratio = pipeline_eps / step_eps
  print(f"ratio: pipeline / train step = {ratio:.2f} (target >= 3)")
  print(f"pipeline_over_step {ratio:.3f}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--mixture", default="world_default", help="a registered task or mixture")
  parser.add_argument("--batch", type=int, default=8, help="batch size")
  parser.add_argument("--warmup", type=int, default=25,
                      help="untimed batches (and steps) first: the shuffle buffers and prefetches "
                           "fill during the first ~200 examples")
  parser.add_argument("--batches", type=int, default=100, help="timed pipeline batches")
  parser.add_argument("--steps", type=int, default=20, help="timed train steps")
  parser.add_argument("--cpus", type=int, default=None,
                      help="pin to this many cores before TF and JAX start (default: all)")
  args = parser.parse_args(argv)
  if min(args.batch, args.batches, args.steps) < 1 or args.warmup < 0 or (
      args.cpus is not None and args.cpus < 1):
    print("error: --batch, --batches, --steps and --cpus must be >= 1, --warmup >= 0",
          file=sys.stderr)
    return 2
  if args.cpus is not None:  # before TF and JAX size their thread pools from the affinity
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cpus])
  run(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
