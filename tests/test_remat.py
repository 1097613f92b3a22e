"""Rematerialisation changes memory, never numbers: loss and gradients equal the plain model's."""

import flax.linen as nn
import jax
import numpy as np

from unified_io.config import make_config
from unified_io.model import UnifiedIOModel


def test_remat_gives_the_same_loss_and_grads():
  plain = UnifiedIOModel(make_config("tiny", text_vocab_size=256))
  remat = UnifiedIOModel(make_config("tiny", text_vocab_size=256, remat=True))
  batch = plain.dummy_batch(2, {"text_inputs": 8, "text_targets": 6})
  rng = np.random.default_rng(0)
  for side in batch.values():
    for features in side.values():
      for name in ("tokens", "inputs", "targets"):
        if name in features:
          features[name] = rng.integers(1, 256, features[name].shape).astype(np.int32)
  params = nn.meta.unbox(plain.init(jax.random.PRNGKey(0), batch))

  def loss_and_grads(model):
    return jax.jit(jax.value_and_grad(lambda p: model.loss_fn(p, batch)[0]))(params)

  loss_a, grads_a = loss_and_grads(plain)
  loss_b, grads_b = loss_and_grads(remat)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(grads_a), jax.tree_util.tree_leaves(grads_b)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # The remat model really is rematerialised: its backward pass recomputes the layers.
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: remat.loss_fn(p, batch)[0]))(params))
  assert "remat" in jaxpr or "checkpoint" in jaxpr
