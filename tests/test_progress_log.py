"""The training log writes each metric's mean over the steps since the last log.

  cd /work/main && .venv/bin/python -m pytest -q tests/test_progress_log.py
"""

import json

import jax.numpy as jnp
import pytest

from unified_io.training.progress import ProgressLog


def test_logged_values_are_interval_means_over_the_steps_that_had_them(tmp_path):
  log = ProgressLog(str(tmp_path), start_step=0, total_steps=5, log_every=3)
  steps = [  # grouped batches: a target's loss exists only at steps whose batch had it
      {"loss": 1.0, "loss/text": 1.0, "learning_rate": 0.1, "nonfinite_steps": 0,
       "target_tokens": 10},
      {"loss": 3.0, "loss/image": 3.0, "learning_rate": 0.2, "nonfinite_steps": 1,
       "target_tokens": 20},
      {"loss": 5.0, "loss/text": 2.0, "loss/image": 3.0, "learning_rate": 0.3,
       "nonfinite_steps": 1, "target_tokens": 30},
      {"loss": 7.0, "loss/text": 7.0, "learning_rate": 0.4, "nonfinite_steps": 1,
       "target_tokens": 40},
      {"loss": 9.0, "loss/text": 9.0, "learning_rate": 0.5, "nonfinite_steps": 2,
       "target_tokens": 50},
  ]
  for step, metrics in enumerate(steps, start=1):
    log.step_done(step, {k: jnp.asarray(v) for k, v in metrics.items()})
  last = log.close()
  rows = [json.loads(line) for line in open(tmp_path / "train" / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [3, 5]
  first, second = rows
  assert first["loss"] == pytest.approx(3.0)
  assert first["loss/text"] == pytest.approx(1.5)
  assert first["loss/image"] == pytest.approx(3.0)
  assert first["learning_rate"] == pytest.approx(0.3)  # the last step's, not a mean
  assert first["nonfinite_steps"] == 1
  assert first["target_tokens"] == pytest.approx(20.0)
  assert second["loss"] == pytest.approx(8.0)
  assert "loss/image" not in second
  assert second["nonfinite_steps"] == 2
  assert last["loss"] == pytest.approx(8.0)
