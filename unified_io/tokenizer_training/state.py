"""What a tokenizer training run saves: its state, and the record that names the tokenizer.

A tokenizer run's folder (TOKENIZER_DIR):
  tokenizer.json        {"kind": "image" | "audio", "config": the VQ config's fields, "format": 1}
  checkpoints/<step>/   orbax (`training.checkpoints.TrainCheckpoints`): `state` is a
                        `TokenizerState`; its `params` are the VQ module's own tree, the same tree
                        a model holds under `target_embedders/<kind>/vqgan`
  train/                TensorBoard and metrics.jsonl (the loss terms)
  eval/metrics.jsonl    held-out measures at each evaluation (PSNR, SSIM, codebook usage, ...)
  report/index.html     held-out inputs beside their reconstructions, the measures and curves

The codebook is not learned by gradients: it is an exponential moving average of the encoder
outputs assigned to each code (`codebook.py`), so the state carries the averages' running sums.
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

# The folder's record (tokenizer.json) is read where a model takes the tokenizer in.
from unified_io.training.tokenizer_graft import (CONFIGS, RECORD, VQConfig, config_from_record,
                                                 read_record, write_record)

__all__ = ["CONFIGS", "RECORD", "TokenizerState", "VQConfig", "config_from_record", "read_record",
           "write_record"]


@flax.struct.dataclass
class TokenizerState:
  step: jax.Array
  params: Any
  opt_state: Any
  code_counts: jax.Array   # [N] moving average of how many latents each code received per step
  code_sums: jax.Array     # [N, E] moving average of the sum of those latents
  nonfinite_steps: jax.Array

  @classmethod
  def create(cls, params, optimizer: optax.GradientTransformation, codebook: jax.Array
             ) -> "TokenizerState":
    """A fresh state: every code's count starts at 0, so codes no latent picks are restarted
    from the first batches' latents at once (`codebook.update`)."""
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
               code_counts=jnp.zeros(codebook.shape[:1], jnp.float32),
               code_sums=jnp.zeros(codebook.shape, jnp.float32),
               nonfinite_steps=jnp.zeros((), jnp.int32))

