"""Attention and the fused layers on each backend (unified_io/network/layers/backends.py).

Every backend-specific implementation is checked against plain autodiff of the plain jnp
formulation: the CPU custom VJPs (attend, attend_block_diagonal, swiglu, rms_norm) within 1e-5 in
float32, over masks with masked keys, fully masked query rows, packed segments, an H-broadcast
[B, 1, L, S] mask and per-head [B, H, L, S] masks; the splash kernel in Pallas interpret mode; the
cuDNN wrapper through `jax.nn.dot_product_attention`'s XLA implementation (cuDNN itself needs a
GPU). The "auto" table and the one-line errors for choices a backend cannot run are checked by
naming the backend.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

from unified_io import partitioning
from unified_io.config import AttentionImpl, ConfigError, TrunkConfig
from unified_io.model import UnifiedIOModel
from unified_io.network.layers import backends
from unified_io.network.layers.attention import Attention, attend_with
from unified_io.network.layers.dot_product import attend, attend_block_diagonal, attend_plain
from unified_io.network.layers.fused_attention import attend_cudnn, attend_splash
from unified_io.network.layers.mlp import GatedMLP, swiglu, swiglu_plain
from unified_io.network.layers.norms import RMSNorm, rms_norm, rms_norm_plain
from unified_io.presets import make_config

TOL = 1e-5


def _qkv(batch, length, kv_length, heads, head_dim, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(size=(batch, n, heads, head_dim)), jnp.float32)
               for n in (length, kv_length, kv_length))


def _mask(kind, batch, length, kv_length, heads, seed=0):
  """Boolean [B, 1 or H, L, S] masks of the kinds the model builds, plus per-head ones."""
  rng = np.random.default_rng(seed)
  if kind == "random":  # H-broadcast, some keys masked; every row keeps its first key
    mask = rng.random((batch, 1, length, kv_length)) < 0.6
    mask[..., 0] = True
  elif kind == "fully_masked_rows":  # padding queries (release: uniform average over all keys)
    mask = rng.random((batch, 1, length, kv_length)) < 0.6
    mask[0, :, 1] = False
    mask[-1, :, -1] = False
  elif kind == "packed":  # two examples per row, causal within each, the last token padding
    assert length == kv_length
    segment_bl = (np.arange(length)[None] >= length // 2).astype(int) + np.zeros((batch, 1), int)
    valid_bl = np.ones((batch, length), bool)
    valid_bl[:, -1] = False
    mask = (segment_bl[:, :, None] == segment_bl[:, None, :]) & np.tril(
        np.ones((length, length), bool)) & valid_bl[:, :, None] & valid_bl[:, None, :]
    mask = mask[:, None]
  elif kind == "per_head":  # [B, H, L, S], one head with a fully masked row
    mask = rng.random((batch, heads, length, kv_length)) < 0.5
    mask[..., 0] = True
    mask[0, -1, 2] = False
  else:
    raise ValueError(kind)
  return jnp.asarray(mask)


def _value_and_vjp(fn, args, seed=1):
  """fn(*args) and its VJP of a random cotangent, in one compiled call (eager is slower)."""
  out = jax.eval_shape(fn, *args)
  g = np.random.default_rng(seed).normal(size=out.shape).astype(out.dtype)  # no jax PRNG: slow

  def value_and_vjp(args, g):
    out, vjp = jax.vjp(fn, *args)
    return out, vjp(g)
  return jax.jit(value_and_vjp)(args, g)


def _assert_close(got, want, tol=TOL, what=""):
  """Every leaf within tol, relative to the leaf's largest magnitude where that exceeds 1 (numpy:
  eager jnp ops would compile once per new shape)."""
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err = float(np.max(np.abs(a - b)))
    assert err <= tol * max(1.0, float(np.max(np.abs(b)))), (what, err)


# -- the CPU custom VJPs against plain autodiff -------------------------------------------------
CASES = [  # mask kind, (B, L, S, H, K)
    ("random", (1, 4, 4, 1, 8)), ("random", (2, 5, 7, 3, 8)),
    ("fully_masked_rows", (1, 4, 4, 1, 8)), ("fully_masked_rows", (2, 5, 7, 3, 8)),
    ("packed", (2, 6, 6, 2, 4)), ("per_head", (2, 5, 7, 3, 8))]


@pytest.mark.parametrize("kind,shape", CASES,
                         ids=[f"{kind}-{'x'.join(map(str, shape))}" for kind, shape in CASES])
def test_attend_custom_vjp_equals_autodiff(kind, shape):
  batch, length, kv_length, heads, _ = shape
  q, k, v = _qkv(*shape)
  mask = _mask(kind, batch, length, kv_length, heads)
  got = _value_and_vjp(lambda *a: attend(*a, mask), (q, k, v))
  want = _value_and_vjp(lambda *a: attend_plain(*a, mask), (q, k, v))
  _assert_close(got, want, what=kind)
  # The release's fully masked rows: the uniform average of all values.
  no_key_bl1 = ~np.any(np.asarray(mask), axis=-1).transpose(0, 2, 1)  # [B, L, 1 or H]
  uniform_b1hk = np.mean(np.asarray(v), axis=1, keepdims=True)
  out_blhk = np.asarray(got[0])
  np.testing.assert_allclose(np.where(no_key_bl1[..., None], out_blhk, 0),
                             np.where(no_key_bl1[..., None], uniform_b1hk, 0), atol=1e-6)


def test_attend_check_grads():
  q, k, v = _qkv(1, 3, 4, 2, 4)
  mask = _mask("fully_masked_rows", 1, 3, 4, 2)
  jax.test_util.check_grads(jax.jit(lambda *a: attend(*a, mask)), (q, k, v), order=1,
                            modes=("rev",), eps=1e-3, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_attend_dtype_path_equals_autodiff(dtype):
  """The activation-dtype branch (weights cast to bf16 before they multiply v)."""
  q, k, v = _qkv(2, 6, 6, 2, 8)
  mask = _mask("packed", 2, 6, 6, 2)
  got = _value_and_vjp(lambda *a: attend(*a, mask, dtype), (q, k, v))
  want = _value_and_vjp(lambda *a: attend_plain(*a, mask, dtype), (q, k, v))
  _assert_close(got, want, TOL if dtype == jnp.float32 else 1e-2)


@pytest.mark.parametrize("attend_fn", [attend, attend_plain], ids=["cpu", "xla"])
def test_block_diagonal_equals_full_attention(attend_fn):
  blocks = [(0, 3), (3, 4), (4, 8)]
  q, k, v = _qkv(2, 8, 8, 2, 4)
  block_ll = np.zeros((8, 8), bool)
  for a, b in blocks:
    block_ll[a:b, a:b] = np.tril(np.ones((b - a, b - a), bool))
  mask = jnp.asarray(block_ll)[None, None] & _mask("random", 2, 8, 8, 2)
  mask = mask.at[1, :, 3].set(False)  # a one-token block with no key: uniform over ALL values
  got = _value_and_vjp(lambda *a: attend_block_diagonal(*a, mask, blocks, jnp.float32, attend_fn),
                       (q, k, v))
  want = _value_and_vjp(lambda *a: attend_plain(*a, mask), (q, k, v))
  _assert_close(got, want)


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 16)])
def test_swiglu_custom_vjp_equals_autodiff(shape):
  rng = np.random.default_rng(0)
  gate, up = (jnp.asarray(rng.normal(size=shape) * 3, jnp.float32) for _ in range(2))
  _assert_close(_value_and_vjp(swiglu, (gate, up)), _value_and_vjp(swiglu_plain, (gate, up)))
  jax.test_util.check_grads(jax.jit(swiglu), (gate, up), order=1, modes=("rev",), eps=1e-3)


@pytest.mark.parametrize("shape", [(3, 8), (2, 5, 2, 4)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_rms_norm_custom_vjp_equals_autodiff(shape, dtype):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), dtype)
  scale = jnp.asarray(rng.normal(size=shape[-1:]), jnp.float32)
  got = _value_and_vjp(lambda x, s: rms_norm(x, s, 1e-6), (x, scale))
  want = _value_and_vjp(lambda x, s: rms_norm_plain(x, s, 1e-6), (x, scale))
  _assert_close(got, want, TOL if dtype == jnp.float32 else 1e-2)
  if dtype == jnp.float32:
    jax.test_util.check_grads(jax.jit(lambda x, s: rms_norm(x, s, 1e-6)), (x, scale), order=1,
                              modes=("rev",), eps=1e-3)


# -- "xla" equals "cpu" -------------------------------------------------------------------------
@pytest.mark.parametrize("blocks", [None, [(0, 2), (2, 6)]])
def test_xla_path_equals_cpu_path(blocks):
  q, k, v = _qkv(2, 6, 6, 2, 4)
  mask = _mask("packed", 2, 6, 6, 2)
  got = _value_and_vjp(lambda *a: attend_with(AttentionImpl.XLA, *a, mask, jnp.float32, blocks),
                       (q, k, v))
  want = _value_and_vjp(lambda *a: attend_with(AttentionImpl.CPU, *a, mask, jnp.float32, blocks),
                        (q, k, v))
  _assert_close(got, want)


def test_attention_module_xla_equals_auto_on_cpu():
  """The config reaches the layer: `Attention` with "xla" (plain autodiff) and with "auto" (the
  CPU kernels here) gives the same output and parameter gradients."""
  x_bld = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 16)), jnp.float32)
  mask = _mask("packed", 2, 6, 6, 2)
  outputs, params = [], None
  for impl in ("xla", "auto"):
    layer = Attention(TrunkConfig(emb_dim=16, num_heads=2, head_dim=8, attention_impl=impl))
    if params is None:  # random values of the parameters' shapes (jax's PRNG compiles slowly)
      shapes = nn.meta.unbox(jax.eval_shape(layer.init, jax.random.PRNGKey(0), x_bld, x_bld, mask))
      rng = np.random.default_rng(1)
      params = jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.3).astype(s.dtype), shapes)
    outputs.append(_value_and_vjp(lambda p: layer.apply(p, x_bld, x_bld, mask), (params,)))
  _assert_close(outputs[0], outputs[1])


# -- the fused kernels, run where a CPU can run them ----------------------------------------------
def test_splash_interpret_equals_xla():
  """The TPU splash kernel in Pallas interpret mode: causal + packed + padding, and per-head."""
  batch, length, heads, head_dim = 2, 128, 2, 16
  q, k, v = _qkv(batch, length, length, heads, head_dim)
  mask = _mask("packed", batch, length, length, heads)
  mask = jnp.concatenate([mask, mask.at[:, :, 5].set(False)], axis=1)  # per head
  got = _value_and_vjp(lambda *a: attend_splash(*a, mask, jnp.float32, interpret=True), (q, k, v))
  want = _value_and_vjp(lambda *a: attend_plain(*a, mask), (q, k, v))
  _assert_close(got, want, 1e-4)


def test_splash_under_mesh_runs_per_shard():
  """On a mesh the kernel runs in a shard_map over batch and heads (XLA cannot partition a Pallas
  kernel); 4 x 2 fake CPU devices, interpret mode."""
  batch, length, heads, head_dim = 4, 128, 2, 8
  q, k, v = _qkv(batch, length, length, heads, head_dim)
  mask = _mask("packed", batch, length, length, heads).at[1, :, 3].set(False)
  mesh = partitioning.make_mesh(data=4, model=2)
  with partitioning.activated(mesh, partitioning.axis_rules()):
    got = jax.jit(lambda *a: attend_splash(*a, mask, jnp.float32, interpret=True))(q, k, v)
    assert "shard_map" in str(jax.make_jaxpr(
        lambda *a: attend_splash(*a, mask, jnp.float32, interpret=True))(q, k, v))
  _assert_close(got, jax.jit(lambda *a: attend_plain(*a, mask))(q, k, v), 1e-5)


def test_cudnn_wrapper_keeps_release_masking():
  """`attend_cudnn`'s casting and fully-masked-row fix-up, with jax's XLA implementation standing
  in for cuDNN (which needs a GPU); q and k in bf16 are the one numerical difference."""
  q, k, v = _qkv(2, 6, 6, 2, 8)
  mask = _mask("fully_masked_rows", 2, 6, 6, 2)
  got = _value_and_vjp(
      lambda *a: attend_cudnn(*a, mask, jnp.bfloat16, implementation="xla"), (q, k, v))
  want = _value_and_vjp(lambda *a: attend_plain(*a, mask, jnp.bfloat16), (q, k, v))
  _assert_close(got, want, 3e-2)


# -- resolution: the table, and the errors ------------------------------------------------------
BF16, F32 = jnp.bfloat16, jnp.float32
TABLE = [  # backend, requested, dtype, head_dim, L, S, dropout -> resolved
    ("cpu", "auto", F32, 64, 8, 8, False, "cpu"),
    ("cpu", "auto", BF16, 64, 8, 8, False, "cpu"),
    ("cpu", "auto", F32, 64, 8, 8, True, "xla"),
    ("cpu", "xla", F32, 64, 8, 8, False, "xla"),
    ("gpu", "auto", BF16, 64, 512, 512, False, "cudnn"),
    ("gpu", "auto", jnp.float16, 128, 512, 256, False, "cudnn"),
    ("gpu", "auto", F32, 64, 512, 512, False, "xla"),
    ("gpu", "auto", BF16, 64, 512, 512, True, "xla"),
    ("gpu", "auto", BF16, 12, 512, 512, False, "xla"),  # head_dim not a multiple of 8
    ("gpu", "auto", BF16, 256, 512, 512, False, "xla"),
    ("gpu", "auto", BF16, 64, 1, 512, False, "xla"),  # one-token decoding step
    ("gpu", "cudnn", BF16, 64, 1, 512, False, "xla"),
    ("gpu", "cpu", BF16, 64, 512, 512, False, "cpu"),
    ("tpu", "auto", BF16, 64, 512, 256, False, "splash"),
    ("tpu", "auto", F32, 64, 512, 256, False, "splash"),
    ("tpu", "auto", BF16, 64, 500, 512, False, "xla"),
    ("tpu", "auto", BF16, 64, 512, 512, True, "xla"),
    ("tpu", "splash", BF16, 64, 1, 512, False, "xla"),
]


@pytest.mark.parametrize("backend,requested,dtype,head_dim,q_len,kv_len,dropout,want", TABLE)
def test_auto_resolution_table(backend, requested, dtype, head_dim, q_len, kv_len, dropout, want):
  got = backends.resolve_attention(requested, dtype=dtype, head_dim=head_dim, q_length=q_len,
                                   kv_length=kv_len, dropout=dropout, backend=backend)
  assert got == AttentionImpl(want)


@pytest.mark.parametrize("backend,requested,dtype", [
    ("cpu", "cudnn", BF16), ("tpu", "cudnn", BF16), ("cpu", "splash", F32),
    ("gpu", "splash", BF16), ("gpu", "cudnn", F32)])
def test_unavailable_choice_is_one_line_error(backend, requested, dtype):
  with pytest.raises(ConfigError, match=f"`attention_impl`: '{requested}'") as error:
    backends.resolve_attention(requested, dtype=dtype, head_dim=64, q_length=8, kv_length=8,
                               dropout=False, backend=backend)
  message = str(error.value)
  assert "\n" not in message and "'xla'" in message


def test_cudnn_on_cpu_fails_at_model_build():
  model = UnifiedIOModel(make_config("tiny", text_vocab_size=64, dtype="bfloat16",
                                     attention_impl="cudnn"))
  batch = model.dummy_batch(1, {"text_inputs": 4, "text_targets": 4})
  with pytest.raises(ConfigError) as error:
    jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)
  message = str(error.value)
  assert "\n" not in message
  assert "'cudnn' does not run on the cpu backend" in message
  assert "'xla'" in message and "'cpu'" in message


def test_unknown_or_dropout_incompatible_choice_fails_in_config():
  with pytest.raises(ConfigError, match=r"`attention_impl`: unknown implementation 'flash'; "
                     r"known: \['auto', 'xla', 'cpu', 'cudnn', 'splash'\]"):
    TrunkConfig(attention_impl="flash")
  with pytest.raises(ConfigError, match="'cudnn' has no attention dropout"):
    TrunkConfig(attention_impl="cudnn", dropout_rate=0.1)
  assert TrunkConfig(attention_impl="xla").attention_impl is AttentionImpl.XLA


@pytest.mark.parametrize("backend,custom", [("cpu", True), ("gpu", False), ("tpu", False)])
def test_fused_layers_follow_backend(monkeypatch, backend, custom):
  """SwiGLU and RMSNorm use their hand-written VJPs on CPU only."""
  monkeypatch.setattr(backends, "backend_name", lambda: backend)
  assert backends.hand_written_vjps() == custom
  x = jax.ShapeDtypeStruct((2, 8), jnp.float32)
  for layer in (RMSNorm(), GatedMLP(TrunkConfig(emb_dim=8, mlp_dim=16))):
    params = jax.eval_shape(layer.init, jax.random.PRNGKey(0), x)
    assert ("custom_vjp" in str(jax.make_jaxpr(layer.apply)(params, x))) == custom, layer
