"""Checks our model against a golden file written by the official UIO2 release.

  python -m unified_io.interop.check_reference ../shared/reference/uio2_text_golden.npz

Builds our model from the file's `meta/config_json` (modalities from the tensors present), converts
its `param/*` weights, runs our forward and loss on its `input/*` in float32, and prints, for every
target modality, the max absolute and relative difference of the logits and of the loss; with
`grad/*` in the file, also our gradients against the release's. Exits 1 when a logit differs by
more than 1e-4 of the largest reference logit magnitude, a loss by more than 1e-5 relative, or a
gradient by more than 1e-4 of its tensor's largest magnitude; exits 2 on unusable input.
"""

import argparse
import dataclasses
import os
import sys
import zipfile
from typing import Dict, List, Mapping

import numpy as np

LOGIT_RTOL = 1e-4
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4


@dataclasses.dataclass
class Comparison:
  label: str
  max_abs: float
  rel: float
  tol: float

  @property
  def ok(self) -> bool:
    return self.rel <= self.tol

  def line(self) -> str:
    status = "ok" if self.ok else "FAIL"
    return (f"  [{status:4s}] {self.label:52s} max|diff| {self.max_abs:.3e}  "
            f"rel {self.rel:.3e}  (tol {self.tol:.0e})")


def compare(label: str, ours, ref, tol: float) -> Comparison:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  if ours.shape != ref.shape:
    return Comparison(f"{label} shape {ours.shape} != {ref.shape}", float("inf"), float("inf"), tol)
  max_abs = float(np.max(np.abs(ours - ref))) if ours.size else 0.0
  scale = float(np.max(np.abs(ref))) if ref.size else 0.0
  return Comparison(label, max_abs, max_abs / scale if scale > 0 else max_abs, tol)


def nest_inputs(golden: Mapping[str, np.ndarray]) -> Dict:
  """`input/inputs/text/tokens` -> batch["inputs"]["text"]["tokens"]."""
  batch: Dict = {}
  for key in golden:
    if key.startswith("input/"):
      node = batch
      parts = key.split("/")[1:]
      for part in parts[:-1]:
        node = node.setdefault(part, {})
      node[parts[-1]] = np.asarray(golden[key])
  return batch


def run_check(path: str, check_grads: bool = True, verbose: bool = True) -> List[Comparison]:
  """All comparisons for one golden file (raises ConfigError / CheckpointError on bad input)."""
  import flax.linen as nn
  import jax

  from unified_io.interop.params import params_to_release, release_to_params
  from unified_io.interop.release import config_from_release
  from unified_io.model import UnifiedIOModel

  try:
    golden = np.load(path)
    files = set(golden.files)
  except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
    raise ValueError(f"not a readable .npz file ({type(e).__name__}: {e})") from None
  if "meta/config_json" not in files:
    raise ValueError(f"{path}: no `meta/config_json`; not a UIO2 golden file")
  release = {k[len("param/"):]: golden[k] for k in files if k.startswith("param/")}
  cfg = config_from_release(str(golden["meta/config_json"]), release.keys(), dtype="float32")
  model = UnifiedIOModel(cfg)
  batch = nest_inputs(golden)
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch))
  params, unused = release_to_params(release, abstract)
  say = print if verbose else (lambda *a, **k: None)
  say(f"{os.path.basename(path)}: trunk {cfg.trunk.num_encoder_layers}+"
      f"{cfg.trunk.num_decoder_layers} layers, emb {cfg.trunk.emb_dim}, "
      f"{cfg.trunk.num_heads}x{cfg.trunk.head_dim} heads; inputs "
      f"{[m.value for m in cfg.input_modalities]}, targets {[m.value for m in cfg.target_modalities]}")
  if unused:
    say(f"  {len(unused)} release tensors are not used by this config: {', '.join(unused[:6])}"
        f"{' ...' if len(unused) > 6 else ''}")

  results = []
  outputs = jax.jit(model.outputs)(params, batch)
  flipped = {}
  for name, out in outputs.items():
    if "targets" in batch["targets"][name]:
      continue  # text: the targets are inputs, nothing was tokenized
    ref_ids = golden[f"output/{name}/targets"]
    flipped[name] = int(np.sum(np.asarray(out.targets) != ref_ids))
    say(f"  [{'ok' if not flipped[name] else 'note':4s}] {name} VQ token ids: "
        f"{ref_ids.size - flipped[name]}/{ref_ids.size} equal the release's")
  if any(flipped.values()):
    # Near-ties in the codebook distances can flip an id or two (README: the smallest top-2 gaps
    # in the golden are ~1e-4 / 5e-6); compare the trunk on the release's own ids.
    say("  ids differ at near-ties: comparing logits and losses on the release's ids")
    for name in flipped:
      batch["targets"][name]["targets"] = golden[f"output/{name}/targets"]
    outputs = jax.jit(model.outputs)(params, batch)
  for name, out in outputs.items():
    results.append(compare(f"{name} logits", out.logits, golden[f"output/{name}/logits"], LOGIT_RTOL))

  (total, per_modality), grads = jax.jit(jax.value_and_grad(model.loss_fn, has_aux=True))(params, batch)
  for key, value in per_modality.items():
    results.append(compare(key, value, golden[key], LOSS_RTOL))
  results.append(compare("loss/total", total, golden["loss/total"], LOSS_RTOL))

  ref_grads = {k[len("grad/"):]: golden[k] for k in files if k.startswith("grad/")}
  if check_grads and ref_grads:
    ours = params_to_release(jax.device_get(grads), {k: v.shape for k, v in ref_grads.items()})
    grad_results = []
    for name, ref in sorted(ref_grads.items()):
      if name not in ours:
        grad_results.append(Comparison(f"grad {name} (we have no such parameter)",
                                       float("inf"), float("inf"), GRAD_RTOL))
        continue
      grad_results.append(compare(f"grad {name}", ours[name], ref, GRAD_RTOL))
    worst = max(grad_results, key=lambda c: c.rel)
    failed = [c for c in grad_results if not c.ok]
    results.extend(failed)
    summary = Comparison(f"grads: {len(grad_results)} tensors, worst {worst.label[5:]}",
                         worst.max_abs, worst.rel, GRAD_RTOL)
    results.append(summary)
  for r in results:
    say(r.line())
  return results


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("golden", help="a golden .npz written from the official UIO2 release")
  parser.add_argument("--no-grads", action="store_true", help="skip the backward-pass check")
  args = parser.parse_args(argv)
  if not os.path.isfile(args.golden):
    print(f"error: golden file {args.golden!r} does not exist", file=sys.stderr)
    return 2

  from unified_io.config import ConfigError
  from unified_io.interop.params import CheckpointError
  try:
    results = run_check(args.golden, check_grads=not args.no_grads)
  except (ConfigError, CheckpointError, NotImplementedError, ValueError, KeyError) as e:
    print(f"error: {args.golden}: {e}", file=sys.stderr)
    return 2
  failed = [r for r in results if not r.ok]
  print("ALL OK" if not failed else f"FAILED: {len(failed)} comparison(s) out of tolerance")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
