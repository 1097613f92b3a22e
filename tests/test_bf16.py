"""bfloat16 end to end, as a TPU/GPU run has it, against float32 on the reference's tiny models.

- Activations (`TrunkConfig.dtype="bfloat16"`, parameters float32): the loss and every top-level
  module's gradient of the text golden and of the all-modality golden model stay within stated
  bounds of float32's (the text golden's own float32 loss and gradients; for all modalities, which
  the golden file has no gradients of, our float32 model's).
- The converter's bfloat16 checkpoint, restored in bfloat16 by `load_run`, feeds a bfloat16
  forward whose logits are finite and close to the release's float32 logits.
- Adafactor with bfloat16 state (`adafactor(state_dtype="bfloat16")`): the state really is
  bfloat16 (half the bytes), steps stay close to the float32-state ones, and the second moments
  keep moving late in training (stochastic rounding; round-to-nearest would freeze them).
- The size gins (large/xl/xxl) carry the pod settings and their comment's CPU override undoes
  them; a dtype name that does not exist is one line naming it and the valid names.

CPU emulates bfloat16 (slowly): the all-modality pair of gradient compiles (~26 s) is most of this
file's ~45 s on 2 idle cores.
"""

import json
import re

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

from conftest import REPO_ROOT
from unified_io.config import ConfigError
from unified_io.evaluation.run_loader import load_run
from unified_io.interop import convert
from unified_io.interop.check_reference import nest_inputs
from unified_io.interop.params import release_to_params
from unified_io.interop.release import config_from_release
from unified_io.model import UnifiedIOModel
from unified_io.presets import make_config, trunk_config
from unified_io.training import optim

# bfloat16 keeps 8 significant bits: one rounding is off by up to 2^-8 = 3.9e-3 relative. The
# loss is a token mean of float32 log-softmaxes (logits are float32), so the activations' rounding
# errors mostly average out: observed 2.7e-4 (all-modality text loss), 1.3e-4 (text golden).
# 2e-3 is 7x that and half of one rounding, which an error that does not average out (a loss or
# softmax computed in bfloat16) reaches.
LOSS_RTOL = 2e-3
# Per top-level module, |g_bf16 - g_f32| / |g_f32| of the flattened gradient. Each activation is
# rounded (up to 2^-8 relative) in every layer and the errors add up over the 2 + 2 layers and both
# passes: observed <= 1.04e-2 (the text golden's encoder). 3e-2 is 3x that; a gradient path that
# loses precision (a reduction accumulated in bfloat16) shows as ~1e-1 or more.
GRAD_REL_ERR = 3e-2
# The same errors as an angle: cos = 1 - rel_err^2 / 2 for unbiased noise, so 3e-2 gives 0.99955;
# observed >= 0.99994. A systematic error (one that turns the gradient) fails this first.
GRAD_COS_MIN = 0.9995
# Logits of a bfloat16-parameter, bfloat16-activation forward against the release's float32 ones,
# max |difference| over max |logit|: the weights' own rounding (up to 2^-8) and the activations'
# over 2 + 2 layers; observed 2.8e-3. 1e-2 is 3.5x that (float32's own match is 1e-4).
LOGIT_RTOL_BF16_PARAMS = 1e-2
# One Adafactor update with bfloat16 state against float32 state, element by element relative to
# each parameter's largest update. A stored second moment (stochastically rounded) is within one
# bfloat16 ulp (<= 2^-7 relative) of float32's, and the update goes as its inverse square root
# (2^-8); a factored update uses two (row and column: 2^-7); the momentum, rounded to nearest, adds
# up to 2^-8: 2^-7 + 2^-8 = 1.2e-2. Observed 5.2e-3 after three steps.
UPDATE_RTOL = 2**-7 + 2**-8


def _arrays(npz) -> dict:
  return {k: np.asarray(npz[k]) for k in npz.files}


def _release(golden, prefix="param/") -> dict:
  return {k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)}


def _model(golden, dtype: str):
  """(model, float32 params, batch) of a golden file's config with `dtype` activations."""
  release = _release(golden)
  cfg = config_from_release(str(golden["meta/config_json"]), release.keys(), dtype=dtype)
  model = UnifiedIOModel(cfg)
  batch = nest_inputs(golden)
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch))
  params, _ = release_to_params(release, abstract)
  return model, params, batch


def _loss_and_grads(golden, dtype: str):
  """((total, per-modality losses), gradients) of the golden model in `dtype`, as float64 NumPy."""
  model, params, batch = _model(golden, dtype)
  (total, losses), grads = jax.jit(jax.value_and_grad(model.loss_fn, has_aux=True))(params, batch)
  losses = {**{k: float(v) for k, v in losses.items()}, "loss/total": float(total)}
  return losses, jax.tree_util.tree_map(lambda g: np.asarray(g, np.float64), grads)


