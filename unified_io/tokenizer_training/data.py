"""A tokenizer's training examples from any registered task or mixture.

The tokenizer learns what the model will ask it to encode: each task's raw image (or waveform),
made exactly as stage 2 makes a model target (`preprocess.model_image`: resized and padded to the
tokenizer's size, then [-1, 1]; `preprocess.spectrogram` normalised with the AudioSet statistics
for audio). Per task the first of these raw fields that it has is read:

  image: image_targets, image_inputs          audio: audio_targets, audio_inputs

A mixture samples its tasks by their rates (tasks without such a field are left out); a task or
mixture with none is refused in one line. Examples come unbatched, float32 [H, W, C].
"""

from typing import List, Optional, Sequence, Tuple

import seqio
import tensorflow as tf

from unified_io.data import registry
from unified_io.data.ops import audio as audio_ops
from unified_io.data.preprocess import model_image, spectrogram

FIELDS = {"image": ("image_targets", "image_inputs"), "audio": ("audio_targets", "audio_inputs")}


class TokenizerDataError(ValueError):
  """The named task or mixture cannot feed this tokenizer."""


def _tasks_and_rates(name: str) -> List[Tuple[seqio.Task, float]]:
  provider = registry.get_mixture_or_task(name)
  if isinstance(provider, seqio.Task):
    return [(provider, 1.0)]
  rates = registry.rates(name)
  return [(task, rates[task.name]) for task in provider.tasks]


def _as_example(kind: str, field: str, size: Sequence[int]):
  """A raw example -> the tokenizer's input [H, W, C] (size = (H, W) of the tokenizer's input)."""
  if kind == "image":
    return lambda ex: model_image(ex[field], size) * 2.0 - 1.0
  return lambda ex: audio_ops.normalize_spectrogram(spectrogram(ex[field], size)[0])[..., None]


def tokenizer_examples(name: str, kind: str, size: Sequence[int], *, split: str, shuffle: bool,
                       seed: Optional[int] = None, repeat: bool = True) -> tf.data.Dataset:
  """Unbatched float32 [H, W, C] tokenizer inputs of task or mixture `name` (`size` = (H, W))."""
  if kind not in FIELDS:
    raise TokenizerDataError(f"tokenizer kind {kind!r}: expected one of {sorted(FIELDS)}")
  datasets, rates, skipped = [], [], []
  for task, rate in _tasks_and_rates(name):
    if split not in task.splits:
      skipped.append(f"{task.name} (no split {split!r})")
      continue
    raw = task.get_dataset(None, split=split, shuffle=shuffle, seed=seed,
                           num_epochs=None if repeat else 1, use_cached=False,
                           trim_output_features=False)
    field = next((f for f in FIELDS[kind] if f in raw.element_spec), None)
    if field is None:
      skipped.append(task.name)
      continue
    examples = raw.map(tf.autograph.experimental.do_not_convert(_as_example(kind, field, size)),
                       num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)
    datasets.append(examples)
    rates.append(rate)
  if not datasets:
    raise TokenizerDataError(
        f"{name!r} has no task with {' or '.join(FIELDS[kind])} in its {split!r} split to train "
        f"the {kind} tokenizer on (tasks: {', '.join(skipped) or 'none'})")
  if len(datasets) == 1:
    return datasets[0]
  return tf.data.Dataset.sample_from_datasets(datasets, rates, seed=seed if shuffle else 42,
                                              stop_on_empty_dataset=not repeat)
