"""Loading a trained run for inference: the model its run config describes and its parameters.

  run = load_run("/tmp/uio2")                        # MODEL_DIR: the newest checkpoint
  run = load_run("/tmp/uio2", step=300)              # a given step
  run = load_run("/tmp/uio2/checkpoints/300")        # a step directory
  run = load_run("/tmp/uio2", dtype="bfloat16")      # parameters cast for inference
  run = load_run("/tmp/uio2", dtype="int8")          # int8 weights, dequantized in each forward
  run = load_run("/ckpt/uio2-large", model_config=make_config("large", ...))   # a bare checkpoint
  run = load_run("/tmp/uio2", dtype="bfloat16", mesh=make_mesh(model=2))       # sharded

`uio2-train` writes MODEL_DIR/run-config.json (the model config, feature lengths and vocabulary as
data, `unified_io.training.run_config`) and its checkpoints under MODEL_DIR/checkpoints/<step>/.
`load_run` rebuilds the model from that file (no gin is parsed; the caller's gin is untouched),
or from `model_config` when one is given (a bare checkpoint, or an override), and loads the
parameters of the step, checking every parameter's path and shape against the model first: a
checkpoint that does not fit is refused with one line naming the first parameter that differs.

With a `mesh` (`unified_io.partitioning.make_mesh`), every parameter is read from the checkpoint
straight onto its NamedSharding (its logical axes under `partitioning.axis_rules(fsdp)`, as
training lays it out) and cast on read when a dtype is given: each device receives only its own
shards, already in `dtype` (the float32 tree is never assembled anywhere; replicated parameters,
and every parameter when model=1 without fsdp, are whole on each device). A mesh whose axes do
not divide a split parameter dimension is refused before anything is read. In a multi-process
run every process calls `load_run` with the same global mesh; each reads only the shards its
devices hold.

With dtype="int8" (`evaluate.dtype` / `infer.dtype` in gin, `uio2-predict --dtype int8`) the
parameters are read in float32 and quantised leaf by leaf (`unified_io.adapters.int8.quantize`:
the large kernels and embedding tables to int8 with per-channel scales, about a quarter of the
float32 bytes, the rest as saved), and the model is an `int8.Int8Model`, whose every forward
dequantizes them inside its jit: they stay int8 in memory between calls. The load's peak is the
float32 tree and its int8 copy (1.25x float32; the float32 one is freed on return); on a mesh
each quantised leaf keeps its leaf's sharding (XLA propagates it).
"""

import dataclasses
import os
import re
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from unified_io import contract, partitioning
from unified_io.adapters import int8
from unified_io.config import DTYPES, UnifiedIOConfig
from unified_io.data import vocab as vocab_lib
from unified_io.model import UnifiedIOModel
from unified_io.network import layer_stacking
from unified_io.training import adapted
from unified_io.training import checkpoints as ckpt_lib
from unified_io.training import run_config as run_config_lib

CHECKPOINTS = "checkpoints"
INT8 = "int8"  # the `dtype` of weight-only int8 inference (unified_io.adapters.int8)


class RunLoadError(ValueError):
  """A run that cannot be loaded; the message is one line saying what is wrong and how to fix it."""


class Run(NamedTuple):
  model: UnifiedIOModel
  params: Dict[str, Any]  # nested dict of jax arrays (float32, or `dtype`; on `mesh` if given);
                          # with dtype="int8", `int8.Int8Weight` leaves and `model` an Int8Model
  step: int
  model_dir: Optional[str]  # None for a bare checkpoint directory given with a model config
  data_config: contract.DataConfig  # the sizes the run's input pipeline used
  task_feature_lengths: Optional[Dict[str, int]]  # what the run trained with, if known
  vocabulary: vocab_lib.UIO2Vocabulary  # the run's text vocabulary


def _one_line(exc: BaseException) -> str:
  return " ".join(str(exc).split())


