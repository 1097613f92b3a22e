"""Loading a trained run for inference: the model its gin config describes and its parameters.

  run = load_run("/tmp/uio2")                        # MODEL_DIR: the newest checkpoint
  run = load_run("/tmp/uio2", step=300)              # a given step
  run = load_run("/tmp/uio2/checkpoints/300")        # a step directory
  run = load_run("/tmp/uio2", dtype="bfloat16")      # parameters cast for inference

`uio2-train` writes MODEL_DIR/config.gin (the resolved gin config) and its checkpoints under
MODEL_DIR/checkpoints/<step>/.
`load_run` parses that config.gin in a private gin state (the caller's gin bindings are untouched
before and after), rebuilds the model config with `make_config` as the run did (`train.model_config`
when bound), and loads the parameters of the step, checking every parameter's path and shape
against the model first. Extra `gin_files` / `gin_bindings` apply after config.gin (a config for a
checkpoint without one, or an override); a checkpoint that does not fit the result is refused with
one line naming the first parameter that differs.
"""

import contextlib
import os
import re
import tokenize
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from unified_io.cli import gin_flags
from unified_io.config import UnifiedIOConfig
from unified_io.presets import make_config
from unified_io import contract as data_config_lib
from unified_io.data import vocab as vocab_lib
from unified_io.cli.gin_paths import gin_dir
from unified_io.model import UnifiedIOModel
from unified_io.training import checkpoints as ckpt_lib

CONFIG_FILE = "config.gin"
CHECKPOINTS = "checkpoints"


class RunLoadError(ValueError):
  """A run that cannot be loaded; the message is one line saying what is wrong and how to fix it."""


class Run(NamedTuple):
  model: UnifiedIOModel
  params: Dict[str, Any]  # nested dict of jax arrays (float32, or `dtype` when given)
  step: int
  model_dir: Optional[str]  # None for a bare checkpoint directory given with gin_files
  data_config: data_config_lib.DataConfig  # the sizes the run's input pipeline used
  task_feature_lengths: Optional[Dict[str, int]]  # train.task_feature_lengths, if bound
  vocabulary: vocab_lib.UIO2Vocabulary  # the run's text vocabulary (get_vocabulary in its gin)


# ------------------------------------------------------------------------------------------------
# Gin, scoped.
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def isolated_gin():
  """Runs the body on an empty gin config and puts the caller's config back afterwards.

  gin keeps one global config; gin-config (pinned, 0.5.0) has no public snapshot, so the module
  state that parsing changes is saved and restored here.
  """
  # pylint: disable=protected-access
  state = gin.config
  saved_config = {key: dict(values) for key, values in state._CONFIG.items()}
  saved_imports = set(state._IMPORTS)
  with state._OPERATIVE_CONFIG_LOCK:
    saved_operative = dict(state._OPERATIVE_CONFIG)
  saved_singletons = dict(state._SINGLETONS)
  saved_prefixes = list(state._LOCATION_PREFIXES)
  saved_locked = gin.config_is_locked()
  gin.clear_config()
  try:
    yield
  finally:
    gin.clear_config()
    state._CONFIG.update(saved_config)
    state._IMPORTS.update(saved_imports)
    with state._OPERATIVE_CONFIG_LOCK:
      state._OPERATIVE_CONFIG.update(saved_operative)
    state._SINGLETONS.update(saved_singletons)
    state._LOCATION_PREFIXES[:] = saved_prefixes
    state._set_config_is_locked(saved_locked)


