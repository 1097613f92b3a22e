"""The device mesh and the one table that maps logical axis names to mesh axes.

Every parameter carries logical axis names (see `model-info`); activations are constrained at block
boundaries with ("batch", "length", "embed"). The rules below decide where each name lives:

  batch -> data      vocab, mlp, heads -> model      embed, kv, length, layers -> replicated
  FSDP adds embed -> data: parameters are also split over `data`. Activations keep their embed
  axis replicated because `batch` already took `data` (flax uses the first rule whose mesh axis is
  still free, so the later `("embed", None)` applies).

The train state follows its parameters: optimizer state leaves shaped like their parameter
(Adafactor's unfactored second moment, momentum) take the parameter's sharding; factored row/column
statistics and counters are replicated (they are a vector per matrix; [layers, rows] per stacked
matrix of scanned layers, whose layers axis is never split anyway). Batches are split over
`data` on their leading axis; each process contributes the rows its devices hold (`process_rows`,
`global_batch`).

The mesh follows the hardware (`make_mesh`): devices are placed by the physical topology, and a
multi-slice mesh (`dcn_data`) keeps `model` inside a slice and splits only `data` across slices.
Sizes that do not fit the devices, the model or the batch are refused in one line (`MeshError`)
before anything is compiled: `make_mesh`, `check_divisible`, `check_batch_size`.
"""

import contextlib
from typing import Dict, Iterator, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from unified_io.config import ConfigError

DATA, MODEL = "data", "model"
Rules = Tuple[Tuple[str, Optional[str]], ...]

_BASE_RULES = (
    ("batch", DATA),
    ("vocab", MODEL),
    ("mlp", MODEL),
    ("heads", MODEL),
    ("kv", None),
    ("length", None),
    # The leading axis of scanned layers' stacked parameters (TrunkConfig.scan_layers) is never
    # split: each device keeps its shard (by the other axes) of every layer, so a scan step reads
    # its layer locally instead of gathering it from the devices holding that layer.
    ("layers", None),
)
# The frozen ViTs, the resamplers and the VQ tokenizers are replicated: they are small beside the
# trunk, and their head counts (2 in the tiny release config, 12 in the real resampler) do not
# divide common model-axis sizes. Listed so that every logical name has a rule. (The conv_* names
# are also the CNN encoders' that may stand in for the ViTs: unified_io/network/embedders/cnn.py.)
_REPLICATED = tuple((name, None) for name in (
    "vit_embed", "vit_joined_kv", "vit_mlp", "vit_patch", "vit_pos",
    "resampler_embed", "resampler_heads", "resampler_latents", "resampler_mlp",
    "conv_h", "conv_w", "conv_in", "conv_out",
    "vq_codes", "vq_dim", "vq_embed", "vq_heads", "vq_kv", "vq_mlp", "vq_patch",
    # LoRA adapters' rank axis (unified_io.adapters.lora) and the universal projection's experts
    # and router (unified_io.network.embedders.projection): small, kept whole on every device.
    "lora_rank", "projection_experts", "projection_modalities"))


def axis_rules(fsdp: bool = False) -> Rules:
  """The logical -> mesh axis rules; with `fsdp`, parameters' embed axis is split over data."""
  embed = (("embed", DATA), ("embed", None)) if fsdp else (("embed", None),)
  return _BASE_RULES + _REPLICATED + embed


class MeshError(ConfigError):
  """A mesh that does not fit the devices, the model or the batch; the message is one line naming
  the problem and the sizes that would work. A ConfigError: binaries report it as bad config."""


