"""Will it fit? The device memory of inference (restore, then decode) from shapes alone.

  model = UnifiedIOModel(plan_config("xxl", dtype="bfloat16"))        # the released 7B, bf16
  shapes = abstract_shapes(model, DecodeShape(batch=1, target="image"))  # eval_shape only
  plan = memory_plan(model, shapes, MeshShape(data=1, model=1), dtype="bfloat16", device_gib=80)
  print(plan.format())                      # a row per component, the total and a verdict

Axis legend: B decode batch (rows decoded at once), S encoder length, T decode length, D embed,
H heads, K head_dim, F mlp, V the target's vocabulary.

Everything comes from `jax.eval_shape` (nothing is allocated: any size plans on any machine): the
parameters (`model.init`), the encoder output (`decoding.encode`) and the decoding cache
(`decoding.start_decoding`: for every decoder layer the self-attention keys and values of T
positions and the cross-attention keys and values of the S encoder positions; keys are kept in
float32, after RoPE). Each is split over an abstract (data, model) mesh as the one rules table
says (`partitioning.axis_rules`): parameters by their logical axes, `bytes per device = product
of the shard shape x itemsize`, floating ones in `dtype` (as `load_run(dtype=)` casts them on
read); the batch, the encoder output and the cache with batch -> data and heads -> model, which is
what XLA does with the generate loop (tests/test_memory_plan.py compiles it on fake devices).

Activations are an estimate of the largest temporaries alive at once (nothing smaller is counted):
  encode    one trunk encoder layer over the S inputs: [B, H, S, S] float32 attention logits and
            weights (the plain formulation; a fused attention kernel needs far less), q and k in
            float32, v, the [B, S, F] SwiGLU hidden states, two [B, S, D] residual streams;
  decode    one step: three [B, V] float32 logit arrays (logits, masked, probabilities), the
            [B, H, 1, T] and [B, H, 1, S] attention logits and weights, the [B, 1, F] MLP.
The frozen ViTs and resamplers run inside `encode` too, on far smaller attention maps.
With FSDP every parameter split over `data` is gathered whole before use, and XLA hoists those
gathers out of the decode loop (the parameters do not change in it): they are all counted, split
over `model` only. FSDP therefore saves memory at rest, not while decoding: prefer `model`.
Peak = parameters + inputs + encoder output + cache + the larger activation estimate, meant as
an upper bound (the encoder's temporaries are freed before the cache fills); XLA's compiled
generate on CPU measured 0.4-2x the planned temporaries (tests/test_memory_plan.py: below where the
prefill estimate is generous, above where XLA keeps more FSDP gathers alive than one copy).
A restore puts only `dtype` on the devices (`ckpt_lib.restore_params_sharded` casts on the host):
its device peak is the parameters row; the host holds the float32 reads in flight (shown, in
host memory, per process).
Beam search decodes batch x beams rows and reorders the cache every step (one more cache copy);
classifier-free guidance decodes 2 x batch rows: pass those rows as the batch.
"""

import dataclasses
import functools
import math
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, NamedSharding

from unified_io import decoding, partitioning, presets
from unified_io.config import DTYPES, UnifiedIOConfig
from unified_io.interop.release import config_from_release, release_config
from unified_io.modalities import Modality
from unified_io.model import UnifiedIOModel

GIB = 1 << 30
RELEASED = ("large", "xl", "xxl")  # sizes whose full released model (every modality) is planned


@dataclasses.dataclass(frozen=True)
class MeshShape:
  """A (data, model) mesh by its sizes only (no devices needed); `fsdp` as training's."""
  data: int = 1
  model: int = 1
  fsdp: bool = False

  @property
  def devices(self) -> int:
    return self.data * self.model

  @property
  def rules(self) -> partitioning.Rules:
    return partitioning.axis_rules(self.fsdp)

  def abstract(self) -> AbstractMesh:
    return AbstractMesh((self.data, self.model), (partitioning.DATA, partitioning.MODEL))

  def describe(self) -> str:
    return f"data={self.data} x model={self.model}{', fsdp' if self.fsdp else ''}"


