"""The training input: a seqio mixture or task -> an endless, deterministic iterator of batches.

Each process reads its own shard (`seqio.ShardInfo(process_index, process_count)`) and yields its
`batch_size / process_count` rows as nested numpy dicts (the model's batch layout). The order is a
pure function of the seed, so the position in the stream is one number, the batches handed out,
and a resumed run sees exactly what it would have seen: it restores the pipeline's saved state at
that position (see "Resuming without replay" below), or, without one, replays that many batches.

Grouped batches (`group_batches=True`): the model skips a modality that is absent from the whole
batch and the loss ignores text-target padding, but a mixed batch has almost every modality in some
row and some long text target, so every step pays for every encoder, tokenizer and target, and for
the full text-target length (on the 33k-entry output table the largest matmul of a small model).
Grouping fills each batch with examples of one modality set and one text-target length bucket
(8, 16, 32, ... up to the full length), with `tf.data` `group_by_window` over the mixed stream: the
task rates are kept and the order is still a pure function of the seed. `trim_batch` then drops
the absent modalities and cuts the text target to its bucket; outputs and loss are those of the
full batch (an absent input is masked out of attention, an absent target has no loss tokens, and
causal attention keeps padding after the targets out of them). A step costs only what its examples
use, one compiled step per (modality set, bucket). The text input is always kept (an empty prompt,
e.g. the null prompt of guidance, is still a text input).

A curriculum (a mixture registered with `registry.add_mixture(..., curriculum=...)`,
`unified_io.data.curriculum`): batch n samples the tasks of the stage in effect at n with that
stage's rates; at a stage's first batch the stream switches (one console line), and a resumed run
opens the stage of its position where it was (restored, or replaying only that stage's batches).

Input shards (`open_process_input`): which examples a global batch holds must not depend on how
many processes feed it, or a run resumed (or repeated) on another topology would train on other
data. So the input is cut into `input_shards` fixed slices of the batch: shard j is its own seqio
pipeline (`TrainInput` with `ShardInfo(j, input_shards)` and seed `seed + j`) and supplies rows
[j B/n, (j+1) B/n) of every global batch. A process opens only the shards whose rows its devices
hold (`ProcessInput`, `partitioning.process_rows`), so one process with n shards and n processes
with one each assemble the same global batches, row for row. The per-shard seed also keeps the
shards' mixture sampling independent (with one seed every shard would draw the same task at the
same position). The trainer's default is one shard per process (one pipeline each, the cheapest);
pin `train.input_shards` to get the same batches on another number of processes (each extra
pipeline in a process costs its own set-up and threads).

Resuming without replay: the order is a pure function of the seed, so a position could be
re-reached by skipping batches, but skipping re-runs the whole pipeline (world generation, stage 2,
the converter) for every batch already consumed: resume time grew with the step. Instead each
input shard hands the checkpoint its tf.data iterator state (`state()`: `tf.train.Checkpoint` of
the iterator, as t5x's `checkpoint_dataset`), and a resumed `TrainInput(..., state=...)` restores
it: every buffer of the pipeline (the source's index shuffle, seqio's example shuffle, parallel
maps and prefetches, the mixture sampler, group_by_window's open windows) comes back with its
elements, and the next batch is the one the uninterrupted run drew, bit for bit, after computing
no skipped element. Restoring costs the state's size, whatever the step. A curriculum saves its
stage's iterator (at a stage's first batch the new stage opens fresh, as it does in a straight run);
a state is used only by the pipeline that wrote it (same task, seed, shard, batch, grouping,
lengths and data contract), else the shard replays, with one printed line.

Chosen over skipping at the source (index arithmetic before the expensive maps), which cannot be
exact here: what a source has handed out by batch n is not a function of n once a filter (bad
examples) or grouping (keyed by each example's content) sits between them, and seqio's shuffle
buffers, the stage-2 seed streams and the mixture sampler hold state that only their own iterator
state restores. The price is the state's size, kept small by sources that shuffle without a
buffer (the world permutes its indices statelessly: unified_io/datasets/world/source.py).
Measured with bench/resume_input.py on 2 shared CPU cores, `world_default` at the test sizes,
batch 4: 41 MB per shard (36 MB on disk), 0.2-0.3 s of the training loop per checkpoint;
reopening the input from it took 7.0, 9.9 and 11.6 s at batch 10, 200 and 2000, where replay took
9.0, 11.1 and 51.0 s (with the world's former 65,536-index shuffle buffer the state was ~370 MB
and held the loop 16 s per checkpoint). `train.save_input_state=False` keeps checkpoints
position-only.

A pipeline whose iterator cannot be saved (a stateful op such as `tf.py_function` or a
`Dataset.from_generator` source: the external-state policy is FAIL, so a state is never silently
incomplete) is checkpointed by position only, said once on the console, and resumes by replay, as
do checkpoints written before input states were saved.
"""

