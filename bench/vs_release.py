"""Training-step speed against the official PyTorch release, same machine, same run, same weights.

  python bench/vs_release.py --release ~/src/unified-io-2.pytorch              # text + full golden
  python bench/vs_release.py --release PATH --golden full --trunks 512x8x4x1408,768x12x6x2048

For each golden file of ../shared/reference (`--golden text,full`) and each trunk (`--trunks`,
EMBxHEADSxLAYERSxMLP, head_dim 64, encoder and decoder both LAYERS deep; the default is two trunks
wider and deeper than the goldens' 256x4x2x512), it:
  1. rewrites the golden's `meta/config_json` (the release's own config format) with that trunk,
  2. builds the release's `UnifiedIOModel` from it in float32 (torch's default initialisation,
     seeded) and converts its state_dict with this project's converter (`release_to_params`), so
     both models hold the same weights,
  3. builds one batch of `--batch` rows from the golden's `input/*` (rows repeated), the same
     numbers for both,
  4. times forward + loss + backward of each, interleaved (`--rounds` rounds of `--iters` steps),
     and prints both losses (they agree to float32 rounding when the port is right) and the
     median ms per step of each, and the speed-up release / ours;
  5. prints the work of the step (XLA's FLOP count of ours) as GFLOP/s of each against this
     machine's float32 matmul rate measured in the same run (1024^3 products, jax and torch), so
     the distance to the physical limit is visible: a speed-up needs the release below that
     limit by the same factor.

The release's loss is what the golden's README describes (the release has none of its own): per
target modality sum((CE + 1e-4 logZ^2) * mask) / max(sum(mask), 1), summed over modalities.

Needs `torch`, `einops` and `transformers==4.36.0` beside this project's packages (the release's
own requirements), e.g. `.venv/bin/pip install torch einops transformers==4.36.0`, and a checkout
of https://github.com/allenai/unified-io-2.pytorch given by `--release` (or `UIO2_RELEASE`).
Nothing of the release is copied here: it is imported from that path.

Both frameworks use every core the process may use (`--cpus N` pins it first); torch's intra-op
threads are set to the same count. The last line is `speedup_<last golden>_<last trunk> <ratio>`.
"""

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import List, Mapping, Tuple

import numpy as np

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # step_time's golden helpers
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from step_time import BenchError, load_golden, make_batch, tile_rows  # noqa: E402

DEFAULT_TRUNKS = "512x8x4x1408,768x12x6x2048"
Z_LOSS = 1e-4


@dataclasses.dataclass(frozen=True)
class Trunk:
  emb_dim: int
  num_heads: int
  layers: int
  mlp_dim: int
  head_dim: int = 64

  @classmethod
  def parse(cls, text: str) -> "Trunk":
    try:
      emb, heads, layers, mlp = (int(x) for x in text.lower().split("x"))
    except ValueError:
      raise BenchError(f"trunk {text!r} is not EMBxHEADSxLAYERSxMLP, e.g. 512x8x4x1408") from None
    return cls(emb, heads, layers, mlp)

  @property
  def name(self) -> str:
    return f"{self.emb_dim}x{self.num_heads}x{self.layers}x{self.mlp_dim}"


# ------------------------------------------------------------------------------------------------
# the release, imported from the user's checkout
# ------------------------------------------------------------------------------------------------
def import_release(path: str):
  """The release's `uio2` package. Its config dataclasses use dataclass instances as field defaults,
  which Python >= 3.11 refuses (they are unhashable); they are made hashable while it imports."""
  if not path or not os.path.isfile(os.path.join(path, "uio2", "model.py")):
    raise BenchError(f"--release {path!r} is not a checkout of allenai/unified-io-2.pytorch "
                     "(no uio2/model.py there)")
  try:
    import torch  # noqa: F401
  except ImportError:
    raise BenchError("torch is not installed: pip install torch einops transformers==4.36.0") from None
  sys.path.insert(0, path)
  original = dataclasses.dataclass

  def hashable_dataclass(cls=None, **kwargs):
    def wrap(c):
      out = original(c, **kwargs)
      if out.__module__.startswith("uio2") and out.__hash__ is None:
        out.__hash__ = object.__hash__
      return out
    return wrap if cls is None else wrap(cls)

  dataclasses.dataclass = hashable_dataclass
  try:
    from uio2 import model as release_model
    from uio2.config import Config
  except ImportError as e:
    raise BenchError(f"the release does not import ({e}); it needs torch, einops and "
                     "transformers==4.36.0") from None
  finally:
    dataclasses.dataclass = original
  return release_model.UnifiedIOModel, Config


