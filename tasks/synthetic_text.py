"""Built-in text tasks generated from a seed: no files, no downloads, the same data every run.

`uio2_synthetic_reverse`: the input is a random sequence of word ids, the target is the same
sequence reversed. A tiny model learns it in a few hundred steps on a CPU, so its loss visibly
falls; it is the main job's data until the built-in multimodal world arrives.

Token ids: 0 = PAD/BOS, 1 = EOS, 2 = UNK (the release's layout); words are ids 3..VOCAB_SIZE-1.
"""

import functools

import numpy as np
import seqio
import tensorflow as tf

VOCAB_SIZE = 128
MIN_LENGTH, MAX_LENGTH = 4, 12
SPLIT_SIZES = {"train": 20_000, "validation": 1_000}
SPLIT_SEEDS = {"train": 0, "validation": 1}

VOCABULARY = seqio.PassThroughVocabulary(size=VOCAB_SIZE, eos_id=1)
OUTPUT_FEATURES = {"inputs": seqio.Feature(VOCABULARY, add_eos=True),
                   "targets": seqio.Feature(VOCABULARY, add_eos=True)}


def _examples(split: str):
  rng = np.random.default_rng(SPLIT_SEEDS[split])
  for _ in range(SPLIT_SIZES[split]):
    words = rng.integers(3, VOCAB_SIZE, size=rng.integers(MIN_LENGTH, MAX_LENGTH + 1))
    yield {"inputs": words.astype(np.int32), "targets": words[::-1].astype(np.int32)}


def reverse_source(split: str, shuffle_files: bool = False, seed=None) -> tf.data.Dataset:
  del shuffle_files, seed  # a single generated "file"; example order is fixed by the split seed
  signature = {k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")}
  return tf.data.Dataset.from_generator(functools.partial(_examples, split),
                                        output_signature=signature)


seqio.TaskRegistry.add(
    "uio2_synthetic_reverse",
    source=seqio.FunctionDataSource(reverse_source, splits=tuple(SPLIT_SIZES)),
    preprocessors=[seqio.preprocessors.append_eos],
    output_features=OUTPUT_FEATURES,
)
