"""Whole-model properties with every modality, on the release's tiny weights (the full golden)."""

import copy

import flax.linen as nn
import jax
import numpy as np
import pytest

from unified_io.interop.check_reference import nest_inputs
from unified_io.interop.params import release_to_params
from unified_io.interop.release import config_from_release
from unified_io.model import UnifiedIOModel


@pytest.fixture(scope="module")
def setup(golden_full):
  release = {k[len("param/"):]: golden_full[k] for k in golden_full.files if k.startswith("param/")}
  cfg = config_from_release(str(golden_full["meta/config_json"]), release.keys())
  model = UnifiedIOModel(cfg)
  batch = nest_inputs(golden_full)
  # Feed the release's VQ ids so these tests do not compile the tokenizers again.
  for name in ("image", "audio"):
    batch["targets"][name]["targets"] = golden_full[f"output/{name}/targets"]
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch))
  params, _ = release_to_params(release, abstract)
  return model, params, batch


def _logits(model, params, batch):
  """Logits of the real target tokens only: a padded query row is, as in the release, a uniform
  average over every key, so it legitimately depends on everything else in the sequence."""
  outputs = jax.jit(model.outputs)(params, batch)
  return {k: np.asarray(v.logits)[np.asarray(batch["targets"][k]["mask"]) > 0]
          for k, v in outputs.items()}


def test_null_modalities_change_nothing(setup):
  """Fully masked image/audio/history inputs give the same outputs as leaving them out."""
  model, params, batch = setup
  text_only = copy.deepcopy(batch)
  text_only["inputs"] = {"text": batch["inputs"]["text"]}
  null = copy.deepcopy(batch)
  rng = np.random.default_rng(0)
  for name, features in null["inputs"].items():
    if name != "text":
      features["mask"] = np.zeros_like(features["mask"])
      features["input"] = rng.normal(size=features["input"].shape).astype(np.float32)
  a, b = _logits(model, params, text_only), _logits(model, params, null)
  for name in a:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5, err_msg=name)
  # Control: the same inputs unmasked do change the text logits.
  c = _logits(model, params, batch)
  assert np.abs(c["text"] - a["text"]).max() > 1e-3


def test_targets_are_independent_sub_segments(setup):
  """Three targets in one pass equal three one-target passes (no attention across targets)."""
  model, params, batch = setup
  together = _logits(model, params, batch)
  for name in ("text", "image", "audio"):
    alone = copy.deepcopy(batch)
    alone["targets"] = {name: batch["targets"][name]}
    np.testing.assert_allclose(_logits(model, params, alone)[name], together[name],
                               rtol=1e-5, atol=2e-5, err_msg=name)
