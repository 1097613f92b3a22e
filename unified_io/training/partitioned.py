"""Placing the train state and batches on a mesh: shardings from the logical axis rules.

Parameters take their sharding from their logical axis names (`unified_io.partitioning`). Optimizer
state leaves shaped like their parameter (Adafactor's unfactored second moment, momentum) take the
parameter's sharding; factored row/column statistics and counters are replicated (they are a
vector per matrix). Batches are split over `data` on their leading axis; each process contributes
its own rows (`jax.make_array_from_process_local_data`).

Which examples a global batch holds must not depend on how many processes feed it, or a run
resumed (or repeated) on another topology would train on other data. So the input is cut into
`input_shards` fixed slices of the batch: shard j is its own seqio pipeline (`TrainInput` with
`ShardInfo(j, input_shards)` and seed `seed + j`) and supplies rows [j B/n, (j+1) B/n) of every
global batch. A process opens only the shards whose rows its devices hold (`ProcessInput`), so one
process with n shards and n processes with one each assemble the same global batches, row for row.
The per-shard seed also keeps the shards' mixture sampling independent (with one seed every shard
would draw the same task at the same position). The trainer's default is one shard per process
(one pipeline each, the cheapest); pin `train.input_shards` to get the same batches on another
number of processes (each extra pipeline in a process costs its own set-up and threads).
"""

from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
import optax
import seqio
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from unified_io import partitioning
from unified_io.training.input import TrainInput
from unified_io.training.train_state import TrainState


def abstract_state(init_params: Callable[[], Any], optimizer: optax.GradientTransformation
                   ) -> Tuple[Any, TrainState]:
  """(boxed abstract params, abstract TrainState) without allocating anything."""
  boxed = jax.eval_shape(init_params)
  return boxed, jax.eval_shape(lambda: TrainState.create(nn.meta.unbox(boxed), optimizer))


def state_shardings(boxed_params, state: TrainState, mesh: Mesh, rules) -> TrainState:
  """NamedShardings for every leaf of `state` (abstract or concrete)."""
  param_shardings = partitioning.shardings(boxed_params, mesh, rules)
  replicated = NamedSharding(mesh, PartitionSpec())
  params_def = jax.tree_util.tree_structure(state.params)
  param_leaves = jax.tree_util.tree_leaves(state.params)
  sharding_leaves = jax.tree_util.tree_leaves(
      param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))

  def like_params(node) -> bool:
    return jax.tree_util.tree_structure(node) == params_def

  def place(node):
    if like_params(node):
      leaves = jax.tree_util.tree_leaves(node)
      placed = [s if getattr(x, "shape", None) == p.shape else replicated
                for x, p, s in zip(leaves, param_leaves, sharding_leaves)]
      return jax.tree_util.tree_unflatten(params_def, placed)
    return jax.tree_util.tree_map(lambda _: replicated, node)

  opt_shardings = jax.tree_util.tree_map(place, state.opt_state, is_leaf=like_params)
  return TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings,
                    nonfinite_steps=replicated)


def batch_shardings(batch, mesh: Mesh):
  """Every batch leaf split over `data` on its leading axis."""
  return jax.tree_util.tree_map(lambda _: partitioning.batch_sharding(mesh), batch)


def global_batch(local_batch: Dict, mesh: Mesh, batch_size: Optional[int] = None) -> Dict:
  """This process's rows of the batch -> global arrays of `batch_size` rows sharded over `data`."""
  sharding = partitioning.batch_sharding(mesh)

  def to_global(x):
    x = np.asarray(x)
    shape = None if batch_size is None else (batch_size,) + x.shape[1:]
    return jax.make_array_from_process_local_data(sharding, x, shape)
  return jax.tree_util.tree_map(to_global, local_batch)


def process_rows(mesh: Mesh, batch_size: int) -> range:
  """The rows of a global batch held by this process's devices (a contiguous range)."""
  index_map = partitioning.batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
  rows = sorted({row for index in index_map.values()
                 for row in range(*index[0].indices(batch_size))})
  if rows != list(range(rows[0], rows[-1] + 1)):
    raise ValueError(f"mesh {dict(mesh.shape)}: process {jax.process_index()} holds rows {rows} "
                     "of the batch, not one contiguous block; order the mesh's devices by process")
  return range(rows[0], rows[-1] + 1)


def process_input_shards(rows: range, batch_size: int, input_shards: int) -> range:
  """The input shards (see the module docstring) that supply exactly `rows` of the batch."""
  if input_shards < 1 or batch_size % input_shards:
    raise ValueError(f"train.input_shards={input_shards} must divide BATCH_SIZE={batch_size}")
  per_shard = batch_size // input_shards
  if rows.start % per_shard or len(rows) % per_shard:
    raise ValueError(
        f"train.input_shards={input_shards}: a shard is {per_shard} rows of the batch of "
        f"{batch_size}, but process {jax.process_index()} holds rows [{rows.start}, {rows.stop}); "
        f"use a multiple of {batch_size // len(rows)} input shards")
  return range(rows.start // per_shard, rows.stop // per_shard)


class ProcessInput:
  """This process's rows of every global batch: its input shards' batches, concatenated.

  `shards` are iterators (e.g. `TrainInput`s) in row order, each with `batches_consumed`;
  `shard_indices` their numbers among the `input_shards`, `rows` the batch rows they fill.
  """

  def __init__(self, shards: Sequence[Iterator[Dict]], *, seed: int, input_shards: int,
               shard_indices: Sequence[int], rows: range):
    if not shards or len(shards) != len(shard_indices):
      raise ValueError(f"ProcessInput: {len(shards)} input shards for indices {shard_indices}")
    self._shards = list(shards)
    self.seed, self.input_shards = seed, input_shards
    self.shard_indices, self.rows = list(shard_indices), rows

  def __iter__(self) -> "ProcessInput":
    return self

  def __next__(self) -> Dict:
    batches = [next(shard) for shard in self._shards]
    if len(batches) == 1:
      return batches[0]
    return jax.tree_util.tree_map(lambda *rows: np.concatenate(rows, axis=0), *batches)

  def position(self) -> Dict[str, int]:
    """What a checkpoint stores to resume the stream (the same on every process)."""
    return {"batches_consumed": self._shards[0].batches_consumed, "seed": self.seed,
            "input_shards": self.input_shards}


def open_process_input(mixture_or_task_name: str, task_feature_lengths: Dict[str, int],
                       batch_size: int, feature_converter: seqio.FeatureConverter, mesh: Mesh, *,
                       seed: int, input_shards: int, start_batch: int = 0,
                       group_batches: bool = False) -> ProcessInput:
  """The input shards that fill this process's rows of each global batch (module docstring)."""
  rows = process_rows(mesh, batch_size)
  shards = process_input_shards(rows, batch_size, input_shards)
  return ProcessInput(
      [TrainInput(mixture_or_task_name, task_feature_lengths, batch_size, feature_converter,
                  seed=seed + j, start_batch=start_batch, process_index=j,
                  process_count=input_shards, group_batches=group_batches)
       for j in shards],
      seed=seed, input_shards=input_shards, shard_indices=shards, rows=rows)
