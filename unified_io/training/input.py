"""The training input: a seqio mixture or task -> an endless, deterministic iterator of batches.

Each process reads its own shard (`seqio.ShardInfo(process_index, process_count)`) and yields its
`batch_size / process_count` rows as nested numpy dicts (the model's batch layout). The order is a
pure function of the seed, so the position in the stream is one number, the batches handed out;
a resumed run skips that many batches and sees exactly what it would have seen (skipping re-runs
the pipeline for those batches, which costs input time, never different data).
"""

from typing import Dict, Iterator, Mapping, Optional

import jax
import seqio

from unified_io.data.converter import nest_batch


class TrainInput:
  """Batches of `mixture_or_task_name` with their position (batches handed out so far)."""

  def __init__(self, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
               batch_size: int, feature_converter: seqio.FeatureConverter, *, seed: int = 0,
               split: str = "train", shuffle: bool = True, start_batch: int = 0,
               process_index: Optional[int] = None, process_count: Optional[int] = None):
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if batch_size % process_count:
      raise ValueError(f"BATCH_SIZE={batch_size} is not divisible by the {process_count} processes")
    self.local_batch_size = batch_size // process_count
    self.seed = seed
    self.batches_consumed = start_batch
    dataset = seqio.get_dataset(
        mixture_or_task_name, dict(task_feature_lengths), feature_converter,
        dataset_split=split, shuffle=shuffle, num_epochs=None, seed=seed,
        shard_info=seqio.ShardInfo(index=process_index, num_shards=process_count),
        batch_size=self.local_batch_size)
    if start_batch:
      dataset = dataset.skip(start_batch)
    self._iterator = dataset.as_numpy_iterator()

  def __iter__(self) -> Iterator[Dict]:
    return self

  def __next__(self) -> Dict:
    flat = next(self._iterator)
    self.batches_consumed += 1
    return nest_batch(flat)

  def position(self) -> Dict[str, int]:
    """What a checkpoint stores to resume this stream."""
    return {"batches_consumed": self.batches_consumed, "seed": self.seed}
