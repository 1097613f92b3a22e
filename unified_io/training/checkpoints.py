"""Checkpoints with orbax: the train state plus the input pipeline's position, and params-only loads.

Layout of MODEL_DIR/checkpoints/<step>/:
  state/   the `TrainState` (step, params, optimizer state, non-finite count), sharded arrays
  data/    JSON: how many batches the input pipeline has handed out, its seed and input shards
  input/   per input shard, `shard-<j>-of-<n>.zip`: its tf.data iterator state at that position
           (`unified_io.training.input`), written by the process that reads the shard; absent
           when the pipeline cannot be saved and in older checkpoints (the input then replays)

`TrainCheckpoints` saves asynchronously every `save_every` steps (training goes on while the arrays
and input states are written), keeps the newest `keep` (an input state goes with its step),
restores the latest (auto-resume) or a given step into the shardings of an abstract state. Every
item of a step is written under a temporary name that orbax renames once all are complete, so a
save cut short (kill -9) is never read: the previous step is the latest. A preempted run (SIGTERM)
calls `save(step, ..., force=True)` and `wait()` before exiting.

Faults never lose a run: a step whose files are missing or unreadable (truncated, partly deleted)
raises `CorruptCheckpointError` naming the step and the file; `set_aside` renames it to
`<step>.corrupt-<time>` (kept, never deleted) so that the newest good step is the latest. A
checkpoint whose parameters do not fit the model raises `CheckpointMismatchError` before anything
is read (`check_shapes` against `stored_shapes`, which `run_loader` uses too). A save that fails
(disk full, read-only directory) raises `SaveError` from `save`, `check_saved` or `wait`; then
`abandon` removes the failed step's temporary folder.

`load_params` is the fine-tuning / inference path: parameters only, from a training checkpoint or a
converted release (`uio2-convert` output), renamed by an assignment map and cast to a dtype.
`restore_params_sharded` is the sharded inference path: parameters only, read shard by shard onto
their NamedShardings and cast on read (no renaming).
"""

import atexit
import dataclasses
import glob
import io
import logging
import math
import os
import re
import shutil
import threading
import time
import zipfile
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from unified_io.network import layer_stacking

STATE, DATA, INPUT = "state", "data", "input"
# {shard name: {file name: bytes}}: input shards' states (`unified_io.training.input`).
InputStates = Mapping[str, Mapping[str, bytes]]


class CheckpointError(RuntimeError):
  """A checkpoint that is missing, or does not fit the model it is loaded into."""


class CheckpointMismatchError(CheckpointError):
  """A checkpoint (or a run's saved config) that is intact but belongs to another model."""


class CorruptCheckpointError(CheckpointError):
  """A step whose files are missing or unreadable; `step` and `file` say which."""

  def __init__(self, step: int, file: str, cause: str):
    super().__init__(f"checkpoint step {step} is corrupt: {file}: {cause}")
    self.step, self.file = step, file


class SaveError(CheckpointError):
  """A checkpoint save that failed (e.g. disk full); `TrainCheckpoints.abandon` removes its
  temporary folder."""


class _QuietSurfacedSaveErrors(logging.Filter):
  """Drops orbax's log records (with tracebacks) of a failed background save when absl logs
  errors only (a binary without --verbose): `SaveError` reports the same error in one line."""
  _MESSAGES = ("raised an exception", "Handler Commit operations", "Save Finalize thread",
               "Checkpointer failed")

  def filter(self, record: logging.LogRecord) -> bool:
    if logging.getLogger("absl").getEffectiveLevel() <= logging.WARNING:
      return True  # (verbose: everything)
    return not (record.levelno >= logging.ERROR and "orbax" in record.pathname
                and any(m in record.getMessage() for m in self._MESSAGES))


def _quiet_surfaced_save_errors() -> None:
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _QuietSurfacedSaveErrors) for f in absl_logger.filters):
    absl_logger.addFilter(_QuietSurfacedSaveErrors())


def _one_line(exc: BaseException, limit: int = 200) -> str:
  text = " ".join(str(exc).split()) or type(exc).__name__
  return text if len(text) <= limit else text[:limit] + " ..."


_READ_FAILURES = re.compile(r"error while reading|Error reading|NOT_FOUND|DATA_LOSS|OUT_OF_RANGE|"
                            r"No such file|truncated|unexpected end|corrupt|checksum|"
                            r"Expecting value|not a zip file", re.IGNORECASE)


