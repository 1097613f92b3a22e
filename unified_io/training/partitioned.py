"""Placing the train state and batches on a mesh: shardings from the logical axis rules.

Parameters take their sharding from their logical axis names (`unified_io.partitioning`). Optimizer
state leaves shaped like their parameter (Adafactor's unfactored second moment, momentum) take the
parameter's sharding; factored row/column statistics and counters are replicated (they are a
vector per matrix). Batches are split over `data` on their leading axis; each process contributes
its own rows (`jax.make_array_from_process_local_data`).
"""

from typing import Any, Callable, Dict, Tuple

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from unified_io import partitioning
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


def global_batch(local_batch: Dict, mesh: Mesh) -> Dict:
  """This process's rows of the batch -> global arrays sharded over `data`."""
  sharding = partitioning.batch_sharding(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
