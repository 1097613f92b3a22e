"""Converting parameter trees between per-layer and scanned (stacked) trunk layouts.

The trunk's encoder and decoder keep their layers either one subtree per layer (`layers_0`,
`layers_1`, ...: the default model, the release converter's output) or, with
`TrunkConfig.scan_layers`, one subtree `layers` whose every leaf has a leading layer axis [N, ...]
(see unified_io/network/trunk.py). The layer math is the same, so a checkpoint of either layout runs
in a model of the other once converted:

  scanned_params = stack_layers(per_layer_params)
  per_layer_params = unstack_layers(scanned_params)
  params = match_layout(stored_params, model_params)   # whichever way `model_params` needs

Only the trunk's stacks (`STACKS`) are touched; the resamplers' own `layers_{i}` are never scanned.
Leaves may be NumPy or JAX arrays (stacking keeps NumPy on the host) or `jax.ShapeDtypeStruct`s.
Trees are never modified in place.
"""

import re
from typing import Any, Dict, Mapping

import jax
import jax.numpy as jnp
import numpy as np

STACKS = ("encoder", "decoder")  # the top-level parameter subtrees holding the trunk's layers
STACKED = "layers"  # the scanned layout's subtree (its leaves are [N, ...])
_PER_LAYER = re.compile(r"layers_(\d+)")


class LayerLayoutError(ValueError):
  """A parameter tree whose trunk layers are in neither layout, or in both."""


def _per_layer_names(stack: Mapping[str, Any], where: str):
  """The stack's `layers_{i}` names in layer order, checked to be layers_0 .. layers_{N-1}."""
  indices = sorted(int(m.group(1)) for m in map(_PER_LAYER.fullmatch, stack) if m)
  if indices != list(range(len(indices))):
    raise LayerLayoutError(f"{where}: per-layer subtrees must be layers_0 .. layers_{{N-1}}, "
                           f"found indices {indices}")
  if indices and STACKED in stack:
    raise LayerLayoutError(f"{where}: holds both per-layer subtrees (layers_{{i}}) and a stacked "
                           f"'{STACKED}' subtree")
  return [f"layers_{i}" for i in indices]


def _stack_leaves(*leaves):
  if all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):  # an abstract (eval_shape) tree
    return jax.ShapeDtypeStruct((len(leaves),) + tuple(leaves[0].shape), leaves[0].dtype)
  if all(isinstance(x, np.ndarray) for x in leaves):
    return np.stack(leaves)
  return jnp.stack(leaves)


def _layer_of(x, i: int):
  if isinstance(x, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(tuple(x.shape[1:]), x.dtype)
  return x[i]


def stack_layers(params: Mapping[str, Any]) -> Dict[str, Any]:
  """Per-layer trunk layout -> scanned layout: `layers_{i}/...` become `layers/...` [N, ...].

  Stacks already in the scanned layout are kept as they are.
  """
  out = dict(params)
  for name in STACKS:
    if name not in params:
      continue
    stack = params[name]
    layer_names = _per_layer_names(stack, name)
    if not layer_names:
      continue
    layers = [stack[n] for n in layer_names]
    first = jax.tree_util.tree_structure(layers[0])
    for n, layer in zip(layer_names, layers):
      if jax.tree_util.tree_structure(layer) != first:
        raise LayerLayoutError(f"{name}/{n} has other parameters than {name}/{layer_names[0]}")
    rest = {k: v for k, v in stack.items() if k not in layer_names}
    out[name] = {**rest, STACKED: jax.tree_util.tree_map(_stack_leaves, *layers)}
  return out


def unstack_layers(params: Mapping[str, Any]) -> Dict[str, Any]:
  """Scanned trunk layout -> per-layer layout: `layers/...` [N, ...] become `layers_{i}/...`.

  Stacks already in the per-layer layout are kept as they are.
  """
  out = dict(params)
  for name in STACKS:
    if name not in params or STACKED not in params[name]:
      continue
    stack = params[name]
    _per_layer_names(stack, name)  # refuses a mixed layout
    leaves, treedef = jax.tree_util.tree_flatten(stack[STACKED])
    shapes = [tuple(x.shape) if hasattr(x, "shape") else np.shape(x) for x in leaves]
    depths = {shape[0] if shape else None for shape in shapes}
    if len(depths) != 1 or None in depths:
      raise LayerLayoutError(f"{name}/{STACKED}: leaves must share one leading layer axis, got "
                             f"leading sizes {sorted(depths, key=str)}")
    (depth,) = depths
    rest = {k: v for k, v in stack.items() if k != STACKED}
    out[name] = {**rest, **{f"layers_{i}": jax.tree_util.tree_unflatten(
        treedef, [_layer_of(x, i) for x in leaves]) for i in range(depth)}}
  return out


def is_stacked(params: Mapping[str, Any]) -> bool:
  """Whether the trunk's layers of `params` are in the scanned layout."""
  return any(name in params and STACKED in params[name] for name in STACKS)


def match_layout(params: Mapping[str, Any], like: Mapping[str, Any]) -> Dict[str, Any]:
  """`params` converted to the trunk layout of `like` (another tree with the same top level:
  arrays, shape structs, anything); unchanged when the layouts already agree."""
  if is_stacked(like):
    return stack_layers(params)
  return unstack_layers(params)