import contextlib
import functools
import json
import uuid
import zlib
from typing import Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
import seqio
import tensorflow as tf
from jax.sharding import Mesh

from unified_io import partitioning
from unified_io.contract import nest_batch
from unified_io.data import bad_input, pipeline, registry
from unified_io.data.converter import UnifiedIOFeatureConverter


# A shard's saved state: {file name: bytes}, the iterator's `tf.train.Checkpoint` files + META.
ShardState = Mapping[str, bytes]
META = "meta.json"
_ITERATOR = "iterator"  # the checkpoint prefix inside a shard's state
_SCRATCH = "ram://unified_io-input"  # TF's in-memory file system: checkpoint files <-> bytes


class TrainInput:
  """Batches of `mixture_or_task_name` with their position (batches handed out so far).

  `start_batch` > 0 resumes there: from `state` (what `state()` returned at that position, see
  the module docstring) without recomputing the batches before it, else by replaying them.
  """

  def __init__(self, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
               batch_size: int, feature_converter: UnifiedIOFeatureConverter, *, seed: int = 0,
               split: str = "train", shuffle: bool = True, start_batch: int = 0,
               process_index: Optional[int] = None, process_count: Optional[int] = None,
               group_batches: bool = False, state: Optional[ShardState] = None):
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if batch_size % process_count:
      raise ValueError(f"BATCH_SIZE={batch_size} is not divisible by the {process_count} processes")
    self.local_batch_size = batch_size // process_count
    self.seed = seed
    self.batches_consumed = start_batch
    self.replayed = 0  # batches recomputed to reach `start_batch` (0 when restored from a state)
    self._name = f"input {mixture_or_task_name!r} shard {process_index}/{process_count}"
    self._saveable = True
    # What a saved state must have been written by (else it would restore into another stream).
    self._pipeline = (
        f"{mixture_or_task_name} split={split} shuffle={shuffle} seed={seed} "
        f"shard={process_index}/{process_count} batch={self.local_batch_size} "
        f"grouped={group_batches} lengths={sorted(task_feature_lengths.items())} "
        f"contract={zlib.crc32(repr(feature_converter.data_config).encode()):08x}")
    self._open = functools.partial(
        self._open_batches, mixture_or_task_name, feature_converter, task_feature_lengths,
        split=split, shuffle=shuffle, group_batches=group_batches,
        shard_info=seqio.ShardInfo(index=process_index, num_shards=process_count))
    # A mixture registered with a curriculum: the stage of `start_batch`, resumed in place.
    self.curriculum = _curriculum_of(mixture_or_task_name)
    if self.curriculum is not None:
      for task in self.curriculum.task_names():  # refuse an unknown task now, not at its stage
        pipeline.registered_task(task, mixture_or_task_name)
    self._open_stage(self._stage_of(start_batch), start_batch, state)

  def _stage_of(self, position: int) -> Optional[int]:
    return None if self.curriculum is None else self.curriculum.stage_index(position)

  def _open_stage(self, index: Optional[int], position: int,
                  state: Optional[ShardState] = None) -> None:
    """Opens curriculum stage `index` (None: no curriculum) at batch `position` of the stream:
    from `state` if it is this stream's at `position`, else by replaying the stage's batches."""
    self._stage = index
    self._iterator = self._new_iterator()
    if state is not None and self._restore(state, position):
      return
    skip = position - (0 if index is None else self.curriculum.stages[index].start_step)
    if skip:
      print(f"{self._name}: replaying {skip} batches to reach batch {position} (no saved input "
            "state to restore)", flush=True)
    for _ in range(skip):  # (through the iterator, so its state stays the straight run's)
      self._next_element()
    self.replayed = skip

  def _new_iterator(self):
    rates = None if self._stage is None else dict(self.curriculum.stages[self._stage].rates)
    return iter(self._open(rates))

  def _restore(self, state: ShardState, position: int) -> bool:
    """Whether `state` put the iterator at `position` (False: the caller replays instead)."""
    meta = json.loads(state[META])
    if meta.get("stage") != self._stage:  # saved just before this stage's first batch
      return False
    if meta.get("pipeline") != self._pipeline or meta.get("batches_consumed") != position:
      print(f"{self._name}: the saved input state is of another stream ({meta}); replaying",
            flush=True)
      return False
    try:
      restore_iterator(self._iterator, state)
    except (tf.errors.OpError, AssertionError, ValueError) as exc:
      print(f"{self._name}: the saved input state does not restore ({_first_line(exc)}); "
            "replaying", flush=True)
      self._iterator = self._new_iterator()  # (a failed restore may have set part of it)
      return False
    return True

  def _open_batches(self, name, converter, lengths, rates, *, split: str, shuffle: bool,
                    group_batches: bool, shard_info: seqio.ShardInfo) -> tf.data.Dataset:
    """The batches of `name` (with `rates`, a curriculum stage's) from the first."""
    dataset = pipeline.get_dataset(name, converter, lengths, split=split, shuffle=shuffle,
                                   num_epochs=None, seed=self.seed, shard_info=shard_info,
                                   rates=rates)
    if group_batches:
      dataset = dataset.group_by_window(
          batch_group_key, lambda _, group: group.batch(self.local_batch_size, drop_remainder=True),
          window_size=self.local_batch_size)
    else:
      dataset = dataset.batch(self.local_batch_size, drop_remainder=True)
    options = tf.data.Options()  # a stateful op makes saving fail, rather than lose its state
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.FAIL
    return dataset.with_options(options)

  def __iter__(self) -> Iterator[Dict]:
    return self

  def __next__(self) -> Dict:
    if self.curriculum is not None:
      stage = self.curriculum.stage_index(self.batches_consumed)
      if stage != self._stage:
        self._open_stage(stage, self.batches_consumed)
        print(f"curriculum: stage {stage} from batch {self.batches_consumed}, tasks "
              f"{self.curriculum.rates_at(self.batches_consumed)}", flush=True)
    flat = tf.nest.map_structure(lambda t: t.numpy(), self._next_element())
    self.batches_consumed += 1
    return nest_batch(flat)

  def _next_element(self):
    """The pipeline's next batch; a strict-mode bad example closes the input and raises the
    one-line `bad_input.BadInputError` (after the iterator is gone: `bad_input`'s docstring)."""
    if self._iterator is None:
      raise ValueError(f"{self._name} is closed")
    try:
      return next(self._iterator)
    except tf.errors.OpError as error:
      failure = bad_input.strict_failure(error)
      if failure is None:
        raise
    self.close()  # (after the except block: the tf.data error and the frames it held are gone)
    raise failure

  def close(self) -> None:
    """Deletes the tf.data iterator now: its reader threads stop while python can still finish
    the calls they are in (an iterator left to interpreter exit can hang it)."""
    self._iterator = None
    bad_input.release_iterators()

  @property
  def stage(self) -> Optional[int]:
    """The curriculum stage in effect (None without a curriculum)."""
    return self._stage

  def position(self) -> Dict[str, int]:
    """What a checkpoint stores to resume this stream."""
    return {"batches_consumed": self.batches_consumed, "seed": self.seed}

  def state(self) -> Optional[Dict[str, bytes]]:
    """The iterator's state now ({file: bytes}, for `TrainInput(..., state=)`), or None if the
    pipeline cannot be saved (said once; a resume then replays)."""
    if not self._saveable:
      return None
    try:
      files = iterator_files(self._iterator)
    except tf.errors.OpError as exc:  # e.g. FAILED_PRECONDITION: a stateful op
      self._saveable = False
      print(f"{self._name}: the pipeline's state cannot be saved ({_first_line(exc)}); "
            "checkpoints keep its position only and a resumed run replays its batches",
            flush=True)
      return None
    meta = {"pipeline": self._pipeline, "batches_consumed": self.batches_consumed,
            "stage": self._stage}
    return {META: json.dumps(meta).encode(), **files}


