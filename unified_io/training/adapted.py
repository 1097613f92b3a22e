"""Training adapters on a frozen base: LoRA (`unified_io.adapters.lora`) over an optionally int8
base (`unified_io.adapters.int8`), as `train.lora` / `train.int8_base` ask (runs/finetune_lora.gin).

The train state's `params` are only what trains: {"lora": the adapters} and, with
`train.trainable`, {"trained": those base parameters} (so the optimizer, its state, the gradients
and the checkpoints hold only them); its `frozen` part is the base, built as a full fine-tuning
would start (`tokenizer_graft.starting_params`: fresh parameters of `train.seed`,
INITIAL_CHECKPOINT_PATH's read over them, trained tokenizers) and, with `int8_base`, stored as int8
with per-channel scales. Each step builds the model's parameters inside the jitted step:
`apply_adapters(overlay(dequantize(base), trained), adapters)` (`combine`), so the base is never
updated and the int8 copy is the only one held between steps.

MODEL_DIR/lora.json records how the base was built (its path, the seed, the assignment map, the
tokenizers), the adapter config, the trained base parameters' patterns and the base's fingerprint
(targeted kernels and shapes): a resumed run, `uio2-eval` (`evaluation.run_loader`) and
`uio2-merge-lora` rebuild the base from there and refuse adapters made for another base, in one
line.
"""

import json
import os
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from unified_io import partitioning
from unified_io.adapters import int8, lora
from unified_io.training import checkpoints as ckpt_lib
from unified_io.training import tokenizer_graft as graft
from unified_io.training import train_step as train_step_lib
from unified_io.training.train_state import TrainState

RECORD = "lora.json"
TRAINED_FILE = "trained.npz"  # base parameters trained beside the adapters (`train.trainable`)
_DROPOUT_STREAM = 0x10A  # folded into the step's dropout rng for the adapters' rank dropout


def record_path(model_dir: str) -> str:
  return os.path.join(model_dir, RECORD)


def read_record(model_dir: str) -> Optional[dict]:
  """MODEL_DIR/lora.json as a dict, or None when the run has no adapters."""
  path = record_path(model_dir)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def base_id(path: Optional[str]) -> Optional[str]:
  """How lora.json names a base: an absolute local path (a URL as given), or None (fresh)."""
  if not path:
    return None
  return str(path) if "://" in str(path) else os.path.abspath(str(path))


def write_record(model_dir: str, cfg: lora.LoraConfig, fingerprint: Mapping, base: Optional[str],
                 int8_base: bool, seed: int, trainable: Sequence[str] = (),
                 assignment_map: Sequence[Tuple[str, Optional[str]]] = (),
                 tokenizers: Optional[Mapping[str, str]] = None) -> None:
  """MODEL_DIR/lora.json: how to rebuild the base the adapters belong to (its path, the run's
  seed for the parameters it does not hold, the assignment map and grafted tokenizers), the
  adapter config and fingerprint, and the base parameters that trained (`trainable`)."""
  if jax.process_index() != 0:
    return
  base = base_id(base)
  record = {"lora": lora.config_to_dict(cfg), "fingerprint": fingerprint, "base": base,
            "int8_base": bool(int8_base), "seed": int(seed), "trainable": list(trainable),
            "assignment_map": [list(pair) for pair in assignment_map],
            "tokenizers": dict(tokenizers or {})}
  with open(record_path(model_dir), "w") as f:
    json.dump(record, f, indent=2)
    f.write("\n")


def check_record(model_dir: str, cfg: lora.LoraConfig, fingerprint: Mapping,
                 base: Optional[str]) -> None:
  """Refuses (LoraError, one line) to resume adapters of MODEL_DIR made for another base or with
  another adapter config than this run's."""
  saved = read_record(model_dir)
  if saved is None:
    return
  lora.check_compatible(saved["fingerprint"], fingerprint)
  base = base_id(base)
  if saved.get("base") != base:
    raise lora.LoraError(
        f"lora: MODEL_DIR {model_dir} holds adapters trained on base {saved.get('base')!r}; this "
        f"run's INITIAL_CHECKPOINT_PATH is {base!r}: use that base or a new MODEL_DIR")


def _boxed(tree, specs):
  return jax.tree_util.tree_map(lambda x, s: nn.LogicallyPartitioned(x, names=tuple(s)), tree,
                                specs,
                                is_leaf=lambda x: isinstance(x, PartitionSpec))


def nest(flat: Mapping[str, Any]) -> dict:
  """{"encoder/layers_0/.../kernel": {"a", "b"}} -> the same nested like the parameters, as the
  train state and its checkpoints hold adapters (a "/" inside a checkpoint key would not do)."""
  tree: dict = {}
  for path, pair in flat.items():
    node = tree
    for key in path.split("/"):
      node = node.setdefault(key, {})
    node.update(pair)
  return tree


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict:
  """The inverse of `nest`: a node holding "a" and "b" is one kernel's adapter."""
  if "a" in tree and "b" in tree:
    return {prefix: {"a": tree["a"], "b": tree["b"]}}
  flat = {}
  for key, value in tree.items():
    flat.update(flatten(value, f"{prefix}/{key}" if prefix else key))
  return flat


