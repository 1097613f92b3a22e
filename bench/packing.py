"""Pair packing: how much of the trunk holds real tokens, unpacked and packed, and what a step costs.

  python bench/packing.py                          # world_pretrain_mod, batch 16, 20 batches
  python bench/packing.py --mixture world_default --ratios 1.0,0.75,0.5

The model is the tiny all-modality one (models/tiny_multimodal.gin's sizes, random parameters),
the batches the trainer's input (`TrainInput`, the trainer's feature lengths, task masks on, as
gin/runs/pretrain_mod.gin trains). Per batch of E examples, with N the unpacked encoder (decoder)
row length and v_e the valid tokens of example e (`packing.pair_lengths`):
  unpacked fill     sum v / (E N): the non-padding fraction of the rows the trunk runs on
  packed fill       sum min(v_2i + v_2i+1, P) / (E/2 P) for P = ratio * N (`packed_*_length`)
  dropped           tokens past slot P, as a fraction of all valid tokens (the model drops them
                    from the row and from the loss, and reports `packing/*_dropped`)
Pairs are (2i, 2i+1) as the batch comes ("as drawn") and after `packing.pair_order` (long with
short). Then the XLA FLOP count of one jitted training step (value and grad of the loss) of the
unpacked model and of the packed one at ratio 1 (the default packed lengths), on the same batch,
with the model's own `packing/*` statistics beside the host-side figures as a cross-check.
The last line is `packed_flops_ratio <packed / unpacked>`.
"""

import argparse
import dataclasses
import os
import sys

import numpy as np

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (run as a script, this folder is on the path)
from train_throughput import CPU_LENGTHS, cpu_config  # noqa: E402


def row_lengths(model, params, batch):
  """(N_enc, N_dec): the unpacked trunk row lengths of `batch` (shapes only, nothing runs)."""
  import jax

  outputs = jax.eval_shape(lambda p, b: model.outputs(p, b), params, batch)
  encoded = jax.eval_shape(lambda p, b: model.module.apply({"params": p}, b["inputs"],
                                                           method=type(model.module).encode),
                           params, batch)
  return encoded.hidden.shape[1], sum(o.logits.shape[1] for o in outputs.values())


def packed_fill(valid_e: np.ndarray, slots: int):
  """(fill, dropped fraction) of E examples packed in pairs into rows of `slots`."""
  pair = valid_e[0::2] + valid_e[1::2]
  placed = np.minimum(pair, slots)
  return placed.sum() / (len(pair) * slots), (pair - placed).sum() / max(pair.sum(), 1)


def step_flops(model, params, batch) -> float:
  import jax

  step = jax.jit(jax.value_and_grad(lambda p, b: model.loss_fn(p, b)[0]))
  cost = step.lower(params, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--mixture", default="world_pretrain_mod")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--batches", type=int, default=20)
  parser.add_argument("--ratios", default="1.0,0.75,0.5",
                      help="packed lengths as fractions of the unpacked row length")
  args = parser.parse_args()

  import jax
  from flax.linen import meta

  import unified_io.tasks  # noqa: F401  (registers the world tasks and mixtures)
  from unified_io.model import UnifiedIOModel
  from unified_io.network import packing
  from unified_io.training.input import TrainInput

  base = dataclasses.replace(cpu_config("tiny"), dynamic_masking=True)
  model = UnifiedIOModel(base)
  data = TrainInput(args.mixture, CPU_LENGTHS, args.batch,
                    model.feature_converter(task_masks=True), seed=0)
  batches = [next(data) for _ in range(args.batches)]
  params = meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), batches[0]))
  lengths = {"encoder": [], "decoder": []}
  ordered = {"encoder": [], "decoder": []}
  for batch in batches:
    for side, v in packing.pair_lengths(batch, base).items():
      lengths[side].append(v)
    order = packing.pair_order(batch, base)
    for side, v in packing.pair_lengths(packing.take_examples(batch, order), base).items():
      ordered[side].append(v)
  rows = dict(zip(("encoder", "decoder"), row_lengths(model, params, batches[0])))
  ratios = [float(r) for r in args.ratios.split(",")]

  print(f"{args.mixture}: {args.batches} batches of {args.batch}, tiny all-modality model, "
        f"lengths {CPU_LENGTHS}")
  for side in ("encoder", "decoder"):
    n = rows[side]
    drawn = np.concatenate(lengths[side])
    paired = np.concatenate(ordered[side])
    print(f"{side}: unpacked row {n} tokens, valid tokens per example mean {drawn.mean():.1f} "
          f"p50 {np.median(drawn):.0f} p90 {np.percentile(drawn, 90):.0f} max {drawn.max()}; "
          f"unpacked fill {drawn.sum() / (drawn.size * n):.3f}")
    for ratio in ratios:
      slots = max(1, int(round(ratio * n)))
      fill, dropped = packed_fill(drawn, slots)
      fill_o, dropped_o = packed_fill(paired, slots)
      print(f"  packed P = {ratio:g} N = {slots}: fill {fill:.3f} dropped {dropped:.4f} (as drawn)"
            f" | fill {fill_o:.3f} dropped {dropped_o:.4f} (pair_order)")

  real = jax.tree_util.tree_map(np.asarray, meta.unbox(model.init(jax.random.PRNGKey(0),
                                                                   batches[0])))
  flops = {}
  for name, cfg in (("unpacked", base), ("packed", dataclasses.replace(
      base, pack_pairs=True, packed_encoder_length=rows["encoder"],
      packed_decoder_length=rows["decoder"]))):
    m = UnifiedIOModel(cfg)
    flops[name] = step_flops(m, real, batches[0])
    _, metrics = jax.jit(m.loss_fn)(real, batches[0])
    stats = {k: round(float(v), 4) for k, v in metrics.items() if k.startswith("packing/")}
    print(f"train step ({name}): {flops[name] / 1e9:.2f} GFLOP (XLA cost analysis), batch "
          f"{args.batch}" + (f"; model's packing statistics {stats}" if stats else ""))
  print(f"packed_flops_ratio {flops['packed'] / flops['unpacked']:.3f}")


if __name__ == "__main__":
  main()
