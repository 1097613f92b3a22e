"""Lower + compile seconds of the training step with and without scan over layers.

  python bench/compile_time.py                       # small (8 + 8 layers), text, batch 2
  python bench/compile_time.py --size base --remat_policy full --repeats 3

The step is `jax.value_and_grad` of `UnifiedIOModel.loss_fn` (forward, loss, backward; what the
trainer jits, without the optimizer), for a text-to-text model of the size preset at float32, on
abstract parameters and batch (nothing is allocated or run). Each repeat times both variants,
interleaved (timings on shared machines drift), with a fresh `jax.jit` so nothing is cached:
`lower` (trace + StableHLO) and `compile` (XLA) seconds, and the StableHLO size in lines.
The figures per variant are medians over the repeats; the last line is
`compile_speedup_scan <per-layer lower+compile / scanned lower+compile>`.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def abstract_step_inputs(size: str, scan: bool, remat_policy: str, batch: int, enc: int, dec: int):
  """(model, abstract params, abstract batch) of the text-to-text model of this preset."""
  import flax.linen as nn
  import jax

  from unified_io.presets import make_config
  from unified_io.model import UnifiedIOModel

  model = UnifiedIOModel(make_config(size, scan_layers=scan, remat_policy=remat_policy))
  batch_spec = model.batch_spec(batch, {"text_inputs": enc, "text_targets": dec})
  params = jax.eval_shape(lambda b: nn.meta.unbox(model.init(jax.random.PRNGKey(0), b)),
                          batch_spec)
  return model, params, batch_spec


def time_once(model, params, batch_spec):
  """(lower seconds, compile seconds, StableHLO lines) of a fresh jit of the training step."""
  import jax

  step = jax.jit(jax.value_and_grad(lambda p, b: model.loss_fn(p, b)[0]))
  start = time.perf_counter()
  lowered = step.lower(params, batch_spec)
  lowered_at = time.perf_counter()
  lowered.compile()
  compiled_at = time.perf_counter()
  return lowered_at - start, compiled_at - lowered_at, lowered.as_text().count("\n")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="small", help="size preset (unified_io/config.py SIZES)")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--enc", type=int, default=64, help="text input length")
  parser.add_argument("--dec", type=int, default=32, help="text target length")
  parser.add_argument("--remat_policy", default="none")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--cpus", type=int, default=None,
                      help="pin to this many cores before JAX starts (XLA sizes its threads)")
  args = parser.parse_args(argv)
  if min(args.batch, args.enc, args.dec, args.repeats) < 1 or (args.cpus or 1) < 1:
    print("error: --batch, --enc, --dec, --repeats and --cpus must be >= 1", file=sys.stderr)
    return 2
  if args.cpus is not None:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cpus])
  import jax

  from unified_io.config import ConfigError
  try:
    variants = {name: abstract_step_inputs(args.size, scan, args.remat_policy, args.batch,
                                           args.enc, args.dec)
                for name, scan in (("per_layer", False), ("scanned", True))}
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  trunk = variants["per_layer"][0].cfg.trunk
  print(f"size {args.size}: {trunk.num_encoder_layers} + {trunk.num_decoder_layers} layers, emb "
        f"{trunk.emb_dim}, remat_policy {args.remat_policy}; batch {args.batch}, text "
        f"{args.enc} -> {args.dec}; jax {jax.__version__} on {jax.devices()[0].platform} "
        f"({len(os.sched_getaffinity(0))} of {os.cpu_count()} host cores)", flush=True)

  runs = {name: [] for name in variants}
  for repeat in range(args.repeats):
    for name, (model, params, batch_spec) in variants.items():
      lower_s, compile_s, hlo_lines = time_once(model, params, batch_spec)
      runs[name].append((lower_s, compile_s, hlo_lines))
      print(f"  repeat {repeat}: {name:9s} lower {lower_s:6.2f} s  compile {compile_s:6.2f} s  "
            f"StableHLO {hlo_lines} lines", flush=True)

  totals = {}
  for name, figures in runs.items():
    lower_s = statistics.median(f[0] for f in figures)
    compile_s = statistics.median(f[1] for f in figures)
    totals[name] = statistics.median(f[0] + f[1] for f in figures)
    print(f"{name:9s} median: lower {lower_s:.2f} s, compile {compile_s:.2f} s, "
          f"lower+compile {totals[name]:.2f} s, StableHLO {figures[0][2]} lines")
  print(f"compile_speedup_scan {totals['per_layer'] / totals['scanned']:.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
