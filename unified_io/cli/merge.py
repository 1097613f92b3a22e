"""`uio2-merge`: weight-space interpolation of checkpoints (UnIVAL's model merging).

  uio2-merge --checkpoint runs/caption --checkpoint runs/vqa --weights 0.5,0.5 --out runs/merged

Each `--checkpoint` is a training run's MODEL_DIR or its `checkpoints/` folder (the newest step is
taken), one step of it (`.../checkpoints/3000`), a `uio2-convert` output, or an earlier merge. Only
parameters are merged: merged = sum_i w_i * params_i, computed in float64 and stored in the first
checkpoint's dtype of each parameter (or --dtype). Every checkpoint must have the same parameter
names and shapes; the error names the first parameter that differs. `--weights` (default: equal)
must be >= 0; weights that do not sum to 1 are normalised by their sum, and the command says so.

`--out` gets
  params/      an orbax checkpoint of the merged parameter tree (what `load_params` and
               INITIAL_CHECKPOINT_PATH of gin/runs/finetune.gin read)
  merge.json   the resolved sources (directory, step), the weights used, versions

Memory: parameters are read a group at a time (at most --group_mib of one checkpoint, a larger
parameter alone) and accumulated, so the peak is the merged model plus about two groups, however
many checkpoints are merged. Exit status: 0 done, 2 unusable input (the message says why).
"""

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import type_handlers

import unified_io

PARAMS_DIR, STATE_DIR, RECORD_FILE = "params", "state", "merge.json"
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(jnp.bfloat16)}
Path = Tuple[str, ...]


class MergeError(ValueError):
  """Checkpoints that cannot be merged, or weights that cannot be used."""


class Source(NamedTuple):
  """One checkpoint's parameters on disk."""
  given: str                # as the user wrote it
  directory: str            # the orbax directory holding the tree
  prefix: Path              # where the parameters sit inside that tree ("params" of a TrainState)
  step: Optional[int]       # the training step, when the checkpoint is one
  leaves: Dict[Path, Any]   # parameter path -> orbax metadata (shape, dtype)


# ------------------------------------------------------------------------------------------------
# finding and describing checkpoints
# ------------------------------------------------------------------------------------------------
def _is_orbax_tree(path: str) -> bool:
  return os.path.isdir(path) and any(
      os.path.exists(os.path.join(path, name)) for name in ("_METADATA", "_CHECKPOINT_METADATA"))


def _newest_step_dir(path: str) -> Optional[str]:
  steps = [int(name) for name in os.listdir(path)
           if name.isdigit() and os.path.isdir(os.path.join(path, name, STATE_DIR))]
  return os.path.join(path, str(max(steps))) if steps else None


