"""Times one jitted training step (forward + loss + backward) of the model a golden file describes.

  python bench/step_time.py ../shared/reference/uio2_text_golden.npz --batch 2 --iters 50
  python bench/step_time.py ../shared/reference/uio2_text_golden.npz --batch 8 --forward-only
  python bench/step_time.py ../shared/reference/uio2_text_golden.npz --batch 2 --dtype bfloat16

Builds the model from the file's `meta/config_json` (modalities from the `param/*` names present),
with `--dtype` activations (float32 by default; parameters are always float32), converts the
file's weights, and makes a batch shaped like the file's `input/*` at batch size B by repeating the
file's rows (so padding patterns are the file's own). Every `input/*` tensor is used whatever its
modality, so files with more modalities need no change here. `--dtype bfloat16` is the TPU/GPU
setting; XLA:CPU emulates bfloat16 arithmetic (converting around each op), so on a CPU it is
slower than float32, not faster.

Prints the config (with its dtype), each phase with its wall time, the lower+compile seconds (apart
from the first run), median / p10 / p90 ms per step with the dtype, and as its last line
`fwd_bwd_ms <median>` (`fwd_ms <median>` with --forward-only). Exits 2, with one line on stderr,
on an unusable file.

`--cpus N` pins the process to N of its cores before JAX starts; XLA:CPU sizes its thread pool from
that. On the 2-vCPU CI machines one thread is faster than two for the tiny configs (the two vCPUs
share one core's throughput); the default uses every core.
"""

import argparse
import os
import sys
import time
import zipfile
from typing import Callable, Dict, Mapping, Tuple

import numpy as np

# `make install` installs the package; from a bare checkout, fall back on the repository root (last
# on the path, so nothing there shadows an installed package).
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# `TrunkConfig.dtype` names (written out: unified_io.config imports jax, which waits for --cpus).
DTYPES = ("float32", "bfloat16", "float16")


class BenchError(Exception):
  """Unusable input: reported as `error: FILE: message`, exit status 2."""


# ------------------------------------------------------------------------------------------------
# golden file -> model, parameters, batch
# ------------------------------------------------------------------------------------------------
def load_golden(path: str) -> Mapping[str, np.ndarray]:
  if not os.path.isfile(path):
    raise BenchError("no such file")
  try:
    golden = np.load(path)
    files = golden.files
  except (AttributeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
    raise BenchError(f"not a readable .npz file ({type(e).__name__}: {e})") from None
  if "meta/config_json" not in files:
    raise BenchError("no `meta/config_json`; not a UIO2 golden file")
  return golden


def tile_rows(array: np.ndarray, batch_size: int) -> np.ndarray:
  """The file's rows (axis 0 is the batch) repeated 0, 1, ..., n-1, 0, 1, ... to `batch_size` rows."""
  if array.ndim == 0:
    return array
  return np.take(array, np.arange(batch_size) % array.shape[0], axis=0)


def make_batch(golden: Mapping[str, np.ndarray], batch_size: int) -> Dict:
  """Every `input/*` tensor of the file, at `batch_size` rows, nested like the model's batch."""
  from unified_io.interop.check_reference import nest_inputs
  inputs = {k: tile_rows(np.asarray(golden[k]), batch_size)
            for k in golden.files if k.startswith("input/")}
  if not inputs:
    raise BenchError("the file has no `input/*` tensors to build a batch from")
  return nest_inputs(inputs)


def build(golden: Mapping[str, np.ndarray], batch_size: int, dtype: str = "float32"):
  """(model, params, batch) on the default device: the file's config with `dtype` activations,
  and its weights (float32)."""
  import flax.linen as nn
  import jax

  from unified_io.config import ConfigError
  from unified_io.interop.params import CheckpointError, release_to_params
  from unified_io.interop.release import config_from_release
  from unified_io.model import UnifiedIOModel

  release = {k[len("param/"):]: golden[k] for k in golden.files if k.startswith("param/")}
  try:
    cfg = config_from_release(str(golden["meta/config_json"]), release.keys(), dtype=dtype)
    model = UnifiedIOModel(cfg)
    batch = make_batch(golden, batch_size)
    abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch))
    params, _ = release_to_params(release, abstract)
  except (ConfigError, CheckpointError, NotImplementedError) as e:
    raise BenchError(str(e)) from None
  return model, jax.device_put(params), jax.device_put(batch)


