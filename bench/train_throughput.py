"""Training throughput of the real trainer step loop: examples/s and tokens/s, and MFU on a GPU.

  python bench/train_throughput.py                              # CPU: tiny all-modality, small
  python bench/train_throughput.py --configs tiny --steps 5 --cpus 1
  python bench/train_throughput.py --gpu                        # GPU: base and large, bfloat16

CPU mode (the default), per config: the model (`make_config(size, components="tiny")` reading
text, image, audio, image and audio history, writing text, image and audio, float32), the trainer's
input (`input.open_process_input` on `world_default`: stages 1-3, shuffled, mixed, batched,
the model's feature converter, pretrain.gin's feature lengths), and the trainer's set-up
(`train_setup.build_train_setup`: Adafactor with the t5x defaults, the jitted, donated train step
with the state/batch shardings on the mesh of all local devices, dropout off). Timed: `--steps`
iterations of exactly the trainer's loop body (next batch -> `global_batch` -> step), after the
compile (reported apart) and `--warmup` steps. Figures:
  examples/s           batch rows trained per second
  trunk tokens/s       examples/s x (encoder + decoder positions per example, padding included:
                       what the trunk computes on)
  target tokens/s      loss tokens per second (`target_tokens`, the trainer's tok/s)

GPU mode (`--gpu`): base and large (`--sizes`) text-only trunks in bfloat16 activations (float32
parameters), Adafactor, the same jitted donated step on a fixed batch of random tokens
(`--gpu_batch` x `--gpu_lengths`), so the device step alone is timed. It reports the mean step
time over `--steps` steps and the model FLOPs utilisation

  MFU = model FLOPs per step / step time / peak dense bf16 FLOP/s of the device
  model FLOPs per step = 6 * B * (N_enc * L + N_dec * T)                     (matmuls)
                       + 12 * B * H * K * (n_enc * L^2 + n_dec * (T^2 + T * L))  (attention)

where B is the batch, L / T the encoder / decoder positions, N_enc the kernel parameters applied
once per encoder position (encoder layers, and every decoder layer's cross-attention key/value),
N_dec those applied per decoder position (the rest of the decoder, and the tied output table of
each target, V x D), n_enc / n_dec the layer counts and H x K heads x head size. 6 = 2 FLOPs per
multiply-add x 3 (forward, and the two backward matmuls); the attention term is QK^T and AV
(2 x 2 x S_q x S_k x H x K forward, x 3), causal masks not discounted, as PaLM's MFU counts.
Embedding gathers, norms, softmax and the optimizer are not model FLOPs. XLA's own FLOP count of
the compiled step is printed beside it. The peak comes from the device name (H100/H200 989,
A100 312 TFLOP/s) or `--peak_tflops`. Without a GPU, `--gpu` exits 2 saying so.

`--attention_impl` (default "auto": cuDNN flash attention on a GPU in bf16) and `--scan_layers` set
the model's fields of those names, so the fused kernel and the pod gins' scan are measured against
plain XLA attention / unrolled layers in the same session.

Each mode prints labelled figures and ends with one `name value` line: `train_tokens_per_s_<last
config> <trunk tokens/s>` on CPU, `mfu_<last size> <fraction>` on GPU.
"""

import argparse
import os
import sys
import time
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

# `make install` installs the package; from a bare checkout, fall back on the repository root (last
# on the path, so nothing there shadows an installed package).
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pretrain.gin's TASK_FEATURE_LENGTHS: every patch and frame of the tiny components.
CPU_LENGTHS = {"text_inputs": 32, "text_targets": 32, "image_input_samples": 64,
               "audio_input_samples": 32, "image_history_input_samples": 64,
               "audio_history_input_samples": 32, "num_frames": 4}
ALL_MODALITIES = dict(input_modalities=("text", "image", "audio", "image_history", "audio_history"),
                      target_modalities=("text", "image", "audio"))
# Dense bfloat16 peaks (no sparsity), FLOP/s, by a substring of `device_kind`.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


class BenchError(Exception):
  """A setting this machine cannot run: one line on stderr, exit status 2."""


# ------------------------------------------------------------------------------------------------
# the trainer's pieces
# ------------------------------------------------------------------------------------------------
def trainer_setup(model, first_batch, mesh=None, learning_rate: float = 0.01):
  """`trainer.train`'s set-up (`build_train_setup`) with Adafactor at a constant rate, no dropout;
  `first_batch` (global arrays) creates the parameters."""
  from unified_io.training.optim import adafactor, learning_rate_schedule
  from unified_io.training.train_setup import build_train_setup
  lr = learning_rate_schedule("constant", base_learning_rate=learning_rate)
  return build_train_setup(model, adafactor(lr), lr, first_batch, mesh=mesh, use_dropout=False)


