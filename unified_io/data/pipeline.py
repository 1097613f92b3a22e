"""From a registered task or mixture to model examples, for one model's data contract.

  stage 1   the task's own preprocessors (seqio `Task.get_dataset`): raw fields (docs/data.md),
            shuffled with the task's buffer, sharded, repeated
  stage 2   `unified_preprocessor` at the contract's sizes (tokens, patches, target images and
            spectrograms), then the task's after-stage-2 steps, then, in a mixture registered
            with `denoising=True`, the mixture of denoisers (`unified_io.data.denoising`)
  mixing    a mixture's tasks sampled by their rates (as seqio's `Mixture.get_dataset` does)
  stage 3   the model's feature converter: static shapes, flat `inputs/...` / `targets/...`

The sizes come from the `DataConfig` the caller hands over (the model's, through its feature
converter), never from a global, so pipelines for two models can be built side by side. Stage-2
randomness (patch sampling, the denoising modes) is seeded per task from the run's seed, so the
same seed gives the same examples.
"""

import contextlib
import functools
import inspect
import zlib
from typing import Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import seqio
import tensorflow as tf

from unified_io.contract import DataConfig
from unified_io.data import denoising, registry
from unified_io.data.converter import UnifiedIOFeatureConverter
from unified_io.data.preprocess import STAGE2_FIELDS, unified_preprocessor

# seqio's mixture sampling seed when examples are not shuffled (its own default).
_UNSHUFFLED_SAMPLE_SEED = 42
# `reusing_built_pipelines`' memo while one is open: {arguments: (converter, dataset)}.
_built: Optional[Dict[Tuple, Tuple[UnifiedIOFeatureConverter, tf.data.Dataset]]] = None


def _stage2_seed(seed: Optional[int], task_name: str) -> int:
  """A per-task seed for stage-2 randomness: distinct tasks of one mixture draw independently."""
  return (zlib.crc32(task_name.encode()) + 7919 * (seed or 0)) % (2 ** 31)


def task_examples(task: seqio.Task, data_config: DataConfig, lengths: Mapping[str, int], *,
                  split: str, shuffle: bool, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None,
                  num_epochs: Optional[int] = 1,
                  extra_steps: Sequence[Callable] = ()) -> tf.data.Dataset:
  """Stage-2 examples of one task (with its `meta/*` fields) at `data_config`'s sizes; the
  `extra_steps` (e.g. a denoising mixture's `denoise`) run after the task's own steps."""
  if split not in task.splits:
    raise ValueError(f"task {task.name!r} has no split {split!r}; it has {list(task.splits)}")
  raw = task.get_dataset(None, split=split, shuffle=shuffle, seed=seed, shard_info=shard_info,
                         num_epochs=num_epochs, use_cached=False, trim_output_features=False)
  with seqio.utils.map_seed_manager(_stage2_seed(seed, task.name)):
    examples = unified_preprocessor(raw, lengths, task.output_features, data_config=data_config)
    for step in registry.after_stage2_steps(task.name) + tuple(extra_steps):
      examples = _run_step(step, examples, sequence_length=dict(lengths),
                           output_features=task.output_features, data_config=data_config)
  return examples


def _run_step(step: Callable, dataset: tf.data.Dataset, **available) -> tf.data.Dataset:
  """Calls an after-stage-2 step with the keyword arguments it declares (as seqio calls its
  preprocessors: `sequence_length`, `output_features`, and here also `data_config`)."""
  params = inspect.signature(step).parameters
  return step(dataset, **{k: v for k, v in available.items() if k in params})


def _model_fields(example):
  """A mixture keeps only the stage-2 fields (tasks differ in their meta fields)."""
  return {k: example[k] for k in STAGE2_FIELDS}


