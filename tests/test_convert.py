"""Converting released weights (safetensors or PyTorch .bin) into our checkpoint, and loading it.

A fake release directory is written from the text golden file (`param/*` as the tensors,
`meta/config_json` as config.json) in each format the release ships: one safetensors file, sharded
safetensors with an index, bfloat16 safetensors, and a PyTorch zip pickle written by hand here
(torch is not installed). Each is converted with the CLI, loaded back, compared with
`release_to_params` of the arrays themselves, and run forward against the golden logits.
"""

import collections
import io
import json
import pickle
import struct
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unified_io.interop import torch_files
from unified_io.interop.check_reference import LOGIT_RTOL, nest_inputs
from unified_io.interop.convert import abstract_params, load_converted, main
from unified_io.interop.params import CheckpointError, release_to_params
from unified_io.interop.release import config_from_release
from unified_io.interop.torch_files import UnsafePickleError, WeightsError, open_weights
from unified_io.model import UnifiedIOModel

TRANSPOSED = "encoder.layers_0.mlp.wi_0.weight"  # stored as W.T with strides (1, out)
OFFSET = "decoder.decoder_norm.scale"  # stored in the middle of a larger storage
REMOVED = "decoder.layers_1.self_attention.value.weight"


@pytest.fixture(scope="module")
def golden(text_golden_path):
  with np.load(text_golden_path) as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def release(golden):
  return {k[len("param/"):]: v for k, v in golden.items() if k.startswith("param/")}


@pytest.fixture(scope="module")
def reference(golden, release):
  """(config, abstract params, jitted forward) of the golden file's model, built once."""
  cfg = config_from_release(str(golden["meta/config_json"]), release.keys())
  return cfg, abstract_params(cfg), jax.jit(UnifiedIOModel(cfg).outputs)


def _bf16(x: np.ndarray) -> np.ndarray:
  """x rounded to bfloat16 (to nearest even), back in float32."""
  return np.asarray(x, jnp.bfloat16).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# writers: safetensors and torch's zip pickle, by hand
# ------------------------------------------------------------------------------------------------
_ST_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": jnp.bfloat16, "I64": "<i8", "I32": "<i4"}


def _write_safetensors(path, tensors, dtype="F32"):
  header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
  for name, x in tensors.items():
    raw = np.asarray(x, _ST_DTYPES[dtype]).tobytes()
    header[name] = {"dtype": dtype, "shape": list(x.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  blob = json.dumps(header).encode()
  blob += b" " * (-len(blob) % 8)  # the real writer pads the header to 8 bytes too
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)) + blob + b"".join(chunks))


