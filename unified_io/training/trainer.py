"""The training loop behind `uio2-train`: every argument is a gin binding (see gin/runs/*.gin).

One call of `train()`:
  0. builds (without reading) the input pipeline of every stage it will sample
     (`input.check_input`), so a bad mixture, length, denoising rate or curriculum stops it with
     one line (`InputConfigError`) before anything is written; likewise a trained tokenizer in
     `tokenizers` of a kind, target or config the model lacks (`TokenizerGraftError`, from its
     tokenizer.json alone: `training.tokenizer_graft.check_tokenizers`);
  1. refuses (one line, `CheckpointMismatchError`, nothing written) a MODEL_DIR whose
     run-config.json has another model or vocabulary than this configuration;
  2. builds the mesh (by the devices' topology; a size that does not fit the devices, the heads,
     MLP or vocabulary, or BATCH_SIZE is refused in one line, `partitioning.MeshError`, nothing
     written), the model and the optimizer, then resumes from the newest checkpoint in
     MODEL_DIR/checkpoints (state, input position and the input's saved tf.data state, so the
     input is not replayed: `unified_io.training.input`), or initialises (optionally loading
     parameters from INITIAL_CHECKPOINT_PATH with an assignment map, then putting in the trained
     tokenizers' parameters, frozen from then on: `training.tokenizer_graft`). A checkpoint whose
     parameter shapes are not the model's is refused like (1); a step whose files are missing or
     unreadable is named in one line, renamed to checkpoints/<step>.corrupt-<time> and the next
     newest step tried;
  3. only then writes MODEL_DIR/run-config.json (as data: the model config, feature lengths and
     vocabulary eval/infer/predict rebuild the model from, and the world, denoising, directories
     and task modules an evaluation applies; `run_config`), config.gin, run-info.json (package
     versions, git SHA, devices) and model-info.txt (every variable's shape, logical axes and
     PartitionSpec);
  4. runs the jitted, donated train step up to TRAIN_STEPS (an absolute step, as in t5x), logging
     to TensorBoard (MODEL_DIR/train), MODEL_DIR/train/metrics.jsonl and the console (with the
     input pipeline's skipped-bad-example counts as `bad_input/<task>/<reason>`, each bad
     example once, and in a last "training input: skipped ..." line), saving every
     `checkpoint_every` steps, and once more at the end or on SIGTERM (preemption: it then raises
     `Preempted`, which `uio2-train` turns into exit status 143; a SIGTERM before the first step
     has run raises it at once, with nothing to save). A save that fails (disk full) stops the
     run at the next step with `ckpt_lib.SaveError`, its temporary folder removed; a non-finite
     step with policy "stop", or `max_consecutive_nonfinite` of them in a row with "skip",
     checkpoints and raises `NonFiniteLossError`.

Mesh, rules, state (initialised, restored or loaded) and the jitted step come from
`train_setup.build_train_setup`, which the benchmarks use too; the input from
`input.open_process_input`.
"""

import contextlib
import enum
import errno
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import gin
import jax
import numpy as np
import seqio
from jax.experimental import multihost_utils

from unified_io import config as config_lib
from unified_io import gin_required, partitioning
from unified_io.config import ConfigError, UnifiedIOConfig
from unified_io.data import bad_input, pipeline
from unified_io.model import UnifiedIOModel
from unified_io.network import packing
from unified_io.training import adapted
from unified_io.training import tokenizer_graft as graft
from unified_io.training import checkpoints as ckpt_lib
from unified_io.training import run_config as run_config_lib
from unified_io.training.run_config import RunConfig, RunConfigError
from unified_io.training.input import (InputConfigError, ProcessInput, check_input,
                                       open_process_input, trim_batch)
from unified_io.training.progress import ProgressLog
from unified_io.training.train_setup import TrainSetup, build_train_setup, check_mesh
from unified_io.training.train_state import TrainState


