"""`uio2-memory-plan` / `python -m unified_io.cli.memory_plan`: will a model fit, restored and
decoding, on these devices? Computed from shapes alone (`unified_io.memory_plan`; nothing is
allocated, so any size plans on a laptop).

  uio2-memory-plan --size xxl --device_gib 80                        # one 80 GB H100 / A100
  uio2-memory-plan --size xxl --model 4 --device_gib 32              # a v4-8: 4 chips x 32 GiB
  uio2-memory-plan --size xxl --data 4 --fsdp --batch 4 --device_gib 32      # v4-8, FSDP
  uio2-memory-plan --size xl --target text --decode_length 256 --length text_inputs=1024

`--size` large / xl / xxl plans the released model (every input and target modality); other
sizes, or `--text_only`, the text-only preset. One table per `--target` (default: every target of
the model; image and audio decode their full token grid) at `--batch` rows, inputs at the model's
task feature lengths (every patch and frame) unless `--length NAME=N` says otherwise. On GPUs JAX
preallocates 75% of the memory by default (XLA_PYTHON_CLIENT_MEM_FRACTION): plan with
`--usable_fraction 0.75` unless you raise it. Exit status: 0 every plan fits, 1 one does not, 2 a
configuration that cannot be planned (a mesh that does not divide the model or the batch, an
unknown size or target; one line).
"""

import argparse
import sys
from typing import Dict, Optional, Sequence


def _lengths(pairs: Sequence[str]) -> Optional[Dict[str, int]]:
  out = {}
  for pair in pairs:
    name, _, value = pair.partition("=")
    if not value.isdigit():
      raise ValueError(f"--length {pair!r}: write NAME=N, e.g. text_inputs=512")
    out[name] = int(value)
  return out or None


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n\n", 1)[1])
  parser.add_argument("--size", default="xl", help="size preset (tiny ... xxl; default xl)")
  parser.add_argument("--text_only", action="store_true",
                      help="the text-only preset even for large / xl / xxl")
  parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                      help="parameters as restored (load_run's dtype; default bfloat16)")
  parser.add_argument("--activation_dtype", default=None,
                      choices=("bfloat16", "float16", "float32"),
                      help="the model's activations (default: --dtype)")
  parser.add_argument("--data", type=int, default=1, help="data axis of the mesh")
  parser.add_argument("--model", type=int, default=1, help="model axis (model_parallel)")
  parser.add_argument("--fsdp", action="store_true", help="parameters' embed axis also on data")
  parser.add_argument("--device_gib", type=float, default=80.0,
                      help="memory of one device in GiB (H100/A100-80G: 80; TPU v4: 32)")
  parser.add_argument("--usable_fraction", type=float, default=1.0,
                      help="share of it JAX may use (GPU default preallocation: 0.75)")
  parser.add_argument("--batch", type=int, default=1, help="rows decoded at once (beam search: "
                      "batch x beams; classifier-free guidance: 2 x batch)")
  parser.add_argument("--target", action="append", default=[],
                      help="target modality to decode (repeatable; default: every target)")
  parser.add_argument("--decode_length", type=int, default=128, help="text tokens to decode")
  parser.add_argument("--length", action="append", default=[],
                      help="an input task feature length NAME=N (repeatable)")
  args = parser.parse_args(argv)

  from unified_io import memory_plan as mp  # pylint: disable=import-outside-toplevel
  from unified_io.config import ConfigError  # pylint: disable=import-outside-toplevel
  from unified_io.model import UnifiedIOModel  # pylint: disable=import-outside-toplevel
  try:
    model = UnifiedIOModel(mp.plan_config(args.size, args.activation_dtype or args.dtype,
                                          args.text_only))
    mesh = mp.MeshShape(args.data, args.model, args.fsdp)
    targets = args.target or [m.value for m in model.cfg.target_modalities]
    boxed = model.abstract_params()
    fits = True
    for target in targets:
      decode = mp.DecodeShape(args.batch, target, args.decode_length, _lengths(args.length))
      plan = mp.memory_plan(model, mp.abstract_shapes(model, decode, boxed), mesh, args.dtype,
                            args.device_gib * args.usable_fraction, title=args.size)
      print(plan.format() + "\n", flush=True)
      fits &= plan.fits
  except (ConfigError, ValueError) as exc:  # (MeshError is a ConfigError)
    print(f"uio2-memory-plan: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
    return 2
  return 0 if fits else 1


if __name__ == "__main__":
  sys.exit(main())
