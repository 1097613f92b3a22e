"""Converts released UIO2 weights (`allenai/uio2-large|xl|xxl`) into our checkpoint format.

  python -m unified_io.interop.convert --src uio2-large --out ckpt/uio2-large [--dtype bfloat16]

`--src` is a release directory: `config.json` plus safetensors or PyTorch weights, single or
sharded (see `unified_io.interop.torch_files`). `--out` gets

  params/             an orbax checkpoint of our parameter tree, stored in --dtype (default float32)
  uio2_config.json    the release's config.json, as read
  conversion.json     the source, its tensor names (they fix the modalities), the release tensors
                      we do not use, the dtype, package versions and git SHA

Load it with `cfg, params = load_converted("/ckpt/uio2-large")`. The command prints a progress line
every PROGRESS_EVERY tensors and a summary; it exits 2 with one `error:` line for unusable input (no
such directory, no config.json, no weights, a missing or misshapen tensor, a refused pickle).

Memory: the release is memory-mapped and read one tensor at a time, and our tree is converted one
module at a time (`encoder/layers_3`, `token_embedders_text`, ...) and cast to --dtype at once. The
peak is therefore the converted model in --dtype plus one module in float32; the source's pages
are file-backed page cache that the OS can drop, not a second copy of the model.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import type_handlers

import unified_io
from unified_io.config import ConfigError
from unified_io.interop.params import CheckpointError, release_to_params
from unified_io.interop.release import config_from_release
from unified_io.interop.torch_files import WeightsError, open_weights
from unified_io.model import UnifiedIOModel

PROGRESS_EVERY = 100  # tensors between progress lines
DTYPES = ("float32", "bfloat16")
CONFIG_FILE, INFO_FILE, PARAMS_DIR = "uio2_config.json", "conversion.json", "params"


def abstract_params(cfg) -> Dict:
  """Our parameter tree of `jax.ShapeDtypeStruct`s for `cfg`, allocating nothing.

  Traces `model.init` on the feature contract's batch of size 1 (`UnifiedIOModel.batch_spec`), so
  it needs that contract to cover every modality of `cfg`.
  """
  model = UnifiedIOModel(cfg)
  return nn.meta.unbox(model.abstract_params())


def _np_dtype(name: str) -> np.dtype:
  return np.dtype({"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name])


class _Progress(Mapping):
  """The release mapping, printing a line every `every` tensors read."""

  def __init__(self, release: Mapping[str, np.ndarray], total: int, every: int, say):
    self._release, self._total, self._every, self._say = release, total, every, say
    self.reads, self._start = 0, time.perf_counter()

  def __getitem__(self, name: str) -> np.ndarray:
    value = self._release[name]
    self.reads += 1
    if self.reads % self._every == 0:
      self._say(f"  {self.reads}/{self._total} tensors converted ({self.elapsed():.1f} s)")
    return value

  def __contains__(self, name) -> bool:
    return name in self._release

  def __iter__(self) -> Iterator[str]:
    return iter(self._release)

  def __len__(self) -> int:
    return len(self._release)

  def elapsed(self) -> float:
    return time.perf_counter() - self._start


def _modules(tree: Mapping) -> Iterator[Dict]:
  """One-module sub-trees {top: {child: ...}} that together make up `tree` (paths unchanged)."""
  for top, node in tree.items():
    if not isinstance(node, Mapping) or not any(isinstance(v, Mapping) for v in node.values()):
      yield {top: node}
      continue
    leaves = {k: v for k, v in node.items() if not isinstance(v, Mapping)}
    if leaves:
      yield {top: leaves}
    for child, sub in node.items():
      if isinstance(sub, Mapping):
        yield {top: {child: sub}}


def _merge(into: Dict, tree: Mapping) -> None:
  for key, value in tree.items():
    if isinstance(value, Mapping):
      _merge(into.setdefault(key, {}), value)
    else:
      into[key] = value


def convert(release: Mapping[str, np.ndarray], abstract: Mapping, dtype: str = "float32",
            say=print, every: int = PROGRESS_EVERY) -> Tuple[Dict, List[str]]:
  """(our params as NumPy `dtype`, release names unused), converting one module at a time."""
  target = _np_dtype(dtype)
  reader = _Progress(release, len(jax.tree_util.tree_leaves(abstract)), every, say)
  params: Dict = {}
  used = set()
  for module in _modules(abstract):
    part, unused = release_to_params(reader, module)
    used.update(set(release) - set(unused))
    # An owned, contiguous copy in the target dtype: drops the float32 module and the mmap views.
    _merge(params, jax.tree_util.tree_map(lambda x: np.array(x, dtype=target, order="C"), part))
  say(f"  {reader.reads} tensors converted ({reader.elapsed():.1f} s)")
  return params, sorted(set(release) - used)


# ------------------------------------------------------------------------------------------------
# our checkpoint
# ------------------------------------------------------------------------------------------------
def _versions() -> Dict[str, Optional[str]]:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    sha = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                         timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    sha = None
  return {"unified_io": unified_io.__version__, "git_sha": sha, "jax": jax.__version__,
          "flax": flax.__version__, "orbax_checkpoint": ocp.__version__,
          "numpy": np.__version__}


def save_converted(out_dir: str, params: Mapping, release_config: Mapping, info: Mapping,
                   overwrite: bool = False) -> None:
  """Writes params (orbax), the release config and the conversion record into `out_dir`."""
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  # The standard handler deep-copies host arrays and buffers compressed chunks, each another copy
  # of the model; neither is needed for a synchronous save of arrays nobody else touches. The
  # result is the format `ocp.StandardCheckpointer` restores.
  registry = type_handlers.create_type_handler_registry(
      (np.ndarray, type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
      (jax.Array, type_handlers.ArrayHandler()))  # unused; its absence makes orbax warn
  handler = ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_compression=False)
  with ocp.Checkpointer(handler) as ckptr:
    ckptr.save(os.path.join(out_dir, PARAMS_DIR), args=ocp.args.PyTreeSave(params), force=overwrite)
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump(release_config, f, indent=2)
  with open(os.path.join(out_dir, INFO_FILE), "w") as f:  # last: marks a complete checkpoint
    json.dump(info, f, indent=2)


def load_converted(ckpt_dir: str, dtype: Optional[str] = None, compute_dtype: str = "float32",
                   check: bool = True):
  """(UnifiedIOConfig, params as NumPy) from a checkpoint written by this module.

  `dtype` restores the parameters in that dtype (e.g. "bfloat16"; default: as stored);
  `compute_dtype` is the config's activation dtype. With `check`, every parameter's path and shape
  must be the ones our model has for that config (CheckpointError otherwise).
  """
  ckpt_dir = os.path.abspath(ckpt_dir)
  for name in (INFO_FILE, CONFIG_FILE, PARAMS_DIR):
    if not os.path.exists(os.path.join(ckpt_dir, name)):
      raise CheckpointError(f"{ckpt_dir}: no {name}; not a complete converted checkpoint")
  with open(os.path.join(ckpt_dir, INFO_FILE)) as f:
    info = json.load(f)
  with open(os.path.join(ckpt_dir, CONFIG_FILE)) as f:
    release_config = json.load(f)
  cfg = config_from_release(release_config, info["release_tensor_names"], dtype=compute_dtype)
  path = os.path.join(ckpt_dir, PARAMS_DIR)
  with ocp.StandardCheckpointer() as ckptr:
    if dtype is None:
      params = ckptr.restore(path)
    else:
      stored = ckptr.metadata(path).item_metadata.tree
      target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, _np_dtype(dtype)),
                                      stored)
      params = ckptr.restore(path, target)
  if check:
    _check_tree(params, abstract_params(cfg), ckpt_dir)
  return cfg, params


def _check_tree(params: Mapping, abstract: Mapping, where: str) -> None:
  shapes = lambda tree: {jax.tree_util.keystr(k): tuple(v.shape)  # noqa: E731
                         for k, v in jax.tree_util.tree_leaves_with_path(tree)}
  ours, want = shapes(params), shapes(abstract)
  for key in sorted(set(ours) | set(want)):
    if ours.get(key) != want.get(key):
      raise CheckpointError(f"{where}: parameter {key} is {ours.get(key, 'missing')} in the "
                            f"checkpoint, our model has {want.get(key, 'no such parameter')}")


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def run(src: str, out: str, dtype: str = "float32", overwrite: bool = False, say=print) -> Dict:
  """The conversion; returns the conversion record (raises on unusable input)."""
  if not os.path.isdir(src):
    raise WeightsError(f"source directory {src} does not exist")
  config_path = os.path.join(src, "config.json")
  if not os.path.isfile(config_path):
    raise WeightsError(f"{src}: no config.json")
  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise WeightsError(f"output directory {out} is not empty (pass --overwrite to replace it)")
  try:
    with open(config_path) as f:
      release_config = json.load(f)
  except json.JSONDecodeError as e:
    raise ConfigError(f"{config_path}: not JSON ({e})") from None
  weights = open_weights(src)
  names = sorted(weights)
  cfg = config_from_release(release_config, names)
  say(f"{src}: {len(names)} tensors in {', '.join(os.path.basename(p) for p in weights.files())}; "
      f"trunk {cfg.trunk.num_encoder_layers}+{cfg.trunk.num_decoder_layers} layers, emb "
      f"{cfg.trunk.emb_dim}; inputs {[m.value for m in cfg.input_modalities]}, targets "
      f"{[m.value for m in cfg.target_modalities]}")
  params, unused = convert(weights, abstract_params(cfg), dtype, say)
  if unused:
    say(f"  {len(unused)} release tensors are not used: {', '.join(unused[:8])}"
        f"{' ...' if len(unused) > 8 else ''}")
  info = {"source": os.path.abspath(src),
          "weight_files": [os.path.basename(p) for p in weights.files()],
          "tensors": len(names), "converted": len(names) - len(unused), "unused": unused,
          "dtype": dtype, "versions": _versions(), "release_tensor_names": names}
  save_converted(out, params, release_config, info, overwrite)
  say(f"wrote {os.path.abspath(out)} ({dtype})")
  return info


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--src", required=True, help="release directory: config.json + weights")
  parser.add_argument("--out", required=True, help="checkpoint directory to write")
  parser.add_argument("--dtype", choices=DTYPES, default="float32", help="stored parameter dtype")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
  args = parser.parse_args(argv)
  try:
    run(args.src, args.out, args.dtype, args.overwrite)
  # (the first three are ValueErrors too; NotImplementedError: a modality we cannot build yet)
  except (WeightsError, ConfigError, CheckpointError, ValueError, NotImplementedError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