class Preempted(Exception):
  """Training stopped on SIGTERM after checkpointing the current step (`uio2-train` exits 143);
  `step` None: the signal came during start-up or compilation, before anything new to save."""

  def __init__(self, step: Optional[int]):
    super().__init__(f"SIGTERM: checkpoint written at step {step}" if step is not None else
                     "SIGTERM during start-up: nothing new to save")
    self.step = step


class NonFiniteLossError(FloatingPointError):
  """Training stopped because a step's loss or gradients were NaN/Inf (policy "stop")."""


class NonFinitePolicy(str, enum.Enum):
  """What training does after a step whose loss or gradients are NaN/Inf (its update is skipped)."""
  SKIP = "skip"  # count it (`nonfinite_steps`) and go on
  STOP = "stop"  # checkpoint the last good state and raise `NonFiniteLossError`

  @classmethod
  def parse(cls, value: Union[str, "NonFinitePolicy"]) -> "NonFinitePolicy":
    """The member for a gin string (or a member); anything else is a one-line ValueError."""
    try:
      return cls(value)
    except ValueError:
      known = " or ".join(repr(p.value) for p in cls)
      raise ConfigError(f"train.nonfinite_policy must be {known}, got {value!r}") from None


def _git_sha() -> Optional[str]:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None


def _run_info() -> Dict[str, Any]:
  import importlib.metadata as md
  packages = {}
  for name in ("unified-io", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "seqio",
               "tensorflow", "gin-config", "clu", "numpy"):
    try:
      packages[name] = md.version(name)
    except md.PackageNotFoundError:
      packages[name] = None
  return {"git_sha": _git_sha(), "packages": packages, "python": sys.version.split()[0],
          "process_count": jax.process_count(), "devices": [str(d) for d in jax.devices()],
          "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _write(path: str, text: str) -> None:
  if jax.process_index() == 0:
    with open(path, "w") as f:
      f.write(text)


def _input_position(checkpoints: ckpt_lib.TrainCheckpoints, resume_step: Optional[int],
                    seed: int, input_shards: Optional[int]) -> Tuple[int, int, int]:
  """(batches already consumed, data seed, input shards): fresh, or as the checkpoint saved them."""
  if resume_step is None:
    return 0, seed, jax.process_count() if input_shards is None else input_shards
  position = checkpoints.data_position(resume_step)
  # (positions saved before input shards were recorded come from one shard per process)
  saved_shards = int(position.get("input_shards", jax.process_count()))
  if input_shards is not None and input_shards != saved_shards:
    print(f"note: train.input_shards={input_shards} differs from the checkpoint's {saved_shards}: "
          "the resumed run reads other batches than the original would have", flush=True)
  return (int(position["batches_consumed"]), int(position["seed"]),
          saved_shards if input_shards is None else input_shards)


def _fresh_first_shard(seed: int, input_shards: Optional[int]) -> Dict[str, Any]:
  """The data seed and seqio shard of the first input shard this process opens on a fresh run
  (`open_process_input`; processes hold consecutive equal slices of each batch's rows)."""
  count, index = jax.process_count(), jax.process_index()
  shards = input_shards or count
  first = index * (shards // count) if shards % count == 0 else 0
  return {"seed": seed + first, "shard_info": seqio.ShardInfo(index=first, num_shards=shards)}


class SigtermFlag:
  """Set by SIGTERM; the loop checks it between steps, saves and raises `Preempted`.

  Installed when `train` starts, restored when it returns. Until the first step has compiled
  and run (`started`) there is nothing new to save: the signal raises `Preempted(None)` at once.
  With several processes the signal may reach only some of them, and a save is collective: they
  agree (`agreed`) before any saves, at steps where the host waits for the metrics anyway.
  """

  def __init__(self):
    self.raised = False
    self._starting = True
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. inside some test runners): no handler
      self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True
    if self._starting:
      raise Preempted(None)

  def started(self):
    """The first step has run: from now on the signal is answered with a checkpoint."""
    self._starting = False

  def agreed(self, step: int, every: int) -> bool:
    """Whether any process was signalled; with several processes, decided every `every` steps."""
    if jax.process_count() == 1:
      return self.raised
    if step % max(every, 1):
      return False
    flags = multihost_utils.process_allgather(np.asarray(self.raised, np.int32))
    return bool(np.max(flags))

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class ModelDirError(ValueError):
  """MODEL_DIR cannot hold the run: a file, or a folder this process cannot create or write."""


def check_model_dir(model_dir: str) -> None:
  """Raises ModelDirError, in one line, unless MODEL_DIR is (or can be made) a writable folder;
  writes nothing there. Paths with a scheme (gs://...) are left to their file system."""
  if "://" in model_dir:
    return
  existing = os.path.abspath(model_dir)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ModelDirError(f"MODEL_DIR {model_dir}: {existing} is a file, not a folder; give a "
                        "folder for the run's checkpoints and logs")
  try:  # (root passes permission checks, so os.access cannot tell: make and remove a folder)
    os.rmdir(tempfile.mkdtemp(prefix=".uio2-write-probe-", dir=existing))
  except OSError as exc:
    why = f" ({exc.strerror})" if exc.strerror and exc.errno != errno.ENOENT else ""
    raise ModelDirError(f"MODEL_DIR {model_dir}: cannot write in {existing}{why}; give a "
                        "writable folder") from None


def _flat_config(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}.{key}" if prefix else str(key)
    out.update(_flat_config(value, name) if isinstance(value, dict) else {name: value})
  return out


def _check_same_model(model_dir: str, run_config: RunConfig) -> None:
  """Raises CheckpointMismatchError (one line naming the fields) when MODEL_DIR holds a run whose
  run-config.json has another model or vocabulary than this run's: resuming would fail, and
  writing this run's config there would make the run's intact checkpoints unreadable."""
  try:
    saved = run_config_lib.load(model_dir)
  except RunConfigError as exc:  # (the checkpoint's own shapes are still checked on restore)
    print(f"note: {exc}; it will be rewritten", file=sys.stderr, flush=True)
    return
  if saved is None:
    return
  old = _flat_config(config_lib.to_dict(saved.model))
  new = _flat_config(config_lib.to_dict(run_config.model))
  diffs = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
           if old.get(k) != new.get(k)]
  if saved.vocabulary != run_config.vocabulary:
    diffs.append(f"vocabulary {saved.vocabulary!r} -> {run_config.vocabulary!r}")
  if diffs:
    shown = ", ".join(diffs[:4]) + (f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else "")
    raise ckpt_lib.CheckpointMismatchError(
        f"MODEL_DIR {model_dir} holds a run of another model than this configuration ({shown}; "
        f"saved in {run_config_lib.FILE}): resume it with the model gin it was trained with, or "
        "train in a new MODEL_DIR; nothing was written")


