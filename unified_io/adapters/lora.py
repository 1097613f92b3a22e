"""LoRA (Hu et al. 2021) as a functional transform of the parameter tree.

  cfg = lora_config(rank=8, alpha=16.0, targets=("q", "k", "v", "o"))   # gin: lora_config.rank = 8
  specs = partitioning.logical_specs(model.abstract_params())
  adapters = init_adapters(rng, params, specs, cfg)           # {kernel path: {"a": .., "b": ..}}
  loss = model.loss_fn(apply_adapters(params, adapters, cfg, dropout_rng), batch)[0]
  merged = merge(params, adapters, cfg)                        # what uio2-merge-lora writes

Nothing in the network changes: each targeted kernel W is replaced by W + scale * A @ B before the
forward pass, so the gradient reaches only the adapters and the base stays frozen (and can be
stored in another dtype, e.g. int8 dequantised by the caller). scale = alpha / rank.

Axis legend: L the leading 'layers' axis of scanned trunk parameters (absent per layer; one
adapter per layer, a batch axis here), I the kernel's input axes, O its output axes, R lora_rank.
  W [*L, *I, *O]     a [*L, *I, R]     b [*L, R, *O]     delta = einsum(a, b) [*L, *I, *O]
Input and output axes come from the kernel's logical axes (after the 'layers' axis): a kernel
ending in ('heads', 'kv') (query, key, value) maps the rest to those two; one starting with
('heads', 'kv') (out) maps those two to the rest; any other maps all but its last axis to the last.
The adapters' logical axes: a = L + I + ('lora_rank',), b = L + ('lora_rank',) + O
(`adapter_specs`; 'lora_rank' is replicated by `unified_io.partitioning.axis_rules`).

Initialisation, as the reference implementation (microsoft/LoRA, peft): a is Kaiming-uniform,
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = prod(I), and b is zero, so a fresh adapter
leaves the model's outputs exactly as they were. Adapters are float32 whatever W's dtype; the
merged kernel is computed in float32 and cast back to W's dtype.

Targets (`LoraConfig.targets`), on the trunk (encoder/decoder layers) unless said otherwise:
  q, k, v, o   self-attention query/key/value/out (encoder `attention`, decoder `self_attention`)
  cross        all four kernels of the decoder's `encoder_decoder_attention`
  mlp          wi_0, wi_1, wo
  embedders    every input embedder's `input_embedders_*/projection/kernel`
  re:<regex>   every kernel whose '/'-joined path the regex matches (`re.search`)
A target that names no kernel of the model, and a rank above a targeted kernel's smaller side, are
refused (`LoraError`, one line) before anything is allocated.

Dropout: the paper drops the adapter's input activations; a weight-level transform never sees
activations, so `apply_adapters` does *rank dropout* instead: with a `dropout_rng` and
`dropout > 0`, each rank component of each adapter (per layer of a scanned stack) is dropped with
probability `dropout` and the kept ones are scaled by 1 / (1 - dropout). It regularises the same
low-rank path but is not the paper's input dropout (the same components are dropped for every
example of the batch).

On disk (`save_adapters` / `load_adapters`, what `uio2-merge-lora` reads): DIR/adapters.npz (keys
`<kernel path>/a` and `<kernel path>/b`, float32) and DIR/lora.json
  {"lora": {"rank", "alpha", "dropout", "targets"}, "fingerprint": {...}, "base": path or null}
where the fingerprint (`fingerprint`) records the targeted kernels' shapes, so adapters are never
applied to a base they were not made for (`check_compatible`).
"""

import dataclasses
import functools
import json
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import gin
import jax
from flax import traverse_util
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

LAYERS = "layers"  # the leading logical axis of scanned trunk parameters (layer_stacking)
RANK = "lora_rank"
HEADS_KV = ("heads", "kv")
JSON_FILE, NPZ_FILE = "lora.json", "adapters.npz"

