"""Times one jitted training step (forward + loss + backward) of the model a golden file describes.

  python bench/step_time.py ../shared/reference/uio2_text_golden.npz --batch 2 --iters 50
  python bench/step_time.py ../shared/reference/uio2_text_golden.npz --batch 8 --forward-only

Builds the model from the file's `meta/config_json` (modalities from the `param/*` names present),
in float32, converts the file's weights, and makes a batch shaped like the file's `input/*` at
batch size B by repeating the file's rows (so padding patterns are the file's own). Every
`input/*` key is used whatever its modality, so files with more modalities need no change here.

Prints the config, each phase with its wall time, the lower+compile seconds (apart from the first
run), median / p10 / p90 ms per step, and as its last line `fwd_bwd_ms <median>` (`fwd_ms <median>`
with --forward-only).
"""

import os

# XLA CPU flags must be set before jax is imported. Appended to any the user already set.
os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), ""])).strip()

import argparse  # pylint: disable=wrong-import-position
import sys  # pylint: disable=wrong-import-position
import time  # pylint: disable=wrong-import-position
from typing import Dict, Mapping  # pylint: disable=wrong-import-position

import numpy as np  # pylint: disable=wrong-import-position

# The repository root goes LAST on the path: its top-level `gin/` folder (installed as
# `unified_io.gin`) must not shadow the gin-config package.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class BenchError(Exception):
  """Unusable input: reported as one line, exit status 2."""


def load_golden(path: str) -> Mapping[str, np.ndarray]:
  if not os.path.isfile(path):
    raise BenchError(f"{path}: no such file")
  try:
    golden = np.load(path)
  except (OSError, ValueError) as e:
    raise BenchError(f"{path}: not a readable .npz file ({e})") from None
  if "meta/config_json" not in golden.files:
    raise BenchError(f"{path}: no `meta/config_json`; not a UIO2 golden file")
  return golden


def tile_rows(array: np.ndarray, batch_size: int) -> np.ndarray:
  """The file's rows repeated (0, 1, ..., n-1, 0, 1, ...) to `batch_size` rows."""
  return np.take(array, np.arange(batch_size) % array.shape[0], axis=0)


def make_batch(golden: Mapping[str, np.ndarray], batch_size: int) -> Dict:
  """Every `input/*` tensor of the file, at `batch_size` rows, nested like the model's batch."""
  from unified_io.interop.check_reference import nest_inputs
  inputs = {k: tile_rows(np.asarray(golden[k]), batch_size)
            for k in golden.files if k.startswith("input/")}
  if not inputs:
    raise BenchError("the file has no `input/*` tensors to build a batch from")
  return nest_inputs(inputs)


def percentiles_ms(seconds) -> Dict[str, float]:
  ms = 1e3 * np.asarray(seconds)
  return {"median": float(np.median(ms)), "p10": float(np.percentile(ms, 10)),
          "p90": float(np.percentile(ms, 90)), "min": float(np.min(ms))}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("golden", help="a golden .npz written from the official UIO2 release")
  parser.add_argument("--batch", type=int, default=2, help="batch size B (file rows repeated)")
  parser.add_argument("--iters", type=int, default=50, help="timed steps")
  parser.add_argument("--warmup", type=int, default=5, help="untimed steps after the first run")
  parser.add_argument("--forward-only", action="store_true", help="time forward + loss only")
  args = parser.parse_args(argv)
  if args.batch < 1 or args.iters < 1 or args.warmup < 0:
    print("error: --batch and --iters must be >= 1, --warmup >= 0", file=sys.stderr)
    return 2
  try:
    return run(args)
  except BenchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


def run(args) -> int:
  t0 = time.perf_counter()
  import flax.linen as nn
  import jax

  from unified_io.config import ConfigError
  from unified_io.interop.release import CheckpointError, config_from_release, release_to_params
  from unified_io.model import UnifiedIOModel

  # --- config --------------------------------------------------------------------------------
  golden = load_golden(args.golden)
  release = {k[len("param/"):]: golden[k] for k in golden.files if k.startswith("param/")}
  try:
    cfg = config_from_release(str(golden["meta/config_json"]), release.keys(), dtype="float32")
  except ConfigError as e:
    raise BenchError(f"{args.golden}: {e}") from None
  trunk = cfg.trunk
  model = UnifiedIOModel(cfg)
  print(f"config: {os.path.basename(args.golden)}: trunk {trunk.num_encoder_layers}+"
        f"{trunk.num_decoder_layers} layers, emb {trunk.emb_dim}, {trunk.num_heads}x"
        f"{trunk.head_dim} heads, mlp {trunk.mlp_dim}, dtype {trunk.dtype}; inputs "
        f"{[m.value for m in cfg.input_modalities]}, targets "
        f"{[m.value for m in cfg.target_modalities]}")
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.device_count()}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")

  # --- batch ---------------------------------------------------------------------------------
  batch = make_batch(golden, args.batch)
  shapes = jax.tree_util.tree_map(lambda a: f"{a.dtype}{list(a.shape)}", batch)
  for side, parts in shapes.items():
    for modality, features in parts.items():
      print(f"batch: {side}/{modality}: " + ", ".join(f"{k} {v}" for k, v in features.items()))

  # --- parameters ----------------------------------------------------------------------------
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch))
  try:
    params, _ = release_to_params(release, abstract)
  except CheckpointError as e:
    raise BenchError(f"{args.golden}: {e}") from None
  params, batch = jax.device_put((params, batch))
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
  print(f"setup: imports, config, params ({n_params / 1e6:.2f}M) and batch: "
        f"{time.perf_counter() - t0:.2f} s")

  # --- compile -------------------------------------------------------------------------------
  if args.forward_only:
    step, label = jax.jit(model.loss_fn), "fwd_ms"
  else:
    step, label = jax.jit(jax.value_and_grad(model.loss_fn, has_aux=True)), "fwd_bwd_ms"
  t0 = time.perf_counter()
  compiled = step.lower(params, batch).compile()
  print(f"compile: lower+compile {time.perf_counter() - t0:.2f} s "
        f"({'forward+loss' if args.forward_only else 'forward+loss+backward'})")

  t0 = time.perf_counter()
  out = jax.block_until_ready(compiled(params, batch))
  print(f"first run: {1e3 * (time.perf_counter() - t0):.1f} ms, "
        f"loss {float(out[0] if args.forward_only else out[0][0]):.6f}")

  # --- time ----------------------------------------------------------------------------------
  for _ in range(args.warmup):
    jax.block_until_ready(compiled(params, batch))
  times = []
  for _ in range(args.iters):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(params, batch))
    times.append(time.perf_counter() - t0)
  stats = percentiles_ms(times)
  print(f"timing: batch {args.batch}, {args.warmup} warmup + {args.iters} timed steps: median "
        f"{stats['median']:.2f} ms, p10 {stats['p10']:.2f} ms, p90 {stats['p90']:.2f} ms, "
        f"min {stats['min']:.2f} ms")
  print(f"{label} {stats['median']:.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
