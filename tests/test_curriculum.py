"""Modality curriculum: rates per stage, and tasks never sampled before their stage."""

import collections

import numpy as np
import pytest
import seqio
import tensorflow as tf

from unified_io.data.curriculum import Curriculum, Stage

TASKS = {"cur_text": 0, "cur_image": 1, "cur_audio": 2, "cur_video": 3}
MODALITIES = {"cur_text": ("text",), "cur_image": ("text", "image"), "cur_audio": ("audio",),
              "cur_video": ("image", "audio")}
RATES = {"cur_text": 2.0, "cur_image": 1.0, "cur_audio": 1.0, "cur_video": 0.5}
STARTS = {"text": 0, "image": 100, "audio": 250}


@pytest.fixture(scope="module")
def registered():
  """Four tiny seqio tasks whose one feature says which task an example came from."""
  feature = seqio.Feature(seqio.PassThroughVocabulary(8), add_eos=False, dtype=tf.int32)
  for name, task_id in TASKS.items():
    def source(split, shuffle_files, seed=None, task_id=task_id):
      del split, shuffle_files, seed
      return tf.data.Dataset.from_tensors({"targets": tf.constant([task_id], tf.int32)}).repeat(64)
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(name, seqio.FunctionDataSource(source, splits=["train"]),
                           output_features={"targets": feature})
  curriculum = Curriculum.by_modality(RATES, MODALITIES, STARTS)
  curriculum.register_stages("cur_mix")
  return curriculum


def test_stages_by_modality(registered):
  curriculum = registered
  assert [s.start_step for s in curriculum.stages] == [0, 100, 250]
  assert curriculum.rates_at(0) == {"cur_text": 1.0}
  assert curriculum.rates_at(99) == {"cur_text": 1.0}
  assert curriculum.rates_at(100) == pytest.approx({"cur_text": 2 / 3, "cur_image": 1 / 3})
  assert curriculum.rates_at(10_000) == pytest.approx(
      {t: r / 4.5 for t, r in RATES.items()})
  assert [curriculum.stage_index(s) for s in (0, 99, 100, 249, 250, 10**9)] == [0, 0, 1, 1, 2, 2]


def _sampled_tasks(curriculum, step, n=300):
  ds = curriculum.dataset_at("cur_mix", step, sequence_length={"targets": 1}, seed=3)
  inverse = {v: k for k, v in TASKS.items()}
  return collections.Counter(inverse[int(ex["targets"][0])]
                             for ex in ds.take(n).as_numpy_iterator())


def test_tasks_absent_before_their_stage(registered):
  curriculum = registered
  assert set(_sampled_tasks(curriculum, 0)) == {"cur_text"}
  counts = _sampled_tasks(curriculum, 150)
  assert set(counts) == {"cur_text", "cur_image"}
  assert abs(counts["cur_image"] / 300 - 1 / 3) < 0.1
  counts = _sampled_tasks(curriculum, 300, n=450)
  assert set(counts) == set(TASKS)
  for task, rate in curriculum.rates_at(300).items():
    assert abs(counts[task] / 450 - rate) < 0.08, (task, counts)


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
