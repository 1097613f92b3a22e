"""Task balancing: rates from example counts with a temperature (T5 / UnIVAL), at registration and
from gin, and the training input samples by them."""

import collections

import gin
import pytest
import seqio
import tensorflow as tf

from unified_io.contract import DataConfig
from unified_io.data import balancing, registry
from unified_io.data import vocab as vocab_lib
from unified_io.data.converter import UnifiedIOFeatureConverter
from unified_io.training.input import TrainInput

# Two text tasks of 4 and 64 examples; the prompt word says which task an example came from.
SIZES = {"bal_small": 4, "bal_large": 64}
WORDS = {"bal_small": "alpha", "bal_large": "bravo"}
TEXT_ONLY = DataConfig(input_modalities=("text",), target_modalities=("text",))
LENGTHS = {"text_inputs": 8, "text_targets": 4}


@pytest.fixture(scope="module", autouse=True)
def tasks():
  for name, size in SIZES.items():
    def source(split, shuffle_files, seed=None, word=WORDS[name], size=size):
      del split, shuffle_files, seed
      return tf.data.Dataset.from_tensors({"text_inputs": word, "text_targets": "yes"}).repeat(size)
    registry.add_task(name, seqio.FunctionDataSource(source, splits=["train"]), [], replace=True)
  registry.add_mixture("bal_explicit", [("bal_small", 1.0), ("bal_large", 1.0)], replace=True)
  # T = 2: rates 4 ** 0.5 = 2 against 64 ** 0.5 = 8.
  registry.add_mixture("bal_t2", list(SIZES), temperature=2.0, replace=True)
  yield
  gin.clear_config()


def test_rates_by_hand():
  counts = {"a": 100, "b": 10_000}
  assert balancing.TaskBalance(1.0).rates(counts) == pytest.approx({"a": 100 / 10_100,
                                                                     "b": 10_000 / 10_100})
  assert balancing.TaskBalance(2.0).rates(counts) == pytest.approx({"a": 10 / 110, "b": 100 / 110})
  assert balancing.TaskBalance(1.0, maximum=1000).rates(counts) == pytest.approx(
      {"a": 100 / 1100, "b": 1000 / 1100})
  assert balancing.TaskBalance(1e9).rates(counts) == pytest.approx({"a": 0.5, "b": 0.5}, rel=1e-6)


def test_bad_settings_are_one_line():
  with pytest.raises(ValueError, match="temperature must be > 0"):
    balancing.TaskBalance(0.0)
  with pytest.raises(ValueError, match="bal_empty has no examples"):
    balancing.TaskBalance(1.0).rates({"bal_empty": 0, "b": 3})
  with pytest.raises(ValueError, match="maximum needs a temperature"):
    registry.add_mixture("bal_bad", list(SIZES), maximum=10, replace=True)


def test_counts_from_the_source_and_registration_temperature():
  # FunctionDataSource records no sizes: the split is counted (once).
  assert balancing.example_count(seqio.get_mixture_or_task("bal_large")) == 64
  assert registry.rates("bal_explicit") == {"bal_small": 1.0, "bal_large": 1.0}
  assert registry.rates("bal_t2") == pytest.approx({"bal_small": 0.2, "bal_large": 0.8})


def test_gin_temperature_applies_to_any_mixture():
  with gin.unlock_config():
    gin.bind_parameter("mixture_rates.temperature", 1.0)
  try:
    assert registry.rates("bal_explicit") == pytest.approx({"bal_small": 4 / 68,
                                                            "bal_large": 64 / 68})
  finally:
    gin.clear_config()
  assert registry.rates("bal_explicit") == {"bal_small": 1.0, "bal_large": 1.0}


def test_the_training_input_samples_by_the_balanced_rates():
  data = TrainInput("bal_t2", LENGTHS, 32, UnifiedIOFeatureConverter(TEXT_ONLY), seed=5,
                    start_batch=0, process_index=0, process_count=1)
  vocab = vocab_lib.get_vocabulary()
  first = {vocab.encode(word)[0]: name for name, word in WORDS.items()}
  seen = collections.Counter()
  for _ in range(8):
    batch = next(data)
    seen.update(first[int(t)] for t in batch["inputs"]["text"]["tokens"][:, 1])
  # 256 draws at p = 0.2: 51 expected, sd 6.4; explicit equal rates would give 128.
  assert 30 <= seen["bal_small"] <= 75, seen
