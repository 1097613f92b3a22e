"""Modality curriculum: rates per stage; the training input follows the stages batch by batch,
switches at their first batch, and a resumed input continues in the right stage."""

import collections

import numpy as np
import pytest
import seqio
import tensorflow as tf

from unified_io.contract import DataConfig
from unified_io.data import registry
from unified_io.data import vocab as vocab_lib
from unified_io.data.converter import UnifiedIOFeatureConverter
from unified_io.data.curriculum import Curriculum, Stage
from unified_io.training.input import TrainInput

PROMPTS = {"cur_text": "alpha", "cur_image": "bravo", "cur_audio": "charlie", "cur_video": "delta"}
MODALITIES = {"cur_text": ("text",), "cur_image": ("text", "image"), "cur_audio": ("audio",),
              "cur_video": ("image", "audio")}
RATES = {"cur_text": 2.0, "cur_image": 1.0, "cur_audio": 1.0, "cur_video": 0.5}
STARTS = {"text": 0, "image": 3, "audio": 6}
TEXT_ONLY = DataConfig(input_modalities=("text",), target_modalities=("text",))
LENGTHS = {"text_inputs": 8, "text_targets": 4}
BATCH = 8


@pytest.fixture(scope="module")
def mixture():
  """Four text tasks whose prompt word says which task an example came from, mixed with a
  curriculum that brings them in at batches 0, 3 and 6."""
  for name, word in PROMPTS.items():
    def source(split, shuffle_files, seed=None, word=word):
      del split, shuffle_files, seed
      return tf.data.Dataset.from_tensors({"text_inputs": word, "text_targets": "yes"}).repeat()
    registry.add_task(name, seqio.FunctionDataSource(source, splits=["train"]), [],
                      modalities=MODALITIES[name], replace=True)
  curriculum = Curriculum.by_modality(RATES, MODALITIES, STARTS)
  registry.add_mixture("cur_mix", list(RATES.items()), curriculum=curriculum, replace=True)
  return curriculum


def _tasks_of(batch):
  vocab = vocab_lib.get_vocabulary()
  first = {vocab.encode(word)[0]: name for name, word in PROMPTS.items()}
  return collections.Counter(first[int(t)] for t in batch["inputs"]["text"]["tokens"][:, 1])


def _input(start_batch=0):
  return TrainInput("cur_mix", LENGTHS, BATCH, UnifiedIOFeatureConverter(TEXT_ONLY), seed=3,
                    start_batch=start_batch, process_index=0, process_count=1)


def test_stages_by_modality(mixture):
  curriculum = mixture
  assert [s.start_step for s in curriculum.stages] == [0, 3, 6]
  assert curriculum.rates_at(0) == {"cur_text": 1.0}
  assert curriculum.rates_at(2) == {"cur_text": 1.0}
  assert curriculum.rates_at(3) == pytest.approx({"cur_text": 2 / 3, "cur_image": 1 / 3})
  assert curriculum.rates_at(10_000) == pytest.approx({t: r / 4.5 for t, r in RATES.items()})
  assert [curriculum.stage_index(s) for s in (0, 2, 3, 5, 6, 10**9)] == [0, 0, 1, 1, 2, 2]
  assert curriculum.task_names() == ("cur_text", "cur_image", "cur_audio", "cur_video")


def test_the_input_follows_the_stages_and_resumes_in_place(mixture, capsys):
  data = _input()
  batches = [next(data) for _ in range(10)]
  seen = [_tasks_of(b) for b in batches]
  assert all(set(s) == {"cur_text"} for s in seen[:3]), seen[:3]
  assert all(set(s) <= {"cur_text", "cur_image"} for s in seen[3:6]), seen[3:6]
  assert sum(s["cur_image"] for s in seen[3:6]) > 0
  late = sum(seen[6:], collections.Counter())
  assert late["cur_audio"] > 0 and late["cur_video"] > 0, late
  assert data.stage == 2
  printed = capsys.readouterr().out
  assert "curriculum: stage 1 from batch 3" in printed and "curriculum: stage 2 from batch 6" in printed
  for start in (4, 7):  # resumed in stage 1 and in stage 2: the same batches from there on
    resumed = _input(start)
    assert resumed.stage == mixture.stage_index(start)
    for expected in batches[start:start + 2]:
      np.testing.assert_array_equal(next(resumed)["inputs"]["text"]["tokens"],
                                    expected["inputs"]["text"]["tokens"])


def test_a_stage_naming_an_unregistered_task_is_refused_at_start(mixture):
  del mixture
  registry.add_mixture("cur_bad", [("cur_text", 1.0)], replace=True,
                       curriculum=Curriculum(((0, {"cur_text": 1.0}), (2, {"cur_nope": 1.0}))))
  with pytest.raises(ValueError, match="mixture 'cur_bad' samples task 'cur_nope', which is not "
                                       "registered"):
    TrainInput("cur_bad", LENGTHS, BATCH, UnifiedIOFeatureConverter(TEXT_ONLY),
               process_index=0, process_count=1)


def test_invalid_curricula_are_refused():
  with pytest.raises(ValueError, match="first curriculum stage must start at step 0"):
    Curriculum((Stage(5, {"a": 1.0}),))
  with pytest.raises(ValueError, match="must increase"):
    Curriculum((Stage(0, {"a": 1.0}), Stage(0, {"b": 1.0})))
  with pytest.raises(ValueError, match="rates must be > 0"):
    Stage(0, {"a": 0.0})
  with pytest.raises(ValueError, match="without a start step"):
    Curriculum.by_modality({"t": 1.0}, {"t": ("video",)}, {"text": 0})
  # Plain tuples work too (as gin writes them).
  assert Curriculum(((0, (("a", 1.0),)), (10, (("a", 1.0), ("b", 3.0))))).rates_at(10)["b"] == 0.75
  np.testing.assert_equal(Curriculum(((0, {"a": 1.0}),)).rates_at(7), {"a": 1.0})
