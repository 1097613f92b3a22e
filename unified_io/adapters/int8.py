"""A frozen base in int8: weight-only quantisation with per-channel scales (issue 17).

  specs = partitioning.logical_specs(model.abstract_params())
  q = quantize(params, specs)                       # Int8Weight leaves for the big matrices
  fwd = jax.jit(lambda q, batch: model.outputs(dequantize(q), batch))   # int8 at rest
  nbytes(q) / nbytes(params)                        # ~0.25 for the trunk's matrices
  model = Int8Model(cfg)                            # or: a model whose every forward does that
  run = load_run(model_dir, dtype="int8")           # eval / infer / predict (run_loader)

Axis legend: N scanned layers, I the contracted (input) axes of a kernel, O its output axes,
V vocabulary (table rows), D embed.

Which leaves: floating leaves with ndim >= 2 whose last path key is `kernel` or `embedding` and
with at least `min_size` elements; every other leaf (norm scales, biases, positional tables, small
convolutions, integer leaves) is left as it is. Each selected leaf becomes an `Int8Weight`:
values int8 in the leaf's shape, and a float32 `scale` of the same rank, of size 1 on the reduced
axes (so `values * scale` broadcasts), symmetric: scale = max|W| / 127 over the reduced axes (1
where that max is 0), values = round(W / scale) clipped to [-127, 127]. Rounding is the only
error: |W - dequantize(q)| <= scale / 2 everywhere.

The reduced (contracted) axes, so that each output channel has its own scale:
  kernel [I, O] and q/k/v [D, H, K]   axis 0 (the layer's input): one scale per output channel;
  kernel [H, K, D] (attention out),   every axis but the last: the contraction is over all the
    conv [h, w, in, out]              leading axes (a scale per (h, w, in) would cost more bytes
                                      than the int8 values);
  embedding [V, D]                    the last axis: a scale per row, since a row is what the
                                      lookup reads (and, tied, the output projection contracts
                                      over D: per row is then per output logit);
  scanned trunk leaves [N, ...]       (logical axes starting with 'layers') the same rule on the
                                      axes after N: every layer keeps its own scales.
A 3-d kernel takes axis 0 only when its logical axes start with an embed axis (the q/k/v
projections); without `specs` every kernel of ndim > 2 reduces all but its last axis (coarser
for q/k/v, still exact to scale / 2) and the scanned stacks are found by path
(`layer_stacking.STACKS` / `STACKED`).

`dequantize` is plain jnp (jit-friendly): called inside a jitted forward the int8 tree is what
lives in device memory between calls; XLA materialises the dequantised weights as temporaries of
that call. `Int8Model` is a `UnifiedIOModel` whose modules dequantize their `params` on every
apply, so `decoding`, the evaluator and `render` run unchanged on an int8 tree.
"""

import functools
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from unified_io.config import UnifiedIOConfig
from unified_io.model import UnifiedIOModel
from unified_io.network import layer_stacking

QMAX = 127
MIN_SIZE = 4096
SELECTED_NAMES = ("kernel", "embedding")
LAYERS_AXIS = "layers"  # trunk.LAYERS_AXIS: the scanned stacks' leading logical axis
# First logical axis of a 3-d kernel that maps one embedding to several outputs (q/k/v [D, H, K]).
_EMBED_AXES = ("embed", "vit_embed", "resampler_embed", "vq_embed")


@flax.struct.dataclass
class Int8Weight:
  """One quantised leaf: `values * scale` is the weight, in `dtype` (the original dtype)."""
  values: jax.Array  # int8, the weight's shape
  scale: jax.Array   # float32, the weight's rank, size 1 on the reduced axes
  dtype: str = flax.struct.field(pytree_node=False, default="float32")

  @property
  def shape(self) -> Tuple[int, ...]:
    return tuple(self.values.shape)

  def dequantize(self, dtype=None) -> jax.Array:
    """float32 math cast to `dtype` (None: the original dtype); a 16-bit `dtype` computes in it."""
    out = jnp.dtype(self.dtype if dtype is None else dtype)
    work = out if out.itemsize < 4 else jnp.float32
    return (self.values.astype(work) * self.scale.astype(work)).astype(out)


def _is_weight(x) -> bool:
  return isinstance(x, Int8Weight)


def _key(entry) -> str:
  return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))


def _path(path) -> Tuple[str, ...]:
  return tuple(_key(p) for p in path)


def reduced_axes(path: Sequence[str], shape: Sequence[int],
                 names: Optional[Sequence[Optional[str]]] = None) -> Tuple[int, ...]:
  """The axes one scale is shared over (module docstring); `names`: the leaf's logical axes."""
  if names is not None:
    stacked = len(names) > 0 and names[0] == LAYERS_AXIS
  else:
    stacked = (len(path) > 2 and path[0] in layer_stacking.STACKS
               and path[1] == layer_stacking.STACKED)
  lead = 1 if stacked else 0
  ndim = len(shape) - lead
  if path[-1] == "embedding":
    axes = (ndim - 1,)
  elif ndim == 2:
    axes = (0,)
  elif names is not None and names[lead] in _EMBED_AXES:
    axes = (0,)
  else:
    axes = tuple(range(ndim - 1))
  return tuple(a + lead for a in axes)


