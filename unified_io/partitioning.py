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
"""

import contextlib
from typing import Dict, Iterator, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

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
# divide common model-axis sizes. Listed so that every logical name has a rule.
_REPLICATED = tuple((name, None) for name in (
    "vit_embed", "vit_joined_kv", "vit_mlp", "vit_patch", "vit_pos",
    "resampler_embed", "resampler_heads", "resampler_latents", "resampler_mlp",
    "conv_h", "conv_w", "conv_in", "conv_out",
    "vq_codes", "vq_dim", "vq_embed", "vq_heads", "vq_kv", "vq_mlp", "vq_patch"))


def axis_rules(fsdp: bool = False) -> Rules:
  """The logical -> mesh axis rules; with `fsdp`, parameters' embed axis is split over data."""
  embed = (("embed", DATA), ("embed", None)) if fsdp else (("embed", None),)
  return _BASE_RULES + _REPLICATED + embed


def make_mesh(data: int = -1, model: int = 1, devices: Optional[Sequence] = None) -> Mesh:
  """A (data, model) mesh over `devices` (default: all); data = -1 takes what model leaves."""
  devices = list(jax.devices() if devices is None else devices)
  if data == -1:
    if len(devices) % model:
      raise ValueError(f"mesh: model={model} does not divide the {len(devices)} devices")
    data = len(devices) // model
  if data * model != len(devices):
    raise ValueError(f"mesh: data={data} x model={model} != {len(devices)} devices")
  return Mesh(np.asarray(devices).reshape(data, model), (DATA, MODEL))


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
  """Raises ValueError (one line) naming the first parameter dimension that the mesh axes it is
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
      raise ValueError(
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