_TRUNK = r"^(encoder|decoder)/layers(_\d+)?/"
_SELF = r"(attention|self_attention)"
BUILTIN_TARGETS = {
    "q": _TRUNK + _SELF + r"/query/kernel$",
    "k": _TRUNK + _SELF + r"/key/kernel$",
    "v": _TRUNK + _SELF + r"/value/kernel$",
    "o": _TRUNK + _SELF + r"/out/kernel$",
    "cross": _TRUNK + r"encoder_decoder_attention/(query|key|value|out)/kernel$",
    "mlp": _TRUNK + r"mlp/(wi_0|wi_1|wo)/kernel$",
    "embedders": r"^input_embedders_[^/]+/projection/kernel$",
}
_KNOWN = ", ".join(BUILTIN_TARGETS) + ", or re:<regex>"

Adapters = Dict[str, Dict[str, Any]]  # kernel path -> {"a": [*L, *I, R], "b": [*L, R, *O]}


class LoraError(ValueError):
  """A LoRA config that does not fit the model, or adapters made for another base; the message is
  one line naming the target or kernel at fault."""


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """The adapters' rank, their scale alpha / rank, rank dropout and the targeted kernels."""
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  targets: Tuple[str, ...] = ("q", "k", "v", "o")

  def __post_init__(self):
    object.__setattr__(self, "targets", tuple(self.targets))
    if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
      raise LoraError(f"lora: rank must be an integer >= 1, got {self.rank!r}")
    if not 0.0 <= self.dropout < 1.0:
      raise LoraError(f"lora: dropout must be in [0, 1), got {self.dropout!r}")
    if not self.targets:
      raise LoraError(f"lora: no targets given; known targets: {_KNOWN}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def to_dict(self) -> Dict[str, Any]:
    return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
            "targets": list(self.targets)}

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> "LoraConfig":
    return cls(rank=int(data["rank"]), alpha=float(data["alpha"]),
               dropout=float(data.get("dropout", 0.0)), targets=tuple(data["targets"]))


def config_to_dict(cfg: LoraConfig) -> Dict[str, Any]:
  """`cfg` as lora.json's "lora" entry (`LoraConfig.to_dict`)."""
  return cfg.to_dict()


@gin.configurable
def lora_config(rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                targets: Sequence[str] = ("q", "k", "v", "o")) -> LoraConfig:
  """The gin entry point to a `LoraConfig` (e.g. `lora_config.targets = ["q", "v", "mlp"]`)."""
  return LoraConfig(rank=rank, alpha=alpha, dropout=dropout, targets=tuple(targets))


# ------------------------------------------------------------------------------------------------
# Which kernels, and how each splits into input and output axes.
# ------------------------------------------------------------------------------------------------
def _flat(tree) -> Dict[str, Any]:
  """'/'-joined path -> leaf of a nested dict (a PartitionSpec is a leaf, not a node)."""
  return traverse_util.flatten_dict(tree, sep="/")


def _names(spec) -> Tuple[Optional[str], ...]:
  return tuple(spec) if spec is not None else ()


def _split(shape: Sequence[int], names: Sequence[Optional[str]]
           ) -> Tuple[int, Tuple[int, ...], Tuple[int, ...]]:
  """(number of leading 'layers' axes, input axes, output axes) of a kernel; axes are indices."""
  n_layers = 0
  while n_layers < len(names) and names[n_layers] == LAYERS:
    n_layers += 1
  rest = tuple(names[n_layers:]) if names else (None,) * (len(shape) - n_layers)
  axes = tuple(range(n_layers, len(shape)))
  if len(axes) < 2:
    return n_layers, axes, ()
  if len(rest) > 2 and rest[-2:] == HEADS_KV:
    return n_layers, axes[:-2], axes[-2:]
  if len(rest) > 2 and rest[:2] == HEADS_KV:
    return n_layers, axes[:2], axes[2:]
  return n_layers, axes[:-1], axes[-1:]


def _size(shape: Sequence[int], axes: Sequence[int]) -> int:
  return int(np.prod([shape[i] for i in axes], dtype=np.int64))