def _is_read_failure(exc: BaseException) -> bool:
  """Whether `exc` (or what caused it) says a file is missing, short or unreadable."""
  while exc is not None:
    if isinstance(exc, (OSError, EOFError, zipfile.BadZipFile, UnicodeDecodeError)):
      return True
    if _READ_FAILURES.search(str(exc)):
      return True
    exc = exc.__cause__ or exc.__context__
  return False


def _unreadable(exc: BaseException) -> str:
  """What an orbax / TensorStore read error says, short: the array it could not read if named."""
  if isinstance(exc, OSError) and exc.filename:
    return f"{os.strerror(exc.errno) if exc.errno else type(exc).__name__}: {exc.filename}"
  arrays = re.findall(r"'path': '([^'/]+)/?'", str(exc))
  if arrays:
    return f"array {arrays[-1].replace('.', '/')} cannot be read (truncated or missing data)"
  return _one_line(exc)


class InputStatesHandler(ocp.handlers.AsyncCheckpointHandler):
  """Input shards' states, one deflated zip per shard, written in the background by the process
  that reads the shard (so the processes of a run write disjoint files of one item)."""

  async def async_save(self, directory, args: "InputStatesSave") -> List[ocp.future.Future]:
    async def write():
      self.save(directory, args)
    # (as orbax's own handlers: runs once the item's directory exists)
    return [ocp.future.CommitFutureAwaitingContractedSignals(write(), name="input_states_save")]

  def save(self, directory, args: "InputStatesSave") -> None:
    for name, files in args.shards.items():
      buffer = io.BytesIO()
      with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for file_name, data in files.items():
          archive.writestr(file_name, data)
      (directory / f"{name}.zip").write_bytes(buffer.getvalue())

  def restore(self, directory, args: "InputStatesRestore") -> Dict[str, Dict[str, bytes]]:
    states = {}
    for name in args.names:
      path = directory / f"{name}.zip"
      if path.exists():
        with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as archive:
          states[name] = {n: archive.read(n) for n in archive.namelist()}
    return states


@ocp.args.register_with_handler(InputStatesHandler, for_save=True)
@dataclasses.dataclass
class InputStatesSave(ocp.args.CheckpointArgs):
  shards: InputStates


@ocp.args.register_with_handler(InputStatesHandler, for_restore=True)
@dataclasses.dataclass
class InputStatesRestore(ocp.args.CheckpointArgs):
  names: Sequence[str]