def mixed_examples(name: str, data_config: DataConfig, lengths: Mapping[str, int], *,
                   split: str, shuffle: bool, seed: Optional[int] = None,
                   shard_info: Optional[seqio.ShardInfo] = None, num_epochs: Optional[int] = 1,
                   rates: Optional[Mapping[str, float]] = None) -> tf.data.Dataset:
  """Stage-2 examples of a task (meta kept) or of a mixture (sampled by rate, meta dropped).
  `rates` ({task: rate}, e.g. a curriculum stage's) replaces the mixture's tasks and rates."""
  provider = registry.get_mixture_or_task(name)
  kwargs = dict(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info,
                num_epochs=num_epochs)
  if rates is None and isinstance(provider, seqio.Task):
    return task_examples(provider, data_config, lengths, **kwargs)
  if rates is None:
    rates = registry.rates(name)
  tasks = [registered_task(t, name) for t in rates]
  tasks = [t for t in tasks if split in t.splits]
  if not tasks:
    raise ValueError(f"mixture {name!r}: no task has a split {split!r}")
  config = denoising.DenoisingConfig() if registry.mixture_denoising(name) else None  # gin's rates
  if config is not None:
    kwargs["extra_steps"] = (functools.partial(denoising.denoise, config=config),)
  datasets = [task_examples(t, data_config, lengths, **kwargs) for t in tasks]
  if config is not None:
    denoising.check_modes(name, config, {t.name: d.element_spec for t, d in zip(tasks, datasets)})
  datasets = [d.map(tf.autograph.experimental.do_not_convert(_model_fields)) for d in datasets]
  rates = [float(rates[t.name]) for t in tasks]
  sample_seed = seed if seed is not None else (None if shuffle else _UNSHUFFLED_SAMPLE_SEED)
  return tf.data.Dataset.sample_from_datasets(datasets, rates, seed=sample_seed,
                                              stop_on_empty_dataset=True)


def registered_task(task_name: str, mixture: str) -> seqio.Task:
  try:
    task = seqio.get_mixture_or_task(task_name)
  except ValueError as exc:
    raise ValueError(f"mixture {mixture!r} samples task {task_name!r}, which is not registered"
                     ) from exc
  if not isinstance(task, seqio.Task):
    raise ValueError(f"mixture {mixture!r}: {task_name!r} is a mixture; a rate table names tasks")
  return task


def get_dataset(name: str, converter: UnifiedIOFeatureConverter, lengths: Mapping[str, int], *,
                split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                shard_info: Optional[seqio.ShardInfo] = None, num_epochs: Optional[int] = 1,
                rates: Optional[Mapping[str, float]] = None) -> tf.data.Dataset:
  """Converted model examples (flat features, unbatched) of a task or mixture: stages 1-3 with
  the sizes of the converter's data contract (`UnifiedIOModel.feature_converter()`); `rates`
  as for `mixed_examples`."""
  if not isinstance(converter, UnifiedIOFeatureConverter):
    raise TypeError("the pipeline needs the model's feature converter "
                    f"(UnifiedIOModel.feature_converter()), got {type(converter).__name__}")
  key = None
  if _built is not None:
    key = (name, id(converter), tuple(sorted(lengths.items())), split, shuffle, seed, shard_info,
           num_epochs, None if rates is None else tuple(sorted(rates.items())))
    if key in _built:  # (handed over once: see `reusing_built_pipelines`)
      return _built.pop(key)[1]
  converter.data_config.check_lengths(lengths)
  examples = mixed_examples(name, converter.data_config, lengths, split=split, shuffle=shuffle,
                            seed=seed, shard_info=shard_info, num_epochs=num_epochs, rates=rates)
  dataset = converter(examples, dict(lengths))
  if key is not None:  # (the converter is kept with it: its id stays its own while the memo lives)
    _built[key] = (converter, dataset)
  return dataset


@contextlib.contextmanager
def reusing_built_pipelines() -> Iterator[None]:
  """Inside: a pipeline `get_dataset` builds is handed to the next call with the same arguments
  (the same converter object) instead of being built again, once; later calls build anew.

  Building traces every task's map functions (~7 s for the world's 32-task mixture on 2 cores);
  the trainer checks the input configuration before it writes anything, building the pipeline
  without reading it, and opens the input later with the same arguments on a fresh run. Handed
  over once only: the first consumer iterates a dataset nobody has iterated, exactly as a new
  build; a second `iter()` of a shuffled `tf.data.Dataset` would see another order (its shuffle
  seed advances with each iteration), so a reopened input (a failed restore, a checkpoint set
  aside) must get a fresh build. Scoped to a block, never process-wide: a task registered again
  under the same name, or a data folder that changed, must be built again."""
  global _built
  outer, _built = _built, ({} if _built is None else _built)
  try:
    yield
  finally:
    _built = outer

