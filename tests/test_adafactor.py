"""Adafactor with batch axes (`unified_io.training.optim`): a scanned stack is trained as its layers.

- A stacked parameter [L, ...] whose leading axis is a batch axis gets, layer by layer, the
  updates and optimizer state of L separate parameters (factoring choice, factored statistics,
  parameter-scale RMS, update clipping), where optax on the stacked array mixes the layers.
- Without batch axes it is `optax.adafactor`: same updates and same state layout (checkpoints).
- The trainer's set-up (`build_train_setup`) reads the batch axes from the logical axis names, so
  one update of the tiny text model with `scan_layers=True` equals the per-layer model's update.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from unified_io import partitioning
from unified_io.model import UnifiedIOModel
from unified_io.network import layer_stacking
from unified_io.presets import make_config
from unified_io.training import optim
from unified_io.training.train_setup import abstract_state, build_train_setup

from tiny_models import random_tokens

LR = optim.learning_rate_schedule("constant", base_learning_rate=0.01)


def _flat(tree):
  return {jax.tree_util.keystr(kp): np.asarray(x)
          for kp, x in jax.tree_util.tree_leaves_with_path(tree)}


def _assert_trees_close(got, want, what, rtol=1e-6):
  """Leaf by leaf within `rtol` of each element or of the leaf's largest element (an element
  that is a difference of larger terms, as with weight decay, has only the latter)."""
  got, want = _flat(got), _flat(want)
  assert got.keys() == want.keys(), what
  for key, value in want.items():
    np.testing.assert_allclose(got[key], value, rtol=rtol, atol=rtol * np.abs(value).max(),
                               err_msg=what + key)


def _rms(x):
  return float(np.sqrt(np.mean(np.square(np.asarray(x, np.float64)))))


def _run(tx, params, grads_per_step):
  """[(updates, state)] of `tx` over the steps, the updates applied in between (jitted: one
  compile instead of one per eager op)."""
  state, out, update = jax.jit(tx.init)(params), [], jax.jit(tx.update)
  for grads in grads_per_step:
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    out.append((updates, state))
  return out


# ------------------------------------------------------------------------------------------------
# a stacked parameter = its layers as separate parameters
# ------------------------------------------------------------------------------------------------
def test_the_layer_axis_is_a_batch_axis_in_the_two_layer_example():
  """Layers of RMS 0.02 and 0.2, one stacked [2, 128, 128] kernel: the first update's RMS is
  lr x the layer's RMS per layer (clipping holds the rest at RMS 1); optax on the stack gives both
  layers lr x the stack's RMS 0.142."""
  rng = np.random.default_rng(0)
  kernel = np.stack([0.02 * rng.standard_normal((128, 128)),
                     0.2 * rng.standard_normal((128, 128))]).astype(np.float32)
  params = {"kernel": jnp.asarray(kernel)}
  grads = {"kernel": jnp.asarray(rng.standard_normal(kernel.shape), jnp.float32)}
  specs = {"kernel": P("layers", "embed", "mlp")}

  def update_rms(tx):
    updates, _ = tx.update(grads, tx.init(params), params)
    return [_rms(updates["kernel"][i]) for i in range(2)]

  per_layer = update_rms(optim.for_param_axes(optim.adafactor(LR), specs))
  stack = update_rms(optax.adafactor(LR))
  np.testing.assert_allclose(per_layer, [0.01 * _rms(kernel[0]), 0.01 * _rms(kernel[1])],
                             rtol=1e-4)
  np.testing.assert_allclose(stack, [0.01 * _rms(kernel)] * 2, rtol=1e-4)
  assert per_layer[1] > 9 * per_layer[0] and abs(stack[1] / stack[0] - 1) < 1e-3


L, STEPS = 4, 3
LAYER_RMS = (0.02, 0.2, 1.0, 0.005)
MIN_DIM = 4  # min_dim_size_to_factor, lowered to keep the shapes small


