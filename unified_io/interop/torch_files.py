"""Lazy, dependency-free readers for the released weights: safetensors and PyTorch zip pickles.

  weights = open_weights("/path/to/uio2-large")  # a read-only Mapping; no tensor data read yet
  list(weights)                                  # every tensor name (headers / pickles only)
  weights["encoder.layers_0.attention.query.weight"]  # this one tensor, now, as NumPy

A release directory holds, looked up in this order: `model.safetensors.index.json` (its
`weight_map` names each tensor's shard), `model.safetensors`, `pytorch_model.bin.index.json`,
`pytorch_model.bin`. Neither torch nor safetensors is needed.

Reading a tensor memory-maps its bytes (safetensors: the byte range given by the JSON header after
the 8-byte little-endian header length; torch: the uncompressed zip member `<prefix>/data/<key>`),
so the returned arrays are read-only views of the page cache, not copies; bfloat16 is widened to
float32 (exact: `uint16 << 16`), which does copy that one tensor. A tensor of an unsupported dtype
raises `WeightsError` (naming file and tensor) when it is read, so one the model does not use
cannot block a conversion.

A torch `.bin` is a zip of `<prefix>/data.pkl` (the state_dict's structure) and one member per
storage. `data.pkl` is unpickled with an allow-list: `collections.OrderedDict`, the
`torch._utils._rebuild_*` tensor builders, `torch.<X>Storage` classes and `torch.<dtype>` objects,
all mapped to local stand-ins. Any other global is refused (`UnsafePickleError`), so a
malicious pickle cannot run code.
"""

import collections
import dataclasses
import json
import os
import pickle
import struct
import zipfile
from typing import Dict, Iterator, Mapping, Optional, Tuple

import numpy as np


class WeightsError(ValueError):
  """A weights directory or file cannot be read; the message names the file."""


class UnsafePickleError(WeightsError, pickle.UnpicklingError):
  """A torch pickle refers to something other than tensors and their storages."""


# The safetensors dtype codes; torch storages and dtypes are mapped onto them.
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
           "I16": "<i2", "I8": "i1", "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8",
           "BOOL": "?"}
_TORCH_STORAGES = {"FloatStorage": "F32", "DoubleStorage": "F64", "HalfStorage": "F16",
                   "BFloat16Storage": "BF16", "LongStorage": "I64", "IntStorage": "I32",
                   "ShortStorage": "I16", "CharStorage": "I8", "ByteStorage": "U8",
                   "BoolStorage": "BOOL", "UntypedStorage": "U8"}
_TORCH_DTYPES = {"float32": "F32", "float": "F32", "float64": "F64", "double": "F64",
                 "float16": "F16", "half": "F16", "bfloat16": "BF16", "int64": "I64",
                 "long": "I64", "int32": "I32", "int": "I32", "int16": "I16", "short": "I16",
                 "int8": "I8", "uint8": "U8", "uint16": "U16", "uint32": "U32", "uint64": "U64",
                 "bool": "BOOL"}
WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors",
                "pytorch_model.bin.index.json", "pytorch_model.bin")


def _np_dtype(code: str, where: str, big_endian: bool = False) -> np.dtype:
  if code not in _DTYPES:
    raise WeightsError(f"{where}: unsupported dtype {code!r} (supported: {', '.join(_DTYPES)})")
  dtype = np.dtype(_DTYPES[code])
  return dtype.newbyteorder(">") if big_endian else dtype


def _decode(raw: np.ndarray, code: str) -> np.ndarray:
  """Raw elements (bf16 as uint16) -> the array callers get (bf16 widened to float32)."""
  if code == "BF16":
    return (raw.astype(np.uint32) << 16).view(np.float32)
  return raw