def _configured(model_dir: Optional[str], model_config: Optional[UnifiedIOConfig],
                checkpoint: str) -> Tuple[UnifiedIOConfig, Optional[Dict[str, int]],
                                          vocab_lib.UIO2Vocabulary]:
  """(model config, feature lengths, vocabulary): the run's, with `model_config` winning."""
  try:
    saved = run_config_lib.load(model_dir) if model_dir is not None else None
  except run_config_lib.RunConfigError as exc:
    raise RunLoadError(_one_line(exc)) from exc
  if saved is None and model_config is None:
    raise RunLoadError(f"checkpoint {checkpoint}: no {run_config_lib.FILE} beside it to say which "
                       "model it is; give a uio2-train MODEL_DIR, or the model's gin (e.g. "
                       "--gin_file=models/large.gin)")
  if saved is None:
    return model_config, None, vocab_lib.get_vocabulary()
  return model_config or saved.model, saved.task_feature_lengths, saved.get_vocabulary()


# ------------------------------------------------------------------------------------------------
# Finding the run and its step.
# ------------------------------------------------------------------------------------------------
def _steps(checkpoints_dir: str) -> Sequence[int]:
  if not os.path.isdir(checkpoints_dir):
    return []
  return sorted(int(n) for n in os.listdir(checkpoints_dir)
                if n.isdigit() and os.path.isdir(os.path.join(checkpoints_dir, n)))


def checkpoint_steps(model_dir: str) -> Sequence[int]:
  """The steps saved under a MODEL_DIR (checkpoints/<step>/), oldest first."""
  return _steps(os.path.join(model_dir, CHECKPOINTS))


def resolve_checkpoint(checkpoint: str, step: Optional[int] = None
                       ) -> Tuple[Optional[str], str, Optional[int]]:
  """(model_dir or None, the step directory to load, the step number or None).

  `checkpoint`: a MODEL_DIR (holds checkpoints/<step>/), its checkpoints/ folder, a step directory
  checkpoints/<step>, or any orbax checkpoint directory (then model_dir is None).
  """
  path = os.path.abspath(os.path.expanduser(str(checkpoint)))
  if not os.path.isdir(path):
    raise RunLoadError(f"checkpoint {checkpoint}: no such directory; give a training MODEL_DIR "
                       f"(with {run_config_lib.FILE} and checkpoints/) or one of its "
                       "checkpoints/<step> dirs")
  parent = os.path.dirname(path)
  if os.path.basename(path).isdigit() and os.path.basename(parent) == CHECKPOINTS:
    found = int(os.path.basename(path))
    if step is not None and step != found:
      raise RunLoadError(f"checkpoint {checkpoint} is step {found}, but step={step} was asked "
                         "for; give the MODEL_DIR with the step, or the step directory alone")
    return os.path.dirname(parent), path, found
  if os.path.basename(path) == CHECKPOINTS and not os.path.isdir(os.path.join(path, CHECKPOINTS)):
    path = parent
  steps = _steps(os.path.join(path, CHECKPOINTS))
  if steps:
    chosen = steps[-1] if step is None else step
    if chosen not in steps:
      raise RunLoadError(f"checkpoint {checkpoint} has no step {step}; its steps are {steps}")
    return path, os.path.join(path, CHECKPOINTS, str(chosen)), chosen
  if os.path.isfile(os.path.join(path, run_config_lib.FILE)):
    raise RunLoadError(f"checkpoint {checkpoint}: the run has no checkpoint yet (no "
                       f"{CHECKPOINTS}/<step> folder); train it first or wait for its first save")
  return None, path, step  # a bare orbax checkpoint (e.g. a converted release)


# ------------------------------------------------------------------------------------------------
# Parameters.
# ------------------------------------------------------------------------------------------------
def _flat(tree, prefix: str = "") -> Dict[str, Any]:
  out = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    out.update(_flat(value, path) if isinstance(value, dict) else {path: value})
  return out