def frozen_shardings(frozen_abstract, base_boxed, mesh: Mesh, rules) -> Any:
  """Shardings of the base as the state holds it: float leaves by their logical axes; an int8
  leaf's values likewise and its scales with the reduced (size-1) axes whole."""
  float_shardings = partitioning.shardings(base_boxed, mesh, rules)

  def place(leaf, sharding):
    if not isinstance(leaf, int8.Int8Weight):
      return sharding
    spec = tuple(sharding.spec) + (None,) * (leaf.values.ndim - len(sharding.spec))
    scale_spec = tuple(None if s == 1 and v != 1 else name
                       for name, s, v in zip(spec, leaf.scale.shape, leaf.values.shape))
    return int8.Int8Weight(values=sharding,
                           scale=NamedSharding(mesh, PartitionSpec(*scale_spec)),
                           dtype=leaf.dtype)
  return jax.tree_util.tree_map(place, frozen_abstract, float_shardings,
                                is_leaf=lambda x: isinstance(x, int8.Int8Weight))


def overlay(base, trained) -> Any:
  """`base` with the leaves `trained` (a nested subset of it) holds replaced."""
  flat = traverse_util.flatten_dict(base, sep="/")
  flat.update(traverse_util.flatten_dict(trained, sep="/"))
  return traverse_util.unflatten_dict(flat, sep="/")


def subset(params, mask) -> dict:
  """The leaves of `params` where `mask` (a like tree of bools) is True, nested as in params."""
  flat, keep = (traverse_util.flatten_dict(t, sep="/") for t in (params, mask))
  return traverse_util.unflatten_dict({k: v for k, v in flat.items() if keep[k]}, sep="/")


def make_combine(cfg: lora.LoraConfig, int8_base: bool) -> Callable:
  """(frozen base, {"lora": adapters, "trained": base leaves that train}, dropout rng or None)
  -> the model's parameters."""
  def combine(frozen, trainable, rng):
    base = int8.dequantize(frozen) if int8_base else frozen
    if "trained" in trainable:
      base = overlay(base, trainable["trained"])
    rng = None if rng is None else jax.random.fold_in(rng, _DROPOUT_STREAM)
    return lora.apply_adapters(base, flatten(trainable["lora"]), cfg, dropout_rng=rng)
  return combine


def base_params(init_params: Callable[[], Any], base_boxed, mesh: Mesh, rules,
                initial_checkpoint_path: Optional[str],
                assignment_map: Sequence[Tuple[str, Optional[str]]],
                tokenizers: Optional[Mapping[str, str]], model_config) -> Any:
  """The base's float parameters on their shardings: fresh (the run's seed), then those of
  INITIAL_CHECKPOINT_PATH, then the trained tokenizers grafted in, as a full fine-tuning starts."""
  shardings = partitioning.shardings(base_boxed, mesh, rules)
  params = jax.jit(lambda: nn.meta.unbox(init_params()), out_shardings=shardings)()
  params = graft.starting_params(params, initial_checkpoint_path, assignment_map, tokenizers,
                                 model_config)
  return jax.device_put(params, shardings)