def _divisors(n: int) -> str:
  return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def make_mesh(data: int = -1, model: int = 1, devices: Optional[Sequence] = None,
              dcn_data: int = 1) -> Mesh:
  """A (data, model) mesh over `devices` (default: all); data = -1 takes what model leaves.

  The devices are laid out by the physical topology (`mesh_utils.create_device_mesh`: on TPU the
  model axis lands on neighbouring chips of the torus, on GPU devices go in XLA's global order).
  `dcn_data` > 1: a multi-slice (hybrid) mesh, the data axis spanning `dcn_data` granules joined by
  the slower data-centre network (TPU slices, by `slice_index`; else processes) and the model
  axis kept inside each granule (`mesh_utils.create_hybrid_device_mesh`): only the once-a-step
  gradient reduction crosses it. Raises MeshError (one line) for sizes that do not fit.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if model < 1 or n % model:
    raise MeshError(f"mesh: model={model} does not divide the {n} devices; use a model axis "
                    f"(model_parallel) dividing {n}: {_divisors(n)}")
  data = n // model if data == -1 else data
  if data * model != n:
    raise MeshError(f"mesh: data={data} x model={model} != {n} devices; use data x model = {n} "
                    f"(or data=-1 to take what model leaves)")
  if dcn_data < 1 or data % dcn_data:
    raise MeshError(f"mesh: dcn_data={dcn_data} does not divide data={data}; use a number of "
                    f"slices dividing {data}: {_divisors(data)}")
  if dcn_data > 1:
    return Mesh(_hybrid_devices(devices, data // dcn_data, model, dcn_data), (DATA, MODEL))
  # Across processes, each process's devices form one block of the mesh, so its rows of a batch
  # are contiguous (`process_rows`).
  several = len({d.process_index for d in devices}) > 1
  try:
    grid = mesh_utils.create_device_mesh((data, model), devices, contiguous_submeshes=several)
  except (ValueError, NotImplementedError, AssertionError):
    # A subset of a TPU slice's chips (a test's first 6 devices, one host's chips of a pod) is no
    # full torus, and some shapes (model=3 on a 2x2x1 v4-8) cannot be laid onto one:
    # create_device_mesh refuses both. The plain order is a valid mesh there, only without the
    # topology-aware placement; jax.devices() lists processes in turn, so blocks stay contiguous.
    # (CPU devices, real or fake, take the plain order inside create_device_mesh anyway.)
    grid = np.asarray(devices).reshape(data, model)
  return Mesh(grid, (DATA, MODEL))


def _hybrid_devices(devices: Sequence, data_per_granule: int, model: int, dcn_data: int
                    ) -> np.ndarray:
  """[data, model] devices of a multi-slice mesh (`make_mesh` with `dcn_data`)."""
  # Granules are TPU slices where the devices span several; elsewhere (GPU or CPU hosts, whose
  # devices have no slice_index or all the same one) processes.
  by_slice = len({getattr(d, "slice_index", 0) for d in devices}) > 1
  key = "slice_index" if by_slice else "process_index"
  granules: Dict[int, int] = {}
  for device in devices:
    granules[getattr(device, key)] = granules.get(getattr(device, key), 0) + 1
  what, one = ("slices", "slice") if by_slice else ("processes", "process")
  per_granule = data_per_granule * model
  if len(granules) != dcn_data or set(granules.values()) != {per_granule}:
    counts = sorted(set(granules.values()))
    several = len(granules) > 1
    held = (f"{counts[0]} devices" + (" each" if several else "") if len(counts) == 1
            else f"{counts} devices")
    fits = several and len(counts) == 1 and (data_per_granule * dcn_data) % len(granules) == 0
    fix = str(len(granules)) if fits else f"1 (the data axis inside one {one})"
    raise MeshError(
        f"mesh: dcn_data={dcn_data} needs {dcn_data} {what} of {per_granule} devices "
        f"(data/dcn_data={data_per_granule} x model={model}); these devices are in "
        f"{len(granules)} {what if several else one} ({held}): use dcn_data={fix}")
  return mesh_utils.create_hybrid_device_mesh(
      (data_per_granule, model), (dcn_data, 1), devices, process_is_granule=not by_slice)


def check_batch_size(mesh: Mesh, batch_size: int, what: str = "batch size") -> None:
  """Raises MeshError unless the data axis splits a global batch of `batch_size` rows evenly."""
  data = int(mesh.shape[DATA])
  if batch_size % data:
    near = sorted({max(data, batch_size // data * data), -(-batch_size // data) * data})
    raise MeshError(f"mesh {dict(mesh.shape)}: {what} {batch_size} does not split over "
                    f"data={data}; use a multiple of {data} ({' or '.join(map(str, near))})")


def box_values(boxed_tree):
  """The arrays (or shape structs) inside a tree of boxed parameters. Not `nn.meta.unbox`: under
  `jax.set_mesh` unboxing applies a sharding constraint, which fails eagerly on abstract leaves."""
  return jax.tree_util.tree_map(lambda x: getattr(x, "value", x), boxed_tree,
                                is_leaf=lambda x: isinstance(x, nn.Partitioned))


def logical_specs(boxed_tree):
  """Logical PartitionSpecs (axis names) of a tree of boxed parameters."""
  return nn.get_partition_spec(boxed_tree)


def mesh_specs(boxed_tree, rules):
  """Mesh PartitionSpecs of a tree of boxed parameters under `rules`."""
  return nn.logical_to_mesh(logical_specs(boxed_tree), rules)


def shardings(boxed_tree, mesh: Mesh, rules):
  """NamedShardings of a tree of boxed (e.g. `jax.eval_shape`d) parameters."""
  return nn.logical_to_mesh_sharding(logical_specs(boxed_tree), mesh, rules)


def check_divisible(boxed_tree, mesh: Mesh, rules: Rules) -> None:
  """Raises MeshError (one line) naming the first parameter dimension that the mesh axes it is
  split over do not divide, and which sizes would; nothing is allocated."""
  logical = jax.tree_util.tree_leaves_with_path(
      logical_specs(boxed_tree), is_leaf=lambda x: isinstance(x, PartitionSpec))
  physical = jax.tree_util.tree_leaves(
      mesh_specs(boxed_tree, rules), is_leaf=lambda x: isinstance(x, PartitionSpec))
  shapes = [getattr(leaf, "value", leaf).shape for leaf in jax.tree_util.tree_leaves(
      boxed_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))]
  split = []  # (path, logical name, size, mesh axes)
  for (path, names), spec, shape in zip(logical, physical, shapes):
    for dim, size in enumerate(shape):
      axes = spec[dim] if dim < len(spec) else None
      axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
      if axes:
        name = names[dim] if dim < len(names) else None
        split.append(("/".join(str(getattr(k, "key", k)) for k in path), name, size, axes))
  for path, name, size, axes in split:
    ways = int(np.prod([mesh.shape[a] for a in axes]))
    if size % ways:
      common = np.gcd.reduce([s for _, _, s, a in split if a == axes])
      fits = [d for d in range(1, common + 1) if common % d == 0]
      knob = "model_parallel" if axes == (MODEL,) else f"a {'x'.join(axes)} size"
      raise MeshError(
          f"mesh {dict(mesh.shape)}: parameter {path} dim {name!r} of size {size} is not "
          f"divisible by {'x'.join(f'{a}={mesh.shape[a]}' for a in axes)}; choose {knob} "
          f"dividing every such dimension ({', '.join(map(str, fits))})"
          + ("; or turn fsdp off" if DATA in axes else ""))


@contextlib.contextmanager
def activated(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """`mesh` and `rules` in effect: what initialising, tracing and running a sharded step need."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def state_shardings(boxed_params, state, mesh: Mesh, rules: Rules):
  """NamedShardings for every leaf of a train `state` (abstract or concrete; it has `.params`):
  parameters by their logical axes, leaves shaped like their parameter alike, the rest
  replicated (module docstring). `boxed_params` are the (abstract) boxed parameters."""
  replicated = NamedSharding(mesh, PartitionSpec())
  params_def = jax.tree_util.tree_structure(state.params)
  param_leaves = jax.tree_util.tree_leaves(state.params)
  sharding_leaves = jax.tree_util.tree_leaves(
      shardings(boxed_params, mesh, rules), is_leaf=lambda x: isinstance(x, NamedSharding))

  def like_params(node) -> bool:
    return jax.tree_util.tree_structure(node) == params_def

  def place(node):
    if like_params(node):
      placed = [s if getattr(x, "shape", None) == p.shape else replicated
                for x, p, s in zip(jax.tree_util.tree_leaves(node), param_leaves, sharding_leaves)]
      return jax.tree_util.tree_unflatten(params_def, placed)
    return jax.tree_util.tree_map(lambda _: replicated, node)

  return jax.tree_util.tree_map(place, state, is_leaf=like_params)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches split over `data` on their leading axis (a prefix for every leaf of a batch)."""
  return NamedSharding(mesh, PartitionSpec(DATA))


def global_batch(local_batch: Dict, mesh: Mesh, batch_size: Optional[int] = None) -> Dict:
  """This process's rows of the batch -> global arrays of `batch_size` rows sharded over `data`."""
  sharding = batch_sharding(mesh)

  def to_global(x):
    x = np.asarray(x)
    shape = None if batch_size is None else (batch_size,) + x.shape[1:]
    return jax.make_array_from_process_local_data(sharding, x, shape)
  return jax.tree_util.tree_map(to_global, local_batch)