def selected(path: Sequence[str], shape: Sequence[int], dtype, min_size: int = MIN_SIZE,
             names: Optional[Sequence[Optional[str]]] = None) -> bool:
  """Whether `quantize` replaces this leaf (module docstring)."""
  lead = 1 if names is not None and len(names) > 0 and names[0] == LAYERS_AXIS else 0
  return (jnp.issubdtype(dtype, jnp.floating) and len(shape) - lead >= 2
          and bool(path) and path[-1] in SELECTED_NAMES and math.prod(shape) >= min_size)


@functools.partial(jax.jit, static_argnames=("axes",))
def _quantize_array(w: jax.Array, axes: Tuple[int, ...]) -> Tuple[jax.Array, jax.Array]:
  w = w.astype(jnp.float32)
  scale = jnp.max(jnp.abs(w), axis=axes, keepdims=True) / QMAX
  scale = jnp.where(scale > 0, scale, 1.0)
  values = jnp.clip(jnp.round(w / scale), -QMAX, QMAX).astype(jnp.int8)
  return values, scale


def _names_by_path(specs) -> Dict[Tuple[str, ...], Tuple[Optional[str], ...]]:
  flat = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  return {_path(p): tuple(s) for p, s in flat}


def quantize(params, specs=None, min_size: int = MIN_SIZE):
  """`params` with every selected leaf an `Int8Weight` (module docstring); `specs`: the logical
  PartitionSpecs of the parameters (`partitioning.logical_specs(model.abstract_params())`), for
  the contraction axes; None: by shape and path. Works on `jax.ShapeDtypeStruct`s under
  `jax.eval_shape`. Quantizing an already quantized tree leaves its Int8Weights as they are."""
  names_of = None if specs is None else _names_by_path(specs)

  def leaf(path, x):
    if _is_weight(x):
      return x
    path = _path(path)
    names = None if names_of is None else names_of.get(path)
    if names is not None:  # a PartitionSpec may be shorter than the rank (trailing None dropped)
      names = tuple(names) + (None,) * (len(x.shape) - len(names))
    if not selected(path, x.shape, x.dtype, min_size, names):
      return x
    values, scale = _quantize_array(x, reduced_axes(path, x.shape, names))
    return Int8Weight(values, scale, jnp.dtype(x.dtype).name)
  return jax.tree_util.tree_map_with_path(leaf, params, is_leaf=_is_weight)


def dequantize(tree, dtype=None):
  """A float tree: every Int8Weight as `values * scale` in `dtype` (None: its original dtype;
  "bfloat16": computed in bf16); other leaves unchanged. Plain jnp: call it inside the jit."""
  return jax.tree_util.tree_map(lambda x: x.dequantize(dtype) if _is_weight(x) else x, tree,
                                is_leaf=_is_weight)


def nbytes(tree) -> int:
  """Bytes of every array leaf (int8 values and float32 scales counted as stored); works on
  arrays and on `jax.ShapeDtypeStruct`s."""
  return sum(math.prod(np.shape(x)) * np.dtype(x.dtype).itemsize
             for x in jax.tree_util.tree_leaves(tree))


def is_quantized(tree) -> bool:
  """Whether any leaf of `tree` is an Int8Weight."""
  return any(_is_weight(x) for x in jax.tree_util.tree_leaves(tree, is_leaf=_is_weight))


def quantized_paths(tree) -> List[str]:
  """The '/'-joined paths of the Int8Weight leaves, in tree order."""
  flat = jax.tree_util.tree_leaves_with_path(tree, is_leaf=_is_weight)
  return ["/".join(_path(p)) for p, x in flat if _is_weight(x)]


class _Dequantizing:
  """A flax module's stand-in: `apply` dequantizes `variables["params"]` first (inside whatever
  jit calls it); every other attribute is the module's own."""

  def __init__(self, module, dtype=None):
    self._module = module
    self._dtype = dtype

  def apply(self, variables, *args, **kwargs):
    variables = {**variables, "params": dequantize(variables["params"], self._dtype)}
    return self._module.apply(variables, *args, **kwargs)

  def __getattr__(self, name: str) -> Any:
    if name.startswith("_"):  # (copy / pickle probe before __init__ ran)
      raise AttributeError(name)
    return getattr(self._module, name)


class Int8Model(UnifiedIOModel):
  """A UnifiedIOModel whose `params` are a `quantize`d tree: every forward (outputs, loss,
  decoding, render) dequantizes them inside its jit, to `dtype` (None: the original float32)."""

  def __init__(self, cfg: UnifiedIOConfig, dtype=None):
    super().__init__(cfg)
    shared = self.inference_module is self.module
    self.module = _Dequantizing(self.module, dtype)
    self.inference_module = (self.module if shared
                             else _Dequantizing(self.inference_module, dtype))


__all__ = ["Int8Model", "Int8Weight", "MIN_SIZE", "dequantize", "is_quantized", "nbytes",
           "quantize", "quantized_paths", "reduced_axes", "selected"]
