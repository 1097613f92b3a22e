"""Everything a training loop runs on, built once: what `trainer.train` and the benchmarks share.

  mesh = partitioning.make_mesh(model=model_parallel)
  first = partitioning.global_batch(next(data), mesh, batch_size)
  setup = build_train_setup(model, optimizer, learning_rate, first, mesh=mesh, fsdp=fsdp)
  with setup.activated():
    state, metrics = setup.step(setup.state, first, rng)

In order: the logical axis rules; the abstract state (`jax.eval_shape` of `model.init` on
`init_batch` and `TrainState.create`, nothing allocated); the mesh checked against it (a model
axis that does not divide the heads, MLP or vocabulary, an FSDP data axis that does not divide
the embedding, a batch the data axis does not split: `partitioning.MeshError`, one line; also
`check_mesh`, from the config alone); the optimizer remade for the parameters' logical axes
(`optim.for_param_axes`: Adafactor takes scanned layers' stacked axis as a batch of layers) and
the state's shardings
(`partitioning.state_shardings`); the state, created directly on its
shardings, restored onto them from a checkpoint (`resume_step`: `CheckpointMismatchError` or
`CorruptCheckpointError` before anything is written), or created and then given
parameters from another checkpoint (`initial_checkpoint_path` with a t5x-style assignment map);
model-info.txt when asked (every variable's shape, logical axes and PartitionSpec);
and the jitted train step with the state donated and the state and batch shardings explicit.
"""

import contextlib
import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import optax
from jax.sharding import Mesh

from unified_io import partitioning
from unified_io.config import UnifiedIOConfig
from unified_io.model import UnifiedIOModel
from unified_io.training import adapted
from unified_io.training import tokenizer_graft as graft
from unified_io.training import checkpoints as ckpt_lib
from unified_io.training import optim
from unified_io.training.train_state import TrainState
from unified_io.training.train_step import jit_train_step, make_train_step, trainable_mask


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """The pieces of a training run; `state` is the first state (the first step donates it)."""
  mesh: Mesh
  rules: partitioning.Rules
  model: UnifiedIOModel
  optimizer: optax.GradientTransformation  # as the step runs it (`optim.for_param_axes`)
  boxed_params: Any    # abstract parameters with their logical axes (`partitioning.describe`)
  shardings: TrainState  # a NamedSharding per leaf of the state
  state: TrainState
  step: Callable       # jitted (state, global batch, rng) -> (state, metrics), state donated
  # With LoRA (`lora`): the base's fingerprint for MODEL_DIR/lora.json (`training.adapted`);
  # `boxed_params` and `state.params` are then the adapters, `state.frozen` the base.
  lora_fingerprint: Optional[dict] = None

  def activated(self) -> contextlib.AbstractContextManager:
    """The mesh and the rules in effect (the step traces a new batch shape inside it)."""
    return partitioning.activated(self.mesh, self.rules)


def abstract_state(init_params: Callable[[], Any], optimizer: optax.GradientTransformation,
                   boxed: Any = None) -> Tuple[Any, TrainState]:
  """(boxed abstract params, abstract TrainState) without allocating anything; the state of
  `optimizer` remade for the parameters' logical axes, as `build_train_setup` runs it. `boxed`:
  `jax.eval_shape(init_params)` if already known (e.g. `model.abstract_params()`)."""
  boxed = jax.eval_shape(init_params) if boxed is None else boxed
  optimizer = optim.for_param_axes(optimizer, partitioning.logical_specs(boxed))
  return boxed, jax.eval_shape(lambda: TrainState.create(nn.meta.unbox(boxed), optimizer))


def check_mesh(model: UnifiedIOModel, mesh: Mesh, fsdp: bool, batch_size: int) -> None:
  """What `build_train_setup` checks of the mesh, from the config alone (one `jax.eval_shape`):
  raises `partitioning.MeshError` (one line) when its axes do not divide a split parameter
  dimension or a global batch of `batch_size` rows, so a run refuses before it opens anything."""
  partitioning.check_batch_size(mesh, batch_size, "BATCH_SIZE")
  boxed = model.abstract_params()
  partitioning.check_divisible(boxed, mesh, partitioning.axis_rules(fsdp))


