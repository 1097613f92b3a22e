"""Putting a trained tokenizer into a model before the model trains: gin `train.tokenizers`.

  params = graft_tokenizers(params, {"image": "/runs/vqgan"}, model_config)

A tokenizer folder is what `uio2-train-tokenizer` writes (`tokenizer_training/state.py`):
tokenizer.json names its kind and VQ config, checkpoints/<step>/state holds its parameters, the
same tree a model holds under `target_embedders_<kind>/vqgan`. Grafting replaces exactly that
subtree (every other leaf is the very object it was) and casts each leaf to the model's dtype. It
refuses, in one line (`TokenizerGraftError`, a `ConfigError`: `uio2-train` exits 2): a kind other
than image / audio, a model without that target, a folder of the other kind, a tokenizer config
other than the model's `image_vqgan` / `audio_vqgan` (the differing fields named), all from
tokenizer.json (`check_tokenizers`, which the trainer runs before MODEL_DIR is written); and
parameters of other shapes, found when they are read at initialisation (MODEL_DIR then holds an
empty checkpoints/).

The tokenizer is frozen while the model trains: its parameters get no gradient, because the
targets are encoded into codes under `stop_gradient` (integer codes in any case) and the decoder
only renders predicted tokens, outside the loss (`network/embedders/vq_targets.py`). Adafactor
without weight decay therefore leaves them bit-identical (tests/test_tokenizer_graft.py); an
`adafactor.weight_decay_rate` would shrink them, gradient or not.
"""

import dataclasses
import json
import os
from typing import Any, Dict, Mapping, NamedTuple, Optional, Union

import jax
import numpy as np

from unified_io.config import AudioVQGANConfig, ConfigError, ImageVQGANConfig, UnifiedIOConfig
from unified_io.modalities import Modality
from unified_io.training import checkpoints as ckpt_lib

# A tokenizer folder's record: which kind of tokenizer, and its VQ config as data.
RECORD = "tokenizer.json"
FORMAT = 1
CONFIGS = {"image": ImageVQGANConfig, "audio": AudioVQGANConfig}
VQConfig = Union[ImageVQGANConfig, AudioVQGANConfig]

CHECKPOINTS = "checkpoints"


def write_record(directory: str, kind: str, config: VQConfig) -> None:
  """Writes `directory`/tokenizer.json (`uio2-train-tokenizer` does, before its first step)."""
  os.makedirs(directory, exist_ok=True)
  record = {"kind": kind, "config": dataclasses.asdict(config), "format": FORMAT}
  with open(os.path.join(directory, RECORD), "w") as f:
    json.dump(record, f, indent=2)
    f.write("\n")


def config_from_record(kind: str, fields: dict) -> VQConfig:
  """The VQ config a record describes (JSON lists back to the dataclass's tuples)."""
  as_tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
  return CONFIGS[kind](**as_tuples)


class TokenizerGraftError(ConfigError):
  """A tokenizer that cannot be read, or does not fit the model it is put into (one line)."""


class TokenizerLocation(NamedTuple):
  """A tokenizer's record and the checkpoint step chosen, read without loading any array."""
  kind: str
  config: VQConfig
  step: int
  path: str  # the tokenizer folder (holding tokenizer.json)

  @property
  def step_dir(self) -> str:
    return os.path.join(self.path, CHECKPOINTS, str(self.step))


class TrainedTokenizer(NamedTuple):
  kind: str
  config: VQConfig
  params: Any  # the VQ module's parameter tree, NumPy arrays as saved
  step: int
  path: str  # the tokenizer folder


def model_subtree(kind: str) -> tuple:
  """The keys of a kind's tokenizer parameters in a model's tree."""
  return (f"target_embedders_{kind}", "vqgan")


