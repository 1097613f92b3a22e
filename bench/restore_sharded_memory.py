"""Memory of a checkpoint restored onto a mesh: bytes per device, float32 and bfloat16.

  python bench/restore_sharded_memory.py                    # large text model, 8 fake CPU devices
  python bench/restore_sharded_memory.py --data 1 --model 8 --no_fsdp   # model parallel only
  python bench/restore_sharded_memory.py --size small --data 8 --model 1 --no_fsdp  # whole copies
  python bench/restore_sharded_memory.py --checkpoint /ckpt/uio2-large --size large

The parameters of the `--size` text model (`presets.make_config`) are restored with
`run_loader.load_run(..., mesh=, fsdp=)` onto a (`--data`, `--model`) mesh of 8 fake CPU devices
(default 2 x 4 with FSDP: every matrix split 8 ways), in bfloat16 (cast on read) and in float32,
each restore in a fresh child process. Without `--checkpoint`, random parameters are first
written to a temporary bare checkpoint (as `uio2-convert` lays one out: DIR/params), also by a
child. Printed, as `key value` lines: the single-device total (every parameter whole, from the
shapes), per dtype the bytes on the fullest and emptiest device (the sizes of
`arr.addressable_shards` on it), their sum over the devices, the restore seconds, and the growth
of the child's peak RSS during the restore (host memory is the fake devices' memory here: a
restore that assembled the float32 tree would show it). The last line is
`bf16_max_device_over_single_device_f32 <ratio>`.

On a 2-vCPU, 23 GiB machine: `large` (777 M parameters, 2.9 GiB float32) writes in ~30 s and
restores in ~13 s; `xl` (10.6 GiB) is too big to write there, and so is `large` on (data=8)
without FSDP (eight whole float32 copies, one per fake device, all in host memory).
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

DEVICES = 8
if __name__ == "__main__":
  os.environ["XLA_FLAGS"] = " ".join(filter(None, [
      os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={DEVICES}"]))
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_random_checkpoint(directory: str, size: str) -> None:
  """Random float32 parameters of the `size` text model at DIRECTORY/params (leaf by leaf)."""
  import jax
  import numpy as np
  import orbax.checkpoint as ocp

  from unified_io.evaluation import run_loader
  from unified_io.model import UnifiedIOModel
  from unified_io.presets import make_config

  shapes = run_loader.abstract_params(UnifiedIOModel(make_config(size)))
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda s: jax.numpy.asarray(rng.standard_normal(s.shape, np.float32) * 0.02), shapes)
  with ocp.PyTreeCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, "params"), params)


def _peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # (Linux reports KiB)


def measure(checkpoint: str, size: str, data: int, model: int, fsdp: bool, dtype: str):
  """{figure: value} of one restore onto the mesh."""
  import jax

  from unified_io import partitioning
  from unified_io.evaluation.run_loader import load_run
  from unified_io.presets import make_config

  mesh = partitioning.make_mesh(data=data, model=model)
  rss_before = _peak_rss_bytes()
  start = time.perf_counter()
  run = load_run(checkpoint, dtype=None if dtype == "float32" else dtype,
                 model_config=make_config(size), mesh=mesh, fsdp=fsdp)
  jax.block_until_ready(run.params)
  seconds = time.perf_counter() - start
  per_device = {d: 0 for d in mesh.devices.flat}
  for leaf in jax.tree_util.tree_leaves(run.params):
    for shard in leaf.addressable_shards:
      per_device[shard.device] += shard.data.nbytes
  figures = {"max_device_bytes": max(per_device.values()),
             "min_device_bytes": min(per_device.values()),
             "all_devices_bytes": sum(per_device.values()),
             "restore_s": round(seconds, 2),
             "peak_rss_growth_bytes": _peak_rss_bytes() - rss_before}
  return figures


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="large", help="size preset (presets.SIZES)")
  parser.add_argument("--checkpoint", default=None,
                      help="a bare checkpoint or MODEL_DIR of that size (default: write one)")
  parser.add_argument("--data", type=int, default=2)
  parser.add_argument("--model", type=int, default=4)
  parser.add_argument("--no_fsdp", dest="fsdp", action="store_false")
  parser.add_argument("--write_only", default=None, help=argparse.SUPPRESS)  # child processes
  parser.add_argument("--measure_only", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.write_only:
    write_random_checkpoint(args.write_only, args.size)
    return 0
  if args.measure_only:
    for key, value in measure(args.checkpoint, args.size, args.data, args.model, args.fsdp,
                              args.measure_only).items():
      print(f"{key} {value}", flush=True)
    return 0

  import jax
  import numpy as np

  from unified_io.evaluation import run_loader
  from unified_io.model import UnifiedIOModel
  from unified_io.presets import make_config

  assert jax.device_count() == DEVICES, jax.devices()
  shapes = jax.tree_util.tree_leaves(run_loader.abstract_params(UnifiedIOModel(
      make_config(args.size))))
  count = sum(int(np.prod(s.shape)) for s in shapes)
  print(f"size {args.size}")
  print(f"parameters {count}")
  print(f"mesh data={args.data},model={args.model},fsdp={args.fsdp}")
  print(f"single_device_f32_bytes {4 * count}")
  print(f"single_device_bf16_bytes {2 * count}")

  temporary = None
  checkpoint = args.checkpoint
  if checkpoint is None:
    temporary = checkpoint = tempfile.mkdtemp(prefix=f"uio2_{args.size}_")
    start = time.perf_counter()
    subprocess.run([sys.executable, os.path.abspath(__file__), "--size", args.size,
                    "--write_only", checkpoint], check=True)
    print(f"write_random_checkpoint_s {time.perf_counter() - start:.1f}")
  try:
    figures = {}
    for dtype, short in (("bfloat16", "bf16"), ("float32", "f32")):
      child = subprocess.run(
          [sys.executable, os.path.abspath(__file__), "--size", args.size, "--checkpoint",
           checkpoint, "--data", str(args.data), "--model", str(args.model),
           "--measure_only", dtype] + ([] if args.fsdp else ["--no_fsdp"]),
          check=True, stdout=subprocess.PIPE, text=True)
      for line in child.stdout.splitlines():
        key, value = line.split()
        figures[f"{short}_{key}"] = float(value)
        print(f"{short}_{key} {value}", flush=True)
  finally:
    if temporary:
      shutil.rmtree(temporary, ignore_errors=True)
  print(f"bf16_max_device_over_single_device_f32 "
        f"{figures['bf16_max_device_bytes'] / (4 * count):.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
