"""Which implementation computes attention, SwiGLU and RMSNorm on which backend: the one place
that chooses (everything else asks here).

Axis legend: B batch, L query length, S key length, H heads, K head_dim.

The hand-written backward passes of dot_product.py, mlp.py and norms.py exist for XLA:CPU, which
page-faults every kept activation in anew on every step (see their docstrings). On GPU and TPU
XLA fuses the elementwise work of plain autodiff, and attention has fused kernels that never
write the [B, H, L, S] weights to memory: cuDNN flash attention on GPU, the Pallas splash kernel
on TPU. `TrunkConfig.attention_impl` picks attention; "auto" resolves, when the model is traced:

  backend  when                                                             attention
  cpu      always                                                           cpu
  gpu      bf16/fp16 activations, head_dim <= 128 and a multiple of 8,      cudnn
           L and S even, no attention dropout in this call
  gpu      otherwise (float32, odd lengths such as a decoding step, ...)    xla
  tpu      L and S multiples of 128, no attention dropout in this call      splash
  tpu      otherwise                                                        xla

SwiGLU and RMSNorm follow the backend only (their modules have no attention choice to follow):
the custom VJPs on CPU, plain autodiff elsewhere (`hand_written_vjps`).

An explicit choice is checked against the backend: "cudnn" needs a GPU and bf16/fp16 activations,
"splash" a TPU; "xla" and "cpu" run anywhere. A call whose shapes the chosen kernel cannot take
(a one-token decoding step, lengths not a multiple of 128 for splash) runs "xla" instead; a call
with attention dropout runs the plain formulation with dropout.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from unified_io.config import AttentionImpl, require

CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
CUDNN_MAX_HEAD_DIM = 128  # 256 on Hopper and later; 128 holds on every GPU cuDNN supports
SPLASH_BLOCK = 128  # the TPU lane width: splash blocks, so L and S, are multiples of it


def backend_name() -> str:
  """The default backend's platform: "cpu", "gpu" or "tpu" (tests monkeypatch this)."""
  return jax.default_backend()


def hand_written_vjps() -> bool:
  """Whether SwiGLU and RMSNorm use their custom VJPs: only where they pay, on XLA:CPU."""
  return backend_name() == "cpu"


def available(backend: str) -> list:
  """The attention implementations that run on `backend`, as config values."""
  extra = {"gpu": [AttentionImpl.CUDNN], "tpu": [AttentionImpl.SPLASH]}.get(backend, [])
  return [impl.value for impl in [AttentionImpl.AUTO, AttentionImpl.XLA, AttentionImpl.CPU] + extra]


def cudnn_supports(dtype, head_dim: int) -> bool:
  """cuDNN flash attention's static limits for this model (bf16/fp16; head_dim)."""
  return (any(jnp.dtype(dtype) == jnp.dtype(d) for d in CUDNN_DTYPES)
          and head_dim <= CUDNN_MAX_HEAD_DIM and head_dim % 8 == 0)


def check_available(requested: AttentionImpl, dtype, head_dim: int,
                    backend: Optional[str] = None) -> None:
  """A ConfigError naming `requested` and the choices that work here, unless it runs here."""
  backend = backend or backend_name()
  requested = AttentionImpl(requested)
  here = f"choices on the {backend} backend: {available(backend)}"
  if requested == AttentionImpl.CUDNN:
    require(backend == "gpu", "attention_impl", f"'cudnn' does not run on the {backend} "
             f"backend; {here}")
    require(cudnn_supports(dtype, head_dim), "attention_impl",
             f"'cudnn' needs dtype bfloat16 or float16 and head_dim <= {CUDNN_MAX_HEAD_DIM}, a "
             f"multiple of 8 (got {jnp.dtype(dtype).name}, {head_dim}); use 'auto' or 'xla'")
  elif requested == AttentionImpl.SPLASH:
    require(backend == "tpu", "attention_impl", f"'splash' does not run on the {backend} "
             f"backend; {here}")


def resolve_attention(requested: AttentionImpl, *, dtype, head_dim: int, q_length: int,
                      kv_length: int, dropout: bool,
                      backend: Optional[str] = None) -> AttentionImpl:
  """The implementation one attention call runs (the module docstring's table); never AUTO.

  `dropout`: attention dropout is active in this call (training with dropout_rate > 0).
  """
  backend = backend or backend_name()
  requested = AttentionImpl(requested)
  check_available(requested, dtype, head_dim, backend)
  if requested == AttentionImpl.AUTO:
    requested = {"cpu": AttentionImpl.CPU, "gpu": AttentionImpl.CUDNN,
                 "tpu": AttentionImpl.SPLASH}.get(backend, AttentionImpl.XLA)
    if requested == AttentionImpl.CUDNN and not cudnn_supports(dtype, head_dim):
      requested = AttentionImpl.XLA
  if dropout:
    return AttentionImpl.XLA
  if requested == AttentionImpl.CUDNN and (q_length % 2 or kv_length % 2):
    return AttentionImpl.XLA  # cuDNN's masked (bias) training kernel needs even lengths
  if requested == AttentionImpl.SPLASH and (q_length % SPLASH_BLOCK or kv_length % SPLASH_BLOCK):
    return AttentionImpl.XLA
  return requested
