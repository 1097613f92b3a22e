"""Running a multi-process JAX program on this machine: N processes of CPU devices joined by
jax.distributed on 127.0.0.1 with gloo collectives (what tests of multi-host code need).

  address = f"127.0.0.1:{free_port()}"
  codes, stdouts, stderrs = run_processes(
      [cmd + distributed_flags(address, 2, i) for i in range(2)], devices_per_process=4)

`cmd` is a binary that takes our multi-host flags (`unified_io.cli.gin_flags`) and calls
`gin_flags.initialize_distributed` before touching JAX's backend.
"""

import os
import pathlib
import socket
import subprocess
import tempfile
from typing import List, Sequence, Tuple

REPO = str(pathlib.Path(__file__).resolve().parent.parent)
# The suite is compile-bound (tiny shapes, a few steps each): XLA's CPU backend without its
# expensive LLVM passes compiles a train step ~25% faster (the all-modality bf16 test 27 -> 19 s),
# and with its classic elemental emitters instead of the MLIR fusion emitters ~2.4x faster again
# (the tiny all-modality loss-and-gradient step 5.7 -> 2.4 s; tests/test_packing.py on a cold
# compilation cache 72 -> 51 s). Only code generation changes, never a program's semantics. conftest.py sets them for the test
# processes; the binaries the tests start get them from `xla_flags`. (Not the one-thread flags
# `--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`: with them a grouped-batch
# run hung at exit once, after its last checkpoint; and XLA stops reading its flags at the
# undashed `intra_op_parallelism_threads=1`.)
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                      "--xla_cpu_use_fusion_emitters=false")


def xla_flags(devices: int = 1) -> str:
  """XLA_FLAGS for a binary a test starts: `devices` fake CPU devices (1 = a user's plain run)."""
  count = f"--xla_force_host_platform_device_count={devices} " if devices > 1 else ""
  return count + FAST_COMPILE_FLAGS


def env(devices: int) -> dict:
  """This environment with `devices` fake CPU devices and the repository importable."""
  e = dict(os.environ)
  e["XLA_FLAGS"] = xla_flags(devices)
  e["JAX_PLATFORMS"] = "cpu"
  e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
  return e


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def distributed_flags(address: str, num_processes: int, process_id: int) -> List[str]:
  return [f"--coordinator_address={address}", f"--num_processes={num_processes}",
          f"--process_id={process_id}", "--cpu_collectives=gloo"]


def run_processes(commands: Sequence[Sequence[str]], devices_per_process: int,
                  timeout_s: float = 600) -> Tuple[List[int], List[str], List[str]]:
  """Runs one process per command at once: (exit codes, stdouts, stderrs). A process still
  running after `timeout_s` (a hung collective) is killed, and so is the rest when one does not
  end: its peers would wait for it forever."""
  with tempfile.TemporaryDirectory() as logs:
    outs = [open(os.path.join(logs, f"{i}.out"), "w+") for i in range(len(commands))]
    errs = [open(os.path.join(logs, f"{i}.err"), "w+") for i in range(len(commands))]
    procs = [subprocess.Popen(list(cmd), cwd=REPO, env=env(devices_per_process), stdout=out,
                              stderr=err, text=True)
             for cmd, out, err in zip(commands, outs, errs)]
    try:
      codes = [p.wait(timeout=timeout_s) for p in procs]
    except subprocess.TimeoutExpired:
      codes = [p.poll() if p.poll() is not None else -9 for p in procs]
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
          p.wait()
    texts = []
    for files in (outs, errs):
      texts.append([])
      for f in files:
        f.seek(0)
        texts[-1].append(f.read())
        f.close()
  return codes, texts[0], texts[1]