@contextlib.contextmanager
def _scratch_dir() -> Iterator[str]:
  path = f"{_SCRATCH}/{uuid.uuid4().hex}"
  tf.io.gfile.makedirs(path)
  try:
    yield path
  finally:
    tf.io.gfile.rmtree(path)


def iterator_files(iterator) -> Dict[str, bytes]:
  """The iterator's `tf.train.Checkpoint` files, as bytes."""
  with _scratch_dir() as path:
    tf.train.Checkpoint(iterator=iterator).write(f"{path}/{_ITERATOR}")
    files = {}
    for name in tf.io.gfile.listdir(path):
      with tf.io.gfile.GFile(f"{path}/{name}", "rb") as f:
        files[name] = f.read()
    return files


def restore_iterator(iterator, state: ShardState) -> None:
  """Puts an iterator back where `iterator_files` saved it (the tokenizer trainer uses both)."""
  with _scratch_dir() as path:
    for name, data in state.items():
      if name.startswith(_ITERATOR):
        with tf.io.gfile.GFile(f"{path}/{name}", "wb") as f:
          f.write(data)
    tf.train.Checkpoint(iterator=iterator).read(f"{path}/{_ITERATOR}").assert_consumed()


def _first_line(exc: Exception) -> str:
  text = str(exc).strip()
  return text.splitlines()[0] if text else type(exc).__name__