def _evaluated(value):
  """A queried gin value with macros (`%X`) and `@fn()` references evaluated, in containers too."""
  if isinstance(value, gin.config.ConfigurableReference):
    fn = value.scoped_configurable_fn
    return fn() if value.evaluate else fn
  if isinstance(value, dict):
    return {k: _evaluated(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return type(value)(_evaluated(v) for v in value)
  return value


def _bound(key: str):
  """The evaluated value gin binds to `key` ("fn.arg"), or None when nothing is bound."""
  try:
    return _evaluated(gin.query_parameter(key))
  except ValueError:
    return None


def _configured(run_gin: Optional[str], gin_files: Sequence[str], bindings: Sequence[str]
                ) -> Tuple[UnifiedIOConfig, data_config_lib.DataConfig, Optional[Dict[str, int]],
                           vocab_lib.UIO2Vocabulary]:
  """Parses the gin and evaluates what a run needs, all inside an isolated gin state.

  The run's own config.gin is parsed with `skip_unknown`: it names every configurable the run
  used, including ones of modules this process need not import (task registrations, say); what
  the user adds must parse strictly.
  """
  with isolated_gin():
    try:
      if run_gin is not None:
        gin.add_config_file_search_path(gin_dir())
        gin.parse_config_files_and_bindings([run_gin], [], finalize_config=False,
                                            skip_unknown=True)
      gin_flags.parse_gin(gin_files, bindings)
    except (OSError, ValueError, SyntaxError, ImportError, tokenize.TokenError) as exc:
      files = ([run_gin] if run_gin else []) + list(gin_files)
      raise RunLoadError(f"cannot parse the run's gin ({', '.join(files)}): "
                         f"{_one_line(exc)}") from exc
    try:
      cfg = _bound("train.model_config")
      if not isinstance(cfg, UnifiedIOConfig):
        cfg = make_config()
      data_cfg = data_config_lib.DataConfig.from_model(cfg)
      lengths = _bound("train.task_feature_lengths")
      vocabulary = vocab_lib.get_vocabulary()
    except (ValueError, TypeError) as exc:
      raise RunLoadError(f"the run's gin does not give a model config: {_one_line(exc)}; check "
                         "--gin_file / --gin bindings") from exc
  if lengths is not None and not isinstance(lengths, dict):
    lengths = None
  return cfg, data_cfg, (dict(lengths) if lengths else None), vocabulary


def _one_line(exc: BaseException) -> str:
  return " ".join(str(exc).split())


# ------------------------------------------------------------------------------------------------
# Finding the run and its step.
# ------------------------------------------------------------------------------------------------
def _steps(checkpoints_dir: str) -> Sequence[int]:
  if not os.path.isdir(checkpoints_dir):
    return []
  return sorted(int(n) for n in os.listdir(checkpoints_dir)
                if n.isdigit() and os.path.isdir(os.path.join(checkpoints_dir, n)))


def resolve_checkpoint(checkpoint: str, step: Optional[int] = None
                       ) -> Tuple[Optional[str], str, Optional[int]]:
  """(model_dir or None, the step directory to load, the step number or None).

  `checkpoint`: a MODEL_DIR (holds checkpoints/<step>/), its checkpoints/ folder, a step directory
  checkpoints/<step>, or any orbax checkpoint directory (then model_dir is None).
  """
  path = os.path.abspath(os.path.expanduser(str(checkpoint)))
  if not os.path.isdir(path):
    raise RunLoadError(f"checkpoint {checkpoint}: no such directory; give a training MODEL_DIR "
                       "(with config.gin and checkpoints/) or one of its checkpoints/<step> dirs")
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
  if os.path.isfile(os.path.join(path, CONFIG_FILE)):
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
    directory = ckpt_lib._params_dir(step_dir)  # pylint: disable=protected-access
  except ckpt_lib.CheckpointError as exc:
    raise RunLoadError(_one_line(exc)) from exc
  with ocp.PyTreeCheckpointer() as ckptr:
    metadata = ckptr.metadata(directory)
  tree = getattr(metadata, "item_metadata", metadata)
  tree = getattr(tree, "tree", tree)
  if os.path.basename(directory) == ckpt_lib.STATE:
    tree = tree["params"]
  return {path: tuple(getattr(leaf, "shape", ())) for path, leaf in _flat(tree).items()}


def check_shapes(model_params: Dict[str, Tuple[int, ...]],
                 stored: Dict[str, Tuple[int, ...]], where: str) -> None:
  """Raises RunLoadError naming the first parameter whose path or shape differs."""
  fix = ("the checkpoint was trained with another config: load it with the gin it was trained "
         "with (its MODEL_DIR/config.gin, or the right --gin_file / bindings)")
  for path, shape in model_params.items():
    if path not in stored:
      raise RunLoadError(f"{where}: the model has parameter {path} {shape} that the checkpoint "
                         f"lacks; {fix}")
    if tuple(stored[path]) != tuple(shape):
      raise RunLoadError(f"{where}: parameter {path} has shape {tuple(stored[path])} in the "
                         f"checkpoint but {tuple(shape)} in the model; {fix}")
  for path, shape in stored.items():
    if path not in model_params:
      raise RunLoadError(f"{where}: the checkpoint has parameter {path} {tuple(shape)} that the "
                         f"model lacks; {fix}")


def abstract_params(model: UnifiedIOModel) -> Dict[str, Any]:
  """The model's parameters as `jax.ShapeDtypeStruct`s (nothing allocated)."""
  batch = model.dummy_batch(1)
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)
  return nn.meta.unbox(boxed)


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def load_run(checkpoint: str, step: Optional[int] = None, dtype=None, *,
             gin_files: Sequence[str] = (), gin_bindings: Sequence[str] = ()) -> Run:
  """The model and parameters of a training run (module docstring).

  Args:
    checkpoint: a MODEL_DIR (newest step, or `step`), its checkpoints/<step> directory, or a bare
      orbax checkpoint (a converted release) together with `gin_files` for its model.
    step: the step to load from a MODEL_DIR (default the newest).
    dtype: None (as saved, float32) or "bfloat16" / "float16" / a jnp dtype: floating parameters
      are cast (for inference).
    gin_files, gin_bindings: more gin after MODEL_DIR/config.gin (files found as `--gin_file`s
      are: the package's gin/ folder, or paths).
  Raises:
    RunLoadError: one line naming what is wrong (missing directory or step, no config, a gin that
      does not parse, a checkpoint whose parameters do not fit the config).
  """
  model_dir, step_dir, found_step = resolve_checkpoint(checkpoint, step)
  run_gin = os.path.join(model_dir, CONFIG_FILE) if model_dir is not None else None
  if run_gin is None or not os.path.isfile(run_gin):
    run_gin = None
    if not gin_files:
      raise RunLoadError(f"checkpoint {checkpoint}: no {CONFIG_FILE} beside it to say which model "
                         "it is; give a uio2-train MODEL_DIR, or the model's gin (e.g. "
                         "--gin_file=models/large.gin)")
  cfg, data_cfg, lengths, vocabulary = _configured(run_gin, gin_files, gin_bindings)
  if isinstance(dtype, str):
    if dtype not in _DTYPES:
      raise RunLoadError(f"dtype {dtype!r}: use one of {sorted(_DTYPES)}")
    dtype = _DTYPES[dtype]

  model = UnifiedIOModel(cfg)
  target = abstract_params(model)
  check_shapes({p: tuple(s.shape) for p, s in _flat(target).items()}, _stored_shapes(step_dir),
               f"checkpoint {step_dir}")
  params = ckpt_lib.load_params(step_dir, target, dtype=dtype)
  if found_step is None:
    found_step = _step_from_state(step_dir)
  return Run(model=model, params=params, step=found_step, model_dir=model_dir,
             data_config=data_cfg, task_feature_lengths=lengths, vocabulary=vocabulary)


def _step_from_state(step_dir: str) -> int:
  """A bare checkpoint's step: its folder name when numeric, else 0."""
  name = os.path.basename(os.path.normpath(step_dir))
  return int(name) if re.fullmatch(r"\d+", name) else 0


__all__ = ["Run", "RunLoadError", "abstract_params", "check_shapes", "isolated_gin", "load_run",
           "resolve_checkpoint"]