def process_rows(mesh: Mesh, batch_size: int) -> range:
  """The rows of a global batch held by this process's devices (a contiguous range)."""
  index_map = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
  rows = sorted({row for index in index_map.values()
                 for row in range(*index[0].indices(batch_size))})
  if rows != list(range(rows[0], rows[-1] + 1)):
    raise ValueError(f"mesh {dict(mesh.shape)}: process {jax.process_index()} holds rows {rows} "
                     "of the batch, not one contiguous block; order the mesh's devices by process")
  return range(rows[0], rows[-1] + 1)


def describe(boxed_tree, rules: Rules) -> str:
  """One line per variable: path, shape, logical axes and PartitionSpec (for model-info.txt)."""
  logical = jax.tree_util.tree_leaves_with_path(
      logical_specs(boxed_tree), is_leaf=lambda x: isinstance(x, PartitionSpec))
  physical = jax.tree_util.tree_leaves(
      mesh_specs(boxed_tree, rules), is_leaf=lambda x: isinstance(x, PartitionSpec))
  # The boxes' values, not `nn.meta.unbox`: under `jax.set_mesh` unboxing applies a sharding
  # constraint, which fails eagerly on the abstract (eval_shape) leaves this is given.
  shapes = [getattr(leaf, "value", leaf) for leaf in jax.tree_util.tree_leaves(
      boxed_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))]
  lines = []
  for (path, names), spec, leaf in zip(logical, physical, shapes):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    lines.append(f"{name:70s} {str(tuple(leaf.shape)):22s} {str(tuple(names)):34s} {spec}")
  return "\n".join(lines)