@gin.configurable(denylist=["extra_metrics", "gin_imports"])
def train(*, model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Dict[str, int] = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          batch_size: int = gin.REQUIRED, model_config: UnifiedIOConfig = gin.REQUIRED,
          optimizer: Callable = gin.REQUIRED, learning_rate: Callable = gin.REQUIRED,
          num_microbatches: int = 1, seed: int = 0, use_dropout: bool = True,
          model_parallel: int = 1, fsdp: bool = False, dcn_data: int = 1,
          input_shards: Optional[int] = None,
          checkpoint_every: int = 1000, keep_checkpoints: Optional[int] = None,
          async_checkpoints: bool = True,
          initial_checkpoint_path: Optional[str] = None,
          assignment_map: Sequence[Tuple[str, Optional[str]]] = (),
          tokenizers: Optional[Mapping[str, str]] = None,
          lora=None, int8_base: bool = False, trainable: Sequence[str] = (),
          log_every: int = 10,
          nonfinite_policy: Union[str, NonFinitePolicy] = NonFinitePolicy.SKIP,
          max_consecutive_nonfinite: int = 3,
          group_batches: bool = False, save_input_state: bool = True,
          extra_metrics: Optional[Callable[[], Dict[str, float]]] = None,
          gin_imports: Sequence[str] = ()) -> Dict[str, float]:
  """Trains to step `train_steps`; returns the last logged metrics. See the module docstring.

  `optimizer(learning_rate)` -> optax transformation (e.g. `@adafactor`); `learning_rate` a
  schedule (e.g. `@learning_rate_schedule()`); `nonfinite_policy`: a `NonFinitePolicy` or its
  value, "skip" (count and go on) or "stop" (raise `NonFiniteLossError` after checkpointing the
  last good state); `max_consecutive_nonfinite`: with "skip", that many non-finite steps in a
  row stop the run as "stop" does (0: never; checked where metrics are logged, every
  `log_every` steps). On SIGTERM the current step is checkpointed and `Preempted` raised (during
  start-up or compilation: raised at once, nothing saved).
  `model_parallel`, `fsdp`, `dcn_data`: the mesh (`partitioning.make_mesh`): `model_parallel`
  devices per replica (heads, MLP and vocabulary split over them), the rest on `data`; `fsdp` also
  splits the parameters' embed axis over `data`; `dcn_data` > 1 spreads `data` over that many TPU
  slices (hosts elsewhere) joined by the data-centre network, `model` staying inside each.
  `input_shards`: how many fixed slices of each batch are read by separate pipelines (default:
  the process count; a resumed run keeps its checkpoint's number). The batches are a function of
  (seed, input_shards) only: pin it to see the same data on another topology.
  `group_batches`: fill each batch with examples of one modality set and text-target length
  bucket, and run the step without what the batch does not use (`unified_io.training.input`):
  much faster steps on mixtures, one compiled step per group; one process only (processes would
  disagree on a batch's shapes).
  `save_input_state`: save each input shard's tf.data state with every checkpoint, so a resumed
  run restores it instead of replaying the batches before it (`unified_io.training.input`);
  False keeps the position only (smaller, faster checkpoints; a resume replays).
  `tokenizers`: {"image" | "audio": a `uio2-train-tokenizer` folder (its newest step) or one of
  its checkpoints/<step>}: those parameters replace the model's `target_embedders_<kind>/vqgan`
  after initialisation (or INITIAL_CHECKPOINT_PATH) and stay frozen; a resumed run already holds
  them. A tokenizer of another kind or config than the model's is refused before anything is
  written (`unified_io.training.tokenizer_graft`).
  `lora`: a `unified_io.adapters.lora.LoraConfig` (`@lora_config()`, runs/finetune_lora.gin):
  only LoRA adapters train, on a frozen base (fresh, or INITIAL_CHECKPOINT_PATH's parameters),
  which `int8_base` keeps in int8; checkpoints hold the adapters and MODEL_DIR/lora.json the base
  they belong to (`unified_io.training.adapted`).
  `trainable`: regexes (`re.search` on "/"-joined parameter paths, e.g. "input_projection/"):
  only the matching parameters train (with `lora`, beside the adapters); every other parameter
  keeps its value exactly. A pattern that matches nothing is refused in one line.
  `gin_imports`: the modules the run's gin imports (`gin_flags.parse_gin`; uio2-train passes
  them): those outside unified_io are recorded in run-config.json as the run's task modules.
  """
  gin_required.check_required(
      "train", model_dir=model_dir, mixture_or_task_name=mixture_or_task_name,
      task_feature_lengths=task_feature_lengths, train_steps=train_steps, batch_size=batch_size,
      model_config=model_config, optimizer=optimizer,
      learning_rate=learning_rate, initial_checkpoint_path=initial_checkpoint_path)
  check_model_dir(model_dir)
  policy = NonFinitePolicy.parse(nonfinite_policy)
  if int8_base and lora is None:
    raise ConfigError("train.int8_base=True needs train.lora: an int8 base is frozen, so only "
                      "adapters could train (runs/finetune_lora.gin)")
  if group_batches and jax.process_count() > 1:
    raise ValueError("train.group_batches=True needs one process (each process would pick "
                     f"its own batches' modalities); this run has {jax.process_count()}")
  model = UnifiedIOModel(model_config)
  sigterm = SigtermFlag()
  # One build of the input serves the check below and the open after it (with the arguments of
  # this process's first input shard on a fresh run): ~7 s of tracing on the world's mixture.
  builds = contextlib.ExitStack()
  builds.enter_context(pipeline.reusing_built_pipelines())
  try:
    # A bad mixture, length, denoising rate or curriculum fails here, before MODEL_DIR is written.
    converter = check_input(mixture_or_task_name, task_feature_lengths, model.feature_converter,
                            **_fresh_first_shard(seed, input_shards))
    try:  # (a bad world or denoising config fails here too)
      run_config = RunConfig.of_training(model_config, task_feature_lengths, mixture_or_task_name,
                                         gin_imports)
    except RunConfigError as exc:
      raise InputConfigError(str(exc)) from exc
    # A tokenizer the model cannot take is refused here too; its step is fixed now (printed below).
    located = graft.check_tokenizers(tokenizers, model_config)
    # A MODEL_DIR of another model is refused before anything is written (a typo loses nothing).
    _check_same_model(model_dir, run_config)
    # Built once, here: a bad optimizer setting (e.g. `adafactor.state_dtype`) fails before any
    # folder is made.
    transformation = optimizer(learning_rate)
    # A mesh that does not fit the devices, the model or BATCH_SIZE fails here, in one line
    # (`partitioning.MeshError`), before the input is opened or MODEL_DIR is made.
    mesh = partitioning.make_mesh(model=model_parallel, dcn_data=dcn_data)
    check_mesh(model, mesh, fsdp, batch_size)
    checkpoints = ckpt_lib.TrainCheckpoints(os.path.join(model_dir, "checkpoints"),
                                            save_every=checkpoint_every, keep=keep_checkpoints,
                                            async_save=async_checkpoints)
    arrange = _pair_arrangement(model)
    while True:  # the newest checkpoint that reads, setting aside those that do not
      resume_step, data = checkpoints.latest_step(), None
      try:
        start_batch, data_seed, shards = _input_position(checkpoints, resume_step, seed,
                                                         input_shards)
        # The model owns its data contract: the converter it makes sizes stage 2 and the batches.
        saved_states = (None if resume_step is None
                        else functools.partial(checkpoints.input_states, resume_step))
        data = open_process_input(mixture_or_task_name, task_feature_lengths, batch_size,
                                  converter, mesh, seed=data_seed,
                                  start_batch=start_batch, input_shards=shards,
                                  group_batches=group_batches, saved_states=saved_states)
        # (parameters are created from a batch with every modality of the data: `first`)
        first = partitioning.global_batch(arrange(next(data)), mesh, batch_size)
        setup = build_train_setup(
            model, transformation, learning_rate, first, mesh=mesh, fsdp=fsdp,
            seed=seed, num_microbatches=num_microbatches, use_dropout=use_dropout,
            checkpoints=checkpoints, resume_step=resume_step,
            initial_checkpoint_path=initial_checkpoint_path, assignment_map=assignment_map,
            tokenizers={kind: where.step_dir for kind, where in located.items()},
            model_info_path=os.path.join(model_dir, "model-info.txt"), lora=lora,
            int8_base=int8_base, trainable=tuple(trainable),
            # (adapters in MODEL_DIR made for another base: refused before the base is read)
            lora_check=functools.partial(adapted.check_record, model_dir, lora,
                                         base=initial_checkpoint_path))
        break
      except ckpt_lib.CorruptCheckpointError as exc:  # (named, kept aside, never deleted)
        if data is not None:  # (its input: a live tf.data iterator can hang the exit)
          data.close()
        kept = checkpoints.set_aside(exc.step)
        older = checkpoints.latest_step()
        print(f"{exc}; kept aside as {kept}; resuming from "
              + (f"step {older}" if older is not None else "scratch (no good step left)"),
              file=sys.stderr, flush=True)

    # Configuration, checkpoint and model agree: only now is MODEL_DIR written.
    os.makedirs(model_dir, exist_ok=True)
    _write(os.path.join(model_dir, "config.gin"), gin.config_str())
    _write(os.path.join(model_dir, "run-info.json"), json.dumps(_run_info(), indent=2) + "\n")
    if jax.process_index() == 0:  # the model as data: eval, infer and predict rebuild it from this
      run_config.save(model_dir)
    if lora is not None:  # which base the adapters belong to (eval, merge and resume read it)
      adapted.write_record(model_dir, lora, setup.lora_fingerprint, initial_checkpoint_path,
                           int8_base, seed, tuple(trainable), assignment_map=assignment_map,
                           tokenizers={k: w.step_dir for k, w in located.items()})
    print(f"input: process {jax.process_index()} of {jax.process_count()} reads input shards "
          f"{data.shard_indices} of {shards} (rows {data.rows.start}-{data.rows.stop - 1} "
          f"of each batch of {batch_size})", flush=True)
    if resume_step is not None:
      how = f"{data.replayed} batches replayed" if data.replayed else "input state restored"
      print(f"resumed from step {int(setup.state.step)} ({checkpoints.directory}), input batch "
            f"{start_batch} ({how})", flush=True)
    elif initial_checkpoint_path:
      print(f"initial parameters from {initial_checkpoint_path}", flush=True)
    if resume_step is None:
      for kind, where in located.items():
        print(f"tokenizer {kind}: {where.path} (step {where.step})", flush=True)

    input_states = data.state if save_input_state else None  # (called only when a save starts)
    log = ProgressLog(model_dir, start_step=int(setup.state.step), total_steps=train_steps,
                      log_every=log_every)
    with setup.activated():  # (a new grouped batch shape is traced in the mesh and rules)
      state = _run_steps(setup, data, first, log, checkpoints, sigterm, train_steps=train_steps,
                         batch_size=batch_size, rng=jax.random.PRNGKey(seed + 1),
                         nonfinite=_NonFiniteGuard(policy, max_consecutive_nonfinite,
                                                   int(setup.state.nonfinite_steps)),
                         group_batches=group_batches, log_every=log_every,
                         extra_metrics=extra_metrics, input_states=input_states,
                         arrange=arrange)
    checkpoints.save(int(state.step), state, data.position(), force=True,
                     input_states=input_states)
    checkpoints.wait()
    checkpoints.close()
    if lora is not None:  # (the adapters alone, for uio2-merge-lora and sharing one base)
      adapted.save_adapters(model_dir, state, lora, setup.lora_fingerprint,
                            initial_checkpoint_path, int8_base, seed, tuple(trainable),
                            assignment_map=assignment_map,
                            tokenizers={k: w.step_dir for k, w in located.items()})
    _write(os.path.join(model_dir, "config.gin"), gin.operative_config_str())
    skipped = bad_input.summary()  # (each bad example once; per step: metrics bad_input/*)
    if skipped:
      print(f"training input: {skipped}", flush=True)
    return log.close()
  except ckpt_lib.SaveError:
    checkpoints.abandon()  # (no temporary folder of the failed step is left behind)
    raise
  finally:
    builds.close()
    sigterm.restore()