def _curriculum_of(name: str):
  """The curriculum `registry.add_mixture` stored with a mixture (None for anything else)."""
  try:
    return registry.mixture_curriculum(name)
  except KeyError:
    return None


class InputConfigError(ValueError):
  """The run's input cannot be built (a name, a length, a denoising rate, a curriculum): one line."""


def check_input(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                make_converter: Callable[[], UnifiedIOFeatureConverter], *, seed: int = 0,
                shard_info: Optional[seqio.ShardInfo] = None) -> UnifiedIOFeatureConverter:
  """Builds, without reading an example, the pipeline of every stage the run will sample (each
  curriculum stage's rates, or the mixture's), so that a bad input configuration fails before the
  trainer writes anything to MODEL_DIR. Raises InputConfigError naming the cause in one line.
  Returns the converter it checked with (`make_converter()`'s). `seed`, `shard_info`: those a
  shard of the run will be opened with (any do for the check; the same ones, with the returned
  converter, let `pipeline.reusing_built_pipelines` hand the build to that shard)."""
  try:
    converter = make_converter()
    curriculum = _curriculum_of(mixture_or_task_name)
    rate_tables = [None]
    if curriculum is not None:
      for task in curriculum.task_names():
        pipeline.registered_task(task, mixture_or_task_name)
      rate_tables = [dict(stage.rates) for stage in curriculum.stages]
    for rates in rate_tables:
      pipeline.get_dataset(mixture_or_task_name, converter, task_feature_lengths, split="train",
                           shuffle=True, seed=seed, shard_info=shard_info, num_epochs=None,
                           rates=rates)
    return converter
  except (ValueError, KeyError, TypeError) as exc:
    # (gin and seqio append context on further lines: the first names the cause)
    raise InputConfigError(str(exc).strip().splitlines()[0] if str(exc).strip()
                           else type(exc).__name__) from exc