def release_config_json(golden: Mapping[str, np.ndarray], trunk: Trunk) -> str:
  cfg = json.loads(str(golden["meta/config_json"]))
  cfg["t5_config"].update(emb_dim=trunk.emb_dim, num_heads=trunk.num_heads,
                          head_dim=trunk.head_dim, mlp_dim=trunk.mlp_dim,
                          num_encoder_layers=trunk.layers, num_decoder_layers=trunk.layers)
  return json.dumps(cfg)


def release_modalities(golden: Mapping[str, np.ndarray]) -> Tuple[List[str], List[str]]:
  """The golden's input and target modalities, from its `input/*` keys."""
  def names(side):
    return sorted({k.split("/")[2] for k in golden.files if k.startswith(f"input/{side}/")})
  return names("inputs"), names("targets")


def build_release(golden, trunk: Trunk, seed: int):
  import torch
  UnifiedIOModel, Config = import_release(os.environ["_UIO2_RELEASE"])
  cfg_json = release_config_json(golden, trunk)
  config = Config.from_dict(json.loads(cfg_json))
  torch.manual_seed(seed)
  model = UnifiedIOModel(config)
  inputs, targets = release_modalities(golden)
  model.set_modalities(input_modalities=inputs, target_modalities=targets)
  model.float().train(False)
  return model, cfg_json


def release_loss(model, batch_t):
  """forward + the README's loss."""
  import torch
  total = 0.0
  for logits, targets, mask in model(batch_t).values():
    logits = logits.float()
    log_z = torch.logsumexp(logits, dim=-1)
    ce = log_z - torch.gather(logits, -1, targets.long().unsqueeze(-1)).squeeze(-1)
    per_token = (ce + Z_LOSS * log_z ** 2) * mask
    total = total + per_token.sum() / torch.clamp(mask.sum(), min=1)
  return total


# ------------------------------------------------------------------------------------------------
# this project, on the same weights
# ------------------------------------------------------------------------------------------------
def build_ours(golden, cfg_json: str, state_dict, batch_np):
  import flax.linen as nn
  import jax
  from unified_io.interop.params import release_to_params
  from unified_io.interop.release import config_from_release
  from unified_io.model import UnifiedIOModel

  release = {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
  cfg = config_from_release(cfg_json, release.keys(), dtype="float32")
  model = UnifiedIOModel(cfg)
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch_np))
  params, _ = release_to_params(release, abstract)
  params, batch = jax.device_put(params), jax.device_put(batch_np)
  step = jax.jit(jax.value_and_grad(model.loss_fn, has_aux=True)).lower(params, batch).compile()
  analysis = step.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  flops = float((analysis or {}).get("flops", 0.0))
  return lambda: step(params, batch), flops


def time_calls(call, iters: int) -> List[float]:
  out = []
  for _ in range(iters):
    start = time.perf_counter()
    call()
    out.append(1e3 * (time.perf_counter() - start))
  return out


