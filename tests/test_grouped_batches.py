"""Grouped batches (`train.group_batches`): one modality set and one text-target bucket per batch,
trimmed batches give the full batch's loss and gradients, and the trainer trains on them.

  cd /work/main && .venv/bin/python -m pytest -q tests/test_grouped_batches.py

The data comes from `world_default` (every modality of the built-in world) at the tiny
all-modality model's sizes; the model is that model with random parameters.
"""

from typing import Dict

import jax
import numpy as np
import pytest

from test_run_loader import random_params
from tiny_models import TINY_ALL_MODALITIES
from unified_io.contract import DataConfig
from unified_io.data.converter import UnifiedIOFeatureConverter
from unified_io.evaluation import run_loader
from unified_io.model import UnifiedIOModel
import unified_io.tasks  # noqa: F401  (registers world_default)
from unified_io.training.input import TrainInput, text_target_buckets, trim_batch

MIXTURE = "world_default"
BATCH_SIZE = 4
LENGTHS = {"text_inputs": 32, "text_targets": 32, "image_input_samples": 16,
           "audio_input_samples": 16, "image_history_input_samples": 8,
           "audio_history_input_samples": 8, "num_frames": 2}
MODEL_CFG = TINY_ALL_MODALITIES


def _input(seed: int, group: bool) -> TrainInput:
  return TrainInput(MIXTURE, LENGTHS, BATCH_SIZE, UnifiedIOFeatureConverter(DataConfig.from_model(MODEL_CFG)),
                    seed=seed, process_index=0, process_count=1, group_batches=group)


def _row_signature(batch: Dict, row: int):
  """(modalities present in the row, text-target bucket) of one row of a full batch."""
  present = tuple(sorted(f"{side}/{m}" for side in ("inputs", "targets")
                         for m, f in batch[side].items() if np.any(f["mask"][row])))
  text_mask = batch["targets"]["text"]["mask"][row]
  used = int(np.nonzero(text_mask)[0][-1]) + 1 if np.any(text_mask) else 0
  bucket = next(n for n in text_target_buckets(LENGTHS["text_targets"]) if n >= used)
  return present, bucket


@pytest.fixture(scope="module")
def grouped_batches():
  data = _input(seed=0, group=True)
  return [next(data) for _ in range(12)]


def test_buckets():
  assert text_target_buckets(32) == (8, 16, 32)
  assert text_target_buckets(24) == (8, 16, 24)
  assert text_target_buckets(8) == (8,)


def test_each_grouped_batch_has_one_modality_set_and_bucket(grouped_batches):
  signatures = set()
  for batch in grouped_batches:
    rows = {_row_signature(batch, r) for r in range(BATCH_SIZE)}
    assert len(rows) == 1, rows
    signatures |= rows
  assert len(signatures) >= 3, f"12 batches of a 16-task mixture came from {signatures}"


def test_grouped_batches_are_a_function_of_the_seed(grouped_batches):
  again = _input(seed=0, group=True)
  for batch in grouped_batches[:4]:
    other = next(again)
    for a, b in zip(jax.tree_util.tree_leaves(batch), jax.tree_util.tree_leaves(other)):
      np.testing.assert_array_equal(a, b)


def test_trim_batch_drops_absent_modalities_and_cuts_text(grouped_batches):
  for batch in grouped_batches:
    trimmed = trim_batch(batch)
    present, bucket = _row_signature(batch, 0)
    kept = {f"{side}/{m}" for side in ("inputs", "targets") for m in trimmed[side]}
    assert kept == set(present) | {"inputs/text"}
    if "text" in trimmed["targets"]:
      for value in trimmed["targets"]["text"].values():
        assert value.shape == (BATCH_SIZE, bucket)


def _mixed_batch(grouped_batches) -> Dict:
  """A mixed batch as an ungrouped stream gives one: rows of different modality sets (a row from
  each of the first batches with a new modality set), all with text targets shorter than the full
  length, so that trimming both drops modalities and cuts the text target."""
  rows, seen = [], set()
  for batch in grouped_batches:
    present, bucket = _row_signature(batch, 0)
    if present not in seen and bucket < LENGTHS["text_targets"]:
      seen.add(present)
      rows.append(jax.tree_util.tree_map(lambda a: a[:1], batch))
  assert len(rows) >= BATCH_SIZE, f"{len(rows)} modality sets in the grouped batches"
  return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *rows[:BATCH_SIZE])


def _present(batch: Dict):
  return {f"{side}/{m}" for side in ("inputs", "targets") for m in batch[side]}


def test_trimmed_loss_and_gradients_equal_the_full_batch(grouped_batches):
  """On a mixed batch and on a grouped one: the cut-away parts carry no loss. The mixed batch's
  trim drops target modalities and cuts the text target, the grouped one's drops input
  modalities and the text target itself; the model's parameters are random (none is zero)."""
  mixed = _mixed_batch(grouped_batches)
  grouped = next(b for b in grouped_batches if "targets/text" not in _row_signature(b, 0)[0])
  model = UnifiedIOModel(MODEL_CFG)
  params = random_params(run_loader.abstract_params(model), seed=0)  # no compiled init
  grad_fn = jax.jit(jax.value_and_grad(lambda p, b: model.loss_fn(p, b)[0]))
  for batch in (mixed, grouped):
    trimmed = trim_batch(batch)
    assert _present(trimmed) < _present(batch)
    full_loss, full_grads = grad_fn(params, batch)
    cut_loss, cut_grads = grad_fn(params, trimmed)
    np.testing.assert_allclose(cut_loss, full_loss, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(cut_grads), jax.tree_util.tree_leaves(full_grads)):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)
  assert trim_batch(mixed)["targets"]["text"]["targets"].shape[1] < LENGTHS["text_targets"]
  assert "text" not in trim_batch(grouped)["targets"]
  assert {"inputs/image", "inputs/audio"} - _present(trim_batch(grouped))


def test_a_batch_without_any_target_the_model_writes_is_refused():
  batch = {"inputs": {"text": {"tokens": np.ones((2, 4), np.int32), "mask": np.ones((2, 4))}},
           "targets": {"text": {"targets": np.zeros((2, 8), np.int32),
                                "mask": np.zeros((2, 8), np.int32)}}}
  with pytest.raises(ValueError, match="no target this model writes"):
    trim_batch(batch)