def process_input_shards(rows: range, batch_size: int, input_shards: int) -> range:
  """The input shards (see the module docstring) that supply exactly `rows` of the batch."""
  if input_shards < 1 or batch_size % input_shards:
    raise ValueError(f"train.input_shards={input_shards} must divide BATCH_SIZE={batch_size}")
  per_shard = batch_size // input_shards
  if rows.start % per_shard or len(rows) % per_shard:
    raise ValueError(
        f"train.input_shards={input_shards}: a shard is {per_shard} rows of the batch of "
        f"{batch_size}, but process {jax.process_index()} holds rows [{rows.start}, {rows.stop}); "
        f"use a multiple of {batch_size // len(rows)} input shards")
  return range(rows.start // per_shard, rows.stop // per_shard)


def shard_state_name(index: int, input_shards: int) -> str:
  """The name a checkpoint keeps input shard `index`'s state under."""
  return f"shard-{index:05d}-of-{input_shards:05d}"


class ProcessInput:
  """This process's rows of every global batch: its input shards' batches, concatenated.

  `shards` are `TrainInput`s in row order; `shard_indices` their numbers among the
  `input_shards`, `rows` the batch rows they fill.
  """

  def __init__(self, shards: Sequence[TrainInput], *, seed: int, input_shards: int,
               shard_indices: Sequence[int], rows: range):
    if not shards or len(shards) != len(shard_indices):
      raise ValueError(f"ProcessInput: {len(shards)} input shards for indices {shard_indices}")
    self._shards = list(shards)
    self.seed, self.input_shards = seed, input_shards
    self.shard_indices, self.rows = list(shard_indices), rows

  def __iter__(self) -> "ProcessInput":
    return self

  def __next__(self) -> Dict:
    try:
      batches = [next(shard) for shard in self._shards]
    except bad_input.BadInputError:  # strict mode: every shard's readers stop before it is raised
      self.close()
      raise
    if len(batches) == 1:
      return batches[0]
    return jax.tree_util.tree_map(lambda *rows: np.concatenate(rows, axis=0), *batches)

  def position(self) -> Dict[str, int]:
    """What a checkpoint stores to resume the stream (the same on every process)."""
    return {"batches_consumed": self._shards[0].batches_consumed, "seed": self.seed,
            "input_shards": self.input_shards}

  def state(self) -> Optional[Dict[str, Dict[str, bytes]]]:
    """{shard name: state} of this process's shards now, or None if a pipeline cannot be saved."""
    states = {shard_state_name(j, self.input_shards): shard.state()
              for j, shard in zip(self.shard_indices, self._shards)}
    return None if any(s is None for s in states.values()) else states

  @property
  def replayed(self) -> int:
    """Batches a shard recomputed to reach the start position (0: every state was restored)."""
    return max(shard.replayed for shard in self._shards)

  def close(self) -> None:
    """Deletes every shard's tf.data iterator (`TrainInput.close`)."""
    for shard in self._shards:
      shard.close()


def open_process_input(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                       batch_size: int, feature_converter: seqio.FeatureConverter, mesh: Mesh, *,
                       seed: int, input_shards: int, start_batch: int = 0,
                       group_batches: bool = False,
                       saved_states: Optional[Callable[[Sequence[str]], Mapping[str, ShardState]]]
                       = None) -> ProcessInput:
  """The input shards that fill this process's rows of each global batch (module docstring).

  `saved_states(names)`: the states saved at `start_batch` for the named shards (e.g.
  `TrainCheckpoints.input_states`); a shard without one replays to `start_batch`.
  """
  rows = partitioning.process_rows(mesh, batch_size)
  shards = process_input_shards(rows, batch_size, input_shards)
  names = [shard_state_name(j, input_shards) for j in shards]
  states = dict(saved_states(names)) if saved_states is not None and start_batch else {}
  return ProcessInput(
      [TrainInput(mixture_or_task_name, task_feature_lengths, batch_size, feature_converter,
                  seed=seed + j, start_batch=start_batch, process_index=j,
                  process_count=input_shards, group_batches=group_batches, state=states.get(name))
       for j, name in zip(shards, names)],
      seed=seed, input_shards=input_shards, shard_indices=shards, rows=rows)


def _is_optional(key: str) -> bool:
  """A modality's mask feature that grouping and trimming look at (all but the text input)."""
  return key.endswith("/mask") and key.count("/") == 2 and key != "inputs/text/mask"


def text_target_buckets(full_length: int, smallest: int = 8) -> Tuple[int, ...]:
  """Text-target lengths a grouped batch is cut to: powers of two from `smallest`, then the full."""
  buckets, n = [], smallest
  while n < full_length:
    buckets.append(n)
    n *= 2
  return tuple(buckets) + (full_length,)


def batch_group_key(example: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """One converted example -> an int64: a bit per optional modality present, and above them the
  bucket of its text target's length (`text_target_buckets`)."""
  names = sorted(k for k in example if _is_optional(k))
  key = tf.constant(0, tf.int64)
  for bit, name in enumerate(names):
    present = tf.reduce_any(tf.not_equal(example[name], 0))
    key += tf.cast(present, tf.int64) * (1 << bit)
  if "targets/text/mask" in example:
    mask = example["targets/text/mask"]
    buckets = tf.constant(text_target_buckets(int(mask.shape[-1])), tf.int64)
    bucket = tf.reduce_sum(tf.cast(buckets < _used_length(mask), tf.int64))
    key += bucket * (1 << len(names))
  return key


def _used_length(mask: tf.Tensor) -> tf.Tensor:
  """1 + the index of the last nonzero entry of a [T] mask (0 if none)."""
  positions = tf.range(1, int(mask.shape[0]) + 1, dtype=tf.int64)
  return tf.reduce_max(tf.where(tf.not_equal(mask, 0), positions, tf.zeros_like(positions)))


def trim_batch(batch: Dict) -> Dict:
  """A nested numpy batch without the modalities whose mask is zero in every row (the text input
  stays), and its text target cut to the smallest bucket holding every row's tokens. Same outputs
  and loss as the full batch (see the module docstring)."""
  kept = {}
  for side, modalities in batch.items():
    if side not in ("inputs", "targets"):
      kept[side] = modalities
      continue
    kept[side] = {m: f for m, f in modalities.items()
                  if not _is_optional(f"{side}/{m}/mask") or np.any(f["mask"])}
  if "targets" in kept and not kept["targets"]:
    raise ValueError(
        "a grouped batch has no target this model writes: the mixture has tasks whose targets "
        f"the model lacks (it writes {sorted(batch['targets'])}); remove those tasks or add their "
        "target modality to make_config.target_modalities")
  text = kept.get("targets", {}).get("text")
  if text is not None:
    full = text["mask"].shape[-1]
    nonzero = np.nonzero(np.any(text["mask"] != 0, axis=0))[0]
    used = int(nonzero[-1]) + 1 if nonzero.size else 0
    length = next(n for n in text_target_buckets(full) if n >= used)
    kept["targets"] = {**kept["targets"], "text": {k: v[:, :length] for k, v in text.items()}}
  return kept