def compile_step(setup, batch) -> Tuple[object, float]:
  """The set-up's step compiled for `batch`, and the seconds lower + compile took."""
  import jax
  start = time.perf_counter()
  with setup.activated():
    compiled = setup.step.lower(setup.state, batch, jax.random.PRNGKey(1)).compile()
  return compiled, time.perf_counter() - start


def trunk_lengths(model, params, batch) -> Tuple[int, Dict[str, int]]:
  """(encoder positions, {target modality: decoder positions}) of `batch`, by shape inference."""
  import jax
  from unified_io.network.encoder_decoder import UnifiedIONetwork
  encoded = jax.eval_shape(lambda p, b: model.module.apply(
      {"params": p}, b["inputs"], method=UnifiedIONetwork.encode), params, batch)
  outputs = jax.eval_shape(model.outputs, params, batch)
  return int(encoded.hidden.shape[1]), {m: int(o.logits.shape[1]) for m, o in outputs.items()}


def describe(model, params, lengths: Tuple[int, Dict[str, int]]) -> str:
  import jax
  trunk, cfg = model.cfg.trunk, model.cfg
  n = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
  enc, dec = lengths
  return (f"config: trunk {trunk.num_encoder_layers}+{trunk.num_decoder_layers} layers, emb "
          f"{trunk.emb_dim}, {trunk.num_heads}x{trunk.head_dim} heads, mlp {trunk.mlp_dim}, dtype "
          f"{trunk.dtype}; inputs {[m.value for m in cfg.input_modalities]}, targets "
          f"{[m.value for m in cfg.target_modalities]}; {n / 1e6:.1f}M parameters; per example "
          f"{enc} encoder + {sum(dec.values())} decoder positions {dec}\n"
          f"device: jax {jax.__version__}, {jax.devices()[0].device_kind} x{jax.device_count()}, "
          f"{len(os.sched_getaffinity(0))} of {os.cpu_count()} host cores, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")


# ------------------------------------------------------------------------------------------------
# CPU: the trainer's loop with its input
# ------------------------------------------------------------------------------------------------
def cpu_config(size: str):
  from unified_io.presets import make_config
  return make_config(size, components="tiny", **ALL_MODALITIES)


def run_cpu_config(size: str, args) -> float:
  """Prints one config's figures; returns its trunk tokens/s."""
  import jax

  import unified_io.tasks  # noqa: F401  (registers the world tasks and mixtures)
  from unified_io import partitioning
  from unified_io.model import UnifiedIOModel
  from unified_io.training.input import open_process_input

  start = time.perf_counter()
  model = UnifiedIOModel(cpu_config(size))
  mesh = partitioning.make_mesh()
  data = open_process_input(args.mixture, CPU_LENGTHS, args.batch, model.feature_converter(),
                            mesh, seed=0, input_shards=1)
  first = partitioning.global_batch(next(data), mesh)
  input_s = time.perf_counter() - start
  setup = trainer_setup(model, first, mesh)
  state = setup.state
  lengths = trunk_lengths(model, state.params, first)
  print(f"== {size}")
  print(describe(model, state.params, lengths))
  print(f"setup: model, input pipeline to its first batch {input_s:.1f} s, state "
        f"{time.perf_counter() - start - input_s:.1f} s")
  compiled, compile_s = compile_step(setup, first)
  print(f"compile: lower+compile of the jitted train step {compile_s:.1f} s")

  rng = jax.random.PRNGKey(1)
  start = time.perf_counter()
  state, metrics = compiled(state, first, rng)
  jax.block_until_ready(state)
  print(f"first step: {time.perf_counter() - start:.2f} s (loss {float(metrics['loss']):.3f})")

  def loop(steps):
    nonlocal state
    tokens = []
    for _ in range(steps):  # the trainer's loop body
      batch = partitioning.global_batch(next(data), mesh, args.batch)
      state, metrics = compiled(state, batch, rng)
      tokens.append(metrics["target_tokens"])
    jax.block_until_ready(state)
    return float(sum(np.asarray(t) for t in tokens)) if tokens else 0.0

  loop(args.warmup)
  start = time.perf_counter()
  target_tokens = loop(args.steps)
  seconds = time.perf_counter() - start
  examples_s = args.steps * args.batch / seconds
  positions = lengths[0] + sum(lengths[1].values())
  print(f"timing: {args.steps} steps of batch {args.batch} after {args.warmup} warm-up steps, "
        f"data included: {seconds / args.steps:.3f} s/step")
  print(f"examples/s: {examples_s:.2f}")
  print(f"trunk tokens/s: {examples_s * positions:.0f} ({positions} positions per example)")
  print(f"target tokens/s: {target_tokens / seconds:.0f} "
        f"({target_tokens / (args.steps * args.batch):.1f} loss tokens per example)")
  return examples_s * positions