# ------------------------------------------------------------------------------------------------
# safetensors
# ------------------------------------------------------------------------------------------------
class _SafetensorsFile:
  """One `.safetensors` file: header parsed on open, each tensor memory-mapped on demand."""

  def __init__(self, path: str):
    self.path = path
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      head = f.read(8)
      if len(head) != 8:
        raise WeightsError(f"{path}: malformed safetensors file (shorter than its 8-byte size "
                           "field)")
      (n,) = struct.unpack("<Q", head)
      if n > size - 8:
        raise WeightsError(f"{path}: malformed safetensors header (says {n} bytes, the file has "
                           f"{size - 8} after the size field)")
      try:
        header = json.loads(f.read(n))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: malformed safetensors header (not JSON: {e})") from None
    if not isinstance(header, dict):
      raise WeightsError(f"{path}: malformed safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    self._data_start, data_size = 8 + n, size - 8 - n
    self.entries: Dict[str, Tuple[str, Tuple[int, ...], int, int]] = {}
    for name, entry in header.items():
      try:
        code, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        if not isinstance(code, str):
          raise TypeError(code)
      except (TypeError, KeyError, ValueError):
        raise WeightsError(f"{path}: malformed safetensors header entry for `{name}`") from None
      # An unsupported dtype is an error only when that tensor is read.
      itemsize = np.dtype(_DTYPES[code]).itemsize if code in _DTYPES else end - begin
      numel = 1 if code not in _DTYPES else int(np.prod(shape))
      if not 0 <= begin <= end <= data_size or end - begin != itemsize * numel:
        raise WeightsError(f"{path}: malformed safetensors header: `{name}` {code} {shape} has "
                           f"byte range [{begin}, {end}) in a data section of {data_size} bytes")
      self.entries[name] = (code, shape, begin, end)
    self._map: Optional[np.memmap] = None

  def read(self, name: str) -> np.ndarray:
    code, shape, begin, end = self.entries[name]
    dtype = _np_dtype(code, f"{self.path}: tensor `{name}`")
    if begin == end:
      return _decode(np.zeros(shape, dtype), code)
    if self._map is None:
      self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
    raw = self._map[self._data_start + begin:self._data_start + end]
    return _decode(np.ndarray(shape, dtype, buffer=raw), code)


# ------------------------------------------------------------------------------------------------
# PyTorch zip pickles
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _StorageType:  # stands in for torch.FloatStorage & co
  name: str
  code: str


@dataclasses.dataclass(frozen=True)
class _TorchDtype:  # stands in for torch.float32 & co
  name: str
  code: str


@dataclasses.dataclass(frozen=True)
class _Storage:  # a storage's zip member, not read yet
  member: str
  code: str
  numel: int


@dataclasses.dataclass(frozen=True)
class _LazyTensor:
  storage: _Storage
  offset: int
  shape: Tuple[int, ...]
  stride: Tuple[int, ...]
  code: str


def _rebuild_tensor(storage, offset, size, stride, *_, dtype: Optional[_TorchDtype] = None):
  if not isinstance(storage, _Storage):
    raise UnsafePickleError(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
  code = dtype.code if dtype is not None else storage.code
  return _LazyTensor(storage, int(offset), tuple(int(s) for s in size),
                     tuple(int(s) for s in stride), code)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, *_):
  if not isinstance(dtype, _TorchDtype):
    raise UnsafePickleError(f"_rebuild_tensor_v3 with dtype {dtype!r}")
  return _rebuild_tensor(storage, offset, size, stride, dtype=dtype)


def _rebuild_parameter(data, *_):
  return data


_ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter}


class _SafeUnpickler(pickle.Unpickler):
  """Unpickles a state_dict's `data.pkl` into `_LazyTensor`s; refuses every other global."""

  def __init__(self, file, path: str, prefix: str):
    super().__init__(file)
    self._path, self._prefix = path, prefix

  def find_class(self, module: str, name: str):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == "torch" and name.endswith("Storage"):
      # An unsupported storage type is an error only when one of its tensors is read.
      return _StorageType(name, _TORCH_STORAGES.get(name, f"torch.{name}"))
    if module == "torch" and name in _TORCH_DTYPES:
      return _TorchDtype(name, _TORCH_DTYPES[name])
    raise UnsafePickleError(f"{self._path}: refusing to unpickle global `{module}.{name}` (only "
                            "tensors, their storages and OrderedDict are allowed)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise UnsafePickleError(f"{self._path}: unexpected persistent id {pid!r}")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    return _Storage(f"{self._prefix}data/{key}", storage_type.code, int(numel))


class _TorchZipFile:
  """One `pytorch_model*.bin` (torch >= 1.6 zip format): structure on open, data on demand."""

  def __init__(self, path: str):
    self.path = path
    if not zipfile.is_zipfile(path):
      raise WeightsError(f"{path}: not a zip archive (a legacy pre-1.6 torch.save file or not a "
                         "torch file at all); re-save it with torch >= 1.6 or as safetensors")
    with zipfile.ZipFile(path) as zf:
      self._infos = {info.filename: info for info in zf.infolist()}
      pkls = [n for n in self._infos if n == "data.pkl" or n.endswith("/data.pkl")]
      if len(pkls) != 1:
        raise WeightsError(f"{path}: malformed torch archive ({len(pkls)} data.pkl members)")
      prefix = pkls[0][:-len("data.pkl")]
      order = prefix + "byteorder"
      self._big_endian = order in self._infos and zf.read(order).strip() == b"big"
      with zf.open(pkls[0]) as f:
        state = _SafeUnpickler(f, path, prefix).load()
    if not isinstance(state, Mapping):
      raise WeightsError(f"{path}: data.pkl holds a {type(state).__name__}, not a state_dict")
    self.entries: Dict[str, _LazyTensor] = {}
    for name, value in state.items():
      if not isinstance(value, _LazyTensor):
        raise WeightsError(f"{path}: state_dict entry `{name}` is a {type(value).__name__}, "
                           "not a tensor")
      self.entries[name] = value

  def _storage(self, storage: _Storage, name: str) -> np.ndarray:
    """The storage's bytes as a flat uint8 array (memory-mapped when stored uncompressed)."""
    info = self._infos.get(storage.member)
    if info is None:
      raise WeightsError(f"{self.path}: tensor `{name}`: storage member {storage.member} is "
                         "missing")
    if info.file_size == 0:
      return np.zeros(0, np.uint8)
    if info.compress_type != zipfile.ZIP_STORED:
      with zipfile.ZipFile(self.path) as zf:
        return np.frombuffer(zf.read(info), np.uint8)
    with open(self.path, "rb") as f:  # data start = local header + its name and extra fields
      f.seek(info.header_offset)
      local = f.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
      raise WeightsError(f"{self.path}: malformed zip local header for {storage.member}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    return np.memmap(self.path, dtype=np.uint8, mode="r", offset=start, shape=(info.file_size,))

  def read(self, name: str) -> np.ndarray:
    t = self.entries[name]
    where = f"{self.path}: tensor `{name}`"
    dtype = _np_dtype(t.code, where, self._big_endian)
    if 0 in t.shape:
      return _decode(np.zeros(t.shape, dtype), t.code)
    raw = self._storage(t.storage, name)
    numel = raw.size // dtype.itemsize
    last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride))
    if t.offset < 0 or min(t.stride, default=0) < 0 or last >= numel:
      raise WeightsError(f"{where}: malformed (shape {t.shape}, stride {t.stride}, offset "
                         f"{t.offset} reach past its storage of {numel} elements)")
    elements = raw[:numel * dtype.itemsize].view(dtype)
    view = np.lib.stride_tricks.as_strided(elements[t.offset:], t.shape,
                                           [s * dtype.itemsize for s in t.stride], writeable=False)
    return _decode(view, t.code)