def _pattern(target: str) -> "re.Pattern":
  if target in BUILTIN_TARGETS:
    return re.compile(BUILTIN_TARGETS[target])
  if target.startswith("re:"):
    try:
      return re.compile(target[3:])
    except re.error as exc:
      raise LoraError(f"lora: target {target!r} is not a valid regex ({exc})") from None
  raise LoraError(f"lora: target {target!r} names no parameter; known targets: {_KNOWN}")


def target_paths(params, specs, cfg: LoraConfig) -> List[str]:
  """The '/'-joined paths of the kernels `cfg.targets` name, in parameter order.

  Raises LoraError (one line) for a target naming no kernel of `params`, and for a kernel whose
  smaller side (prod of its input or of its output axes) is below `cfg.rank`."""
  flat, flat_specs = _flat(params), _flat(specs)
  kernels = [path for path in flat if path.rsplit("/", 1)[-1] == "kernel"]
  chosen = set()
  for target in cfg.targets:
    pattern = _pattern(target)
    found = [path for path in kernels if pattern.search(path)]
    if not found:
      raise LoraError(f"lora: target {target!r} names no parameter; known targets: {_KNOWN}")
    chosen.update(found)
  paths = [path for path in kernels if path in chosen]
  for path in paths:
    shape = tuple(flat[path].shape)
    _, ins, outs = _split(shape, _names(flat_specs.get(path)))
    n_in = _size(shape, ins)
    n_out = _size(shape, outs) if outs else 0
    if cfg.rank > min(n_in, n_out):
      raise LoraError(f"lora: rank {cfg.rank} is above the smaller side of {path} "
                      f"{list(shape)} (input {n_in}, output {n_out}); use a rank <= "
                      f"{min(n_in, n_out)} or leave the kernel out of the targets")
  return paths


def _kernels(params, specs, cfg: LoraConfig):
  """(path, shape, (n_layers, input axes, output axes), logical names) of each targeted kernel."""
  flat, flat_specs = _flat(params), _flat(specs)
  for path in target_paths(params, specs, cfg):
    shape, names = tuple(flat[path].shape), _names(flat_specs.get(path))
    yield path, shape, _split(shape, names), names


# ------------------------------------------------------------------------------------------------
# Making and applying adapters.
# ------------------------------------------------------------------------------------------------
def init_adapters(rng: jax.Array, params, specs, cfg: LoraConfig) -> Adapters:
  """Fresh adapters: a Kaiming-uniform, b zero (the model's outputs are unchanged), float32."""
  shapes = []  # (path, a shape, b shape, bound)
  for path, shape, (n_layers, ins, outs), _ in _kernels(params, specs, cfg):
    layers = shape[:n_layers]
    shapes.append((path, layers + tuple(shape[i] for i in ins) + (cfg.rank,),
                   layers + (cfg.rank,) + tuple(shape[i] for i in outs),
                   1.0 / math.sqrt(_size(shape, ins))))
  return _draw(rng, tuple(shapes))


@functools.partial(jax.jit, static_argnums=1)
def _draw(rng: jax.Array, shapes) -> Adapters:
  """`init_adapters`' arrays, all a's cut from one uniform draw (one random-bits computation to
  compile, not one per kernel); compiled once per set of shapes."""
  sizes = [math.prod(a_shape) for _, a_shape, _, _ in shapes]
  unit = jax.random.uniform(rng, (sum(sizes),), jnp.float32, -1.0, 1.0)
  out, start = {}, 0
  for (path, a_shape, b_shape, bound), size in zip(shapes, sizes):
    out[path] = {"a": bound * unit[start:start + size].reshape(a_shape),
                 "b": jnp.zeros(b_shape, jnp.float32)}
    start += size
  return out


def adapter_specs(params, specs, cfg: LoraConfig) -> Dict[str, Dict[str, PartitionSpec]]:
  """The adapters' logical PartitionSpecs: a = L + I + (lora_rank,), b = L + (lora_rank,) + O."""
  out = {}
  for path, shape, (n_layers, ins, outs), names in _kernels(params, specs, cfg):
    names = names or (None,) * len(shape)
    layers = tuple(names[:n_layers])
    out[path] = {"a": PartitionSpec(*layers, *(names[i] for i in ins), RANK),
                 "b": PartitionSpec(*layers, RANK, *(names[i] for i in outs))}
  return out