@dataclasses.dataclass(frozen=True)
class DecodeShape:
  """What is decoded at once: `batch` rows of one `target` (text: `decode_length` tokens; image
  and audio: their full token grid), from inputs of the task feature `lengths` (missing ones: the
  model's defaults, every patch and frame)."""
  batch: int = 1
  target: Modality = Modality.TEXT
  decode_length: int = 128
  lengths: Optional[Mapping[str, int]] = None

  def __post_init__(self):
    object.__setattr__(self, "target", Modality(self.target))
    if self.batch < 1 or self.decode_length < 1:
      raise ValueError(f"decode batch {self.batch} and length {self.decode_length} must be >= 1")


def plan_config(size: str, dtype: str = "bfloat16", text_only: bool = False) -> UnifiedIOConfig:
  """The model a size stands for, its activations in `dtype`: the released model (every input
  and target modality, `interop.release`) for large / xl / xxl, else the text-only preset
  (`presets.make_config`); `text_only` takes the preset's text-only trunk for any size."""
  if size in RELEASED and not text_only:
    cfg = config_from_release(release_config(size))
  else:
    cfg = presets.make_config(size)
  return dataclasses.replace(cfg, trunk=dataclasses.replace(cfg.trunk, dtype=dtype))


class Shapes(NamedTuple):
  """The abstract (mesh-free) arrays of one decode: `jax.ShapeDtypeStruct` trees."""
  boxed_params: Any  # with their logical axes (nn.Partitioned boxes)
  inputs: Dict       # batch["inputs"]
  encoded: Any       # decoding.Encoded
  cache: Dict        # the "cache" collection after the first decode call
  decode: DecodeShape
  decode_length: int  # T: the target's tokens (its full grid for image and audio)


def abstract_shapes(model: UnifiedIOModel, decode: DecodeShape, boxed=None) -> Shapes:
  """Everything the plan measures, by `jax.eval_shape` (nothing allocated); `boxed`: the
  parameters' if already made (`model.abstract_params()`), shared by the plans of several
  targets."""
  if decode.target not in model.cfg.target_modalities:
    raise ValueError(f"this model decodes {[m.value for m in model.cfg.target_modalities]}, "
                     f"not {decode.target.value!r}")
  boxed = model.abstract_params() if boxed is None else boxed
  params = partitioning.box_values(boxed)
  inputs = model.batch_spec(decode.batch, decode.lengths)["inputs"]
  encoded = jax.eval_shape(functools.partial(decoding.encode, model), params, inputs)
  length = decoding.target_length(model, decode.target,
                                  decoding.DecodeOptions(max_length=decode.decode_length))
  _, cache = jax.eval_shape(functools.partial(decoding.start_decoding, model,
                                              modality=decode.target, length=length),
                            params, encoded=encoded)
  return Shapes(boxed, inputs, encoded, cache, decode, length)


# ------------------------------------------------------------------------------------------------
# Bytes per device.
# ------------------------------------------------------------------------------------------------
def _shard_bytes(shape: Sequence[int], dtype, sharding: NamedSharding) -> int:
  return math.prod(sharding.shard_shape(tuple(shape))) * np.dtype(dtype).itemsize


def _named_bytes(shape, dtype, names, mesh: MeshShape) -> int:
  """Bytes per device of an array whose axes have these logical `names` (None: replicated)."""
  spec = nn.logical_to_mesh_axes(tuple(names), mesh.rules)
  return _shard_bytes(shape, dtype, NamedSharding(mesh.abstract(), spec))


def _total_bytes(shape, dtype) -> int:
  return math.prod(shape) * np.dtype(dtype).itemsize