def _pair_arrangement(model: UnifiedIOModel) -> Callable[[Dict], Dict]:
  """With pair packing, a host batch's rows reordered so the long examples pair with short ones
  (`packing.pair_order`): fewer tokens overflow a packed row. The identity otherwise."""
  if not model.cfg.pack_pairs:
    return lambda batch: batch
  return lambda batch: packing.take_examples(batch, packing.pair_order(batch, model.cfg))


class _NonFiniteGuard:
  """Counts consecutive steps whose update was skipped as non-finite (`nonfinite_steps` rose)
  and says when to stop: at the first with policy "stop", after `limit` in a row with "skip"."""

  def __init__(self, policy: NonFinitePolicy, limit: int, count: int):
    self.policy, self.limit, self.count = policy, limit, count
    self.every_step = policy is NonFinitePolicy.STOP
    self.streak, self._pending = 0, []

  def add(self, step: int, counter: jax.Array) -> None:
    self._pending.append((step, counter))

  def check(self) -> Optional[str]:
    """Why to stop (one line naming the step), or None; fetches the counters added since."""
    pending, self._pending = self._pending, []
    for (step, _), value in zip(pending, jax.device_get([c for _, c in pending])):
      self.streak = self.streak + 1 if int(value) > self.count else 0
      self.count = int(value)
      if self.streak and self.policy is NonFinitePolicy.STOP:
        return (f"step {step}: the loss or gradients are not finite (nonfinite_policy='stop'); "
                "its update was skipped")
      if self.limit and self.streak >= self.limit:
        return (f"steps {step - self.streak + 1}-{step}: {self.streak} consecutive steps with a "
                f"non-finite loss or gradients (train.max_consecutive_nonfinite={self.limit}); "
                "their updates were skipped")
    return None