def _stack_params(rng):
  """Per-layer parameters (layers_{i}, of RMS LAYER_RMS[i]) and two outside the stack. Per layer,
  "wide" [16, 24] is factored; "thin" [3, 40] and "scale" [24] are not, though optax on the
  stacked [4, 3, 40] and [4, 24] would factor them over the layer axis (4 >= MIN_DIM)."""
  def layer(rms):
    return {name: jnp.asarray(rms * rng.standard_normal(shape), jnp.float32)
            for name, shape in (("wide", (16, 24)), ("thin", (3, 40)), ("scale", (24,)))}
  return {"encoder": {f"layers_{i}": layer(rms) for i, rms in enumerate(LAYER_RMS)},
          "embedding": jnp.asarray(0.1 * rng.standard_normal((24, 16)), jnp.float32),
          "bias": jnp.asarray(rng.standard_normal((5,)), jnp.float32)}


def _moments(state) -> optax.FactoredState:
  """The second moments in an Adafactor state (behind global-norm clipping's state if any)."""
  is_moments = lambda x: isinstance(x, optax.FactoredState)  # noqa: E731
  return next(x for x in jax.tree_util.tree_leaves(state, is_leaf=is_moments) if is_moments(x))


def _layer_moments(moments: optax.FactoredState, i: int):
  """Layer i of the stack's second moments: {v_row, v_col, v: {param: array}} ([1]: unused)."""
  return {name: jax.tree_util.tree_map(lambda x: x if x.shape == (1,) else x[i],
                                       getattr(moments, name)["encoder"]["layers"])
          for name in ("v_row", "v_col", "v")}


@pytest.mark.parametrize("options", [{}, {"beta1": 0.9, "weight_decay_rate": 1e-3,
                                          "global_norm_clip": 1.0}], ids=["defaults", "beta1_wd"])
def test_stacked_updates_equal_per_layer_updates(options):
  rng = np.random.default_rng(1)
  params = _stack_params(rng)
  grads = [jax.tree_util.tree_map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32),
                                  params) for _ in range(STEPS)]
  stacked = layer_stacking.stack_layers(params)
  stacked_grads = [layer_stacking.stack_layers(g) for g in grads]
  assert stacked["encoder"]["layers"]["thin"].shape == (L, 3, 40)
  specs = jax.tree_util.tree_map(lambda x: P(*[None] * x.ndim), stacked)
  specs["encoder"]["layers"] = jax.tree_util.tree_map(
      lambda x: P("layers", *[None] * (x.ndim - 1)), stacked["encoder"]["layers"])

  adafactor = optim.adafactor(LR, min_dim_size_to_factor=MIN_DIM, **options)
  per_layer = _run(adafactor, params, grads)
  batched = _run(optim.for_param_axes(adafactor, specs), stacked, stacked_grads)
  for step, ((updates_a, state_a), (updates_b, state_b)) in enumerate(zip(per_layer, batched)):
    _assert_trees_close(layer_stacking.unstack_layers(updates_b), updates_a,
                        f"step {step} updates")
    moments_a, moments_b = _moments(state_a), _moments(state_b)
    assert int(moments_b.count) == step + 1
    for i in range(L):
      want = {name: getattr(moments_a, name)["encoder"][f"layers_{i}"]
              for name in ("v_row", "v_col", "v")}
      _assert_trees_close(_layer_moments(moments_b, i), want, f"step {step} layer {i} ")
    _assert_trees_close({k: getattr(moments_b, k)["embedding"] for k in ("v_row", "v_col")},
                        {k: getattr(moments_a, k)["embedding"] for k in ("v_row", "v_col")},
                        f"step {step} embedding ")
  # Factored per layer ("wide": [L, 16] rows, [L, 24] columns), full per layer otherwise.
  moments_b = _moments(batched[-1][1])
  assert moments_b.v_row["encoder"]["layers"]["wide"].shape == (L, 16)
  assert moments_b.v_col["encoder"]["layers"]["wide"].shape == (L, 24)
  assert moments_b.v["encoder"]["layers"]["thin"].shape == (L, 3, 40)
  # What the batch axis changes: optax on the stacked arrays steps every layer alike.
  mixed = _run(optax.adafactor(LR, min_dim_size_to_factor=MIN_DIM), stacked, stacked_grads[:1])
  wide = mixed[0][0]["encoder"]["layers"]["wide"]
  ratio = _rms(wide[1]) / _rms(wide[0])
  assert 0.5 < ratio < 2, ratio  # per layer it is ~ LAYER_RMS[1] / LAYER_RMS[0] = 10