class _Global:
  """Pickled as the global `module.name`, the way torch's own classes and functions are."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):
    raise AssertionError("only ever pickled")


class _Storage:
  def __init__(self, key, type_name, data):
    self.key, self.type_name, self.data = key, type_name, data


class _Tensor:
  """Reduces exactly as a torch tensor does: _rebuild_tensor_v2(storage, offset, size, stride, ...);
  with `dtype` (a torch dtype name), as torch's newer dtypes do: _rebuild_tensor_v3(..., dtype)."""

  def __init__(self, storage, offset, size, stride, rebuild=("torch._utils", "_rebuild_tensor_v2"),
               dtype=None):
    self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())
    if dtype is not None:
      rebuild = ("torch._utils", "_rebuild_tensor_v3")
      self.args += (_Global("torch", dtype),)
    self.rebuild = rebuild

  def __reduce__(self):
    return _Global(*self.rebuild), self.args


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table is extensible
  dispatch = dict(pickle._Pickler.dispatch)

  def _save_global_ref(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
    self.memoize(obj)

  dispatch[_Global] = _save_global_ref

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ("storage", _Global("torch", obj.type_name), obj.key, "cpu", obj.data.size)
    return None


def _torch_state(tensors):
  """{name: _Tensor} and {storage key: bytes}, with one transposed and one offset tensor."""
  state, storages = collections.OrderedDict(), {}
  for i, (name, x) in enumerate(tensors.items()):
    key = str(i)
    x = np.asarray(x, "<f4")
    if name == TRANSPOSED:  # the storage holds W.T; strides (1, out) read it back as W
      data, offset, stride = np.ascontiguousarray(x.T).ravel(), 0, (1, x.shape[0])
    elif name == OFFSET:  # torch views share storages this way
      data = np.concatenate([np.full(5, 7.0, "<f4"), x.ravel(), np.full(3, -7.0, "<f4")])
      offset, stride = 5, (1,)
    else:
      data, offset = x.ravel(), 0
      stride = tuple(int(np.prod(x.shape[d + 1:])) for d in range(x.ndim))
    storages[key] = data.tobytes()
    state[name] = _Tensor(_Storage(key, "FloatStorage", data), offset, x.shape, stride)
  state._metadata = collections.OrderedDict({"": {"version": 1}})  # as torch's state_dict has
  return state, storages


def _write_torch(path, state, storages):
  buf = io.BytesIO()
  _TorchPickler(buf, protocol=2).dump(state)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr("archive/data.pkl", buf.getvalue())
    zf.writestr("archive/byteorder", "little")
    for key, raw in storages.items():
      zf.writestr(f"archive/data/{key}", raw)
    zf.writestr("archive/version", "3\n")


def _release_dir(tmp_path, golden, release, fmt, drop=(), extra=None):
  src = tmp_path / f"release_{fmt}"
  src.mkdir()
  (src / "config.json").write_text(str(golden["meta/config_json"]))
  tensors = {**{k: v for k, v in release.items() if k not in drop}, **(extra or {})}
  if fmt == "safetensors":
    _write_safetensors(src / "model.safetensors", tensors)
  elif fmt == "bf16":
    _write_safetensors(src / "model.safetensors", tensors, dtype="BF16")
  elif fmt == "sharded":
    names = list(tensors)
    shards = {f"model-0000{i + 1}-of-00003.safetensors": names[i::3] for i in range(3)}
    for shard, shard_names in shards.items():
      _write_safetensors(src / shard, {n: tensors[n] for n in shard_names})
    weight_map = {n: shard for shard, shard_names in shards.items() for n in shard_names}
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
  elif fmt == "torch":
    _write_torch(src / "pytorch_model.bin", *_torch_state(tensors))
  elif fmt == "torch_sharded":
    names = list(tensors)
    shards = {"pytorch_model-00001-of-00002.bin": names[::2],
              "pytorch_model-00002-of-00002.bin": names[1::2]}
    for shard, shard_names in shards.items():
      _write_torch(src / shard, *_torch_state({n: tensors[n] for n in shard_names}))
    weight_map = {n: shard for shard, shard_names in shards.items() for n in shard_names}
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
  return src


# ------------------------------------------------------------------------------------------------
# the readers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "bf16", "torch", "torch_sharded"])
def test_open_weights_reads_every_tensor(tmp_path, golden, release, fmt):
  weights = open_weights(str(_release_dir(tmp_path, golden, release, fmt)))
  assert sorted(weights) == sorted(release) and len(weights) == len(release)
  assert TRANSPOSED in weights and "no.such.tensor" not in weights
  for name, want in release.items():
    got = weights[name]
    assert got.dtype == np.float32 and got.shape == want.shape, name
    np.testing.assert_array_equal(got, _bf16(want) if fmt == "bf16" else want, err_msg=name)
  with pytest.raises(KeyError):
    weights["no.such.tensor"]  # pylint: disable=pointless-statement


def test_torch_reader_builds_strided_and_offset_tensors(tmp_path, golden, release):
  weights = open_weights(str(_release_dir(tmp_path, golden, release, "torch")))
  transposed = weights[TRANSPOSED]
  assert not transposed.flags.c_contiguous  # a strided view of the storage, not a copy
  np.testing.assert_array_equal(transposed, release[TRANSPOSED])
  np.testing.assert_array_equal(weights[OFFSET], release[OFFSET])


def test_reader_dtypes(tmp_path):
  x = np.array([[1.5, -2.25, 3.0], [0.1, 1e4, -7.0]], np.float32)
  ints = np.array([[3, -1, 1 << 40]], np.int64)
  src = tmp_path / "dtypes"
  src.mkdir()
  _write_safetensors(src / "model.safetensors", {"f16": x}, "F16")
  weights = open_weights(str(src))
  assert weights["f16"].dtype == np.float16
  np.testing.assert_array_equal(weights["f16"], x.astype(np.float16))
  for code, value, dtype in (("BF16", x, np.float32), ("I64", ints, np.int64),
                             ("I32", ints[:, :2], np.int32)):
    _write_safetensors(src / "model.safetensors", {"t": value}, code)
    got = open_weights(str(src))["t"]
    np.testing.assert_array_equal(got, _bf16(value) if code == "BF16" else value)
    assert got.dtype == dtype, code

  (src / "model.safetensors").unlink()  # torch: typed storages, and v3 over an untyped storage
  bf16_bits = np.asarray(x, jnp.bfloat16).view("<u2").ravel()
  state = collections.OrderedDict(
      half=_Tensor(_Storage("0", "HalfStorage", x.astype("<f2").ravel()), 0, x.shape, (3, 1)),
      bf16=_Tensor(_Storage("1", "BFloat16Storage", bf16_bits), 0, x.shape, (3, 1)),
      long=_Tensor(_Storage("2", "LongStorage", ints.ravel()), 0, ints.shape, (3, 1)),
      v3=_Tensor(_Storage("3", "UntypedStorage", bf16_bits.view(np.uint8)), 3, (3,), (1,),
                 dtype="bfloat16"))
  storages = {s.args[0].key: s.args[0].data.tobytes() for s in state.values()}
  _write_torch(src / "pytorch_model.bin", state, storages)
  weights = open_weights(str(src))
  np.testing.assert_array_equal(weights["half"], x.astype(np.float16))
  np.testing.assert_array_equal(weights["bf16"], _bf16(x))
  np.testing.assert_array_equal(weights["long"], ints)
  np.testing.assert_array_equal(weights["v3"], _bf16(x)[1])


def test_reader_is_lazy(tmp_path, golden, release, monkeypatch):
  src = _release_dir(tmp_path, golden, release, "sharded")
  reads = []
  original = torch_files._SafetensorsFile.read
  monkeypatch.setattr(torch_files._SafetensorsFile, "read",
                      lambda self, name: reads.append(name) or original(self, name))
  weights = open_weights(str(src))
  assert len(list(weights.keys())) == len(release) and TRANSPOSED in weights and not reads
  weights[TRANSPOSED]  # pylint: disable=pointless-statement
  assert reads == [TRANSPOSED]


def test_reader_errors_name_the_file(tmp_path, golden, release):
  src = _release_dir(tmp_path, golden, release, "safetensors")
  path = src / "model.safetensors"
  data = path.read_bytes()
  path.write_bytes(struct.pack("<Q", 10 ** 12) + data[8:])
  with pytest.raises(WeightsError, match=r"model\.safetensors: malformed safetensors header"):
    open_weights(str(src))
  path.write_bytes(data[:8] + b"x" + data[9:])  # not JSON
  with pytest.raises(WeightsError, match=r"model\.safetensors: malformed safetensors header"):
    open_weights(str(src))

  _write_safetensors(path, {"a": np.zeros(4, np.float32)})
  path.write_bytes(path.read_bytes().replace(b'"F32"', b'"F8X"'))  # same length: offsets stay
  weights = open_weights(str(src))  # an odd dtype fails only when that tensor is read
  with pytest.raises(WeightsError, match=r"safetensors: tensor `a`: unsupported dtype 'F8X'"):
    weights["a"]  # pylint: disable=pointless-statement


def _forbidden_pickle_dir(tmp_path, golden):
  src = tmp_path / "evil"
  src.mkdir()
  (src / "config.json").write_text(str(golden["meta/config_json"]))
  state, storages = _torch_state({"x": np.zeros(2, np.float32)})
  state["x"] = _Tensor(state["x"].args[0], 0, (1,), (1,), rebuild=("os", "system"))
  _write_torch(src / "pytorch_model.bin", state, storages)
  return src


def test_torch_reader_refuses_other_globals(tmp_path, golden):
  with pytest.raises(UnsafePickleError, match=r"pytorch_model\.bin: refusing to unpickle global "
                                              r"`os\.system`"):
    open_weights(str(_forbidden_pickle_dir(tmp_path, golden)))


# ------------------------------------------------------------------------------------------------
# the converter
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "bf16", "torch", "torch_sharded"])
def test_convert_then_load_matches_release(tmp_path, golden, release, reference, fmt):
  cfg, abstract, forward = reference
  extra = {"unused_head.weight": np.ones((3, 2), np.float32)}  # reported, not converted
  src = _release_dir(tmp_path, golden, release, fmt, extra=extra)
  out = tmp_path / "ckpt"
  assert main(["--src", str(src), "--out", str(out)]) == 0

  info = json.loads((out / "conversion.json").read_text())
  assert info["unused"] == ["unused_head.weight"] and info["dtype"] == "float32"
  assert info["tensors"] == len(release) + 1 and info["converted"] == len(release)
  assert json.loads((out / "uio2_config.json").read_text()) == json.loads(
      str(golden["meta/config_json"]))

  loaded_cfg, params = load_converted(str(out))
  assert loaded_cfg == cfg
  source = {k: _bf16(v) for k, v in release.items()} if fmt == "bf16" else release
  want, _ = release_to_params(source, abstract)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, want)
  if fmt != "bf16":
    logits = np.asarray(forward(params, nest_inputs(golden))["text"].logits)
    ref = golden["output/text/logits"]
    assert np.max(np.abs(logits - ref)) <= LOGIT_RTOL * np.max(np.abs(ref))