def _run_steps(setup: TrainSetup, data: ProcessInput, first: Dict, log: ProgressLog,
               checkpoints: ckpt_lib.TrainCheckpoints, sigterm: SigtermFlag, *,
               train_steps: int, batch_size: int, rng: jax.Array, nonfinite: "_NonFiniteGuard",
               group_batches: bool, log_every: int,
               extra_metrics: Optional[Callable[[], Dict[str, float]]],
               input_states: Optional[Callable[[], Any]],
               arrange: Callable[[Dict], Dict]) -> TrainState:
  """The loop: steps from the setup's state up to `train_steps`, logging and checkpointing;
  raises `NonFiniteLossError` (`nonfinite` says when) or `Preempted` (SIGTERM) after a
  checkpoint, `SaveError` as soon as a save has failed."""
  to_step = trim_batch if group_batches else (lambda b: b)
  state = setup.state
  step = int(state.step)
  batch = to_step(first)
  while step < train_steps:
    state, metrics = setup.step(state, batch, rng)
    sigterm.started()  # (compiled and dispatched: a SIGTERM now saves this step)
    step += 1
    extras = {f"bad_input/{k}": float(v) for k, v in bad_input.counts().items()}
    extras.update(extra_metrics() if extra_metrics else {})
    log.step_done(step, metrics, extras=extras)
    nonfinite.add(step, metrics["nonfinite_steps"])
    # (at the steps the log fetched the metrics anyway: no extra host sync, unless "stop")
    if nonfinite.every_step or step % max(log_every, 1) == 0 or step == train_steps:
      stop = nonfinite.check()
      if stop:
        checkpoints.save(step, state, data.position(), force=True, input_states=input_states)
        checkpoints.wait()
        raise NonFiniteLossError(f"{stop}; training stopped, the state is checkpointed at step "
                                 f"{step}")
    checkpoints.check_saved()  # (a failed async save stops the run now, not at the end)
    checkpoints.save(step, state, data.position(), input_states=input_states)
    if sigterm.agreed(step, log_every):
      checkpoints.save(step, state, data.position(), force=True, input_states=input_states)
      checkpoints.wait()
      log.close()
      checkpoints.close()
      raise Preempted(step)
    if step < train_steps:
      batch = partitioning.global_batch(arrange(to_step(next(data))), setup.mesh, batch_size)
  return state
