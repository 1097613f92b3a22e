"""Registering tasks and mixtures: stage-1 preprocessors + the unified stage 2, standard features.

  add_task("my_captions", source, [my_stage1_fn], metric_fns=[...], modalities=("image", "text"))
  add_mixture("my_mixture", [("my_captions", 1.0), ("world_vqa", 0.5)], curriculum=...)

A task's preprocessors are its own stage-1 functions (raw fields, docs/data.md) followed by
`unified_preprocessor`, which reads the sizes of the `DataConfig` in effect when the dataset is
built, then any `after_stage2` steps (the denoising objective works on stage-2 fields). Every
task has the same output features (`output_features()`), so any tasks mix.
"""

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import seqio

from unified_io.data import vocab as vocab_lib
from unified_io.data.preprocess import STAGE2_FIELDS, unified_preprocessor
from unified_io.modalities import Modality

_TASK_MODALITIES: Dict[str, Tuple[str, ...]] = {}
_MIXTURE_CURRICULA: Dict[str, Any] = {}


def output_features(vocabulary: Optional[seqio.Vocabulary] = None) -> Dict[str, seqio.Feature]:
  """The stage-2 fields as seqio features: the two text fields carry the vocabulary."""
  vocabulary = vocabulary or vocab_lib.get_vocabulary()
  features = {}
  for name, (dtype, rank) in STAGE2_FIELDS.items():
    if name in ("text_inputs", "text_targets"):
      # Stage 2 appends EOS itself; add_eos=False keeps seqio's EOS helpers from adding another.
      features[name] = seqio.Feature(vocabulary, add_eos=False, dtype=dtype, rank=rank)
    else:
      features[name] = seqio.ContinuousFeature(dtype=dtype, rank=rank)
  return features


def add_task(name: str, source: seqio.DataSource, preprocessors: Sequence[Callable],
             *, metric_fns: Sequence[Callable] = (), postprocess_fn: Optional[Callable] = None,
             modalities: Optional[Sequence[str]] = None,
             after_stage2: Sequence[Callable] = (),
             vocabulary: Optional[seqio.Vocabulary] = None,
             shuffle_buffer_size: Optional[int] = 128, replace: bool = False) -> seqio.Task:
  """Register a seqio Task: `preprocessors` (stage 1) + the unified stage-2 preprocessor
  + `after_stage2` (steps on stage-2 fields, e.g. `unified_io.data.denoising.denoise`).

  `modalities` names the modalities the task's examples use (e.g. ("image", "text")); a mixture's
  curriculum reads them with `task_modalities`. `replace=True` re-registers an existing name.
  `shuffle_buffer_size` counts examples AFTER stage 2 (decoded, patchified): keep it small (the
  first batch waits for the buffer to fill; 1000 image examples at release sizes are ~1.8 GB).
  """
  if modalities is not None:
    modalities = tuple(Modality(m).value for m in modalities)
  if replace:
    seqio.TaskRegistry.remove(name)
  task = seqio.TaskRegistry.add(
      name, source=source, output_features=output_features(vocabulary),
      preprocessors=list(preprocessors) + [unified_preprocessor] + list(after_stage2),
      postprocess_fn=postprocess_fn, metric_fns=list(metric_fns),
      shuffle_buffer_size=shuffle_buffer_size)
  _TASK_MODALITIES[name] = modalities
  return task


def add_mixture(name: str, tasks_and_rates: Sequence[Union[str, Tuple[str, float]]],
                *, curriculum: Any = None, default_rate: Optional[float] = None,
                replace: bool = False) -> seqio.Mixture:
  """Register a seqio Mixture; `curriculum` (unified_io.data.curriculum) is stored with it."""
  if replace:
    seqio.MixtureRegistry.remove(name)
  mixture = seqio.MixtureRegistry.add(name, list(tasks_and_rates), default_rate=default_rate)
  _MIXTURE_CURRICULA[name] = curriculum
  return mixture


def task_modalities(name: str) -> Optional[Tuple[str, ...]]:
  """The modalities a task declared in `add_task` (None if it declared none)."""
  if name not in _TASK_MODALITIES:
    raise KeyError(f"task {name!r} was not registered with unified_io.data.registry.add_task")
  return _TASK_MODALITIES[name]


def mixture_curriculum(name: str) -> Any:
  """The curriculum given to `add_mixture` (None if none)."""
  if name not in _MIXTURE_CURRICULA:
    raise KeyError(f"mixture {name!r} was not registered with unified_io.data.registry.add_mixture")
  return _MIXTURE_CURRICULA[name]


def task_names(mixture_or_task: str) -> Tuple[str, ...]:
  """The task names behind a mixture (or the task itself)."""
  provider = seqio.get_mixture_or_task(mixture_or_task)
  if isinstance(provider, seqio.Mixture):
    return tuple(t.name for t in provider.tasks)
  return (provider.name,)


def rates(mixture: str) -> Mapping[str, float]:
  """{task name: rate} of a registered mixture."""
  provider = seqio.get_mixture_or_task(mixture)
  return {t.name: provider.get_rate(t) for t in provider.tasks}
