"""Training-state memory of full fine-tuning and of LoRA on a bfloat16 or int8 base, released sizes.

  python bench/lora_memory.py                          # large and xxl, a table (~20 s on CPU)
  python bench/lora_memory.py --rank 16 --targets q,k,v,o,mlp
  python bench/lora_memory.py --sizes large xl xxl

The released models (every modality, `memory_plan.plan_config`) by `jax.eval_shape` only: nothing
is allocated. Bytes of one copy on one device (no sharding), per set-up:
  full        float32 parameters + float32 gradients + the state of `optim.adafactor` (t5x
              defaults, float32 statistics) remade for the parameters' logical axes, as
              `train_setup` does (`optim.for_param_axes`): `TrainState.create(params, opt)`;
  lora-bf16   the base cast to bfloat16 and frozen (`TrainState.frozen`, no gradient, no optimizer
              state) + float32 adapters (`lora.init_adapters`) + their gradients + `optim.adamw`'s
              state (two float32 moments per adapter number);
  lora-int8   the same adapters on the base `int8.quantize` makes of the float32 parameters (int8
              values and float32 per-channel scales for the large kernels and embedding tables,
              everything else float32), what `train.int8_base` holds (`training.adapted`).
The base bytes (float32, bfloat16, int8) are bench/int8_memory.py's `measure`: floating
parameters cast as `load_run(dtype=)` does, `int8.nbytes` of the quantised tree. The scalar step
counters of the state (a few bytes) are left out. "trainable" counts the numbers the optimizer
updates (`lora.trainable_count` for the adapters); "vs full" is total / the full fine-tuning total
of the same size. Adapters: `lora.LoraConfig` (rank `--rank`, default 8; `--targets`, default
q,k,v,o: the trunk's self-attention kernels); alpha and dropout change no byte.
Activations are not counted (see the footnote the script prints).

Why large's Adafactor state (1.32 GB) is above xxl's (0.24 GB): `optim.adafactor` factors a
second moment over the parameter's two largest axes only when both are >= 128 (optax's rule), and
large's attention kernels [1024, 16, 64] / [16, 64, 1024] have 64 as their second largest axis,
so they keep a full float32 second moment (with the other such kernels: 554 leaves, 1.32 GB);
xxl's head_dim of 128 lets its attention kernels factor.
"""

import argparse
import dataclasses
import os
import sys
from typing import Any, List, NamedTuple

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  pylint: disable=wrong-import-position
import jax.numpy as jnp  # noqa: E402  pylint: disable=wrong-import-position

from int8_memory import GIB, measure  # noqa: E402  pylint: disable=wrong-import-position
from unified_io import memory_plan, partitioning  # noqa: E402  pylint: disable=wrong-import-order
from unified_io.adapters import int8, lora  # noqa: E402  pylint: disable=wrong-import-position
from unified_io.model import UnifiedIOModel  # noqa: E402  pylint: disable=wrong-import-position
from unified_io.training import optim  # noqa: E402  pylint: disable=wrong-import-position
from unified_io.training import train_state  # noqa: E402  pylint: disable=wrong-import-position

FOOTNOTE = ("Activations are not included: they are the same for the three set-ups at equal "
            "batch, except that LoRA's weight-level merge (W + scale * A @ B before the forward "
            "pass) materialises one dequantised / merged copy of each adapted layer's weights as "
            "a temporary.")


def _lr(step):  # the learning rate changes no byte of the state
  del step
  return 1e-3


class Row(NamedTuple):
  """One set-up's training state, bytes of one copy."""
  size: str
  setup: str
  trainable: int
  params: int     # everything the forward reads: trained parameters plus the frozen base
  grads: int
  optimizer: int

  @property
  def total(self) -> int:
    return self.params + self.grads + self.optimizer