# ------------------------------------------------------------------------------------------------
# GPU: step time and MFU
# ------------------------------------------------------------------------------------------------
def model_flops_per_step(params, cfg, batch_size: int, encoder_len: int,
                         decoder_lens: Mapping[str, int]) -> Dict[str, float]:
  """The module docstring's formula: {"matmul": ..., "attention": ..., "total": ...}."""
  import jax
  trunk = cfg.trunk
  per_encoder, per_decoder = 0, 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    names = [str(getattr(k, "key", k)) for k in path]
    size = int(np.prod(leaf.shape))
    if names[-1] != "kernel":  # norms' scales; the tables are counted below, as heads
      continue
    if names[0] == "encoder" or ("encoder_decoder_attention" in names
                                 and names[-2] in ("key", "value")):
      per_encoder += size
    elif names[0] == "decoder":
      per_decoder += size
  decoder_len = sum(decoder_lens.values())
  heads = 0  # the tied output tables, each on its own modality's positions
  for modality, length in decoder_lens.items():
    table = params[f"token_embedders_{modality}"]["embedding"]
    heads += int(np.prod(table.shape)) * length
  matmul = 6.0 * batch_size * (per_encoder * encoder_len + per_decoder * decoder_len + heads)
  hk = trunk.num_heads * trunk.head_dim
  attention = 12.0 * batch_size * hk * (
      trunk.num_encoder_layers * encoder_len ** 2
      + trunk.num_decoder_layers * (decoder_len ** 2 + decoder_len * encoder_len))
  return {"matmul": matmul, "attention": attention, "total": matmul + attention,
          "n_enc_params": per_encoder, "n_dec_params": per_decoder}


def require_gpu(allow_cpu: bool):
  import jax
  try:
    gpus = jax.devices("gpu")
  except RuntimeError:
    gpus = []
  if gpus:
    return gpus
  if allow_cpu:
    return jax.devices()
  raise BenchError(f"--gpu needs a GPU, and JAX sees none (backend {jax.default_backend()}, "
                   f"devices {[d.device_kind for d in jax.devices()]}). Run it on a GPU machine "
                   "with jax[cuda]; the CPU figures come without --gpu.")


def peak_flops(device, override_tflops: Optional[float]) -> float:
  if override_tflops:
    return override_tflops * 1e12
  for name, peak in PEAK_BF16.items():
    if name in device.device_kind:
      return peak
  raise BenchError(f"no peak bf16 FLOP/s known for {device.device_kind!r}; give --peak_tflops")


def random_text_batch(model, batch_size: int, lengths: Mapping[str, int], seed: int = 0):
  batch = model.dummy_batch(batch_size, lengths)
  rng = np.random.default_rng(seed)
  vocab = model.cfg.trunk.text_vocab_size
  for side in batch.values():
    for features in side.values():
      for name in ("tokens", "inputs", "targets"):
        if name in features:
          features[name] = rng.integers(3, vocab, features[name].shape).astype(np.int32)
  return batch


