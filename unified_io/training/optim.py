"""The optimizer and learning-rate schedules, with the defaults t5x users expect.

`adafactor` is Adafactor with t5x's defaults: second-moment decay exponent 0.8 (decay
1 - (t + 1)^-0.8 at step t), factored second moments for parameters whose two largest dimensions
are both >= 128, update clipping at RMS 1.0, step size scaled by the parameter's RMS (floored at
1e-3), no first moment unless `beta1` is given; plus optional global-norm gradient clipping in
front (t5x's `global_norm_clip`). It is optax's `adafactor` chain, step for step, with batch axes:

Batch axes. Scanned layers (`TrunkConfig.scan_layers`) keep each stack's layers as one array with
a leading layer axis (logical name "layers", [L, ...]). Each index along a batch axis is its own
parameter: which two axes a second moment is factored over (chosen among the other axes), the
factored row/column statistics (averaged over the other axes only, so they keep the batch axis:
[L, rows] and [L, cols]), the parameter-scale RMS and the update-clipping RMS are all taken per
layer. Without this the stacked array is one parameter: one RMS for all layers (layers of RMS 0.02
and 0.2 would step alike, where per-layer training steps them 10x apart) and possibly a second
moment factored over the layer axis, so scanned training would be another optimiser than per-layer
training. t5x's Adafactor does the same (`FactorDim.BATCH` for "layers" in its factor rules).
A parameter without batch axes is updated exactly as `optax.adafactor` updates it.

The optimizer learns its batch axes from the parameters' logical axis names, as t5x's
`set_param_axes`: `adafactor(...)` returns an `AxisAwareTransformation` and
`train_setup.build_train_setup` remakes it with `for_param_axes(optimizer, logical_specs)` (an axis
named in `BATCH_AXIS_NAMES` is a batch axis), so `train.optimizer = @adafactor` in a gin file is
right for scanned and per-layer models alike. `batch_axes=` gives them directly.

Optimizer state dtype. `state_dtype="bfloat16"` stores the second moments (factored row/column
statistics and full v) and the momentum accumulator in bfloat16: half the optimizer state's memory
(a memory lever for pods, as t5x's `dtype_momentum`). Each step still computes in float32: the
stored statistics are cast up, updated, used for the update, and only then stored. The second
moments are rounded stochastically, not to nearest: their per-step change (1 - decay) = t^-0.8
falls below half a bfloat16 ulp (2^-9 to 2^-8 relative) between steps ~1,000 and ~2,400, so
round-to-nearest would freeze them (a statistic could never decrease again); stochastic rounding
keeps each stored value equal in expectation to the float32 one (tests/test_bf16.py). The
momentum moves by (1 - beta1) >= 1% of the gradient a step for beta1 <= 0.99, far above an ulp,
so it is rounded to nearest (optax's `ema(accumulator_dtype=)`).

`learning_rate_schedule` reads t5x's factor strings, e.g. "constant * rsqrt_decay" (the t5x
default: base / sqrt(max(step, warmup))) or "constant * linear_warmup * rsqrt_decay".
"""

from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from unified_io.config import require
from unified_io.network.trunk import LAYERS_AXIS

Schedule = Callable[[jnp.ndarray], jnp.ndarray]
# Logical axis names whose every index is a separate parameter (`for_param_axes`).
BATCH_AXIS_NAMES = (LAYERS_AXIS,)
# `adafactor(state_dtype=)` names -> the dtype second moments and momentum are stored in.
STATE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_FACTORS = ("constant", "linear_warmup", "rsqrt_decay", "rsqrt_normalized_decay", "linear_decay",
            "cosine_decay")


@gin.configurable
def learning_rate_schedule(factors: str = "constant * rsqrt_decay",
                           base_learning_rate: float = 1.0, warmup_steps: int = 10_000,
                           decay_steps: Optional[int] = None, min_learning_rate: float = 0.0
                           ) -> Schedule:
  """A step -> learning rate function, the product of the named t5x factors.

  constant          base_learning_rate
  linear_warmup     min(1, step / warmup_steps)
  rsqrt_decay       1 / sqrt(max(step, warmup_steps))
  rsqrt_normalized_decay  sqrt(warmup_steps) / sqrt(max(step, warmup_steps)) (1 after warmup)
  linear_decay      1 - step / decay_steps, floored at 0
  cosine_decay      0.5 (1 + cos(pi min(step, decay_steps) / decay_steps))
  The product is floored at `min_learning_rate`.
  """
  names = [name.strip() for name in factors.split("*")]
  for name in names:
    if name not in _FACTORS:
      raise ValueError(f"learning_rate_schedule: unknown factor {name!r} in {factors!r}; "
                       f"known: {', '.join(_FACTORS)}")
    if name in ("linear_decay", "cosine_decay") and not decay_steps:
      raise ValueError(f"learning_rate_schedule: factor {name!r} needs decay_steps > 0")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warmup = jnp.float32(max(warmup_steps, 1))
    lr = jnp.float32(1.0)
    for name in names:
      if name == "constant":
        lr = lr * base_learning_rate
      elif name == "linear_warmup":
        lr = lr * jnp.minimum(1.0, step / warmup)
      elif name == "rsqrt_decay":
        lr = lr / jnp.sqrt(jnp.maximum(step, warmup))
      elif name == "rsqrt_normalized_decay":
        lr = lr * jnp.sqrt(warmup) / jnp.sqrt(jnp.maximum(step, warmup))
      elif name == "linear_decay":
        lr = lr * jnp.maximum(0.0, 1.0 - step / decay_steps)
      else:  # cosine_decay
        lr = lr * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(step, decay_steps) / decay_steps))
    return jnp.maximum(lr, min_learning_rate)

  return schedule


