"""Resuming the training input from its saved tf.data state: the uninterrupted run's batches, bit
for bit, without recomputing the batches before the resume point.

  cd /work/main && .venv/bin/python -m pytest -q tests/test_input_resume.py

Each test runs a stream, takes `state()` at a position, draws on, then opens a new input at that
position from the state and compares every feature of the following batches. Streams: the text
part of the built-in world (`world_text`, the tiny text model's contract, as the trainer tests),
a three-task world mixture of text, image and audio tasks for grouped batches, a text curriculum
that switches stage at batch 3, and two input shards through `open_process_input`. The no-replay
test counts calls into the world's example generator.
"""

import itertools
from typing import Dict, List

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from tiny_models import TINY_ALL_MODALITIES, TINY_TEXT
from unified_io import partitioning
from unified_io.contract import DataConfig
from unified_io.data import registry
from unified_io.data.converter import UnifiedIOFeatureConverter
from unified_io.data.curriculum import Curriculum
from unified_io.datasets.world import source as world_source
import unified_io.tasks  # noqa: F401  (registers the world tasks)
from unified_io.training.checkpoints import INPUT, TrainCheckpoints
from unified_io.training.input import TrainInput, open_process_input, shard_state_name

TEXT_LENGTHS = {"text_inputs": 32, "text_targets": 16}
ALL_LENGTHS = {"text_inputs": 32, "text_targets": 32, "image_input_samples": 16,
               "audio_input_samples": 16, "image_history_input_samples": 8,
               "audio_history_input_samples": 8, "num_frames": 2}
BATCH = 4


def _text_input(**kwargs) -> TrainInput:
  return TrainInput(kwargs.pop("name", "world_text"), TEXT_LENGTHS, BATCH,
                    UnifiedIOFeatureConverter(DataConfig.from_model(TINY_TEXT)), seed=5,
                    process_index=0, process_count=1, **kwargs)


def _flat(batch: Dict) -> Dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(batch)}


def _assert_same(expected: List[Dict], got: List[Dict]):
  """Every feature of every batch: same keys, dtypes and values."""
  assert len(expected) == len(got)
  for i, (a, b) in enumerate(zip(map(_flat, expected), map(_flat, got))):
    assert a.keys() == b.keys(), i
    for key in a:
      assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (i, key)


def _straight_with_states(make, stops, total):
  """(the first `total` batches of `make()`, {position: state()} at each of `stops`)."""
  data, batches, states = make(), [], {}
  for position in range(total):
    if position in stops:
      states[position] = data.state()
    batches.append(next(data))
  # (a stream repeating one batch would pass the comparisons without testing anything)
  tokens = [b["inputs"]["text"]["tokens"] for b in batches]
  assert not any(np.array_equal(a, b) for a, b in zip(tokens, tokens[1:]))
  return batches, states


def test_a_resumed_input_continues_the_stream_bit_for_bit():
  batches, states = _straight_with_states(_text_input, {5}, 9)
  resumed = _text_input(start_batch=5, state=states[5])
  assert resumed.replayed == 0 and resumed.batches_consumed == 5
  _assert_same(batches[5:], [next(resumed) for _ in range(4)])
  assert resumed.batches_consumed == 9


@pytest.fixture(scope="module")
def three_modalities():
  """World tasks with text, image and audio inputs: grouped batches of three modality sets."""
  registry.add_mixture("resume_three_modalities", [("world_arithmetic", 1.0),
                                                   ("world_caption", 1.0),
                                                   ("world_audio_caption", 1.0)], replace=True)
  return "resume_three_modalities"


def test_grouped_batches_resume_with_their_open_windows(three_modalities):
  def make(**kwargs):
    return TrainInput(three_modalities, ALL_LENGTHS, BATCH,
                      UnifiedIOFeatureConverter(DataConfig.from_model(TINY_ALL_MODALITIES)),
                      seed=2, process_index=0, process_count=1, group_batches=True, **kwargs)
  batches, states = _straight_with_states(make, {4}, 8)
  groups = {tuple(sorted(m for m, f in b["inputs"].items() if np.any(f["mask"])))
            for b in batches[4:]}
  assert len(groups) >= 2, groups  # the state holds windows of several groups
  resumed = make(start_batch=4, state=states[4])
  assert resumed.replayed == 0
  _assert_same(batches[4:], [next(resumed) for _ in range(4)])


@pytest.fixture(scope="module")
def curriculum():
  """world_arithmetic alone for batches 0-2, with world_text_scene_qa from batch 3."""
  registry.add_mixture(
      "resume_curriculum", [("world_arithmetic", 1.0), ("world_text_scene_qa", 1.0)],
      replace=True, curriculum=Curriculum(((0, {"world_arithmetic": 1.0}),
                                           (3, {"world_arithmetic": 1.0,
                                                "world_text_scene_qa": 1.0}))))
  return "resume_curriculum"


def test_a_curriculum_resumes_in_its_stage_and_across_the_switch(curriculum, capsys):
  batches, states = _straight_with_states(lambda **kw: _text_input(name=curriculum, **kw),
                                          {2, 3, 5}, 7)
  # 2: stage 0, crossing the switch; 3: the switch itself (stage 0's state, stage 1 opens fresh);
  # 5: inside stage 1 (its own state).
  for start in (2, 3, 5):
    capsys.readouterr()
    resumed = _text_input(name=curriculum, start_batch=start, state=states[start])
    assert resumed.replayed == 0 and resumed.stage == (0 if start < 3 else 1)
    _assert_same(batches[start:], [next(resumed) for _ in range(7 - start)])
    assert "replaying" not in capsys.readouterr().out


