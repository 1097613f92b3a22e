"""Parameter bytes of the released sizes in float32, bfloat16 and weight-only int8 (issue 17).

  python bench/int8_memory.py                    # large and xxl, a table (~1 min on CPU)
  python bench/int8_memory.py --sizes large xl xxl

The released models (every modality, `memory_plan.plan_config`) by `jax.eval_shape` only: nothing
is allocated. float32 and bfloat16 are `memory_plan.parameter_bytes` on one device (floating
parameters cast, as `load_run(dtype=)` does); int8 is `int8.nbytes` of `int8.quantize` traced over
the same shapes (the selection rule of unified_io/adapters/int8.py: int8 values for the large
kernels and embedding tables, a float32 scale per output channel, everything else float32), which
is what `load_run(dtype="int8")` keeps on the devices. Also printed: how many leaves and
parameters are quantised.
"""

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  pylint: disable=wrong-import-position

from unified_io import memory_plan, partitioning  # noqa: E402  pylint: disable=wrong-import-order
from unified_io.adapters import int8  # noqa: E402  pylint: disable=wrong-import-position
from unified_io.model import UnifiedIOModel  # noqa: E402  pylint: disable=wrong-import-position

GIB = 1 << 30


def measure(size: str):
  """(parameters, float32 bytes, bfloat16 bytes, int8 bytes, quantised leaves, their params)."""
  model = UnifiedIOModel(memory_plan.plan_config(size, dtype="bfloat16"))
  boxed = model.abstract_params()
  one = memory_plan.MeshShape(data=1, model=1)
  f32, _, _ = memory_plan.parameter_bytes(boxed, one, "float32")
  bf16, _, _ = memory_plan.parameter_bytes(boxed, one, "bfloat16")
  values = partitioning.box_values(boxed)
  specs = partitioning.logical_specs(boxed)
  q = jax.eval_shape(lambda p: int8.quantize(p, specs), values)
  leaves = jax.tree_util.tree_leaves(q, is_leaf=lambda x: isinstance(x, int8.Int8Weight))
  quantised = [x for x in leaves if isinstance(x, int8.Int8Weight)]
  count = sum(x.size for x in jax.tree_util.tree_leaves(values))
  return count, f32, bf16, int8.nbytes(q), len(quantised), sum(x.values.size for x in quantised)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", nargs="+", default=["large", "xxl"],
                      choices=list(memory_plan.RELEASED))
  args = parser.parse_args(argv)
  print(f"{'size':6s} {'params':>9s} {'float32':>10s} {'bfloat16':>10s} {'int8':>10s} "
        f"{'int8/f32':>8s} {'int8/bf16':>9s}  quantised leaves (params)")
  for size in args.sizes:
    count, f32, bf16, q8, leaves, qcount = measure(size)
    print(f"{size:6s} {count / 1e9:8.3f}B {f32 / GIB:7.2f}GiB {bf16 / GIB:7.2f}GiB "
          f"{q8 / GIB:7.2f}GiB {q8 / f32:8.3f} {q8 / bf16:9.3f}  {leaves} "
          f"({qcount / count:.1%} of the parameters)")
  print(f"int8_over_f32_{size} {q8 / f32:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