def _shapes(tree):
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), tree)


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


def _assert_grads_close(got, want, what: str) -> dict:
  """Per top-level module: relative norm error and cosine within bounds; returns them."""
  assert got.keys() == want.keys(), what
  errors = {}
  for name in sorted(want):
    g, w = _flat(got[name]), _flat(want[name])
    norm = np.linalg.norm(w)
    if norm == 0:  # frozen (the ViTs) or unused (another modality's tokens): exactly zero too
      assert not np.any(g), f"{what}: {name} has a gradient in bfloat16 only"
      continue
    rel, cos = np.linalg.norm(g - w) / norm, g @ w / (np.linalg.norm(g) * norm)
    errors[name] = (rel, cos)
    assert rel <= GRAD_REL_ERR and cos >= GRAD_COS_MIN, (
        f"{what}: {name} gradient relative error {rel:.2e} (<= {GRAD_REL_ERR}), cosine "
        f"{cos:.6f} (>= {GRAD_COS_MIN})")
  worst = max(errors, key=lambda name: errors[name][0])
  print(f"{what}: worst gradient relative error {errors[worst][0]:.2e} ({worst}), lowest cosine "
        f"{min(e[1] for e in errors.values()):.6f}")
  return errors


def _assert_losses_close(got, want, what: str):
  for key in want:
    rel = abs(got[key] - want[key]) / abs(want[key])
    print(f"{what}: {key} bfloat16 {got[key]:.6f} float32 {want[key]:.6f} relative {rel:.1e}")
    assert rel <= LOSS_RTOL, f"{what}: {key} relative error {rel:.2e} > {LOSS_RTOL}"


@pytest.fixture(scope="module")
def text_golden(text_golden_path):
  with np.load(text_golden_path) as data:
    return _arrays(data)


# ------------------------------------------------------------------------------------------------
# bfloat16 activations: loss and gradients against float32
# ------------------------------------------------------------------------------------------------
def test_text_loss_and_gradients_in_bfloat16(text_golden):
  """Against the release's own float32 loss and gradients (the golden file's `grad/*`)."""
  losses, grads = _loss_and_grads(text_golden, "bfloat16")
  _assert_losses_close(losses, {k: float(v) for k, v in text_golden.items()
                                if k.startswith("loss/")}, "text")
  # The release's gradients in our tree; the image/audio token tables (no such tokens in a text
  # batch) have none in the file: zero.
  release_grads = _release(text_golden, "grad/")
  for name, param in _release(text_golden).items():
    release_grads.setdefault(name, np.zeros_like(param))
  want, _ = release_to_params(release_grads, _shapes(grads))
  _assert_grads_close(grads, jax.tree_util.tree_map(np.float64, want), "text")


def test_all_modalities_loss_and_gradients_in_bfloat16(golden_full):
  """All five inputs and three targets against our float32 model (the golden file has losses but
  no gradients). The VQ tokenizers run in float32 whatever the dtype (test_reference.py checks
  their ids), so both take the file's target ids and neither compiles them (~4 s less)."""
  golden = _arrays(golden_full)
  for name in ("image", "audio"):
    golden[f"input/targets/{name}/targets"] = golden[f"output/{name}/targets"]
  losses, grads = _loss_and_grads(golden, "bfloat16")
  want_losses, want_grads = _loss_and_grads(golden, "float32")
  _assert_losses_close(losses, want_losses, "all modalities")
  errors = _assert_grads_close(grads, want_grads, "all modalities")
  assert {"encoder", "decoder", "input_embedders_image_history",
          "target_embedders_audio"} <= errors.keys()


# ------------------------------------------------------------------------------------------------
# the converter's bfloat16 checkpoint -> a bfloat16 restore -> a bfloat16 forward
# ------------------------------------------------------------------------------------------------
def test_converted_bfloat16_checkpoint_runs_a_bfloat16_forward(tmp_path, text_golden):
  release = _release(text_golden)
  config_json = str(text_golden["meta/config_json"])
  cfg = config_from_release(config_json, release.keys(), dtype="bfloat16")
  params, unused = convert.convert(release, convert.abstract_params(cfg), "bfloat16",
                                   say=lambda *_: None)
  assert not unused
  convert.save_converted(str(tmp_path), params, json.loads(config_json),
                         {"release_tensor_names": sorted(release), "dtype": "bfloat16"})
  run = load_run(str(tmp_path), dtype="bfloat16", model_config=cfg)
  assert {x.dtype for x in jax.tree_util.tree_leaves(run.params)} == {jnp.dtype(jnp.bfloat16)}
  logits = np.asarray(jax.jit(run.model.outputs)(run.params, nest_inputs(text_golden))["text"]
                      .logits, np.float64)
  want = text_golden["output/text/logits"]
  assert np.all(np.isfinite(logits))
  rel = np.max(np.abs(logits - want)) / np.max(np.abs(want))
  print(f"bfloat16 params + activations: logits max error {rel:.1e} of the largest logit")
  assert rel <= LOGIT_RTOL_BF16_PARAMS, rel