def resolve(path: str) -> Tuple[str, Path, Optional[int]]:
  """(orbax directory, prefix of the params in its tree, step or None) of a user's path."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise MergeError(f"--checkpoint {path}: no such directory")
  if not _is_orbax_tree(os.path.join(path, STATE_DIR)):  # MODEL_DIR or its checkpoints/: newest
    for folder in (os.path.join(path, "checkpoints"), path):
      newest = _newest_step_dir(folder) if os.path.isdir(folder) else None
      if newest:
        path = newest
        break
  if _is_orbax_tree(os.path.join(path, STATE_DIR)):  # a training step: the TrainState's params
    step = os.path.basename(path)
    return os.path.join(path, STATE_DIR), ("params",), int(step) if step.isdigit() else None
  for candidate in (os.path.join(path, PARAMS_DIR), path):  # uio2-convert / uio2-merge, or bare
    if _is_orbax_tree(candidate):
      return candidate, (), None
  raise MergeError(f"--checkpoint {path}: no checkpoint found (looked for "
                   "checkpoints/<step>/state, <step>/state, params/ and an orbax tree in the "
                   "directory itself)")


def _flat_metadata(tree: Mapping, prefix: Path = ()) -> Dict[Path, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flat_metadata(value, prefix + (str(key),)))
    else:
      out[prefix + (str(key),)] = value
  return out


def open_source(path: str) -> Source:
  """Resolves `path` and reads its parameter names, shapes and dtypes (no arrays)."""
  directory, prefix, step = resolve(path)
  with ocp.PyTreeCheckpointer() as ckptr:
    metadata = ckptr.metadata(directory)
  tree = getattr(metadata, "item_metadata", metadata)
  tree = getattr(tree, "tree", tree)
  for key in prefix:
    if not isinstance(tree, Mapping) or key not in tree:
      raise MergeError(f"--checkpoint {path}: {directory} has no `{key}` entry")
    tree = tree[key]
  leaves = _flat_metadata(tree)
  if not leaves:
    raise MergeError(f"--checkpoint {path}: {directory} holds no parameters")
  return Source(path, directory, prefix, step, leaves)


def _name(path: Path) -> str:
  return "/".join(path)


def check_same_structure(sources: Sequence[Source]) -> None:
  """Raises `MergeError` naming the first parameter whose presence or shape differs."""
  first = sources[0]
  for index, other in enumerate(sources[1:], start=2):
    for path, meta in first.leaves.items():
      if path not in other.leaves:
        raise MergeError(f"parameter {_name(path)} of checkpoint 1 ({first.given}) is missing from "
                         f"checkpoint {index} ({other.given})")
      if tuple(other.leaves[path].shape) != tuple(meta.shape):
        raise MergeError(f"parameter {_name(path)} has shape {tuple(meta.shape)} in checkpoint 1 "
                         f"({first.given}) but {tuple(other.leaves[path].shape)} in checkpoint "
                         f"{index} ({other.given})")
    extra = [path for path in other.leaves if path not in first.leaves]
    if extra:
      raise MergeError(f"parameter {_name(extra[0])} of checkpoint {index} ({other.given}) is not "
                       f"in checkpoint 1 ({first.given})")


# ------------------------------------------------------------------------------------------------
# weights
# ------------------------------------------------------------------------------------------------
def parse_weights(text: Optional[str], count: int, say=print) -> List[float]:
  """The interpolation weights: equal by default; >= 0, one per checkpoint, normalised to sum 1."""
  if text is None:
    return [1.0 / count] * count
  try:
    weights = [float(part) for part in text.split(",")]
  except ValueError:
    raise MergeError(f"--weights {text!r}: not a comma-separated list of numbers") from None
  if len(weights) != count:
    raise MergeError(f"--weights {text!r}: {len(weights)} weights for {count} checkpoints")
  if not all(np.isfinite(w) and w >= 0 for w in weights):
    raise MergeError(f"--weights {text!r}: every weight must be a finite number >= 0")
  total = sum(weights)
  if total <= 0:
    raise MergeError(f"--weights {text!r}: the weights sum to 0")
  if abs(total - 1.0) > 1e-9:
    weights = [w / total for w in weights]
    say(f"weights sum to {total:g}, not 1: normalised to {','.join(f'{w:g}' for w in weights)}")
  return weights


# ------------------------------------------------------------------------------------------------
# merging
# ------------------------------------------------------------------------------------------------
def _groups(leaves: Mapping[Path, Any], max_bytes: int) -> Iterator[List[Path]]:
  """Consecutive parameter paths, at most `max_bytes` per group (a larger parameter alone)."""
  group, size = [], 0
  for path, meta in leaves.items():
    nbytes = int(np.prod(meta.shape, dtype=np.int64)) * np.dtype(meta.dtype).itemsize
    if group and size + nbytes > max_bytes:
      yield group
      group, size = [], 0
    group.append(path)
    size += nbytes
  if group:
    yield group


def _nest(flat: Mapping[Path, Any]) -> Dict:
  out: Dict = {}
  for path, value in flat.items():
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return out


def read_group(source: Source, paths: Sequence[Path]) -> Dict[Path, np.ndarray]:
  """The arrays of `paths` from `source`, as host NumPy arrays, nothing else read."""
  wanted = {source.prefix + path: ocp.RestoreArgs(restore_type=np.ndarray) for path in paths}
  with ocp.PyTreeCheckpointer() as ckptr:
    # partial_restore reads only the named leaves (not the optimizer state, not other modules).
    restored = ckptr.restore(source.directory, args=ocp.args.PyTreeRestore(
        item=_nest({path: 0 for path in wanted}), restore_args=_nest(wanted),
        partial_restore=True))
  for key in source.prefix:
    restored = restored[key]
  out = {}
  for path in paths:
    node = restored
    for key in path:
      node = node[key]
    out[path] = np.asarray(node)
  return out


def merge(sources: Sequence[Source], weights: Sequence[float], dtype: Optional[str] = None,
          group_bytes: int = 512 << 20, say=print) -> Dict:
  """sum_i weights[i] * params_i as a nested dict of NumPy arrays (see the module docstring)."""
  check_same_structure(sources)
  first = sources[0]
  merged: Dict[Path, np.ndarray] = {}
  groups = list(_groups(first.leaves, group_bytes))
  start = time.perf_counter()
  for number, paths in enumerate(groups, start=1):
    totals: Dict[Path, np.ndarray] = {}
    out_dtypes: Dict[Path, np.dtype] = {}
    for source, weight in zip(sources, weights):
      for path, value in read_group(source, paths).items():
        if not jnp.issubdtype(value.dtype, jnp.floating):
          raise MergeError(f"parameter {_name(path)} of {source.given} is {value.dtype}, not a "
                           "floating-point array: cannot interpolate it")
        out_dtypes.setdefault(path, DTYPES[dtype] if dtype else value.dtype)
        scaled = weight * value.astype(np.float64)
        totals[path] = scaled if path not in totals else totals[path] + scaled
    for path in paths:
      merged[path] = totals.pop(path).astype(out_dtypes[path])
    say(f"  group {number}/{len(groups)}: {len(paths)} parameters merged "
        f"({time.perf_counter() - start:.1f} s)")
  return _nest(merged)


def save_params(out_dir: str, params: Mapping, record: Mapping, overwrite: bool = False) -> None:
  """Writes `out_dir/params` (orbax, the layout `load_params` reads) and `out_dir/merge.json`."""
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  # Host arrays nobody else touches: no defensive deep copy (it would double the peak memory).
  registry = type_handlers.create_type_handler_registry(
      (np.ndarray, type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
      (jax.Array, type_handlers.ArrayHandler()))
  handler = ocp.PyTreeCheckpointHandler(type_handler_registry=registry)
  with ocp.Checkpointer(handler) as ckptr:
    ckptr.save(os.path.join(out_dir, PARAMS_DIR), args=ocp.args.PyTreeSave(params), force=overwrite)
  with open(os.path.join(out_dir, RECORD_FILE), "w") as f:  # last: marks a complete merge
    json.dump(record, f, indent=2)


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def run(checkpoints: Sequence[str], out: str, weights: Optional[str] = None,
        dtype: Optional[str] = None, overwrite: bool = False, group_mib: int = 512,
        say=print) -> Dict:
  """The merge; returns the record written to merge.json (raises `MergeError` on bad input)."""
  if len(checkpoints) < 2:
    raise MergeError(f"give at least two --checkpoint (got {len(checkpoints)})")
  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise MergeError(f"output directory {out} is not empty (pass --overwrite to replace it)")
  if group_mib <= 0:
    raise MergeError(f"--group_mib must be > 0, got {group_mib}")
  sources = [open_source(path) for path in checkpoints]
  used = parse_weights(weights, len(sources), say)
  for source, weight in zip(sources, used):
    step = f" step {source.step}" if source.step is not None else ""
    say(f"{weight:g} x {source.directory}{step} ({len(source.leaves)} parameters)")
  params = merge(sources, used, dtype, group_mib << 20, say)
  record = {"sources": [{"given": s.given, "directory": s.directory, "step": s.step}
                        for s in sources],
            "weights": used, "dtype": dtype or "as the first checkpoint",
            "versions": {"unified_io": unified_io.__version__, "jax": jax.__version__,
                         "orbax_checkpoint": ocp.__version__, "numpy": np.__version__}}
  save_params(out, params, record, overwrite)
  say(f"wrote {os.path.abspath(out)}")
  return record


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n\n", 1)[1])
  parser.add_argument("--checkpoint", action="append", default=[], required=True,
                      help="a checkpoint to merge (repeatable; at least two)")
  parser.add_argument("--weights", default=None,
                      help="comma-separated weights, one per --checkpoint (default: equal)")
  parser.add_argument("--out", required=True, help="directory to write the merged checkpoint to")
  parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                      help="stored dtype (default: each parameter's dtype in the first checkpoint)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  parser.add_argument("--group_mib", type=int, default=512,
                      help="MiB of parameters read from a checkpoint at a time")
  args = parser.parse_args(argv)
  try:
    run(args.checkpoint, args.out, args.weights, args.dtype, args.overwrite, args.group_mib)
  except MergeError as e:
    print(f"uio2-merge: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