def describe(model, params, batch) -> str:
  import jax
  trunk, cfg = model.cfg.trunk, model.cfg
  lines = [f"config: trunk {trunk.num_encoder_layers}+{trunk.num_decoder_layers} layers, emb "
           f"{trunk.emb_dim}, {trunk.num_heads}x{trunk.head_dim} heads, mlp {trunk.mlp_dim}, "
           f"dtype {trunk.dtype}; inputs {[m.value for m in cfg.input_modalities]}, targets "
           f"{[m.value for m in cfg.target_modalities]}; "
           f"{sum(p.size for p in jax.tree_util.tree_leaves(params)) / 1e6:.2f}M params",
           f"device: jax {jax.__version__}, {jax.devices()[0].device_kind} x{jax.device_count()}, "
           f"{len(os.sched_getaffinity(0))} of {os.cpu_count()} host cores, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"]
  for side, parts in batch.items():
    for modality, features in parts.items():
      lines.append(f"batch: {side}/{modality}: " + ", ".join(
          f"{name} {a.dtype}{list(a.shape)}" for name, a in features.items()))
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# compile and time
# ------------------------------------------------------------------------------------------------
def compile_step(model, params, batch, forward_only: bool) -> Tuple[Callable, float]:
  """The AOT-compiled step and the seconds its lower+compile took."""
  import jax
  fn = model.loss_fn if forward_only else jax.value_and_grad(model.loss_fn, has_aux=True)
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(params, batch).compile()
  return compiled, time.perf_counter() - start


def time_step(step: Callable, args, iters: int) -> np.ndarray:
  """Milliseconds of each of `iters` calls, each blocked on until its results are ready."""
  import jax
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(step(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * np.asarray(times)


def run(args) -> None:
  start = time.perf_counter()
  golden = load_golden(args.golden)
  model, params, batch = build(golden, args.batch, args.dtype)
  print(f"file: {args.golden}")
  print(describe(model, params, batch))
  print(f"setup: imports, config, weights and batch {time.perf_counter() - start:.2f} s")

  what = "forward+loss" if args.forward_only else "forward+loss+backward"
  step, compile_s = compile_step(model, params, batch, args.forward_only)
  print(f"compile: lower+compile of jit({what}) {compile_s:.2f} s")

  first_ms = time_step(step, (params, batch), 1)[0]
  loss = step(params, batch)[0] if args.forward_only else step(params, batch)[0][0]
  print(f"first run: {first_ms:.1f} ms (loss {float(loss):.6f})")
  time_step(step, (params, batch), args.warmup)
  print(f"warmup: {args.warmup} steps")

  ms = time_step(step, (params, batch), args.iters)
  median = float(np.median(ms))
  print(f"timing: {what}, {args.dtype}, batch {args.batch}, {args.iters} steps: median "
        f"{median:.2f} ms, p10 {np.percentile(ms, 10):.2f} ms, p90 {np.percentile(ms, 90):.2f} ms, "
        f"min {ms.min():.2f} ms")
  print(f"{'fwd_ms' if args.forward_only else 'fwd_bwd_ms'} {median:.3f}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("golden", help="a golden .npz written from the official UIO2 release")
  parser.add_argument("--batch", type=int, default=2, help="batch size B (the file's rows repeated)")
  parser.add_argument("--iters", type=int, default=50, help="timed steps")
  parser.add_argument("--warmup", type=int, default=5, help="untimed steps after the first run")
  parser.add_argument("--dtype", default="float32", choices=DTYPES,
                      help="activation dtype (parameters stay float32); bfloat16 as on TPU/GPU")
  parser.add_argument("--forward-only", action="store_true", help="time forward + loss only")
  parser.add_argument("--cpus", type=int, default=None,
                      help="pin to this many cores before JAX starts (default: all)")
  args = parser.parse_args(argv)
  if args.batch < 1 or args.iters < 1 or args.warmup < 0 or (args.cpus is not None and args.cpus < 1):
    print("error: --batch, --iters and --cpus must be >= 1 and --warmup >= 0", file=sys.stderr)
    return 2
  if args.cpus is not None:  # before jax is imported: XLA sizes its thread pool from the affinity
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cpus])
  try:
    run(args)
  except BenchError as e:
    print(f"error: {args.golden}: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