def _stored_shapes(step_dir: str) -> Dict[str, Tuple[int, ...]]:
  """Every parameter path -> shape in a checkpoint, read from its metadata (no arrays loaded)."""
  try:
    return ckpt_lib.stored_shapes(step_dir)
  except ckpt_lib.CheckpointError as exc:
    raise RunLoadError(_one_line(exc)) from exc


def check_shapes(model_params: Dict[str, Tuple[int, ...]],
                 stored: Dict[str, Tuple[int, ...]], where: str) -> None:
  """Raises RunLoadError naming the first parameter whose path or shape differs."""
  fix = ("the checkpoint was trained with another config: load it with the config it was trained "
         f"with (its MODEL_DIR/{run_config_lib.FILE}, or the right --gin_file / bindings)")
  try:
    ckpt_lib.check_shapes(model_params, stored, where, fix)
  except ckpt_lib.CheckpointMismatchError as exc:
    raise RunLoadError(str(exc)) from exc


def abstract_boxed_params(model: UnifiedIOModel) -> Dict[str, Any]:
  """The model's parameters as `jax.ShapeDtypeStruct`s in their logical-axis boxes."""
  return model.abstract_params()


def abstract_params(model: UnifiedIOModel) -> Dict[str, Any]:
  """The model's parameters as `jax.ShapeDtypeStruct`s (nothing allocated)."""
  return partitioning.box_values(abstract_boxed_params(model))


def sharded_target(boxed, mesh: Mesh, fsdp: bool = False, dtype=None) -> Dict[str, Any]:
  """`jax.ShapeDtypeStruct`s with the NamedShardings the parameters take on `mesh` (floating ones
  in `dtype` when given). Raises RunLoadError when a mesh axis does not divide a dimension."""
  rules = partitioning.axis_rules(fsdp)
  try:
    partitioning.check_divisible(boxed, mesh, rules)
  except ValueError as exc:
    raise RunLoadError(_one_line(exc)) from exc

  def struct(leaf, sharding):
    cast = dtype is not None and jnp.issubdtype(leaf.dtype, jnp.floating)
    return jax.ShapeDtypeStruct(leaf.shape, dtype if cast else leaf.dtype, sharding=sharding)
  return jax.tree_util.tree_map(struct, partitioning.box_values(boxed),
                                partitioning.shardings(boxed, mesh, rules))