def _delta(kernel, a, b, mask=None):
  """scale-free A @ B in W's layout [*L, *I, *O], float32; `mask` [*L, R] scales rank components."""
  n_layers = a.ndim + b.ndim - 2 - kernel.ndim
  layers = a.shape[:n_layers]
  a_lir = a.reshape(layers + (-1, a.shape[-1])).astype(jnp.float32)
  b_lro = b.reshape(layers + (b.shape[n_layers], -1)).astype(jnp.float32)
  if mask is not None:
    a_lir = a_lir * mask[..., None, :]
  return jnp.einsum("...ir,...ro->...io", a_lir, b_lro).reshape(kernel.shape)


def _replaced(tree: Mapping, path: Sequence[str], value) -> Dict:
  """`tree` with the leaf at `path` replaced; only the dicts along the path are copied."""
  out = dict(tree)
  out[path[0]] = value if len(path) == 1 else _replaced(tree[path[0]], path[1:], value)
  return out


def apply_adapters(params, adapters: Adapters, cfg: LoraConfig,
                   dropout_rng: Optional[jax.Array] = None):
  """`params` with each adapted kernel W replaced by W + scale * A @ B (in W's dtype); every other
  leaf is the same object. With `dropout_rng` and `cfg.dropout` > 0, rank dropout (module
  docstring: not the paper's input dropout) drops each rank component of each adapter, per layer,
  with probability `cfg.dropout` and scales the rest by 1 / (1 - dropout)."""
  drop = dropout_rng is not None and cfg.dropout > 0
  out = params
  for index, (path, pair) in enumerate(sorted(adapters.items())):
    keys = path.split("/")
    kernel = params
    for key in keys:
      if not isinstance(kernel, Mapping) or key not in kernel:
        raise LoraError(f"lora: the parameters have no {path} for its adapter; the adapters were "
                        "made for another model (check_compatible names the difference)")
      kernel = kernel[key]
    mask = None
    if drop:
      a = pair["a"]
      n_layers = a.ndim + pair["b"].ndim - 2 - kernel.ndim
      keep = jax.random.bernoulli(jax.random.fold_in(dropout_rng, index), 1.0 - cfg.dropout,
                                  a.shape[:n_layers] + a.shape[-1:])
      mask = keep.astype(jnp.float32) / (1.0 - cfg.dropout)
    delta = _delta(kernel, pair["a"], pair["b"], mask)
    merged = (kernel.astype(jnp.float32) + cfg.scale * delta).astype(kernel.dtype)
    out = _replaced(out, keys, merged)
  return out


def merge(params, adapters: Adapters, cfg: LoraConfig):
  """The merged parameters (`apply_adapters` without dropout): a plain checkpoint's tree."""
  return apply_adapters(params, adapters, cfg)


def trainable_count(adapters: Adapters) -> int:
  """The number of trained numbers in `adapters`."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(adapters))


# ------------------------------------------------------------------------------------------------
# Which base the adapters belong to.
# ------------------------------------------------------------------------------------------------
def fingerprint(params, specs, cfg: LoraConfig) -> Dict[str, Any]:
  """What identifies the base the adapters fit (JSON-able): rank, alpha, targets and the shape of
  every targeted kernel."""
  return {"rank": cfg.rank, "alpha": cfg.alpha, "targets": list(cfg.targets),
          "kernels": {path: list(shape) for path, shape, _, _ in _kernels(params, specs, cfg)}}


def check_compatible(saved: Mapping[str, Any], params, specs=None,
                     cfg: Optional[LoraConfig] = None) -> None:
  """Raises LoraError (one line) naming the first kernel whose presence or shape differs between
  the base the adapters were made for (`saved`, a `fingerprint`) and this one: `params` with its
  `specs` and `cfg`, or, with neither given, `params` is this base's `fingerprint` itself."""
  if specs is None and cfg is None:
    _compare(saved, params)
    return
  flat = _flat(params)
  here = {path: list(flat[path].shape) for path in saved.get("kernels", {}) if path in flat}
  try:
    here.update(fingerprint(params, specs, cfg)["kernels"])
  except LoraError:  # (a target naming nothing here: the kernel comparison says which is absent)
    pass
  _compare(saved, {"rank": cfg.rank, "alpha": cfg.alpha, "kernels": here})


