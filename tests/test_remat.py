"""Rematerialisation changes memory, never numbers: every `remat_policy` gives the plain model's
loss and gradients, and each really keeps what it says (fewer saved residuals than no remat)."""

import contextlib
import io
import re

import flax.linen as nn
import jax
import jax.ad_checkpoint
import numpy as np
import pytest

from unified_io.config import ConfigError, RematPolicy, TrunkConfig

from unified_io.presets import make_config
from unified_io.model import UnifiedIOModel
from unified_io.network.trunk import REMAT_POLICIES as POLICY_FUNCTIONS

from tiny_models import random_tokens


def _model(**overrides):
  return UnifiedIOModel(make_config("tiny", text_vocab_size=256, **overrides))


@pytest.fixture(scope="module")
def setup():
  plain = _model()
  batch = random_tokens(plain.dummy_batch(2, {"text_inputs": 8, "text_targets": 6}))
  params = nn.meta.unbox(jax.jit(plain.init)(jax.random.PRNGKey(0), batch))
  return batch, params, _loss_and_grads(plain, params, batch)


def _loss_and_grads(model, params, batch):
  return jax.jit(jax.value_and_grad(lambda p: model.loss_fn(p, batch)[0]))(params)


def _saved_activations(model, params, batch) -> int:
  """Elements the backward pass keeps from the forward pass, parameters not counted."""
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    jax.ad_checkpoint.print_saved_residuals(lambda p: model.loss_fn(p, batch)[0], params)
  total = 0
  for line in printed.getvalue().splitlines():
    shape = re.match(r"\w+\[([\d,]*)\]", line)
    assert shape, f"unexpected residual line: {line!r}"
    if "from the argument" not in line:
      total += int(np.prod([int(n) for n in shape.group(1).split(",") if n]))
  return total


@pytest.mark.parametrize("overrides", [dict(remat_policy=RematPolicy.FULL),
                                       dict(remat_policy="full"),
                                       dict(remat_policy="dots"),
                                       dict(remat_policy="dots_no_batch")],
                         ids=["full_member", "full", "dots", "dots_no_batch"])
def test_every_policy_gives_the_same_loss_and_grads(setup, overrides):
  batch, params, (loss_a, grads_a) = setup
  remat = _model(**overrides)
  loss_b, grads_b = _loss_and_grads(remat, params, batch)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(grads_a), jax.tree_util.tree_leaves(grads_b)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # The remat model really is rematerialised: its backward pass recomputes the layers.
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: remat.loss_fn(p, batch)[0]))(params))
  assert "remat" in jaxpr or "checkpoint" in jaxpr


def test_policies_keep_what_they_say(setup):
  """Saved activations: full (layer inputs only) < dots_no_batch (+ projection outputs) < dots
  (+ attention scores) < none (everything autodiff keeps)."""
  batch, params, _ = setup
  saved = {policy: _saved_activations(_model(remat_policy=policy), params, batch)
           for policy in RematPolicy}
  assert saved[RematPolicy.FULL] < saved[RematPolicy.DOTS_NO_BATCH] < saved[RematPolicy.DOTS] \
      < saved[RematPolicy.NONE], saved


def test_policy_names():
  assert set(RematPolicy) == {RematPolicy.NONE} | set(POLICY_FUNCTIONS)
  # A string value becomes its member; a member stays itself.
  assert TrunkConfig(remat_policy="dots").remat_policy is RematPolicy.DOTS
  assert TrunkConfig(remat_policy=RematPolicy.FULL).remat_policy is RematPolicy.FULL
  assert TrunkConfig().remat_policy is RematPolicy.NONE
  assert TrunkConfig(remat_policy="dots") == TrunkConfig(remat_policy=RematPolicy.DOTS)
  with pytest.raises(ConfigError, match=r"remat_policy.*'offload'.*known: \['none', 'full'"):
    TrunkConfig(remat_policy="offload")
  with pytest.raises(ConfigError, match="scan_layers.*bool"):
    TrunkConfig(scan_layers="yes")
  # Through the gin entry point too; the old `remat` bool is gone.
  assert (make_config("tiny", remat_policy="dots_no_batch").trunk.remat_policy
          is RematPolicy.DOTS_NO_BATCH)
  with pytest.raises(ConfigError, match="remat_policy"):
    make_config("tiny", remat_policy="everything")
  with pytest.raises(ConfigError, match="`remat`: is not a TrunkConfig field"):
    make_config("tiny", remat=True)