def test_two_input_shards_resume_from_their_own_states():
  mesh = partitioning.make_mesh(devices=jax.devices()[:1])  # one process holds every row
  converter = UnifiedIOFeatureConverter(DataConfig.from_model(TINY_TEXT))

  def make(start_batch=0, saved_states=None):
    return open_process_input("world_text", TEXT_LENGTHS, BATCH, converter, mesh, seed=3,
                              input_shards=2, start_batch=start_batch, saved_states=saved_states)
  data = make()
  batches = [next(data) for _ in range(3)]
  states = data.state()
  assert sorted(states) == [shard_state_name(0, 2), shard_state_name(1, 2)]
  batches += [next(data) for _ in range(3)]
  asked = []

  def saved_states(names):
    asked.extend(names)
    return {n: states[n] for n in names}
  resumed = make(start_batch=3, saved_states=saved_states)
  assert asked == sorted(states) and resumed.replayed == 0
  assert resumed.position() == {"batches_consumed": 3, "seed": 3, "input_shards": 2}
  _assert_same(batches[3:], [next(resumed) for _ in range(3)])


def test_resume_does_not_recompute_the_skipped_examples(monkeypatch):
  """A resume at batch 100 (400 examples in) generates a few examples, not 400 again."""
  calls = itertools.count()
  generate = world_source.generate_example

  def counting(*args, **kwargs):
    next(calls)
    return generate(*args, **kwargs)
  monkeypatch.setattr(world_source, "generate_example", counting)

  def generated_by(fn) -> int:
    before = next(calls)
    fn()
    return next(calls) - before - 1
  skipped = 100
  data = _text_input()
  assert generated_by(lambda: [next(data) for _ in range(skipped)]) >= skipped * BATCH
  state = data.state()
  expected = next(data)
  got = []
  restored = generated_by(lambda: got.append(next(_text_input(start_batch=skipped, state=state))))
  _assert_same([expected], got)
  assert restored < skipped * BATCH // 4, restored  # what the restored buffers lack, no more
  replayed = generated_by(lambda: next(_text_input(start_batch=skipped)))  # (the old way)
  assert replayed >= skipped * BATCH


def test_checkpoints_keep_input_states_with_their_step_and_old_ones_replay(tmp_path, capsys):
  checkpoints = TrainCheckpoints(str(tmp_path), save_every=1, keep=2)
  data, batches = _text_input(), []
  for step in (1, 2, 3):
    batches.append(next(data))
    assert checkpoints.save(step, {"w": np.full(3, step, np.float32)}, data.position(),
                            input_states=lambda: {shard_state_name(0, 1): data.state()})
  batches.append(next(data))
  checkpoints.save(4, {"w": np.zeros(3, np.float32)}, data.position())  # position only (old)
  batches.append(next(data))
  checkpoints.wait()
  assert list(checkpoints.all_steps()) == [3, 4]  # keep=2: step 2's input state went with it
  assert (tmp_path / "3" / INPUT / "shard-00000-of-00001.zip").is_file()
  assert not (tmp_path / "2").exists() and not (tmp_path / "4" / INPUT).exists()
  name = shard_state_name(0, 1)
  assert checkpoints.input_states(3, [name]).keys() == {name}
  resumed = _text_input(start_batch=3, state=checkpoints.input_states(3, [name])[name])
  assert resumed.replayed == 0
  _assert_same(batches[3:], [next(resumed) for _ in range(2)])
  assert checkpoints.input_states(4, [name]) == {}
  capsys.readouterr()
  replayed = _text_input(start_batch=4)
  assert replayed.replayed == 4
  assert "replaying 4 batches to reach batch 4" in capsys.readouterr().out
  _assert_same(batches[4:], [next(replayed)])
  checkpoints.close()


def test_a_state_of_another_stream_is_not_used(capsys):
  data = _text_input()
  for _ in range(2):
    next(data)
  state = data.state()
  other = TrainInput("world_text", TEXT_LENGTHS, BATCH,
                     UnifiedIOFeatureConverter(DataConfig.from_model(TINY_TEXT)), seed=6,
                     process_index=0, process_count=1, start_batch=2, state=state)
  assert other.replayed == 2
  assert "the saved input state is of another stream" in capsys.readouterr().out
  assert not np.array_equal(next(other)["inputs"]["text"]["tokens"],
                            next(data)["inputs"]["text"]["tokens"])


@pytest.fixture(scope="module")
def python_source_task():
  """A task whose source runs a `tf.py_function` (stateful for tf.data: not saveable)."""
  def source(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    def words(i):
      text = tf.py_function(lambda x: f"number {int(x)}", [i], tf.string)
      text.set_shape([])
      return {"text_inputs": text, "text_targets": text}
    return tf.data.Dataset.range(10**6).map(words)
  registry.add_task("resume_python_source", seqio.FunctionDataSource(source, splits=["train"]),
                    [], modalities=("text",), replace=True)
  return "resume_python_source"


def test_an_unsaveable_pipeline_is_said_once_and_resumes_by_replay(python_source_task, capsys):
  data = _text_input(name=python_source_task)
  batches = [next(data) for _ in range(2)]
  capsys.readouterr()
  assert data.state() is None and data.state() is None
  printed = [l for l in capsys.readouterr().out.splitlines() if "cannot be saved" in l]
  assert len(printed) == 1, printed
  batches += [next(data) for _ in range(2)]
  resumed = _text_input(name=python_source_task, start_batch=2)
  assert resumed.replayed == 2
  _assert_same(batches[2:], [next(resumed) for _ in range(2)])