def _unstacked_params(rng):
  shapes = {"factored": (24, 40), "full": (6, 40), "three_d": (3, 16, 24), "vector": (40,),
            "scalar": ()}
  return {name: jnp.asarray(0.1 * rng.standard_normal(shape), jnp.float32)
          for name, shape in shapes.items()}


@pytest.mark.parametrize("options", [
    {},
    {"beta1": 0.9, "weight_decay_rate": 1e-3, "global_norm_clip": 1.0},
    {"clipping_threshold": None, "multiply_by_parameter_scale": False, "decay_rate": 0.5},
], ids=["defaults", "beta1_wd_clip", "no_clip_no_scale"])
def test_without_batch_axes_it_is_optax_adafactor(options):
  rng = np.random.default_rng(2)
  params = _unstacked_params(rng)
  grads = [jax.tree_util.tree_map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32),
                                  params) for _ in range(STEPS)]
  optax_options = dict(options)
  clip = optax_options.pop("global_norm_clip", None)
  if "beta1" in optax_options:
    optax_options["momentum"] = optax_options.pop("beta1")
  reference = optax.adafactor(LR, min_dim_size_to_factor=8, **optax_options)
  if clip is not None:
    reference = optax.chain(optax.clip_by_global_norm(clip), reference)
  ours = optim.adafactor(LR, min_dim_size_to_factor=8, **options)
  # Also after `for_param_axes` with no batch axis names (what the trainer does to such a model).
  logical = optim.for_param_axes(ours, jax.tree_util.tree_map(lambda x: P(*["embed"] * x.ndim),
                                                              params))
  want = _run(reference, params, grads)
  for tx in (ours, logical):
    for step, ((updates, state), (want_updates, want_state)) in enumerate(
        zip(_run(tx, params, grads), want)):
      # The same state layout as optax's (a checkpoint of either restores into the other).
      assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(want_state)
      _assert_trees_close(updates, want_updates, f"step {step} updates")
      _assert_trees_close(state, want_state, f"step {step} state")
  moments = _moments(ours.init(params))
  assert moments.v_row["factored"].shape == (24,) and moments.v_col["factored"].shape == (40,)
  assert moments.v["full"].shape == (6, 40)


def test_a_fresh_state_can_be_donated():
  """Every leaf of an eagerly made state is its own buffer (the train step donates its state)."""
  params = _unstacked_params(np.random.default_rng(3))
  state = optim.adafactor(LR, min_dim_size_to_factor=8).init(params)
  jax.block_until_ready(jax.jit(lambda s: jax.tree_util.tree_map(lambda x: x + 1, s),
                                donate_argnums=0)(state))


# ------------------------------------------------------------------------------------------------
# the trainer's set-up: a scanned tiny text model steps as the per-layer one
# ------------------------------------------------------------------------------------------------
VOCAB = 256


def _text_batch(model):
  return random_tokens(model.dummy_batch(2, {"text_inputs": 8, "text_targets": 6}), vocab=VOCAB,
                       low=2)


def _setup(scan_layers: bool, batch):
  """`build_train_setup` as `trainer.train` calls it (`adafactor(learning_rate)`, unbound), on one
  device."""
  model = UnifiedIOModel(make_config("tiny", text_vocab_size=VOCAB, scan_layers=scan_layers))
  mesh = partitioning.make_mesh(devices=jax.devices()[:1])
  return build_train_setup(model, optim.adafactor(LR), LR, batch, mesh=mesh, use_dropout=False)


