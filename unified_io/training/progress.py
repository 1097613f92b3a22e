"""Training metrics out: TensorBoard, a jsonl file, and a readable console line with rate and ETA.

Every `log_every` steps (and at the last step) the metrics of the steps since the last log are
fetched from the device and written as their means (each over the steps that had it: with grouped
batches `loss/image` exists only at steps whose batch had an image target; `learning_rate` and
`nonfinite_steps` are the last step's), with their t5x names plus `timing/steps_per_second`,
`timing/seqs_per_second` (when the batch size is known), `timing/target_tokens_per_second`. In a terminal a progress bar is redrawn
after every step; in a log file only the periodic lines appear.
"""

import json
import os
import sys
import time
from typing import Dict, Mapping, Optional, Sequence

import jax
import numpy as np
from clu import metric_writers


def _eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


_LAST_STEP_ONLY = ("learning_rate", "nonfinite_steps")


def _interval_means(steps: Sequence[Mapping[str, np.ndarray]]) -> Dict[str, float]:
  """Per metric, the mean over the steps that reported it (the last value for counters)."""
  values: Dict[str, list] = {}
  for metrics in steps:
    for key, value in metrics.items():
      values.setdefault(key, []).append(float(np.asarray(value)))
  return {k: v[-1] if k in _LAST_STEP_ONLY else float(np.mean(v)) for k, v in values.items()}


class ProgressLog:

  def __init__(self, model_dir: str, *, start_step: int, total_steps: int, log_every: int = 10):
    self.total_steps, self.log_every = total_steps, max(log_every, 1)
    self._primary = jax.process_index() == 0
    train_dir = os.path.join(model_dir, "train")
    os.makedirs(train_dir, exist_ok=True)
    self._writer = metric_writers.create_default_writer(
        train_dir, just_logging=not self._primary, asynchronous=False)
    self._jsonl = open(os.path.join(train_dir, "metrics.jsonl"), "a") if self._primary else None
    self._tty = sys.stderr.isatty() and self._primary
    self._last_time, self._last_step = time.perf_counter(), start_step
    self._tokens = 0.0
    self._start_step = start_step
    self._start_time = self._last_time
    self._pending = []  # the metrics (device arrays) of the steps since the last log
    self.last: Dict[str, float] = {}

  def step_done(self, step: int, metrics: Mapping[str, jax.Array],
                extras: Optional[Mapping[str, float]] = None) -> None:
    if self._tty:
      done = (step - self._start_step) / max(self.total_steps - self._start_step, 1)
      bar = "#" * int(30 * done)
      sys.stderr.write(f"\r[{bar:30s}] {step}/{self.total_steps}")
      sys.stderr.flush()
    self._pending.append(dict(metrics))
    if step % self.log_every and step != self.total_steps:
      return
    values = _interval_means(jax.device_get(self._pending))
    self._pending = []
    now = time.perf_counter()
    steps = step - self._last_step
    elapsed = max(now - self._last_time, 1e-9)
    values["timing/steps_per_second"] = steps / elapsed
    values["timing/target_tokens_per_second"] = values.get("target_tokens", 0.0) * steps / elapsed
    values.update(extras or {})
    self._last_time, self._last_step = now, step
    eta = (self.total_steps - step) * elapsed / max(steps, 1)
    self.last = values
    if not self._primary:
      return
    self._writer.write_scalars(step, values)
    self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
    self._jsonl.flush()
    parts = [f"{k.split('/', 1)[1]} {v:.3f}" for k, v in sorted(values.items())
             if k.startswith("loss/")]
    line = (f"step {step:6d}/{self.total_steps}  loss {values['loss']:.4f}"
            + (f" ({', '.join(parts)})" if parts else "")
            + f"  lr {values.get('learning_rate', 0.0):.2e}"
            + f"  {values['timing/steps_per_second']:.2f} steps/s"
            + f"  {values['timing/target_tokens_per_second']:.0f} tok/s  ETA {_eta(eta)}")
    if values.get("nonfinite_steps"):
      line += f"  non-finite steps {int(values['nonfinite_steps'])}"
    if self._tty:
      sys.stderr.write("\r" + " " * 60 + "\r")
    print(line, flush=True)

  def close(self) -> Dict[str, float]:
    if self._tty:
      sys.stderr.write("\n")
    self._writer.flush()
    self._writer.close()
    if self._jsonl:
      self._jsonl.close()
    return self.last