def build_train_setup(
    model: UnifiedIOModel, optimizer: optax.GradientTransformation,
    learning_rate: Callable[[Any], Any], init_batch: Dict, *, mesh: Optional[Mesh] = None,
    fsdp: bool = False, seed: int = 0, num_microbatches: int = 1, use_dropout: bool = True,
    checkpoints: Optional[ckpt_lib.TrainCheckpoints] = None, resume_step: Optional[int] = None,
    initial_checkpoint_path: Optional[str] = None,
    assignment_map: Sequence[Tuple[str, Optional[str]]] = (),
    tokenizers: Optional[Mapping[str, str]] = None,
    model_info_path: Optional[str] = None, lora=None, int8_base: bool = False,
    lora_check: Optional[Callable[[dict], None]] = None,
    trainable: Sequence[str] = ()) -> TrainSetup:
  """The mesh (default: every device on `data`), rules, state and step (module docstring).

  `init_batch`: a (global) batch with every modality the data has; parameters are created from it
  with `jax.random.PRNGKey(seed)`. `learning_rate`: the schedule `optimizer` was made with (the
  step logs it); it is remade for the parameters' logical axes (`optim.for_param_axes`), and the
  result's `optimizer` is the one the step runs. `resume_step`: restore that step from
  `checkpoints` instead of initialising. `tokenizers`: {kind: trained tokenizer folder} grafted
  into a fresh or loaded state (`graft.graft_tokenizers`), not into a restored one.
  `lora`: a `unified_io.adapters.lora.LoraConfig`: train adapters only, on a frozen base (the
  parameters a full fine-tuning would start from), stored in int8 with `int8_base`
  (`unified_io.training.adapted`); `lora_check(fingerprint)` runs before the base is read.
  `trainable`: regexes of parameter paths: only those train (with `lora`: beside the adapters),
  every other parameter keeps its value exactly (`train_step.trainable_mask`).
  """
  mesh = partitioning.make_mesh() if mesh is None else mesh
  rules = partitioning.axis_rules(fsdp)
  init_rng = jax.random.PRNGKey(seed)
  init_params = lambda: model.init(init_rng, init_batch)  # noqa: E731
  with partitioning.activated(mesh, rules):
    # (the parameters' shapes and axes depend on neither the batch nor the key: the model's own)
    boxed, abstract = abstract_state(init_params, optimizer, model.abstract_params())
    # A mesh that does not fit the model or the batch is refused here, in one line, before
    # anything is allocated or compiled (`partitioning.MeshError`).
    partitioning.check_divisible(boxed, mesh, rules)
    partitioning.check_batch_size(mesh, jax.tree_util.tree_leaves(init_batch)[0].shape[0],
                                  "the batch's size")
    combine, fingerprint, described, mask = None, None, boxed, None
    if trainable and lora is None:  # (a pattern naming nothing is refused here, in one line)
      values = jax.tree_util.tree_leaves(partitioning.box_values(boxed))
      mask = trainable_mask(partitioning.box_values(boxed), trainable)
      trained = sum(x.size for x, m in zip(values, jax.tree_util.tree_leaves(mask)) if m)
      print(f"train.trainable: {trained:,} of {sum(x.size for x in values):,} parameters train, "
            "the rest keep their values", flush=True)
    if lora is not None:  # the adapters train, the base is frozen (`training.adapted`)
      boxed, optimizer, shardings, state, combine, fingerprint = adapted.build_state(
          init_params, optimizer, mesh, rules, cfg=lora, int8_base=int8_base, seed=seed,
          checkpoints=checkpoints, resume_step=resume_step,
          initial_checkpoint_path=initial_checkpoint_path, assignment_map=assignment_map,
          tokenizers=tokenizers, model_config=model.cfg, check=lora_check, trainable=trainable)
      print(adapted.trainable_report(boxed, described), flush=True)
    else:
      # The optimizer `abstract` holds the state of (the step must run that one).
      optimizer = optim.for_param_axes(optimizer, partitioning.logical_specs(boxed))
      shardings = partitioning.state_shardings(boxed, abstract, mesh, rules)
      if resume_step is not None:
        if checkpoints is None:
          raise ValueError(f"build_train_setup: resume_step={resume_step} needs `checkpoints`")
        target = jax.tree_util.tree_map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract,
            shardings)
        state, _ = checkpoints.restore(target, resume_step)
      else:
        state = _initial_state(init_params, optimizer, shardings, initial_checkpoint_path,
                               assignment_map, tokenizers, model.cfg)
    # (after the restore: a checkpoint that does not fit or cannot be read leaves MODEL_DIR as is)
    if model_info_path and jax.process_index() == 0:
      with open(model_info_path, "w") as f:
        f.write(f"# mesh {dict(mesh.shape)}, fsdp={fsdp}\n"
                + partitioning.describe(described, rules) + "\n")
    step = jit_train_step(
        make_train_step(model.loss_fn, optimizer, learning_rate,
                        num_microbatches=num_microbatches, use_dropout=use_dropout,
                        combine=combine, trainable=mask),
        state_shardings=shardings,
        batch_sharding=partitioning.batch_sharding(mesh))  # (a prefix: every leaf alike)
  return TrainSetup(mesh=mesh, rules=rules, model=model, optimizer=optimizer, boxed_params=boxed,
                    shardings=shardings, state=state, step=step, lora_fingerprint=fingerprint)


def _initial_state(init_params: Callable[[], Any], optimizer: optax.GradientTransformation,
                   shardings: TrainState, initial_checkpoint_path: Optional[str],
                   assignment_map: Sequence[Tuple[str, Optional[str]]],
                   tokenizers: Optional[Mapping[str, str]], model_config: UnifiedIOConfig
                   ) -> TrainState:
  """A fresh state on `shardings`; its parameters loaded from `initial_checkpoint_path` if given,
  then the trained `tokenizers` grafted in (over the checkpoint's own)."""
  state = jax.jit(lambda: TrainState.create(nn.meta.unbox(init_params()), optimizer),
                  out_shardings=shardings)()
  if not initial_checkpoint_path and not tokenizers:
    return state
  params = graft.starting_params(state.params, initial_checkpoint_path, assignment_map,
                                 tokenizers, model_config)
  params = jax.device_put(params, shardings.params)
  return jax.jit(lambda p: TrainState.create(p, optimizer), out_shardings=shardings)(params)