def compare(golden_name: str, golden, trunk: Trunk, args) -> float:
  import jax
  import torch

  release_model, cfg_json = build_release(golden, trunk, args.seed)
  batch_np = make_batch(golden, args.batch)
  batch_t = {k[len("input/"):]: torch.from_numpy(np.ascontiguousarray(
      tile_rows(np.asarray(golden[k]), args.batch))) for k in golden.files if k.startswith("input/")}
  start = time.perf_counter()
  ours_call, flops = build_ours(golden, cfg_json, release_model.state_dict(), batch_np)
  compile_s = time.perf_counter() - start

  def release_step():
    release_model.zero_grad(set_to_none=True)
    loss = release_loss(release_model, batch_t)
    loss.backward()
    return loss.item()

  def ours_step():
    (loss, _), grads = ours_call()
    jax.block_until_ready(grads)
    return loss

  n_params = sum(p.numel() for p in release_model.parameters())
  print(f"== {golden_name} golden, trunk {trunk.name} (emb x heads x layers x mlp, head_dim "
        f"{trunk.head_dim}), batch {args.batch}: {n_params / 1e6:.2f}M parameters")
  loss_ours = float(ours_step())
  print(f"ours: weights converted, step lowered and compiled in {compile_s:.1f} s")
  loss_release = float(release_step())
  print(f"loss: release {loss_release:.6f}, ours {loss_ours:.6f} "
        f"(relative difference {abs(loss_ours - loss_release) / abs(loss_release):.1e})")
  time_calls(release_step, args.warmup)
  time_calls(ours_step, args.warmup)
  release_ms, ours_ms = [], []
  for _ in range(args.rounds):  # interleaved: drift on a shared machine hits both alike
    release_ms += time_calls(release_step, args.iters)
    ours_ms += time_calls(ours_step, args.iters)
  r, o = float(np.median(release_ms)), float(np.median(ours_ms))
  print(f"forward+loss+backward, median of {len(ours_ms)} steps: release {r:.1f} ms "
        f"(p10 {np.percentile(release_ms, 10):.1f}, p90 {np.percentile(release_ms, 90):.1f}), "
        f"ours {o:.1f} ms (p10 {np.percentile(ours_ms, 10):.1f}, "
        f"p90 {np.percentile(ours_ms, 90):.1f}): speed-up {r / o:.2f}x")
  if flops:
    peak = args.matmul_gflops
    print(f"work: {flops / 1e9:.1f} GFLOP per step (XLA's count of our compiled step); ours "
          f"{flops / o / 1e6:.0f} GFLOP/s = {100 * flops / o / 1e6 / peak:.0f}% of this machine's "
          f"float32 matmul rate ({peak:.0f} GFLOP/s, jax); the release "
          f"{flops / r / 1e6:.0f} GFLOP/s at the same work = {100 * flops / r / 1e6 / peak:.0f}%; "
          f"a 2x speed-up would need {200 * flops / r / 1e6 / peak:.0f}%")
  return r / o


def matmul_gflops(size: int = 1024, iters: int = 20) -> Tuple[float, float]:
  """This machine's float32 matmul rate, GFLOP/s, median of `iters` [size]^3 products: (jax,
  torch). The physical limit the training steps are measured against."""
  import jax
  import jax.numpy as jnp
  import torch
  a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), jnp.float32)
  product = jax.jit(lambda x: x @ x)
  jax.block_until_ready(product(a))
  jax_ms = np.median(time_calls(lambda: jax.block_until_ready(product(a)), iters))
  t = torch.from_numpy(np.asarray(a))
  torch_ms = np.median(time_calls(lambda: t @ t, iters))
  flop = 2.0 * size ** 3
  return flop / jax_ms / 1e6, flop / torch_ms / 1e6


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--release", default=os.environ.get("UIO2_RELEASE", ""),
                      help="checkout of allenai/unified-io-2.pytorch (default: $UIO2_RELEASE)")
  parser.add_argument("--reference", default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "reference"),
                      help="folder of the golden files")
  parser.add_argument("--golden", default="text,full", help="which golden files: text, full")
  parser.add_argument("--trunks", default=DEFAULT_TRUNKS, help="EMBxHEADSxLAYERSxMLP, comma-separated")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--iters", type=int, default=5, help="steps per round and framework")
  parser.add_argument("--rounds", type=int, default=4)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--cpus", type=int, default=None,
                      help="pin to this many cores before JAX and torch start (default: all)")
  args = parser.parse_args(argv)
  if min(args.batch, args.iters, args.rounds) < 1 or args.warmup < 0:
    parser.error("--batch, --iters and --rounds must be >= 1, --warmup >= 0")
  if args.cpus is not None:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cpus])
  os.environ["_UIO2_RELEASE"] = os.path.abspath(os.path.expanduser(args.release or ""))
  try:
    trunks = [Trunk.parse(t) for t in args.trunks.split(",") if t]
    import_release(os.environ["_UIO2_RELEASE"])
    import torch
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    import jax
    print(f"device: jax {jax.__version__} / torch {torch.__version__} on "
          f"{len(os.sched_getaffinity(0))} of {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    jax_rate, torch_rate = matmul_gflops()
    args.matmul_gflops = jax_rate
    print(f"float32 matmul 1024^3: jax {jax_rate:.0f} GFLOP/s, torch {torch_rate:.0f} GFLOP/s")
    results = []
    for name in [g for g in args.golden.split(",") if g]:
      golden = load_golden(os.path.join(args.reference, f"uio2_{name}_golden.npz"))
      for trunk in trunks:
        results.append((name, trunk, compare(name, golden, trunk, args)))
  except BenchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for name, trunk, speedup in results:
    print(f"speedup {name} {trunk.name}: {speedup:.2f}x")
  name, trunk, speedup = results[-1]
  print(f"speedup_{name}_{trunk.name} {speedup:.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
