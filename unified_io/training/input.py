"""The training input: a seqio mixture or task -> an endless, deterministic iterator of batches.

Each process reads its own shard (`seqio.ShardInfo(process_index, process_count)`) and yields its
`batch_size / process_count` rows as nested numpy dicts (the model's batch layout). The order is a
pure function of the seed, so the position in the stream is one number, the batches handed out;
a resumed run skips that many batches and sees exactly what it would have seen (skipping re-runs
the pipeline for those batches, which costs input time, never different data).

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
opens the stage of its position and skips only the batches already drawn in that stage.

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
"""

import functools
from typing import Dict, Iterator, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
import seqio
import tensorflow as tf
from jax.sharding import Mesh

from unified_io import partitioning
from unified_io.contract import nest_batch
from unified_io.data import pipeline, registry
from unified_io.data.converter import UnifiedIOFeatureConverter


class TrainInput:
  """Batches of `mixture_or_task_name` with their position (batches handed out so far)."""

  def __init__(self, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
               batch_size: int, feature_converter: UnifiedIOFeatureConverter, *, seed: int = 0,
               split: str = "train", shuffle: bool = True, start_batch: int = 0,
               process_index: Optional[int] = None, process_count: Optional[int] = None,
               group_batches: bool = False):
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if batch_size % process_count:
      raise ValueError(f"BATCH_SIZE={batch_size} is not divisible by the {process_count} processes")
    self.local_batch_size = batch_size // process_count
    self.seed = seed
    self.batches_consumed = start_batch
    self._open = functools.partial(
        self._open_batches, mixture_or_task_name, feature_converter, task_feature_lengths,
        split=split, shuffle=shuffle, group_batches=group_batches,
        shard_info=seqio.ShardInfo(index=process_index, num_shards=process_count))
    # A mixture registered with a curriculum: the stage of `start_batch`, resumed in place.
    self.curriculum = _curriculum_of(mixture_or_task_name)
    self._stage = None
    if self.curriculum is None:
      self._iterator = self._open(None, skip=start_batch)
    else:
      for task in self.curriculum.task_names():  # refuse an unknown task now, not at its stage
        pipeline.registered_task(task, mixture_or_task_name)
      self._open_stage(self.curriculum.stage_index(start_batch), start_batch)

  def _open_stage(self, index: int, position: int) -> None:
    """Switches to curriculum stage `index`, at batch `position` of the whole stream."""
    stage = self.curriculum.stages[index]
    self._stage = index
    self._iterator = self._open(dict(stage.rates), skip=position - stage.start_step)

  def _open_batches(self, name, converter, lengths, rates, *, skip: int, split: str,
                    shuffle: bool, group_batches: bool, shard_info: seqio.ShardInfo):
    """The batch iterator of `name` (with `rates`, a curriculum stage's), `skip` batches in."""
    dataset = pipeline.get_dataset(name, converter, lengths, split=split, shuffle=shuffle,
                                   num_epochs=None, seed=self.seed, shard_info=shard_info,
                                   rates=rates)
    if group_batches:
      dataset = dataset.group_by_window(
          batch_group_key, lambda _, group: group.batch(self.local_batch_size, drop_remainder=True),
          window_size=self.local_batch_size)
    else:
      dataset = dataset.batch(self.local_batch_size, drop_remainder=True)
    if skip:
      dataset = dataset.skip(skip)
    return dataset.as_numpy_iterator()

  def __iter__(self) -> Iterator[Dict]:
    return self

  def __next__(self) -> Dict:
    if self.curriculum is not None:
      stage = self.curriculum.stage_index(self.batches_consumed)
      if stage != self._stage:
        self._open_stage(stage, self.batches_consumed)
        print(f"curriculum: stage {stage} from batch {self.batches_consumed}, tasks "
              f"{self.curriculum.rates_at(self.batches_consumed)}", flush=True)
    flat = next(self._iterator)
    self.batches_consumed += 1
    return nest_batch(flat)

  @property
  def stage(self) -> Optional[int]:
    """The curriculum stage in effect (None without a curriculum)."""
    return self._stage

  def position(self) -> Dict[str, int]:
    """What a checkpoint stores to resume this stream."""
    return {"batches_consumed": self.batches_consumed, "seed": self.seed}


def _curriculum_of(name: str):
  """The curriculum `registry.add_mixture` stored with a mixture (None for anything else)."""
  try:
    return registry.mixture_curriculum(name)
  except KeyError:
    return None


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


class ProcessInput:
  """This process's rows of every global batch: its input shards' batches, concatenated.

  `shards` are iterators (e.g. `TrainInput`s) in row order, each with `batches_consumed`;
  `shard_indices` their numbers among the `input_shards`, `rows` the batch rows they fill.
  """

  def __init__(self, shards: Sequence[Iterator[Dict]], *, seed: int, input_shards: int,
               shard_indices: Sequence[int], rows: range):
    if not shards or len(shards) != len(shard_indices):
      raise ValueError(f"ProcessInput: {len(shards)} input shards for indices {shard_indices}")
    self._shards = list(shards)
    self.seed, self.input_shards = seed, input_shards
    self.shard_indices, self.rows = list(shard_indices), rows

  def __iter__(self) -> "ProcessInput":
    return self

  def __next__(self) -> Dict:
    batches = [next(shard) for shard in self._shards]
    if len(batches) == 1:
      return batches[0]
    return jax.tree_util.tree_map(lambda *rows: np.concatenate(rows, axis=0), *batches)

  def position(self) -> Dict[str, int]:
    """What a checkpoint stores to resume the stream (the same on every process)."""
    return {"batches_consumed": self._shards[0].batches_consumed, "seed": self.seed,
            "input_shards": self.input_shards}


def open_process_input(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                       batch_size: int, feature_converter: seqio.FeatureConverter, mesh: Mesh, *,
                       seed: int, input_shards: int, start_batch: int = 0,
                       group_batches: bool = False) -> ProcessInput:
  """The input shards that fill this process's rows of each global batch (module docstring)."""
  rows = partitioning.process_rows(mesh, batch_size)
  shards = process_input_shards(rows, batch_size, input_shards)
  return ProcessInput(
      [TrainInput(mixture_or_task_name, task_feature_lengths, batch_size, feature_converter,
                  seed=seed + j, start_batch=start_batch, process_index=j,
                  process_count=input_shards, group_batches=group_batches)
       for j in shards],
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