# ------------------------------------------------------------------------------------------------
# Adafactor with bfloat16 state
# ------------------------------------------------------------------------------------------------
LR = optim.learning_rate_schedule("constant", base_learning_rate=0.01)


@pytest.fixture(scope="module")
def tiny_params_and_grads(text_golden):
  """The text golden model's parameters and its release gradients, in our tree (float32)."""
  _, params, _ = _model(text_golden, "float32")
  release_grads = _release(text_golden, "grad/")
  for name, param in _release(text_golden).items():
    release_grads.setdefault(name, np.zeros_like(param))
  grads, _ = release_to_params(release_grads, _shapes(params))
  return jax.tree_util.tree_map(jnp.asarray, params), jax.tree_util.tree_map(jnp.asarray, grads)


def _float_state_leaves(state):
  return [x for x in jax.tree_util.tree_leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]


def test_bfloat16_state_is_bfloat16_and_half_the_bytes(tiny_params_and_grads):
  params, _ = tiny_params_and_grads
  shapes = {dtype: jax.eval_shape(optim.adafactor(LR, beta1=0.9, state_dtype=dtype).init, params)
            for dtype in ("float32", "bfloat16")}
  floats = {dtype: _float_state_leaves(state) for dtype, state in shapes.items()}
  assert {x.dtype for x in floats["bfloat16"]} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in floats["float32"]} == {jnp.dtype(jnp.float32)}
  # Second moments (row, column and full) and the momentum are all there, in bfloat16.
  moments = next(x for x in jax.tree_util.tree_leaves(
      shapes["bfloat16"], is_leaf=lambda x: isinstance(x, optax.FactoredState))
                 if isinstance(x, optax.FactoredState))
  kernel = moments.v_row["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  assert kernel.dtype == jnp.bfloat16 and kernel.shape == (256,)  # [emb, mlp] factored
  query = moments.v["decoder"]["layers_0"]["self_attention"]["query"]["kernel"]
  assert query.dtype == jnp.bfloat16 and query.shape == (256, 4, 64)  # not factored (64 < 128)
  nbytes = {dtype: sum(x.size * x.dtype.itemsize for x in leaves)
            for dtype, leaves in floats.items()}
  assert nbytes["bfloat16"] * 2 == nbytes["float32"]


def test_bfloat16_state_steps_match_float32_state(tiny_params_and_grads):
  """Three Adafactor steps (momentum on, so both kinds of state are used) on part of the tiny
  model (a decoder layer and the text token table: factored, full and vector second moments; the
  whole model only compiles longer), each with the release's gradients scaled element-wise by a
  different random factor in [0.5, 1.5]."""
  part = lambda tree: {"decoder": {"layers_0": tree["decoder"]["layers_0"]},  # noqa: E731
                       "token_embedders_text": tree["token_embedders_text"]}
  params, grads = map(part, tiny_params_and_grads)
  rng = np.random.default_rng(0)
  steps = [jax.tree_util.tree_map(lambda g: g * rng.uniform(0.5, 1.5, g.shape).astype(np.float32),
                                  grads) for _ in range(3)]

  def run(state_dtype):
    tx = optim.adafactor(LR, beta1=0.9, state_dtype=state_dtype)
    update, state, p, out = jax.jit(tx.update), tx.init(params), params, []
    for g in steps:
      updates, state = update(g, state, p)
      p = optax.apply_updates(p, updates)
      out.append(updates)
    return out

  worst = 0.0
  for step, (got, want) in enumerate(zip(run("bfloat16"), run("float32"))):
    for (path, u), w in zip(jax.tree_util.tree_leaves_with_path(got),
                            jax.tree_util.tree_leaves(want)):
      scale = float(np.max(np.abs(w)))
      if scale == 0:
        continue
      err = float(np.max(np.abs(np.asarray(u) - np.asarray(w)))) / scale
      worst = max(worst, err)
      assert err <= UPDATE_RTOL, f"step {step} {jax.tree_util.keystr(path)}: {err:.2e}"
  print(f"bfloat16-state updates: worst error {worst:.1e} of a parameter's largest update")
  assert worst > 0  # the state really was rounded


def test_late_second_moments_keep_moving_in_bfloat16():
  """At step t the second moment moves by (1 - decay) = t^-0.8 of its distance to g^2: below
  bfloat16's half ulp (2^-9) after ~2,400 steps. Gradients of 1 for 3,000 steps, then 0.1: in
  float32 v falls from 1 to 0.035 by step 6,000; rounded to nearest it stays at 1.0 (the update
  5x too small); stochastically rounded (what `state_dtype="bfloat16"` does) it follows."""
  params = {"full": jnp.zeros((256,)), "factored": jnp.zeros((16, 16))}
  switch, total = 3000, 6000

  def final_state(state_dtype):
    tx = optim.scale_by_factored_rms(None, 0.8, min_dim_size_to_factor=4, state_dtype=state_dtype)

    def step(state, t):
      grads = jax.tree_util.tree_map(lambda p: jnp.where(t < switch, 1.0, 0.1) + 0 * p, params)
      return tx.update(grads, state, params)[1], None
    return jax.jit(lambda: jax.lax.scan(step, tx.init(params), jnp.arange(total))[0])()

  want = float(final_state(None).v["full"][0])
  assert 0.03 < want < 0.04
  got = final_state(jnp.bfloat16)
  for v in (got.v["full"], got.v_row["factored"], got.v_col["factored"]):
    v = np.asarray(v, np.float64)
    assert abs(v.mean() / want - 1) < 0.05, (v.mean(), want)  # the expectation is kept
    assert np.all(np.abs(v / want - 1) < 0.5), (v.min(), v.max(), want)  # each element's noise
  # Round-to-nearest, the same recurrence: frozen once the step falls below half an ulp.
  v = ml_dtypes.bfloat16(0)
  for t in range(1, total + 1):
    decay = 1 - t**-0.8
    v = ml_dtypes.bfloat16(decay * float(v) + (1 - decay) * (1.0 if t <= switch else 0.01))
  assert float(v) > 0.9


def test_unknown_state_dtype_is_one_line():
  # (gin appends "In call to configurable ..." lines to what a configurable raises; uio2-train
  # prints the first line)
  with pytest.raises(ConfigError) as error:
    optim.adafactor(LR, state_dtype="bf16")
  first = str(error.value).splitlines()[0]
  for word in ("adafactor.state_dtype", "'bf16'", "float32", "bfloat16"):
    assert word in first, first


# ------------------------------------------------------------------------------------------------
# the size gins and the dtype names
# ------------------------------------------------------------------------------------------------
def _gin_config(files, bindings=()):
  from unified_io.cli.gin_paths import gin_dir
  gin.clear_config()
  gin.add_config_file_search_path(gin_dir())
  try:
    gin.parse_config_files_and_bindings(files, list(bindings))
    return make_config()
  finally:
    gin.clear_config()


@pytest.mark.parametrize("size", ["large", "xl", "xxl"])
def test_size_gins_are_set_for_pods_and_their_cpu_override_undoes_it(size):
  pod = _gin_config([f"models/{size}.gin"]).trunk
  assert (pod.dtype, pod.scan_layers) == ("bfloat16", True) and pod.remat_policy.value != "none"
  # The override the file's comment gives (its `#   --gin.` lines) is the plain preset again.
  text = (REPO_ROOT / "gin" / "models" / f"{size}.gin").read_text()
  flags = re.findall(r"--gin\.(\S+)", "\n".join(re.findall(r"^#   (--gin\..*)$", text, re.M)))
  assert len(flags) == 3, flags
  cpu = _gin_config([f"models/{size}.gin"], [f.replace("=", " = ", 1).replace('"', "")
                                             for f in flags]).trunk
  assert cpu == trunk_config(size)


def test_unknown_dtype_is_one_line_naming_it_and_the_valid_names():
  # In code and from gin (gin appends "In call to configurable ..." lines to what a configurable
  # raises; uio2-train prints the first line, test_user_errors.py checks that it does).
  for make in (lambda: make_config("tiny", dtype="bf16"),
               lambda: _gin_config(["models/tiny.gin"], ["make_config.dtype = 'bf16'"])):
    with pytest.raises(ConfigError) as error:
      make()
    first = str(error.value).splitlines()[0]
    for word in ("`dtype`", "'bf16'", "'bfloat16'", "'float32'"):
      assert word in first, first


def test_the_xxl_gin_training_step_traces_in_bfloat16():
  """The pod settings together (bfloat16, scanned layers, full remat) on the largest size, by
  shape only: every parameter float32 ([layers, ...] stacks), the loss and gradients float32."""
  model = UnifiedIOModel(_gin_config(["models/xxl.gin"]))
  batch = model.dummy_batch(1, {"text_inputs": 8, "text_targets": 8})
  params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch))
  # (test_param_counts.py derives the count by hand)
  assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == 6_520_707_072
  assert params["encoder"]["layers"]["mlp"]["wi_0"]["kernel"].shape[0] == 24
  (loss, _), grads = jax.eval_shape(jax.value_and_grad(model.loss_fn, has_aux=True), params, batch)
  assert loss.dtype == jnp.float32
  assert {x.dtype for x in jax.tree_util.tree_leaves((params, grads))} == {jnp.dtype(jnp.float32)}