def locate_tokenizer(path: str, step: Optional[int] = None) -> TokenizerLocation:
  """The record and step (default: the newest) of a tokenizer folder or of one of its
  checkpoints/<step> folders (that step)."""
  folder = os.path.abspath(path)
  if not os.path.isfile(os.path.join(folder, RECORD)):
    parent, name = os.path.split(folder)
    root = os.path.dirname(parent)
    if not (name.isdigit() and os.path.basename(parent) == CHECKPOINTS
            and os.path.isfile(os.path.join(root, RECORD))):
      raise TokenizerGraftError(f"tokenizer {path}: no {RECORD}: give a tokenizer folder "
                                f"(uio2-train-tokenizer output) or one of its {CHECKPOINTS}/<step>")
    if step is not None and step != int(name):
      raise TokenizerGraftError(f"tokenizer {path} is step {int(name)}, but step {step} was asked")
    folder, step = root, int(name)
  kind, config = read_record(folder)
  steps = _steps(folder)
  if not steps:
    raise TokenizerGraftError(f"tokenizer {folder}: no checkpoint in "
                              f"{os.path.join(folder, CHECKPOINTS)}")
  if step is None:
    step = max(steps)
  elif step not in steps:
    raise TokenizerGraftError(f"tokenizer {folder}: no checkpoint step {step}; there are {steps}")
  return TokenizerLocation(kind, config, step, folder)


def read_tokenizer(path: str, step: Optional[int] = None) -> TrainedTokenizer:
  """A tokenizer's parameters (host NumPy), kind and config; `path` as in `locate_tokenizer`."""
  where = locate_tokenizer(path, step)
  # The target is the checkpoint's own tree (from its metadata): the model checks the shapes.
  stored = ckpt_lib.stored_shapes(where.step_dir)
  target = _unflatten({p: jax.ShapeDtypeStruct(s, np.float32) for p, s in stored.items()})
  params = jax.device_get(ckpt_lib.load_params(where.step_dir, target))
  return TrainedTokenizer(where.kind, where.config, params, where.step, where.path)


def check_tokenizers(tokenizers: Optional[Mapping[str, str]], model_config: UnifiedIOConfig
                     ) -> Dict[str, TokenizerLocation]:
  """Each {kind: path} located and checked against the model (kind, target, config) from the
  records alone; raises `TokenizerGraftError` (one line). Nothing is loaded."""
  if not tokenizers:
    return {}
  if not isinstance(tokenizers, Mapping):
    raise TokenizerGraftError("train.tokenizers must be a dict {kind: tokenizer folder}, got "
                              f"{tokenizers!r}")
  found = {}
  for kind, path in tokenizers.items():
    if kind not in CONFIGS:
      raise TokenizerGraftError(f"train.tokenizers: unknown kind {kind!r}; known: "
                                f"{', '.join(map(repr, CONFIGS))}")
    model_vq = getattr(model_config, f"{kind}_vqgan")
    if Modality(kind) not in model_config.target_modalities or model_vq is None:
      targets = ", ".join(m.value for m in model_config.target_modalities)
      raise TokenizerGraftError(f"train.tokenizers: the model has no {kind} target (its targets: "
                                f"{targets}), so it has no {kind} tokenizer to replace")
    where = locate_tokenizer(path)
    if where.kind != kind:
      raise TokenizerGraftError(f"train.tokenizers[{kind!r}]: {where.path} is an {where.kind} "
                                f"tokenizer, not an {kind} one")
    differences = _differences(where.config, model_vq)
    if differences:
      raise TokenizerGraftError(f"train.tokenizers[{kind!r}]: {where.path} was trained with "
                                f"another config than the model's {kind}_vqgan: {differences}")
    found[kind] = where
  return found


def graft_tokenizers(params: Mapping[str, Any], tokenizers: Mapping[str, str],
                     model_config: UnifiedIOConfig) -> Dict[str, Any]:
  """`params` (unboxed) with each kind's `target_embedders_<kind>/vqgan` replaced by the trained
  tokenizer at its path (`locate_tokenizer`), cast to the model's dtypes; every other leaf is the
  same object. Raises `TokenizerGraftError` (one line) as the module docstring lists."""
  grafted = dict(params)
  for kind, where in check_tokenizers(tokenizers, model_config).items():
    outer, inner = model_subtree(kind)
    if inner not in params.get(outer, {}):
      raise TokenizerGraftError(f"train.tokenizers[{kind!r}]: the parameters have no "
                                f"{outer}/{inner} (made from a batch without {kind} targets?)")
    trained = read_tokenizer(where.path, where.step)
    grafted[outer] = {**params[outer], inner: _fitted(trained, params[outer][inner])}
  return grafted