def test_bfloat16_checkpoint_and_bfloat16_load(tmp_path, golden, release, reference):
  _, abstract, _ = reference
  src = _release_dir(tmp_path, golden, release, "safetensors")
  want, _ = release_to_params(release, abstract)
  assert main(["--src", str(src), "--out", str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
  assert json.loads((tmp_path / "bf16" / "conversion.json").read_text())["dtype"] == "bfloat16"
  _, params = load_converted(str(tmp_path / "bf16"))
  jax.tree_util.tree_map(lambda p, w: np.testing.assert_array_equal(p, np.asarray(w, jnp.bfloat16)),
                         params, want)
  assert {p.dtype for p in jax.tree_util.tree_leaves(params)} == {np.dtype(jnp.bfloat16)}

  assert main(["--src", str(src), "--out", str(tmp_path / "f32")]) == 0
  _, params = load_converted(str(tmp_path / "f32"), dtype="bfloat16")
  assert {p.dtype for p in jax.tree_util.tree_leaves(params)} == {np.dtype(jnp.bfloat16)}
  jax.tree_util.tree_map(lambda p, w: np.testing.assert_array_equal(p, np.asarray(w, jnp.bfloat16)),
                         params, want)


def _fails(capsys, argv, *fragments):
  assert main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and len(err.splitlines()) == 1, err
  for fragment in fragments:
    assert fragment in err, err


def test_convert_bad_inputs_exit_2(tmp_path, golden, release, capsys):
  out = str(tmp_path / "out")
  _fails(capsys, ["--src", str(tmp_path / "nope"), "--out", out], "nope", "does not exist")

  no_config = _release_dir(tmp_path, golden, release, "safetensors")
  (no_config / "config.json").unlink()
  _fails(capsys, ["--src", str(no_config), "--out", out], "no config.json")

  no_weights = tmp_path / "no_weights"
  no_weights.mkdir()
  (no_weights / "config.json").write_text(str(golden["meta/config_json"]))
  _fails(capsys, ["--src", str(no_weights), "--out", out], "no weights found", "model.safetensors")

  missing = _release_dir(tmp_path, golden, release, "torch", drop=(REMOVED,))
  _fails(capsys, ["--src", str(missing), "--out", out], f"`{REMOVED}` is missing")

  _fails(capsys, ["--src", str(_forbidden_pickle_dir(tmp_path, golden)), "--out", out],
         "refusing to unpickle global `os.system`")
  assert not (tmp_path / "out").exists()  # nothing written on failure


def test_load_converted_checks_the_tree_against_our_model(tmp_path, golden, release):
  src = _release_dir(tmp_path, golden, release, "safetensors")
  out = tmp_path / "ckpt"
  assert main(["--src", str(src), "--out", str(out)]) == 0
  config = json.loads((out / "uio2_config.json").read_text())
  config["t5_config"]["num_encoder_layers"] = 3  # a config the stored params do not fit
  (out / "uio2_config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointError, match=r"'encoder'\]\['layers_2'\].* is missing in the "
                                            r"checkpoint"):
    load_converted(str(out))
  assert main(["--src", str(src), "--out", str(out)]) == 2  # no silent overwrite
  assert main(["--src", str(src), "--out", str(out), "--overwrite"]) == 0
  load_converted(str(out))


def test_convert_the_all_modality_release(tmp_path, golden_full):
  """Every modality: ViTs, resamplers and both VQ tokenizers convert, nothing is left over, and the
  converted checkpoint reproduces the release's logits."""
  release = {k[len("param/"):]: golden_full[k] for k in golden_full.files if k.startswith("param/")}
  src = _release_dir(tmp_path, golden_full, release, "safetensors")
  out = tmp_path / "ckpt_full"
  assert main(["--src", str(src), "--out", str(out)]) == 0
  assert json.loads((out / "conversion.json").read_text())["unused"] == []
  cfg, params = load_converted(str(out))
  outputs = jax.jit(UnifiedIOModel(cfg).outputs)(params, nest_inputs(golden_full))
  for name in ("text", "image", "audio"):
    ref = golden_full[f"output/{name}/logits"]
    assert np.max(np.abs(np.asarray(outputs[name].logits) - ref)) <= LOGIT_RTOL * np.max(np.abs(ref))