class AxisAwareTransformation(NamedTuple):
  """An optax transformation that can be remade for its parameters' logical axis names.

  `init` / `update` run it as it was made; `for_param_axes(logical_specs)` (a tree like the
  parameters of logical PartitionSpecs, `partitioning.logical_specs`) returns it made for those
  parameters, as t5x's `Adafactor.set_param_axes` does. Call the module's `for_param_axes`, which
  takes any optimizer.
  """
  init: optax.TransformInitFn
  update: optax.TransformUpdateFn
  for_param_axes: Callable[[Any], optax.GradientTransformation]


def for_param_axes(optimizer: optax.GradientTransformation,
                   logical_specs: Any) -> optax.GradientTransformation:
  """`optimizer` as it should run on parameters with these logical axis names: remade when it
  reads them (an `AxisAwareTransformation`, e.g. `adafactor`'s), otherwise unchanged."""
  remake = getattr(optimizer, "for_param_axes", None)
  return optimizer if remake is None else remake(logical_specs)


def batch_axes_of(logical_specs: Any) -> Any:
  """Per parameter, the indices of its axes named in `BATCH_AXIS_NAMES` (a tree of tuples)."""
  return jax.tree_util.tree_map(
      lambda spec: tuple(i for i, name in enumerate(spec) if name in BATCH_AXIS_NAMES),
      logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


@gin.configurable
def adafactor(learning_rate: Schedule = gin.REQUIRED, *, decay_rate: float = 0.8,
              min_dim_size_to_factor: int = 128, clipping_threshold: Optional[float] = 1.0,
              multiply_by_parameter_scale: bool = True, beta1: Optional[float] = None,
              weight_decay_rate: Optional[float] = None, global_norm_clip: Optional[float] = None,
              batch_axes: Any = None, state_dtype: str = "float32") -> AxisAwareTransformation:
  """Adafactor with the t5x defaults, per slice along batch axes (see the module docstring).

  `batch_axes`: a tree like the parameters of tuples of axis indices (None: no batch axes).
  The result's `for_param_axes(logical_specs)` is the same optimizer with the batch axes the
  parameters' logical axis names give (`batch_axes_of`).
  `state_dtype`: a `STATE_DTYPES` name, the dtype the second moments and the momentum are stored
  in ("bfloat16": half the state memory; see the module docstring). Updates are float32 either way.
  """
  require(state_dtype in STATE_DTYPES, "adafactor.state_dtype",
          f"unknown dtype {state_dtype!r}; known: {', '.join(STATE_DTYPES)}")
  stored = STATE_DTYPES[state_dtype]

  def make(axes) -> optax.GradientTransformation:
    # optax.adafactor's chain, with the three steps that take a parameter's statistics batched.
    steps = [scale_by_factored_rms(axes, decay_rate, min_dim_size_to_factor, state_dtype=stored)]
    if clipping_threshold is not None:
      steps.append(clip_by_block_rms(axes, clipping_threshold))
    steps.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
      steps.append(scale_by_param_block_rms(axes))
    if beta1 is not None:
      steps.append(optax.ema(beta1, debias=False, accumulator_dtype=stored))
    if weight_decay_rate is not None:
      steps.append(optax.add_decayed_weights(weight_decay_rate))
    steps.append(optax.scale(-1.0))
    inner = optax.chain(*steps)
    if global_norm_clip is None:
      return inner
    return optax.chain(optax.clip_by_global_norm(global_norm_clip), inner)

  tx = make(batch_axes)
  return AxisAwareTransformation(tx.init, tx.update,
                                 lambda logical_specs: make(batch_axes_of(logical_specs)))


# ------------------------------------------------------------------------------------------------
# Adafactor's steps that take statistics of a parameter, each statistic per slice along the
# parameter's batch axes. `batch_axes`: a tree like the parameters of tuples of axis indices, or
# None (no batch axes: optax's transformations exactly).
# ------------------------------------------------------------------------------------------------
def _leaves(batch_axes: Any, tree: Any, *like_tree: Any):
  """(treedef of `tree`, [(leaf, *the leaves of `like_tree` there, its batch axes), ...])."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  batches = [()] * len(leaves) if batch_axes is None else treedef.flatten_up_to(batch_axes)
  others = [treedef.flatten_up_to(t) for t in like_tree]
  return treedef, list(zip(leaves, *others, batches))


def _unzip(treedef, outputs: List[tuple], n: int) -> List[Any]:
  """Per-leaf n-tuples -> n trees."""
  return [treedef.unflatten([out[i] for out in outputs]) for i in range(n)]


def _averaged_axes(ndim: int, batch: Sequence[int]) -> Tuple[int, ...]:
  """The axes a statistic of a parameter averages over: all but its batch axes."""
  for axis in batch:
    if not 0 <= axis < ndim:
      raise ValueError(f"adafactor: batch axis {axis} for a parameter of rank {ndim}")
  return tuple(i for i in range(ndim) if i not in batch)


def _block_rms(x: jax.Array, batch: Sequence[int]) -> jax.Array:
  """The RMS of each slice of `x` along its batch axes, shaped to broadcast against `x`."""
  return jnp.sqrt(jnp.mean(x * x, axis=_averaged_axes(x.ndim, batch), keepdims=True))


def factored_dims(shape: Sequence[int], batch: Sequence[int], min_dim_size_to_factor: int
                  ) -> Optional[Tuple[int, int]]:
  """(row, column) axes of a factored second moment: the second largest and the largest non-batch
  axis, when both have >= `min_dim_size_to_factor` elements; None: a full second moment.
  optax's rule, applied to one slice."""
  axes = _averaged_axes(len(shape), batch)
  if len(axes) < 2:
    return None
  by_size = [axes[i] for i in np.argsort([shape[a] for a in axes])]
  if shape[by_size[-2]] < min_dim_size_to_factor:
    return None
  return by_size[-2], by_size[-1]


def scale_by_factored_rms(batch_axes: Any, decay_rate: float, min_dim_size_to_factor: int,
                          epsilon: float = 1e-30, state_dtype: Any = None
                          ) -> optax.GradientTransformation:
  """g / sqrt(second moment estimate): optax's `scale_by_factored_rms` (its state, its decay
  1 - (t + 1)^-decay_rate at step t), the row and column statistics kept per batch index.

  `state_dtype`: the dtype the statistics are stored in (None: the parameter's, as optax); they
  are updated and used in float32, and stored with `_store` (stochastic rounding to bfloat16).
  """
  def init(params):
    def moments(p, batch):
      dtype = state_dtype or p.dtype
      dims = factored_dims(p.shape, batch, min_dim_size_to_factor)
      # (a new placeholder per leaf: leaves sharing one buffer cannot be donated to a step)
      unused = lambda: jnp.zeros((1,), dtype)  # noqa: E731
      if dims is None:
        return unused(), unused(), jnp.zeros(p.shape, dtype)
      row, col = dims  # v_row averages over the column axis, v_col over the row axis
      return (jnp.zeros(tuple(np.delete(p.shape, col)), dtype),
              jnp.zeros(tuple(np.delete(p.shape, row)), dtype), unused())

    treedef, leaves = _leaves(batch_axes, params)
    v_row, v_col, v = _unzip(treedef, [moments(*leaf) for leaf in leaves], 3)
    return optax.FactoredState(count=jnp.zeros([], jnp.int32), v_row=v_row, v_col=v_col, v=v)

  def update(grads, state, params):
    t = jnp.asarray(state.count + 1, jnp.float32)
    decay = 1.0 - t ** (-decay_rate)
    # Rounding noise differs per step, per leaf and per statistic, and depends on nothing else,
    # so a resumed run rounds as the uninterrupted one. (Odd 32-bit constants spread the seeds.)
    step_seed = state.count.astype(jnp.uint32) * jnp.uint32(0x9E3779B9)

    def scaled(index, g, v_row, v_col, v, p, batch):
      dtype = state_dtype or p.dtype
      store = lambda x, k: _store(  # noqa: E731
          x, dtype, step_seed + jnp.uint32((3 * index + k) * 0x85EBCA6B % 2**32))
      f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
      dims = factored_dims(p.shape, batch, min_dim_size_to_factor)
      g_sqr = g * g + epsilon
      unused = lambda: jnp.zeros((1,), dtype)  # noqa: E731
      if dims is None:
        v = decay * f32(v) + (1.0 - decay) * g_sqr
        return g * v ** -0.5, unused(), unused(), store(v, 0)
      row, col = dims
      v_row = decay * f32(v_row) + (1.0 - decay) * jnp.mean(g_sqr, axis=col)
      v_col = decay * f32(v_col) + (1.0 - decay) * jnp.mean(g_sqr, axis=row)
      row_in_v_row = row - 1 if row > col else row
      row_factor = (v_row / jnp.mean(v_row, axis=row_in_v_row, keepdims=True)) ** -0.5
      col_factor = v_col ** -0.5
      update = g * jnp.expand_dims(row_factor, axis=col) * jnp.expand_dims(col_factor, axis=row)
      return update, store(v_row, 1), store(v_col, 2), unused()

    treedef, leaves = _leaves(batch_axes, grads, state.v_row, state.v_col, state.v, params)
    outputs = [scaled(index, *leaf) for index, leaf in enumerate(leaves)]
    updates, v_row, v_col, v = _unzip(treedef, outputs, 4)
    return updates, optax.FactoredState(count=optax.safe_increment(state.count), v_row=v_row,
                                        v_col=v_col, v=v)

  return optax.GradientTransformation(init, update)


def _store(x: jax.Array, dtype: Any, seed: jax.Array) -> jax.Array:
  """Float32 `x` as `dtype`. To bfloat16 by stochastic rounding: 16 pseudo-random bits added to
  the 16 dropped mantissa bits carry into the kept ones, so x rounds up with probability (its
  distance from the bfloat16 value below) / ulp and the stored value's expectation is x. Other
  dtypes: a plain cast."""
  if jnp.dtype(dtype) != jnp.bfloat16:
    return x.astype(dtype)
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  kept = (bits + (_hash_bits(x.shape, seed) >> 16)) & jnp.uint32(0xFFFF0000)  # a bfloat16 value
  return jax.lax.bitcast_convert_type(kept, jnp.float32).astype(jnp.bfloat16)


def _hash_bits(shape: Sequence[int], seed: jax.Array) -> jax.Array:
  """32 well-mixed bits per element of an array of `shape`: a 32-bit integer hash (two
  multiply-xorshift rounds) of the element's flat index xor `seed`. Elementwise integer arithmetic
  on iotas, so it shards with the array, and cheaper than a `jax.random.bits` per optimizer leaf
  (on CPU those more than doubled the tiny model's update compile time; this adds about half)."""
  index = jnp.zeros(shape, jnp.uint32)
  for axis, size in enumerate(shape):
    index = index * jnp.uint32(size) + jax.lax.broadcasted_iota(jnp.uint32, shape, axis)
  h = index ^ seed.astype(jnp.uint32)
  h = (h ^ (h >> 16)) * jnp.uint32(0x7FEB352D)
  h = (h ^ (h >> 15)) * jnp.uint32(0x846CA68B)
  return h ^ (h >> 16)


def clip_by_block_rms(batch_axes: Any, threshold: float) -> optax.GradientTransformation:
  """Each slice of each update scaled down to RMS <= `threshold` (optax's `clip_by_block_rms`)."""
  def update(updates, state, params=None):
    del params
    treedef, leaves = _leaves(batch_axes, updates)
    clipped = [u / jnp.maximum(1.0, _block_rms(u, batch) / threshold) for u, batch in leaves]
    return treedef.unflatten(clipped), state

  return optax.GradientTransformation(optax.init_empty_state, update)


def scale_by_param_block_rms(batch_axes: Any, min_scale: float = 1e-3
                             ) -> optax.GradientTransformation:
  """Each slice of each update times its parameter slice's RMS, floored at `min_scale` (optax's
  `scale_by_param_block_rms`: steps relative to the parameter's size)."""
  def update(updates, state, params):
    if params is None:
      raise ValueError("adafactor: multiply_by_parameter_scale needs the parameters in update()")
    treedef, leaves = _leaves(batch_axes, updates, params)
    scaled = [u * jnp.maximum(_block_rms(p, batch), min_scale) for u, p, batch in leaves]
    return treedef.unflatten(scaled), state

  return optax.GradientTransformation(optax.init_empty_state, update)


@gin.configurable
def adamw(learning_rate: Schedule = gin.REQUIRED, *, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 0.0,
          clipping_threshold: Optional[float] = 1.0) -> optax.GradientTransformation:
  """AdamW (optax) after global-norm clipping: the usual optimizer of LoRA adapters
  (runs/finetune_lora.gin). Adafactor's parameter-scaled steps suit a full model, not adapters
  whose B factor starts at zero (its scale would pin the step at `min_scale`)."""
  parts = [optax.clip_by_global_norm(clipping_threshold)] if clipping_threshold else []
  return optax.chain(*parts, optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps,
                                         weight_decay=weight_decay))