def build_state(init_params: Callable[[], Any], optimizer, mesh: Mesh, rules, *,
                cfg: lora.LoraConfig, int8_base: bool, seed: int,
                checkpoints: Optional[ckpt_lib.TrainCheckpoints], resume_step: Optional[int],
                initial_checkpoint_path: Optional[str],
                assignment_map: Sequence[Tuple[str, Optional[str]]],
                tokenizers: Optional[Mapping[str, str]], model_config,
                check: Optional[Callable[[dict], None]] = None,
                trainable: Sequence[str] = ()
                ) -> Tuple[Any, Any, TrainState, TrainState, Callable, dict]:
  """(boxed abstract trained parameters, optimizer for them, shardings, state, combine,
  fingerprint). The state's params are {"lora": adapters} and, with `trainable` (regexes of base
  parameter paths, `train.trainable`), "trained": those base parameters, trained in float32.

  A bad target or rank is refused (LoraError, one line) before anything is allocated; `check`
  (e.g. `check_record` of MODEL_DIR) sees the base's fingerprint before the base is read."""
  from unified_io.training import optim  # pylint: disable=import-outside-toplevel
  base_boxed = jax.eval_shape(init_params)
  base_specs = partitioning.logical_specs(base_boxed)
  base_abstract = partitioning.box_values(base_boxed)
  lora.target_paths(base_abstract, base_specs, cfg)  # (raises on a bad target or rank)
  fingerprint = lora.fingerprint(base_abstract, base_specs, cfg)
  if check is not None:
    check(fingerprint)
  adapter_specs = nest(lora.adapter_specs(base_abstract, base_specs, cfg))
  init_rng = jax.random.fold_in(jax.random.PRNGKey(seed), _DROPOUT_STREAM)
  mask = train_step_lib.trainable_mask(base_abstract, trainable) if trainable else None

  def init_trainable(base=None):
    tree = {"lora": _boxed(nest(lora.init_adapters(init_rng, base_abstract, base_specs, cfg)),
                           adapter_specs)}
    if mask is not None:
      if base is None:  # (abstract: shapes only)
        base = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), base_abstract)
      tree["trained"] = subset(_boxed(base, base_specs), mask)
    return tree
  boxed = jax.eval_shape(init_trainable)
  optimizer = optim.for_param_axes(optimizer, partitioning.logical_specs(boxed))
  abstract = jax.eval_shape(lambda: TrainState.create(nn.meta.unbox(boxed), optimizer))
  shardings = partitioning.state_shardings(boxed, abstract, mesh, rules)

  base = base_params(init_params, base_boxed, mesh, rules, initial_checkpoint_path,
                     assignment_map, tokenizers, model_config)
  frozen = base
  trained_source = base if mask is not None else None  # (float32, before any quantisation)
  if int8_base:
    frozen = jax.jit(lambda p: int8.quantize(p, base_specs))(base)
  del base
  shardings = shardings.replace(frozen=frozen_shardings(frozen, base_boxed, mesh, rules)
                                if int8_base else partitioning.shardings(base_boxed, mesh, rules))
  frozen = jax.device_put(frozen, shardings.frozen)
  if resume_step is not None:
    target = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract,
        shardings.replace(frozen=None))
    state, _ = checkpoints.restore(target, resume_step)
    state = state.replace(frozen=frozen)
  else:
    state = jax.jit(lambda f, b: TrainState.create(nn.meta.unbox(init_trainable(b)), optimizer,
                                                   frozen=f), out_shardings=shardings)(
                                                       frozen, trained_source)
  return boxed, optimizer, shardings, state, make_combine(cfg, int8_base), fingerprint


def trainable_report(boxed_adapters, base_boxed) -> str:
  """One line: trained / total parameters."""
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(  # noqa: E731
      partitioning.box_values(tree)))
  trained, total = count(boxed_adapters), count(base_boxed)
  also = (f", {count(boxed_adapters['trained']):,} of them base parameters (train.trainable)"
          if "trained" in boxed_adapters else "")
  return (f"lora: {trained:,} trained parameters ({100 * trained / max(total, 1):.3f}% of the "
          f"base's {total:,}{also})")


def save_adapters(model_dir: str, state: TrainState, cfg: lora.LoraConfig, fingerprint: Mapping,
                  base: Optional[str], int8_base: bool, seed: int,
                  trainable: Sequence[str] = (), **record) -> None:
  """MODEL_DIR/adapters.npz (what `uio2-merge-lora` reads) and lora.json, after a run."""
  if jax.process_index() != 0:
    return
  lora.save_adapters(model_dir, flatten(state.params["lora"]), cfg, fingerprint, base_id(base))
  trained = traverse_util.flatten_dict(state.params.get("trained", {}), sep="/")
  if trained:  # (the base parameters that trained: uio2-merge-lora puts them in too)
    np.savez(os.path.join(model_dir, TRAINED_FILE),
             **{k: np.asarray(jax.device_get(v)) for k, v in trained.items()})
  write_record(model_dir, cfg, fingerprint, base, int8_base, seed, trainable,
               **record)  # (keeps what save_adapters' lora.json leaves out)


def load_merged_params(model, record: Mapping, step_dir: str, target_params, specs) -> Any:
  """The parameters of a LoRA run's step: its base (record["base"], or the fresh base of the
  run's seed) with the step's adapters merged in (`lora.merge`), in float32."""
  cfg = lora.LoraConfig.from_dict(record["lora"])
  # As the trainer built it: fresh parameters of the run's seed, the base checkpoint's read over
  # them through the run's assignment map, then its grafted tokenizers.
  init = jax.jit(lambda: model.init(jax.random.PRNGKey(int(record.get("seed", 0))),
                                    model.dummy_batch(1)))
  base = graft.starting_params(nn.meta.unbox(init()), record.get("base"),
                               record.get("assignment_map", []), record.get("tokenizers"),
                               model.cfg)
  lora.check_compatible(record["fingerprint"], base, specs, cfg)
  target = {"lora": nest(jax.eval_shape(
      lambda: lora.init_adapters(jax.random.PRNGKey(0), target_params, specs, cfg)))}
  if record.get("trainable"):
    target["trained"] = subset(target_params,
                               train_step_lib.trainable_mask(target_params, record["trainable"]))
  trained = ckpt_lib.load_params(step_dir, target)
  return jax.jit(lambda b, t: lora.merge(overlay(b, t.get("trained", {})), flatten(t["lora"]),
                                         cfg))(base, trained)