def _compare(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
  for key in ("rank", "alpha"):
    if saved.get(key) != current.get(key):
      raise LoraError(f"lora: the adapters were made with {key} {saved.get(key)}, this config "
                      f"has {key} {current.get(key)}")
  there = {path: list(shape) for path, shape in saved.get("kernels", {}).items()}
  here = {path: list(shape) for path, shape in current.get("kernels", {}).items()}
  for path in list(there) + [p for p in here if p not in there]:
    if there.get(path) != here.get(path):
      raise LoraError(f"lora: the adapters were made for another base: {path} is "
                      f"{_described(there.get(path))} there, {_described(here.get(path))} here")


def _described(shape: Optional[List[int]]) -> str:
  return "absent" if shape is None else str(shape)


# ------------------------------------------------------------------------------------------------
# On disk.
# ------------------------------------------------------------------------------------------------
# pylint: disable-next=redefined-outer-name
def save_adapters(path: str, adapters: Adapters, cfg: LoraConfig,
                  fingerprint: Mapping[str, Any], base: Optional[str]) -> None:
  """Writes DIR/adapters.npz (float32) and then DIR/lora.json (its presence marks a whole save)."""
  os.makedirs(path, exist_ok=True)
  arrays = {f"{kernel}/{name}": np.asarray(jax.device_get(leaf), np.float32)
            for kernel, pair in adapters.items() for name, leaf in pair.items()}
  tmp = os.path.join(path, NPZ_FILE + ".tmp")
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, os.path.join(path, NPZ_FILE))
  record = {"lora": cfg.to_dict(), "fingerprint": dict(fingerprint), "base": base}
  tmp = os.path.join(path, JSON_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=2)
  os.replace(tmp, os.path.join(path, JSON_FILE))


def load_adapters(path: str) -> Tuple[Adapters, LoraConfig, Dict[str, Any], Optional[str]]:
  """(adapters as NumPy arrays, config, fingerprint, base path or None) from a `save_adapters`
  directory; raises LoraError (one line) when a file is missing or unreadable."""
  json_path, npz_path = os.path.join(path, JSON_FILE), os.path.join(path, NPZ_FILE)
  for needed in (json_path, npz_path):
    if not os.path.isfile(needed):
      raise LoraError(f"lora: {needed} does not exist; give the directory a LoRA fine-tuning run "
                      f"saved its adapters to ({JSON_FILE} and {NPZ_FILE})")
  try:
    with open(json_path) as f:
      record = json.load(f)
    settings = record["lora"]
    with np.load(npz_path, allow_pickle=False) as data:
      arrays = {key: data[key] for key in data.files}
  except (OSError, ValueError, KeyError, TypeError) as exc:
    raise LoraError(f"lora: cannot read {path}: {' '.join(str(exc).split())}") from exc
  try:
    cfg = LoraConfig.from_dict(settings)
  except LoraError:
    raise
  except (KeyError, TypeError, ValueError) as exc:
    raise LoraError(f"lora: {json_path}: its `lora` entry is incomplete or mistyped "
                    f"({' '.join(str(exc).split())})") from exc
  adapters: Adapters = {}
  for key, value in arrays.items():
    kernel, name = key.rsplit("/", 1)
    adapters.setdefault(kernel, {})[name] = value
  broken = [k for k, pair in adapters.items() if set(pair) != {"a", "b"}]
  if broken:
    raise LoraError(f"lora: {npz_path} has no a/b pair for {broken[0]}")
  return adapters, cfg, dict(record.get("fingerprint") or {}), record.get("base")


__all__ = ["LoraConfig", "LoraError", "adapter_specs", "apply_adapters", "check_compatible",
           "config_to_dict", "fingerprint", "init_adapters", "load_adapters", "lora_config",
           "merge", "save_adapters", "target_paths", "trainable_count"]