def load_run(checkpoint: str, step: Optional[int] = None, dtype=None, *,
             model_config: Optional[UnifiedIOConfig] = None, mesh: Optional[Mesh] = None,
             fsdp: bool = False) -> Run:
  """The model and parameters of a training run (module docstring).

  Args:
    checkpoint: a MODEL_DIR (newest step, or `step`), its checkpoints/<step> directory, or a bare
      orbax checkpoint (a converted release) together with `model_config`.
    step: the step to load from a MODEL_DIR (default the newest).
    dtype: None (as saved, float32) or "bfloat16" / "float16" / a jnp dtype: floating parameters
      are cast (for inference); or "int8": weight-only int8 (module docstring), dequantized to
      float32 in each forward.
    model_config: the model to load into, instead of the run's own config.
    mesh: None (every parameter whole on the default device) or a (data, model) mesh: parameters
      are restored onto their shardings (module docstring).
    fsdp: with `mesh`, also split parameters' embed axis over `data` (as training's `fsdp`).
  Raises:
    RunLoadError: one line naming what is wrong (missing directory or step, no config, a config
      that does not parse, a checkpoint whose parameters do not fit the config, a mesh that does
      not divide a parameter).
  """
  model_dir, step_dir, found_step = resolve_checkpoint(checkpoint, step)
  cfg, lengths, vocabulary = _configured(model_dir, model_config, checkpoint)
  quantized = isinstance(dtype, str) and dtype == INT8
  if quantized:
    dtype = None  # read in float32, then quantised
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise RunLoadError(f"dtype {dtype!r}: use one of {sorted(DTYPES) + [INT8]}")
    dtype = DTYPES[dtype]

  model = UnifiedIOModel(cfg)
  boxed = abstract_boxed_params(model)
  target = partitioning.box_values(boxed)
  record = adapted.read_record(model_dir) if model_dir else None
  if record is not None:  # a LoRA run: its base, read again, plus the step's adapters
    params = adapted.load_merged_params(model, record, step_dir, target,
                                        partitioning.logical_specs(boxed))
    if dtype is not None:
      params = jax.tree_util.tree_map(
          lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    return _finish(model, cfg, params, boxed, quantized, found_step, step_dir, model_dir, lengths,
                   vocabulary)
  sharded = None if mesh is None else sharded_target(boxed, mesh, fsdp, dtype)
  stored = _stored_shapes(step_dir)
  # A per-layer checkpoint (a converted release) read by a scanned model (the large/xl/xxl gins'
  # `scan_layers`), or the reverse: checked and read in the checkpoint's own layout, then converted.
  stored_model = _in_layout_of(model, stored)
  stored_boxed = boxed if stored_model is model else abstract_boxed_params(stored_model)
  stored_target = partitioning.box_values(stored_boxed)
  check_shapes({p: tuple(s.shape) for p, s in _flat(stored_target).items()}, stored,
               f"checkpoint {step_dir}")
  if sharded is None:
    params = ckpt_lib.load_params(step_dir, target, dtype=dtype)  # converts layouts itself
  elif stored_model is model:
    params = ckpt_lib.restore_params_sharded(step_dir, sharded)
  else:
    params = ckpt_lib.restore_params_sharded(
        step_dir, sharded_target(stored_boxed, mesh, fsdp, dtype))
    out_shardings = jax.tree_util.tree_map(lambda s: s.sharding, sharded)
    # (No donation: a stacked [N, ...] output cannot reuse the per-layer buffers.)
    params = jax.jit(lambda p: layer_stacking.match_layout(p, target),
                     out_shardings=out_shardings)(params)
  return _finish(model, cfg, params, boxed, quantized, found_step, step_dir, model_dir, lengths,
                 vocabulary)


def _finish(model, cfg, params, boxed, quantized, found_step, step_dir, model_dir, lengths,
            vocabulary) -> "Run":
  if found_step is None:
    found_step = _step_from_state(step_dir)
  if quantized:
    params = int8.quantize(params, partitioning.logical_specs(boxed))
    model = int8.Int8Model(cfg)
  return Run(model=model, params=params, step=found_step, model_dir=model_dir,
             data_config=model.data_config, task_feature_lengths=lengths, vocabulary=vocabulary)


def _in_layout_of(model: UnifiedIOModel, stored: Dict[str, Tuple[int, ...]]) -> UnifiedIOModel:
  """`model`, or the same model with the other trunk layout when the checkpoint's parameter
  paths (`stored`) are in that one (`layers/...` stacked vs `layers_{i}/...`)."""
  stacked = any(path.split("/")[:2] in ([stack, layer_stacking.STACKED]
                                         for stack in layer_stacking.STACKS) for path in stored)
  trunk = model.cfg.trunk
  if stacked == trunk.scan_layers:
    return model
  return UnifiedIOModel(dataclasses.replace(
      model.cfg, trunk=dataclasses.replace(trunk, scan_layers=stacked)))


def _step_from_state(step_dir: str) -> int:
  """A bare checkpoint's step: its folder name when numeric, else 0."""
  name = os.path.basename(os.path.normpath(step_dir))
  return int(name) if re.fullmatch(r"\d+", name) else 0


__all__ = ["Run", "RunLoadError", "abstract_boxed_params", "abstract_params", "check_shapes",
           "load_run", "resolve_checkpoint", "sharded_target"]
