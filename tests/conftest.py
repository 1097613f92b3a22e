"""Test-wide setup: 8 fake CPU devices and where the reference (golden) files live.

  cd /work/main && .venv/bin/python -m pytest -q tests

XLA reads its flags when the first backend is created, so they are set here, before any test module
(and so before any `import jax` of ours) runs. Flags already set by the user are kept.
"""

import os
import sys

_DEVICE_FLAG = "--xla_force_host_platform_device_count=8"
if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), _DEVICE_FLAG]))
from processes import FAST_COMPILE_FLAGS  # pylint: disable=wrong-import-position

if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:  # a user's choice is kept
  os.environ["XLA_FLAGS"] += " " + FAST_COMPILE_FLAGS
os.environ["JAX_PLATFORMS"] = "cpu"
# One persistent XLA compilation cache for the session: both xdist workers and every binary the
# tests start (subprocesses inherit the environment) compile the same tiny train and decode steps
# many times over; a hit loads the executable instead of compiling it again. It only ever returns
# what XLA would compile for the same program, flags and devices.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache", "tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
if "jax" in sys.modules:  # a plugin imported jax first: the env vars were read already
  sys.modules["jax"].config.update("jax_platforms", "cpu")
  sys.modules["jax"].config.update("jax_compilation_cache_dir",
                                   os.environ["JAX_COMPILATION_CACHE_DIR"])

import pathlib  # pylint: disable=wrong-import-position

import pytest  # pylint: disable=wrong-import-position

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
NUM_FAKE_DEVICES = 8
REFERENCE_DIR = pathlib.Path(
    os.environ.get("UIO2_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference"))
TEXT_GOLDEN = REFERENCE_DIR / "uio2_text_golden.npz"


def require_reference() -> pathlib.Path:
  """The reference folder; skips the calling test only when the folder does not exist at all."""
  if not REFERENCE_DIR.is_dir():
    pytest.skip(f"reference folder {REFERENCE_DIR} is absent (set UIO2_REFERENCE_DIR to the folder "
                f"holding uio2_text_golden.npz)")
  return REFERENCE_DIR


@pytest.fixture(scope="session")
def reference_dir() -> pathlib.Path:
  return require_reference()


@pytest.fixture(scope="session")
def text_golden_path(reference_dir) -> pathlib.Path:
  # The folder exists, so a missing file is a broken checkout: fail, do not skip.
  assert TEXT_GOLDEN.is_file(), f"{TEXT_GOLDEN} is missing from the reference folder"
  return TEXT_GOLDEN


@pytest.fixture(scope="session")
def golden_full(reference_dir):
  """The all-modality golden file, loaded once (np.load is lazy per key)."""
  import numpy as np
  path = reference_dir / "uio2_full_golden.npz"
  assert path.is_file(), f"{path} is missing from the reference folder"
  return np.load(path)


# The files whose tests take longest (each 1-4 minutes of a ~20-minute run on 2 cores, measured
# with --durations): run first, so that the run ends on short tests. With `--dist worksteal`
# (Makefile) a worker that runs out of tests takes queued ones from the other; a long test left
# at the very end would still keep one core idle until it finished (~4 minutes, measured).
LONGEST_FIRST = ("test_train_binary.py", "test_multiprocess.py", "test_finetune.py",
                 "test_all_registered.py", "test_tokenizer_training.py", "test_faults.py",
                 "test_eval_binary.py", "test_multiprocess_inference.py")


def pytest_collection_modifyitems(config, items):
  del config
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept inside