def gathered_bytes(boxed, mesh: MeshShape, dtype, target: Modality) -> int:
  """Per device, with FSDP: the parameters a decode of `target` uses that are split over `data`,
  whole over it (split over `model` only). XLA gathers them before use and, the parameters being
  invariant in the decode loop, hoists the gathers out of it: all are alive at once (seen in the
  compiled generate on CPU, tests/test_memory_plan.py). The other targets' tables are not read."""
  unsplit = MeshShape(1, mesh.model, fsdp=False)
  whole = jax.tree_util.tree_leaves(
      partitioning.shardings(boxed, unsplit.abstract(), unsplit.rules),
      is_leaf=lambda x: isinstance(x, NamedSharding))
  specs = jax.tree_util.tree_leaves(partitioning.mesh_specs(boxed, mesh.rules),
                                    is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  unused = {f"token_embedders_{m.value}" for m in Modality if m != target}
  total = 0
  for (path, leaf), spec, sharding in zip(
      jax.tree_util.tree_leaves_with_path(partitioning.box_values(boxed)), specs, whole):
    split_over_data = any(partitioning.DATA in ((a,) if isinstance(a, str) else tuple(a or ()))
                          for a in spec)
    if split_over_data and str(getattr(path[0], "key", path[0])) not in unused:
      cast = dtype if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf.dtype
      total += _shard_bytes(leaf.shape, cast, sharding)
  return total


def parameter_bytes(boxed, mesh: MeshShape, dtype) -> Tuple[int, int, int]:
  """(all devices' one copy, per device, the largest parameter in float32) of the parameters,
  floating ones in `dtype`. Raises `partitioning.MeshError` for a mesh that does not divide a
  split dimension."""
  partitioning.check_divisible(boxed, mesh.abstract(), mesh.rules)
  shardings = jax.tree_util.tree_leaves(
      partitioning.shardings(boxed, mesh.abstract(), mesh.rules),
      is_leaf=lambda x: isinstance(x, NamedSharding))
  total = device = largest = 0
  values = jax.tree_util.tree_leaves(partitioning.box_values(boxed))
  for leaf, sharding in zip(values, shardings):
    cast = dtype if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf.dtype
    total += _total_bytes(leaf.shape, cast)
    device += _shard_bytes(leaf.shape, cast, sharding)
    largest = max(largest, _total_bytes(leaf.shape, jnp.float32))
  return total, device, largest


_CACHE_AXES = {4: ("batch", "length", "heads", "kv"),  # [B, S|T, H, K]
               5: ("batch", "layers", "length", "heads", "kv")}  # scanned: [B, N, S|T, H, K]


def cache_bytes(cache, mesh: MeshShape) -> Tuple[int, int]:
  """(total, per device) of a decoding cache: keys and values split batch -> data, heads ->
  model; the position counters are replicated."""
  total = device = 0
  for leaf in jax.tree_util.tree_leaves(cache):
    names = _CACHE_AXES.get(leaf.ndim, (None,) * leaf.ndim)
    total += _total_bytes(leaf.shape, leaf.dtype)
    device += _named_bytes(leaf.shape, leaf.dtype, names, mesh)
  return total, device


def batch_bytes(tree, mesh: MeshShape, minor: Tuple[Optional[str], ...] = ()) -> Tuple[int, int]:
  """(total, per device) of arrays with the batch leading (split over data); `minor`: the logical
  names of the trailing axes (e.g. "embed"), the rest whole."""
  total = device = 0
  for leaf in jax.tree_util.tree_leaves(tree):
    tail = minor[-(leaf.ndim - 1):] if minor and leaf.ndim > 1 else ()
    names = ("batch",) + (None,) * (leaf.ndim - 1 - len(tail)) + tuple(tail)
    total += _total_bytes(leaf.shape, leaf.dtype)
    device += _named_bytes(leaf.shape, leaf.dtype, names, mesh)
  return total, device


# The activation estimates: (what, count, shape, dtype, logical names) of the largest temporaries.
def _encode_temporaries(model: UnifiedIOModel, shapes: Shapes):
  t, act = model.cfg.trunk, model.cfg.trunk.activation_dtype
  b, s = shapes.encoded.hidden.shape[:2]
  h, k, d, f = t.num_heads, t.head_dim, t.emb_dim, t.mlp_dim
  residual = [("residual stream [B,S,D] x2", 2, (b, s, d), act, ("batch", "length", "embed"))]
  attention = [
      ("attention logits+weights [B,H,S,S] f32 x2", 2, (b, h, s, s), jnp.float32,
       ("batch", "heads", "length", None)),
      ("q, k [B,S,H,K] f32 x2", 2, (b, s, h, k), jnp.float32, ("batch", "length", "heads", "kv")),
      ("v [B,S,H,K]", 1, (b, s, h, k), act, ("batch", "length", "heads", "kv"))]
  mlp = [("SwiGLU hidden [B,S,F] x3", 3, (b, s, f), act, ("batch", "length", "mlp"))]
  return residual, attention, mlp


def _decode_temporaries(model: UnifiedIOModel, shapes: Shapes):
  t, act = model.cfg.trunk, model.cfg.trunk.activation_dtype
  b, s = shapes.encoded.hidden.shape[:2]
  h, d, f = t.num_heads, t.emb_dim, t.mlp_dim
  v = t.vocab_size(shapes.decode.target)
  residual = [("residual stream [B,1,D] x2", 2, (b, 1, d), act, ("batch", "length", "embed"))]
  attention = [
      ("self-attention logits+weights [B,H,1,T] f32 x2", 2, (b, h, 1, shapes.decode_length),
       jnp.float32, ("batch", "heads", None, "length")),
      ("cross-attention logits+weights [B,H,1,S] f32 x2", 2, (b, h, 1, s), jnp.float32,
       ("batch", "heads", None, "length"))]
  mlp = [("SwiGLU hidden [B,1,F] x3", 3, (b, 1, f), act, ("batch", "length", "mlp"))]
  logits = [("logits [B,V] f32 x3", 3, (b, v), jnp.float32, ("batch", "vocab"))]
  return residual + logits, attention, mlp


def _estimate(groups, mesh: MeshShape) -> Tuple[int, int]:
  """(total, per device): the first group (always alive) plus the larger of the others."""
  def size(group):
    return (sum(n * _total_bytes(shape, dt) for _, n, shape, dt, _ in group),
            sum(n * _named_bytes(shape, dt, names, mesh) for _, n, shape, dt, names in group))
  always, *alternatives = [size(g) for g in groups]
  worst = max(alternatives, key=lambda x: x[1])
  return always[0] + worst[0], always[1] + worst[1]


# ------------------------------------------------------------------------------------------------
# The plan.
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  total_bytes: int   # one copy over all devices
  device_bytes: int  # on the fullest device
  counted: bool = True  # part of the decode peak (False: shown for reference)
  note: str = ""


@dataclasses.dataclass(frozen=True)
class Plan:
  title: str
  mesh: MeshShape
  rows: Tuple[Row, ...]
  device_bytes: int  # usable memory of one device
  host_restore_bytes: int = 0  # host memory per process of a restore's float32 reads in flight

  @property
  def peak_bytes(self) -> int:
    """On the fullest device, decoding (a restore alone peaks at the parameters row)."""
    return sum(r.device_bytes for r in self.rows if r.counted)

  @property
  def fits(self) -> bool:
    return self.peak_bytes <= self.device_bytes

  def row(self, name: str) -> Row:
    return next(r for r in self.rows if r.name == name)

  def verdict(self) -> str:
    room = self.device_bytes - self.peak_bytes
    if self.fits:
      return (f"FITS: peak {_gib(self.peak_bytes)} of {_gib(self.device_bytes)} per device, "
              f"headroom {_gib(room)} ({100 * room / self.device_bytes:.0f}%)")
    return (f"DOES NOT FIT: peak {_gib(self.peak_bytes)} > {_gib(self.device_bytes)} per device, "
            f"short by {_gib(-room)}; split over more devices (model parallel, fsdp), lower the "
            "batch or the lengths, or use bfloat16")

  def format(self) -> str:
    lines = [self.title, f"{'component':42s} {'all devices':>12s} {'per device':>12s}  note"]
    for r in self.rows:
      mark = "" if r.counted else "  (not in the peak)"
      lines.append(f"{r.name:42s} {_gib(r.total_bytes):>12s} {_gib(r.device_bytes):>12s}  "
                   f"{r.note}{mark}".rstrip())
    lines.append(f"{'peak per device, decoding':42s} {'':>12s} "
                 f"{_gib(self.peak_bytes):>12s}")
    lines.append(f"restore: parameters straight onto the devices in their dtype; up to "
                 f"{_gib(self.host_restore_bytes)} of float32 reads in flight in host memory")
    lines.append(self.verdict())
    return "\n".join(lines)


def _gib(n: int) -> str:
  return f"{n / GIB:.2f} GiB" if n >= GIB / 100 else f"{n / (1 << 20):.2f} MiB"


def memory_plan(model: UnifiedIOModel, shapes: Shapes, mesh: MeshShape, dtype: str = "bfloat16",
                device_gib: float = 80.0, title: str = "") -> Plan:
  """The plan of decoding `shapes` on `mesh` with parameters in `dtype` (module docstring).
  Raises `partitioning.MeshError` (one line) when the mesh does not divide the model or batch."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype {dtype!r}: use one of {sorted(DTYPES)}")
  partitioning.check_batch_size(mesh.abstract(), shapes.decode.batch, "decode batch")
  total, device, largest = parameter_bytes(shapes.boxed_params, mesh, DTYPES[dtype])
  leaves = jax.tree_util.tree_leaves(partitioning.box_values(shapes.boxed_params))
  count = sum(math.prod(x.shape) for x in leaves)
  enc = shapes.encoded
  encoded = (enc.hidden, enc.mask, enc.rope)
  b, s = enc.hidden.shape[:2]
  rows: List[Row] = [
      Row("parameters", total, device, note=f"{count / 1e9:.2f}B in {dtype}"),
      Row("inputs", *batch_bytes(shapes.inputs, mesh), note=f"B={b}"),
      Row("encoder output", *batch_bytes(encoded, mesh), note=f"[B,S,D], S={s}"),
      Row("decoding cache", *cache_bytes(shapes.cache, mesh),
          note=f"{shapes.decode.target.value}: T={shapes.decode_length}, S={s}"),
  ]
  if mesh.fsdp and mesh.data > 1:
    gathered = gathered_bytes(shapes.boxed_params, mesh, DTYPES[dtype], shapes.decode.target)
    rows.append(Row("fsdp: parameters gathered over data", gathered * mesh.model, gathered,
                    note="the decode loop's gathers, hoisted"))
  encode = _estimate(_encode_temporaries(model, shapes), mesh)
  decode = _estimate(_decode_temporaries(model, shapes), mesh)
  rows.append(Row("activations: encode (one layer, prefill)", *encode,
                  counted=encode[1] >= decode[1], note="[B,H,S,S] attention maps"))
  rows.append(Row("activations: one decode step", *decode, counted=decode[1] > encode[1],
                  note="[B,V] logits, attention rows"))
  title = title or (f"{model.cfg.trunk.num_encoder_layers}+{model.cfg.trunk.num_decoder_layers}"
                    f"-layer model")
  title += (f" | {dtype} parameters, {jnp.dtype(model.cfg.trunk.activation_dtype).name} "
            f"activations | mesh {mesh.describe()} ({mesh.devices} devices of "
            f"{device_gib:g} GiB)")
  # (restore_params_sharded's bound on the float32 reads in flight, in host memory: twice the
  # largest parameter, in whole GB)
  host = max(1, math.ceil(2 * largest / 1e9)) * 10**9
  return Plan(title, mesh, tuple(rows), int(device_gib * GIB), host)


__all__ = ["DecodeShape", "MeshShape", "Plan", "Row", "Shapes", "abstract_shapes", "batch_bytes",
           "cache_bytes", "gathered_bytes", "memory_plan", "parameter_bytes", "plan_config"]