# ------------------------------------------------------------------------------------------------
# a directory of weights
# ------------------------------------------------------------------------------------------------
class Weights(Mapping):
  """Read-only {tensor name: np.ndarray}; each access reads that one tensor from its file."""

  def __init__(self, files: Mapping[str, str], opener, source: str, opened=None):
    self._files = dict(files)  # name -> path of the file holding it
    self._opener, self._open = opener, dict(opened or {})
    self.source = source  # the file (or index) the names came from

  def _file(self, path: str):
    if path not in self._open:
      self._open[path] = self._opener(path)
    return self._open[path]

  def __getitem__(self, name: str) -> np.ndarray:
    path = self._files[name]
    file = self._file(path)
    if name not in file.entries:
      raise WeightsError(f"{path}: has no tensor `{name}` although {self.source} lists it there")
    return file.read(name)

  def __contains__(self, name) -> bool:  # Mapping's default would read the tensor
    return name in self._files

  def __iter__(self) -> Iterator[str]:
    return iter(self._files)

  def __len__(self) -> int:
    return len(self._files)

  def files(self):
    """The weight files, in the order their tensors are listed."""
    return list(dict.fromkeys(self._files.values()))


def _from_index(index_path: str, opener) -> Weights:
  try:
    with open(index_path) as f:
      weight_map = json.load(f)["weight_map"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise WeightsError(f"{index_path}: malformed index (needs a `weight_map`: {e})") from None
  folder = os.path.dirname(index_path)
  files = {name: os.path.join(folder, shard) for name, shard in weight_map.items()}
  for path in set(files.values()):
    if not os.path.isfile(path):
      raise WeightsError(f"{index_path}: shard {os.path.basename(path)} does not exist")
  return Weights(files, opener, index_path)


def _single(path: str, opener) -> Weights:
  file = opener(path)
  return Weights({name: path for name in file.entries}, opener, path, opened={path: file})


def open_weights(src_dir: str) -> Weights:
  """The tensors of a release directory, as a lazy read-only Mapping (see the module docstring)."""
  if not os.path.isdir(src_dir):
    raise WeightsError(f"{src_dir}: no such directory")
  index, single, torch_index, torch_single = (os.path.join(src_dir, n) for n in WEIGHT_FILES)
  if os.path.isfile(index):
    return _from_index(index, _SafetensorsFile)
  if os.path.isfile(single):
    return _single(single, _SafetensorsFile)
  if os.path.isfile(torch_index):
    return _from_index(torch_index, _TorchZipFile)
  if os.path.isfile(torch_single):
    return _single(torch_single, _TorchZipFile)
  raise WeightsError(f"{src_dir}: no weights found (looked for {', '.join(WEIGHT_FILES)})")