def _float32(tree: Any) -> Any:
  """The abstract tree with every floating leaf float32 (the full fine-tuning parameters)."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32)
      if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def full_row(size: str, values: Any, specs: Any, f32_bytes: int) -> Row:
  """Full fine-tuning: float32 parameters, gradients and Adafactor state."""
  opt = optim.for_param_axes(optim.adafactor(_lr), specs)
  state = jax.eval_shape(lambda p: train_state.TrainState.create(p, opt), _float32(values))
  params = int8.nbytes(state.params)
  if params != f32_bytes:  # the state's parameters are int8_memory's float32 tree
    raise AssertionError(f"{size}: float32 params {params} != int8_memory's {f32_bytes}")
  count = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  return Row(size, "full", count, params, params, int8.nbytes(state.opt_state))


def lora_rows(size: str, values: Any, specs: Any, cfg: lora.LoraConfig, bases) -> List[Row]:
  """LoRA: frozen base (per (setup, bytes) in `bases`) + float32 adapters, grads, AdamW state."""
  adapters = jax.eval_shape(lambda rng: lora.init_adapters(rng, values, specs, cfg),
                            jax.random.PRNGKey(0))
  opt = optim.for_param_axes(optim.adamw(_lr), lora.adapter_specs(values, specs, cfg))
  state = jax.eval_shape(lambda a: train_state.TrainState.create(a, opt), adapters)
  trained = int8.nbytes(state.params)
  count = lora.trainable_count(adapters)
  return [Row(size, setup, count, base + trained, trained, int8.nbytes(state.opt_state))
          for setup, base in bases]


def measure_size(size: str, cfg: lora.LoraConfig) -> List[Row]:
  """The three set-ups' rows for one released size."""
  _, f32, bf16, q8, _, _ = measure(size)
  model = UnifiedIOModel(memory_plan.plan_config(size, dtype="bfloat16"))
  boxed = model.abstract_params()
  values, specs = partitioning.box_values(boxed), partitioning.logical_specs(boxed)
  return [full_row(size, values, specs, f32)] + lora_rows(
      size, values, specs, cfg, [("lora-bf16", bf16), ("lora-int8", q8)])


def format_table(rows: List[Row]) -> List[str]:
  """The table's lines, a header first; "vs full" against the same size's full row."""
  full = {row.size: row.total for row in rows if row.setup == "full"}
  lines = [f"{'size':6s} {'setup':9s} {'trainable':>13s} {'params bytes':>16s} "
           f"{'grads bytes':>16s} {'optimizer bytes':>16s} {'total GiB':>9s} {'vs full':>7s}"]
  for r in rows:
    lines.append(f"{r.size:6s} {r.setup:9s} {r.trainable:13,d} {r.params:16,d} {r.grads:16,d} "
                 f"{r.optimizer:16,d} {r.total / GIB:9.2f} {r.total / full[r.size]:7.3f}")
  return lines


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", nargs="+", default=["large", "xxl"],
                      choices=list(memory_plan.RELEASED))
  parser.add_argument("--rank", type=int, default=lora.LoraConfig.rank)
  parser.add_argument("--targets", default=",".join(lora.LoraConfig.targets),
                      help="comma list of lora targets (q, k, v, o, cross, mlp, embedders, re:..)")
  args = parser.parse_args(argv)
  try:
    cfg = dataclasses.replace(lora.LoraConfig(), rank=args.rank,
                              targets=tuple(t for t in args.targets.split(",") if t))
    rows = [row for size in args.sizes for row in measure_size(size, cfg)]
  except lora.LoraError as exc:
    print(exc, file=sys.stderr)
    return 2
  print(f"LoRA rank {cfg.rank}, targets {','.join(cfg.targets)}; bytes of one copy, one device")
  print("\n".join(format_table(rows)))
  print(FOOTNOTE)
  full, last = rows[-3], rows[-1]  # the last size's full and lora-int8 rows
  print(f"lora_int8_over_full_{last.size} {last.total / full.total:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