def starting_params(params: Mapping[str, Any], initial_checkpoint_path: Optional[str],
                    assignment_map, tokenizers: Optional[Mapping[str, str]],
                    model_config: UnifiedIOConfig) -> Mapping[str, Any]:
  """What a run starts from: freshly initialised `params`, INITIAL_CHECKPOINT_PATH's read over
  them through the assignment map (`ckpt_lib.load_params`), then the trained `tokenizers` grafted
  in (over the checkpoint's own). `params` itself when neither is given. The trainer's full
  state, a LoRA run's base, and that base rebuilt for evaluation all come from here."""
  if initial_checkpoint_path:
    params = ckpt_lib.load_params(initial_checkpoint_path, params,
                                  assignment_map=[tuple(pair) for pair in assignment_map])
  if tokenizers:
    params = graft_tokenizers(params, tokenizers, model_config)
  return params


def _fitted(trained: TrainedTokenizer, model_vq: Any) -> Any:
  """The tokenizer's parameters as a tree like `model_vq`, each leaf in that leaf's dtype."""
  ours = {_path(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(model_vq)}
  theirs = {_path(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(trained.params)}
  try:
    ckpt_lib.check_shapes(ours, {p: x.shape for p, x in theirs.items()},
                          f"tokenizer {trained.path} step {trained.step}",
                          fix=f"it does not fit the model's {trained.kind} tokenizer")
  except ckpt_lib.CheckpointMismatchError as exc:
    raise TokenizerGraftError(str(exc)) from None
  return jax.tree_util.tree_map_with_path(
      lambda p, x: theirs[_path(p)].astype(x.dtype), model_vq)


def _path(key_path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in key_path)


def _unflatten(flat: Mapping[str, Any]) -> Dict[str, Any]:
  tree: Dict[str, Any] = {}
  for path, value in flat.items():
    *parents, name = path.split("/")
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[name] = value
  return tree


def _differences(trained: VQConfig, model: VQConfig) -> str:
  """The fields that differ, "name tokenizer-value vs model-value", comma separated."""
  return ", ".join(
      f"{f.name} {getattr(trained, f.name)!r} (tokenizer) vs {getattr(model, f.name)!r} (model)"
      for f in dataclasses.fields(model) if getattr(trained, f.name) != getattr(model, f.name))


def read_record(folder: str):
  """(kind, config) of a tokenizer folder's record; a record we cannot read is one line."""
  where = os.path.join(folder, RECORD)
  try:
    with open(where) as f:
      record = json.load(f)
  except (OSError, ValueError) as exc:
    raise TokenizerGraftError(f"tokenizer {where}: cannot be read ({exc})") from None
  if record.get("format") != FORMAT:
    raise TokenizerGraftError(f"tokenizer {where}: format {record.get('format')!r}, this version "
                              f"reads format {FORMAT}")
  kind = record.get("kind")
  if kind not in CONFIGS:
    raise TokenizerGraftError(f"tokenizer {where}: unknown kind {kind!r}; known: "
                              f"{', '.join(map(repr, CONFIGS))}")
  try:
    return kind, config_from_record(kind, record.get("config", {}))
  except (TypeError, ValueError) as exc:
    raise TokenizerGraftError(f"tokenizer {where}: its config cannot be rebuilt "
                              f"({' '.join(str(exc).split())})") from None


def _steps(folder: str) -> list:
  directory = os.path.join(folder, CHECKPOINTS)
  if not os.path.isdir(directory):
    return []
  # (orbax writes a step under a temporary name and renames it when complete: digits only)
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))
