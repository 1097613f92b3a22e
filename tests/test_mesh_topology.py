"""The mesh follows the hardware, and sizes that do not fit are refused before anything compiles.

On 8 fake CPU devices (conftest.py): `partitioning.make_mesh` lays the devices out with
`mesh_utils.create_device_mesh` (on CPU that is the plain order; on TPU/GPU the physical
topology), falls back to the plain order where create_device_mesh refuses the devices, and builds
multi-slice meshes with `mesh_utils.create_hybrid_device_mesh` (`dcn_data`): for real on two
processes x 4 CPU devices (processes are the granules where devices have no distinct slices), and
by its slice grouping on stand-in devices that carry a `slice_index` as TPU chips do. Bad sizes
(a mesh that does not divide the devices, a model axis that does not divide the heads, a batch
the data axis does not split, a dcn_data the devices cannot make) are one line, from the library
and from `uio2-train` (status 2, MODEL_DIR not written).
"""

import dataclasses
import json
import os
import socket
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest
from jax.experimental import mesh_utils

from processes import xla_flags
from unified_io import partitioning
from unified_io.cli import train as train_cli
from unified_io.model import UnifiedIOModel
from unified_io.presets import make_config
from unified_io.training.optim import adafactor, learning_rate_schedule
from unified_io.training.train_setup import build_train_setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("data, model", [(8, 1), (2, 4), (1, 8), (-1, 2)])
def test_mesh_shape_axes_and_every_device_once(data, model):
  mesh = partitioning.make_mesh(data, model)
  want = (8 // model if data == -1 else data, model)
  assert mesh.axis_names == ("data", "model") and mesh.devices.shape == want
  assert sorted(mesh.device_ids.flat) == sorted(d.id for d in jax.devices())
  # (the topology-aware layout; on CPU devices it is their plain order)
  np.testing.assert_array_equal(mesh.devices, mesh_utils.create_device_mesh(want, jax.devices()))


def test_plain_order_where_create_device_mesh_refuses(monkeypatch):
  def refuse(*args, **kwargs):
    raise NotImplementedError("no torus for this shape")  # as on a partial TPU slice
  monkeypatch.setattr(mesh_utils, "create_device_mesh", refuse)
  six = jax.devices()[:6]
  mesh = partitioning.make_mesh(3, 2, devices=six)
  np.testing.assert_array_equal(mesh.devices, np.asarray(six).reshape(3, 2))


@pytest.mark.parametrize("kwargs, words", [
    (dict(model=3), "model=3 does not divide the 8 devices; use a model axis (model_parallel) "
                    "dividing 8: 1, 2, 4, 8"),
    (dict(data=3, model=2), "data=3 x model=2 != 8 devices"),
    (dict(data=4, model=2, dcn_data=3), "dcn_data=3 does not divide data=4; use a number of "
                                        "slices dividing 4: 1, 2, 4"),
    (dict(data=4, model=2, dcn_data=2), "needs 2 processes of 4 devices (data/dcn_data=2 x "
                                        "model=2); these devices are in 1 process"),
])
def test_bad_mesh_sizes_are_one_line(kwargs, words):
  with pytest.raises(partitioning.MeshError) as info:
    partitioning.make_mesh(**kwargs)
  assert words in str(info.value) and "\n" not in str(info.value)


@dataclasses.dataclass(frozen=True)
class _Chip:
  """A stand-in TPU chip: what create_hybrid_device_mesh reads of a device."""
  id: int
  slice_index: int
  process_index: int = 0
  platform: str = "cpu"  # (create_device_mesh then lays each slice out in its plain order)
  device_kind: str = "stand-in"


def test_hybrid_groups_data_by_slice_and_keeps_model_inside():
  chips = [_Chip(i, slice_index=i // 4) for i in (4, 0, 5, 1, 6, 2, 7, 3)]  # slices interleaved
  grid = partitioning._hybrid_devices(chips, data_per_granule=2, model=2, dcn_data=2)
  assert grid.shape == (4, 2)
  slices = np.vectorize(lambda c: c.slice_index)(grid)
  np.testing.assert_array_equal(slices, [[0, 0], [0, 0], [1, 1], [1, 1]])
  assert sorted(c.id for c in grid.flat) == list(range(8))
  with pytest.raises(partitioning.MeshError, match="needs 4 slices of 2 devices.*use dcn_data=2"):
    partitioning._hybrid_devices(chips, data_per_granule=1, model=2, dcn_data=4)


_WORKER = """
import json, sys
import jax
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from unified_io import partitioning
mesh = partitioning.make_mesh(model=2, dcn_data=2)
print(json.dumps({"shape": list(mesh.devices.shape),
                  "processes": [[d.process_index for d in row] for row in mesh.devices],
                  "rows": list(partitioning.process_rows(mesh, 8))}))
"""


def test_hybrid_mesh_over_two_processes():
  """create_hybrid_device_mesh for real: two processes x 4 CPU devices, one granule each."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
  env = dict(os.environ, XLA_FLAGS=xla_flags(4),
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  procs = [subprocess.Popen([sys.executable, "-c", _WORKER, address, str(i)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=120) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  got = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
  for process, report in enumerate(got):
    assert report["shape"] == [4, 2]
    # data spans the processes (the slower network); each model pair stays inside one
    assert report["processes"] == [[0, 0], [0, 0], [1, 1], [1, 1]]
    assert report["rows"] == list(range(4 * process, 4 * process + 4))


# ------------------------------------------------------------------------------------------------
# Where the mesh meets the model and the batch.
# ------------------------------------------------------------------------------------------------
def _build(mesh, rows, fsdp=False):
  model = UnifiedIOModel(make_config("tiny", text_vocab_size=512))
  lr = learning_rate_schedule("constant", base_learning_rate=0.01)
  batch = model.dummy_batch(rows, {"text_inputs": 8, "text_targets": 8})
  return build_train_setup(model, adafactor(lr), lr, batch, mesh=mesh, fsdp=fsdp)


def test_model_axis_that_does_not_divide_the_heads_is_refused():
  with pytest.raises(partitioning.MeshError) as info:
    _build(partitioning.make_mesh(data=1, model=8), rows=8)
  message = str(info.value)
  assert "dim 'heads' of size 4 is not divisible by model=8" in message
  assert "choose model_parallel dividing every such dimension (1, 2, 4)" in message


def test_batch_that_the_data_axis_does_not_split_is_refused():
  with pytest.raises(partitioning.MeshError, match=r"size 6 does not split over data=8; use a "
                                                   r"multiple of 8 \(8\)"):
    _build(partitioning.make_mesh(data=8), rows=6)


def test_check_batch_size_names_the_nearest_sizes():
  with pytest.raises(partitioning.MeshError, match=r"BATCH_SIZE 10 does not split over data=4; "
                                                   r"use a multiple of 4 \(8 or 12\)"):
    partitioning.check_batch_size(partitioning.make_mesh(data=4, model=2), 10, "BATCH_SIZE")
  partitioning.check_batch_size(partitioning.make_mesh(data=4, model=2), 12)


def _train(model_dir, capsys, *extra):
  """(exit status, stderr) of uio2-train called in this process; gin is left clear."""
  argv = ["--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin",
          f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='world_text'",
          "--gin.TASK_FEATURE_LENGTHS={'text_inputs': 16, 'text_targets': 8}",
          "--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=8", *extra]
  try:
    status = train_cli.main(argv)
  finally:
    gin.clear_config()
  return status, capsys.readouterr().err


@pytest.mark.parametrize("extra, words", [
    (["--gin.BATCH_SIZE=12"], "BATCH_SIZE 12 does not split over data=8; use a multiple of 8"),
    (["--gin.train.model_parallel=8"], "dim 'heads' of size 4 is not divisible by model=8"),
    (["--gin.train.model_parallel=3"], "model=3 does not divide the 8 devices"),
    (["--gin.train.dcn_data=2"], "dcn_data=2 needs 2 processes of 4 devices"),
], ids=["batch", "heads", "devices", "dcn_data"])
def test_train_binary_refuses_sizes_in_one_line(extra, words, tmp_path, capsys):
  status, err = _train(tmp_path / "run", capsys, *extra)
  assert status == 2, err
  assert words in err and len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / "run").exists()