def test_a_scanned_train_step_equals_the_per_layer_step():
  batch = _text_batch(UnifiedIOModel(make_config("tiny", text_vocab_size=VOCAB)))
  plain, scanned = _setup(False, batch), _setup(True, batch)
  params = jax.device_get(plain.state.params)
  # Layer 1 of each stack 5x layer 0's scale: one RMS over the stacked layers would show.
  for stack in layer_stacking.STACKS:
    params[stack]["layers_1"] = jax.tree_util.tree_map(lambda x: 5 * x, params[stack]["layers_1"])
  rng = jax.random.PRNGKey(0)

  def one_step(setup, params):
    # The set-up's fresh state with these parameters (Adafactor's first state is zeros).
    state = setup.state.replace(params=jax.device_put(params, setup.shardings.params))
    with setup.activated():
      new_state, metrics = setup.step(state, batch, rng)
    return jax.device_get(new_state), float(metrics["loss"])

  state_a, loss_a = one_step(plain, params)
  state_b, loss_b = one_step(scanned, layer_stacking.stack_layers(params))
  np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
  update = lambda new: jax.tree_util.tree_map(jnp.subtract, new, params)  # noqa: E731
  update_a = update(state_a.params)
  update_b = update(layer_stacking.unstack_layers(state_b.params))
  _assert_trees_close(update_b, update_a, "update", rtol=1e-4)
  # The layers' steps really differ (so a shared RMS would have failed the comparison above).
  kernel = update_a["decoder"]["layers_1"]["mlp"]["wi_0"]["kernel"]
  kernel_0 = update_a["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  assert _rms(kernel) > 3 * _rms(kernel_0)


def test_stacked_optimizer_state_shardings():
  """On (data=2, model=4) with FSDP: a stacked parameter's full second moment follows it, its
  factored row/column statistics keep the layer axis ([L, rows], [L, cols]) and are replicated."""
  model = UnifiedIOModel(make_config("tiny", text_vocab_size=VOCAB, scan_layers=True))
  batch = model.dummy_batch(2, {"text_inputs": 4, "text_targets": 4})
  mesh, rules = partitioning.make_mesh(data=2, model=4), partitioning.axis_rules(fsdp=True)
  with partitioning.activated(mesh, rules):
    boxed, abstract = abstract_state(lambda: model.init(jax.random.PRNGKey(0), batch),
                                     optim.adafactor(LR))
    shardings = partitioning.state_shardings(boxed, abstract, mesh, rules)
  params = abstract.params["decoder"]["layers"]
  param_specs = partitioning.mesh_specs(boxed, rules)["decoder"]["layers"]
  moments, moment_shardings = _moments(abstract.opt_state), _moments(shardings.opt_state)
  layers = params["mlp"]["wi_0"]["kernel"].shape[0]
  wi = ("mlp", "wi_0", "kernel")  # [L, embed, mlp]: factored
  get = lambda tree, path: tree[path[0]][path[1]][path[2]]  # noqa: E731
  emb, mlp = get(params, wi).shape[1:]
  assert get(moments.v_row["decoder"]["layers"], wi).shape == (layers, emb)
  assert get(moments.v_col["decoder"]["layers"], wi).shape == (layers, mlp)
  for stat in (moment_shardings.v_row, moment_shardings.v_col):
    assert get(stat["decoder"]["layers"], wi).spec == P()
  query = ("self_attention", "query", "kernel")  # [L, embed, heads, kv]: full second moment
  assert get(moments.v["decoder"]["layers"], query).shape == get(params, query).shape
  assert get(moment_shardings.v["decoder"]["layers"], query).spec == get(param_specs, query)
  assert get(param_specs, query)[0] is None and any(get(param_specs, query))