def run_gpu_size(size: str, args) -> float:
  """Prints one size's step time and MFU; returns the MFU."""
  import jax
  from unified_io import partitioning
  from unified_io.presets import make_config
  from unified_io.model import UnifiedIOModel

  devices = require_gpu(args.allow_cpu)
  peak = peak_flops(devices[0], args.peak_tflops) * len(devices)
  cfg = make_config(size, dtype=args.gpu_dtype, attention_impl=args.attention_impl,
                    scan_layers=args.scan_layers)
  model = UnifiedIOModel(cfg)
  lengths = {"text_inputs": args.gpu_lengths[0], "text_targets": args.gpu_lengths[1]}
  start = time.perf_counter()
  mesh = partitioning.make_mesh()
  batch = partitioning.global_batch(random_text_batch(model, args.gpu_batch, lengths), mesh)
  setup = trainer_setup(model, batch, mesh)
  state = setup.state
  encoder_len, decoder_lens = trunk_lengths(model, state.params, batch)
  print(f"== {size} ({args.gpu_dtype} activations, float32 parameters, attention "
        f"{args.attention_impl!r}{', scanned layers' if args.scan_layers else ''})")
  print(describe(model, state.params, (encoder_len, decoder_lens)))
  print(f"setup: {time.perf_counter() - start:.1f} s")
  compiled, compile_s = compile_step(setup, batch)
  print(f"compile: lower+compile of the jitted train step {compile_s:.1f} s")
  flops = model_flops_per_step(state.params, cfg, args.gpu_batch, encoder_len, decoder_lens)
  print(f"model FLOPs/step: 6 * B * (N_enc * L + N_dec * T) + 12 * B * H * K * "
        f"(n_enc * L^2 + n_dec * (T^2 + T * L)) with B={args.gpu_batch}, L={encoder_len}, "
        f"T={sum(decoder_lens.values())}, N_enc={flops['n_enc_params'] / 1e6:.1f}M, "
        f"N_dec={flops['n_dec_params'] / 1e6:.1f}M (+ output tables), "
        f"H*K={cfg.trunk.num_heads * cfg.trunk.head_dim}: matmul {flops['matmul']:.3e} + "
        f"attention {flops['attention']:.3e} = {flops['total']:.3e}")
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  if analysis and "flops" in analysis:
    print(f"XLA's FLOP count of the compiled step (incl. optimizer, norms): "
          f"{analysis['flops']:.3e}")

  rng = jax.random.PRNGKey(1)
  for _ in range(1 + args.warmup):
    state, _ = compiled(state, batch, rng)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(state)
  step_s = (time.perf_counter() - start) / args.steps
  mfu = flops["total"] / step_s / peak
  print(f"timing: {args.steps} steps after {1 + args.warmup} untimed: {1e3 * step_s:.1f} ms/step, "
        f"{args.gpu_batch / step_s:.1f} examples/s, loss {float(metrics['loss']):.3f}")
  print(f"MFU: {flops['total'] / step_s / 1e12:.1f} TFLOP/s of {peak / 1e12:.0f} peak "
        f"({devices[0].device_kind} x{len(devices)}) = {mfu:.3f}")
  return mfu


# ------------------------------------------------------------------------------------------------
def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", default="tiny,small", help="CPU mode: size presets")
  parser.add_argument("--mixture", default="world_default", help="CPU mode: seqio mixture")
  parser.add_argument("--batch", type=int, default=8, help="CPU mode: global batch")
  parser.add_argument("--steps", type=int, default=5, help="timed steps")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
  parser.add_argument("--cpus", type=int, default=None,
                      help="pin to this many cores before JAX starts (default: all)")
  parser.add_argument("--gpu", action="store_true", help="GPU mode: step time and MFU")
  parser.add_argument("--sizes", default="base,large", help="GPU mode: size presets")
  parser.add_argument("--gpu_batch", type=int, default=32, help="GPU mode: batch")
  parser.add_argument("--gpu_lengths", type=int, nargs=2, default=(512, 512),
                      metavar=("TEXT_INPUTS", "TEXT_TARGETS"), help="GPU mode: lengths")
  parser.add_argument("--gpu_dtype", default="bfloat16", help="GPU mode: activation dtype")
  parser.add_argument("--attention_impl", default="auto",
                      help="GPU mode: TrunkConfig.attention_impl (auto, xla, cudnn, cpu)")
  parser.add_argument("--scan_layers", action="store_true",
                      help="GPU mode: scanned layers (the large/xl/xxl gins' setting)")
  parser.add_argument("--peak_tflops", type=float, default=None,
                      help="GPU mode: the device's peak (default: from its name)")
  parser.add_argument("--allow_cpu", action="store_true",
                      help="GPU mode on CPU (to check the code path; needs --peak_tflops)")
  args = parser.parse_args(argv)
  if min(args.batch, args.steps, args.gpu_batch, *args.gpu_lengths) < 1 or args.warmup < 0:
    parser.error("--batch, --steps, --gpu_batch and --gpu_lengths must be >= 1, --warmup >= 0")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.cpus is not None:  # before jax is imported: XLA sizes its thread pool from the affinity
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cpus])
  try:
    if args.gpu:
      sizes = [s for s in args.sizes.split(",") if s]
      results = [run_gpu_size(size, args) for size in sizes]
      print(f"mfu_{sizes[-1]} {results[-1]:.4f}")
    else:
      sizes = [s for s in args.configs.split(",") if s]
      results = [run_cpu_config(size, args) for size in sizes]
      print(f"train_tokens_per_s_{sizes[-1]} {results[-1]:.1f}")
  except BenchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