class TrainCheckpoints:
  """Periodic async saves of (train state, data position, input states) under `directory`."""

  def __init__(self, directory: str, *, save_every: int = 1000, keep: Optional[int] = None,
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.save_every = save_every
    self._saving: Optional[int] = None  # the step of the save started last
    self._threads_before = set(threading.enumerate())  # (`abandon` waits for the others)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=(STATE, DATA, INPUT))
    _quiet_surfaced_save_errors()

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def check_files(self, step: int) -> None:
    """Raises CorruptCheckpointError naming the first file every step has that `step` lacks (a
    partly deleted step; missing array data is found by the restore); reads no file."""
    required = [os.path.join(STATE, "_METADATA"), os.path.join(DATA, "metadata")]
    for name in required:
      if not os.path.exists(os.path.join(self.step_dir(step), name)):
        raise CorruptCheckpointError(step, os.path.join(self.step_dir(step), name), "missing")

  def set_aside(self, step: int) -> str:
    """Renames step `step` to `<step>.corrupt-<time>` (kept for inspection, no longer a step);
    returns the new path."""
    target = f"{self.step_dir(step)}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
    if jax.process_index() == 0:
      os.rename(self.step_dir(step), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"set_aside {step}")
    self._manager.reload()
    return target

  def _read(self, step: int, item: str, **args) -> Dict[str, Any]:
    """The items `args` of `step`; any read failure is a CorruptCheckpointError naming `item`."""
    self.check_files(step)
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**args))
    except CheckpointError:
      raise
    except Exception as exc:  # orbax and TensorStore raise bare Exceptions for unreadable data
      if not _is_read_failure(exc):  # (e.g. another optimizer's state: not the files' fault)
        raise CheckpointMismatchError(
            f"checkpoint {self.step_dir(step)}: {item} does not restore into this run's state "
            f"({_one_line(exc)}); resume with the configuration it was trained with, or train in "
            "a new MODEL_DIR") from exc
      raise CorruptCheckpointError(step, os.path.join(self.step_dir(step), item),
                                   _unreadable(exc)) from exc

  def all_steps(self) -> Sequence[int]:
    return self._manager.all_steps()

  def save(self, step: int, state, data_position: Dict[str, Any], force: bool = False,
           input_states: Optional[Callable[[], Optional[InputStates]]] = None) -> bool:
    """Saves if `step` is a multiple of `save_every` (or `force`); returns whether it started.

    `input_states()` (called only when saving, e.g. `ProcessInput.state`): this process's input
    shards' states at `data_position`, or None to save the position only.
    """
    if not force and (self.save_every <= 0 or step % self.save_every):
      return False
    if step in self.all_steps():
      return False  # e.g. the preemption save of a step the interval already saved
    if getattr(state, "frozen", None) is not None:  # (the LoRA base: read again from its source)
      state = state.replace(frozen=None)
    items = {STATE: ocp.args.StandardSave(state), DATA: ocp.args.JsonSave(dict(data_position))}
    shards = input_states() if input_states is not None else None
    if shards is not None:
      items[INPUT] = InputStatesSave(dict(shards))
    self._saving = step
    try:  # (waits for the previous save first: its failure surfaces here too)
      return self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as exc:
      raise self._save_failed(exc) from exc

  def check_saved(self) -> None:
    """Raises SaveError if an async save has failed in the background (cheap; call every step)."""
    try:
      self._manager.check_for_errors()
      if not self._manager.is_saving_in_progress():
        self._manager.wait_until_finished()  # (returns at once; raises if the save failed)
    except Exception as exc:
      raise self._save_failed(exc) from exc

  def _save_failed(self, exc: BaseException) -> SaveError:
    """The SaveError for `exc` (`abandon` then removes the failed step's temporary folder)."""
    failed = self._temporary_steps()
    step = ", ".join(map(str, failed)) if failed else self._saving
    cause = exc
    while cause.__cause__ is not None or cause.__context__ is not None:  # the writer's own error
      cause = cause.__cause__ or cause.__context__
    return SaveError(f"saving checkpoint step {step} to {self.directory} failed: "
                     f"{_one_line(cause)}; the earlier steps are intact")

  def restore(self, abstract_state, step: Optional[int] = None) -> Tuple[Any, Dict[str, Any]]:
    """(state, data position) of `step` (default: the latest) laid out like `abstract_state`.

    `abstract_state`: a tree of `jax.ShapeDtypeStruct`s with `.sharding` (e.g. from
    `jax.eval_shape` plus the shardings the train step uses) or of arrays to take them from.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    if step not in self.all_steps():
      raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; "
                            f"there are {list(self.all_steps())}")
    params = getattr(abstract_state, "params", None)
    if params is not None:  # (a mismatch is not corruption: refuse before reading anything)
      self.check_files(step)
      try:
        stored = stored_shapes(self.step_dir(step))
      except Exception as exc:
        raise CorruptCheckpointError(step, os.path.join(self.step_dir(step), STATE, "_METADATA"),
                                     _unreadable(exc)) from exc
      check_shapes({p: tuple(s.shape) for p, s in _flatten(params).items()},
                   stored, f"checkpoint {self.step_dir(step)}",
                   fix="the run was trained with another model config: resume it with that "
                       "config, or train in a new MODEL_DIR")
    restored = self._read(step, STATE, **{STATE: ocp.args.StandardRestore(abstract_state),
                                         DATA: ocp.args.JsonRestore()})
    return restored[STATE], dict(restored[DATA])

  def data_position(self, step: int) -> Dict[str, Any]:
    """The input position saved with `step` (read before the input pipeline is built)."""
    return dict(self._read(step, DATA, **{DATA: ocp.args.JsonRestore()})[DATA])

  def input_states(self, step: int, names: Sequence[str]) -> Dict[str, Dict[str, bytes]]:
    """The states of input shards `names` saved with `step` ({} where none was: replay)."""
    if not os.path.isdir(os.path.join(self.directory, str(step), INPUT)):
      return {}  # a position-only checkpoint
    return dict(self._read(step, INPUT, **{INPUT: InputStatesRestore(tuple(names))})[INPUT])

  def _temporary(self) -> List[str]:
    return glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*"))

  def _temporary_steps(self) -> List[int]:
    """The steps of unfinished saves (their temporary folders)."""
    names = (re.match(r"(\d+)\.orbax-checkpoint-tmp", os.path.basename(t))
             for t in self._temporary())
    return sorted({int(m.group(1)) for m in names if m})

  def _remove_temporary(self) -> None:
    if jax.process_index() == 0:
      for tmp in self._temporary():
        shutil.rmtree(tmp, ignore_errors=True)

  def abandon(self) -> None:
    """After a SaveError: ends the manager's threads, then removes the failed step's temporary
    folder, now and at exit (an orbax metadata writer of the failed step may still write when the
    interpreter shuts its threads down)."""
    try:
      self._manager.close()
    except Exception:  # pylint: disable=broad-except  (the failure already reported)
      pass
    # The failed save's writer threads (started after this object) end within moments.
    deadline = time.time() + 10
    for thread in set(threading.enumerate()) - self._threads_before:
      if thread is not threading.current_thread():
        thread.join(timeout=max(deadline - time.time(), 0))
    self._remove_temporary()
    atexit.register(self._remove_temporary)

  def wait(self) -> None:
    """Blocks until every async save has been written; raises SaveError if one failed."""
    try:
      self._manager.wait_until_finished()
      self._manager.check_for_errors()
    except Exception as exc:
      raise self._save_failed(exc) from exc

  def close(self) -> None:
    self._manager.close()


def _flatten(tree, prefix: str = "") -> Dict[str, Any]:
  out = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, dict):
      out.update(_flatten(value, path))
    else:
      out[path] = value
  return out


def stored_shapes(step_dir: str) -> Dict[str, Tuple[int, ...]]:
  """Every parameter path -> shape in a checkpoint, read from its metadata (no arrays loaded).
  Raises CheckpointError when there is no checkpoint at `step_dir`."""
  directory = _params_dir(step_dir)
  with ocp.PyTreeCheckpointer() as ckptr:
    metadata = ckptr.metadata(directory)
  tree = getattr(metadata, "item_metadata", metadata)
  tree = getattr(tree, "tree", tree)
  if os.path.basename(directory) == STATE:
    tree = tree["params"]
  return {path: tuple(getattr(leaf, "shape", ())) for path, leaf in _flatten(tree).items()}


def check_shapes(model_params: Mapping[str, Tuple[int, ...]],
                 stored: Mapping[str, Tuple[int, ...]], where: str, fix: str) -> None:
  """Raises CheckpointMismatchError naming the first parameter whose path or shape differs
  between the model's (`model_params`) and a checkpoint's (`stored`); `fix` ends the message."""
  for path, shape in model_params.items():
    if path not in stored:
      raise CheckpointMismatchError(f"{where}: the model has parameter {path} {tuple(shape)} that "
                                    f"the checkpoint lacks; {fix}")
    if tuple(stored[path]) != tuple(shape):
      raise CheckpointMismatchError(f"{where}: parameter {path} has shape {tuple(stored[path])} "
                                    f"in the checkpoint but {tuple(shape)} in the model; {fix}")
  for path, shape in stored.items():
    if path not in model_params:
      raise CheckpointMismatchError(f"{where}: the checkpoint has parameter {path} "
                                    f"{tuple(shape)} that the model lacks; {fix}")


def _params_dir(path: str) -> str:
  """The orbax params directory of a converted release, a training checkpoint, or itself."""
  for candidate in (os.path.join(path, "params"), os.path.join(path, STATE), path):
    if os.path.isdir(candidate) and (os.path.exists(os.path.join(candidate, "_METADATA"))
                                     or os.path.exists(os.path.join(candidate, "_CHECKPOINT_METADATA"))):
      return candidate
  raise CheckpointError(f"{path}: no orbax checkpoint found (looked for params/, state/ and the "
                        "directory itself); give a `uio2-convert` output or a checkpoint step dir")


def restore_params_sharded(path: str, target_params, *, concurrent_gb: Optional[int] = None):
  """Parameters from a checkpoint at `path` (a training step dir, or a converted release) straight
  onto the shardings of `target_params`, a tree of `jax.ShapeDtypeStruct`s with `.sharding`:
  each process reads only the shards its devices hold, each cast on the host to the struct's
  dtype before it goes to its device (a bfloat16 device never holds float32). The float32 reads
  in flight are bounded by `concurrent_gb` per process (default: twice the largest parameter in
  float32, at least 1 GB), so a bfloat16 restore peaks near its bfloat16 size, not the float32
  tree's. No renaming or layout change: the checkpoint's paths and shapes must be the target's
  (`run_loader.check_shapes`)."""
  if concurrent_gb is None:  # (orbax refuses a single read larger than the bound)
    largest = max(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(target_params))
    concurrent_gb = max(1, math.ceil(2 * 4 * largest / 1e9))
  directory = _params_dir(path)
  in_state = os.path.basename(directory) == STATE
  restore_args = jax.tree_util.tree_map(
      lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape, dtype=s.dtype),
      target_params)
  item, args = target_params, restore_args
  if in_state:  # a TrainState: its params only (the optimizer state is never read)
    item, args = {"params": item}, {"params": args}
  handler = ocp.PyTreeCheckpointHandler(restore_concurrent_gb=concurrent_gb)
  with ocp.Checkpointer(handler) as ckptr:
    restored = ckptr.restore(directory, args=ocp.args.PyTreeRestore(
        item=item, restore_args=args, partial_restore=in_state))
  return restored["params"] if in_state else restored


def load_params(path: str, target_params, *, assignment_map: Sequence[Tuple[str, Optional[str]]] = (),
                dtype=None, strict: bool = True):
  """Parameters from a checkpoint at `path`, shaped like `target_params` (arrays or shape structs).

  `assignment_map`: (regex on our parameter path, replacement or None) pairs, t5x style; the first
  pattern that matches renames the path to look up in the checkpoint (`re.sub` semantics, groups
  allowed), None keeps the target's own value (e.g. a freshly initialised head). Paths are
  "/"-joined, e.g. "decoder/layers_0/mlp/wi/kernel" ("decoder/layers/mlp/wi/kernel" [N, ...] in a
  scanned model: the checkpoint's trunk layers are first converted to the target's layout, see
  `unified_io.network.layer_stacking`). A training checkpoint's params live under
  "params/". With `strict`, every target parameter must be found with the same shape.
  `dtype`: cast every restored float array (e.g. jnp.bfloat16 for inference).
  """
  directory = _params_dir(path)
  with ocp.PyTreeCheckpointer() as ckptr:
    # As host numpy arrays: the saved shardings may name devices this process does not have.
    metadata = ckptr.metadata(directory)
    as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                      getattr(metadata, "item_metadata", metadata).tree)
    stored = ckptr.restore(directory, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  if directory.endswith(os.sep + STATE) or os.path.basename(directory) == STATE:
    stored = stored["params"]
  # A per-layer checkpoint (e.g. a converted release) loads into a scanned model and vice versa.
  stored = layer_stacking.match_layout(stored, target_params)
  stored_flat = _flatten(stored)
  target_flat = _flatten(target_params)
  rules = [(re.compile(pattern), replacement) for pattern, replacement in assignment_map]
  out, missing = {}, []
  for name, target in target_flat.items():
    source = name
    for pattern, replacement in rules:
      if pattern.search(name):
        source = None if replacement is None else pattern.sub(replacement, name)
        break
    if source is None:
      out[name] = target
      continue
    if source not in stored_flat:
      missing.append(name if source == name else f"{name} (looked up as {source})")
      out[name] = target
      continue
    value = np.asarray(stored_flat[source])
    if tuple(value.shape) != tuple(target.shape):
      raise CheckpointError(f"{path}: parameter {source} has shape {value.shape}, the model wants "
                            f"{tuple(target.shape)} for {name}: a checkpoint of another config?")
    out[name] = value
  if missing and strict:
    shown = "\n  ".join(missing[:20])
    raise CheckpointError(f"{path}: {len(missing)} parameters of the model are not in the "
                          f"checkpoint (map them with assignment_map, or strict=False):\n  {shown}")

  def cast(x):
    x = jnp.asarray(x)
    return x.astype(dtype) if dtype is not None and jnp.issubdtype(x.dtype, jnp.floating) else x

  def rebuild(tree, prefix=""):
    result = {}
    for key, value in tree.items():
      path_ = f"{prefix}/{key}" if prefix else str(key)
      result[key] = rebuild(value, path_) if isinstance(value, dict) else cast(out[path_])
    return result
  return rebuild(target_params)
