"""Bad input: skip and count (the default) or raise naming the file and the field (strict mode).

Real data has broken records: image bytes that do not decode, audio files PyAV cannot read,
videos with no frames, empty captions, boxes that leave the image, manifest lines pointing at
files that are gone. A training job should neither die on the first of them deep inside tf.data
nor drop them silently, so every task preprocessor marks each example with a *problem* string
and one filter at the end of its stage-1 preprocessors either drops the marked examples,
counting them per task and reason, or, in strict mode, raises `BadInputError` naming the task,
the reason, the field and the file.

The marker is one tf.string field, `bad_input/problem`: "" for a good example, otherwise
"reason<US>field<US>file" (US = \\x1f, a separator no path or field name contains). Build it in
graph code with `problem_if(ok, reason, field, file)` and `first_problem(...)`; from python
loaders (inside `tf.numpy_function`) with `encode_problem(...)`. Then `skip_bad_examples(ds,
task)` filters and strips the field; it works inside any tf.data graph because the counting and
the strict check run in a `tf.py_function` that is only entered for bad examples.

Counts are process-wide: `counts()` -> {"coco_captions/corrupt_image": 3, ...}, for the training
logs. Strict mode: gin `bad_input.strict = True`, or `set_strict(True)` / `with strict_mode():`.
"""

import contextlib
import logging
import threading
from typing import Dict, Iterator, Optional

import gin
import tensorflow as tf

PROBLEM_KEY = "bad_input/problem"
SEPARATOR = "\x1f"

# Reasons in use (free-form strings are accepted too; these are the ones our tasks write).
CORRUPT_IMAGE = "corrupt_image"
UNREADABLE_AUDIO = "unreadable_audio"
EMPTY_VIDEO = "empty_video"
EMPTY_TEXT = "empty_text"
BOXES_OUTSIDE_IMAGE = "boxes_outside_image"
MISSING_FILE = "missing_file"
MISSING_FIELD = "missing_field"
BAD_MANIFEST_LINE = "bad_manifest_line"

_lock = threading.Lock()
_counts: Dict[str, int] = {}
_strict_override: Optional[bool] = None


class BadInputError(ValueError):
  """An example that cannot be used, raised in strict mode (message names file and field)."""


@gin.configurable("bad_input")
def _gin_policy(strict: bool = False) -> bool:
  return strict


def is_strict() -> bool:
  """Strict mode: `set_strict` wins over gin's `bad_input.strict` (read at each bad example)."""
  return _gin_policy() if _strict_override is None else _strict_override


def set_strict(strict: Optional[bool]) -> None:
  """Force strict (True) or skip-and-count (False) mode; None goes back to the gin setting."""
  global _strict_override
  _strict_override = strict


@contextlib.contextmanager
def strict_mode(strict: bool = True) -> Iterator[None]:
  previous = _strict_override
  set_strict(strict)
  try:
    yield
  finally:
    set_strict(previous)


def counts() -> Dict[str, int]:
  """{"<task>/<reason>": number of examples skipped} since start (or the last `reset_counts`)."""
  with _lock:
    return dict(_counts)


def reset_counts() -> None:
  with _lock:
    _counts.clear()


def encode_problem(reason: str, field: str, file: str = "") -> str:
  return SEPARATOR.join((reason, field, file))


def describe(task: str, problem: str) -> str:
  """A readable sentence for one problem string."""
  reason, field, file = (problem.split(SEPARATOR) + ["", "", ""])[:3]
  where = f" in file {file!r}" if file else ""
  return f"bad input in task {task!r}: {reason} (field {field!r}{where})"


def record(task: str, problem: str) -> None:
  """Count one skipped example, or raise `BadInputError` in strict mode."""
  message = describe(task, problem)
  if is_strict():
    raise BadInputError(message + "; strict mode is on (gin bad_input.strict), so this stops "
                        "the input pipeline. Turn it off to skip and count such examples.")
  key = f"{task}/{problem.split(SEPARATOR)[0]}"
  with _lock:
    _counts[key] = _counts.get(key, 0) + 1
    first = _counts[key] == 1
  if first:  # one line per task and reason: enough to find the file, not a flood
    logging.warning("%s; skipping it (counted as %s, further ones are counted silently)",
                    message, key)


# ---- graph-side builders of the problem field --------------------------------------------------

def problem_if(ok: tf.Tensor, reason: str, field: str, file=""):
  """tf.string []: "" when `ok`, otherwise the encoded problem (file may be a tf.string)."""
  problem = tf.strings.join([reason, field, tf.convert_to_tensor(file, tf.string)],
                            separator=SEPARATOR)
  return tf.where(tf.cast(ok, tf.bool), tf.constant(""), problem)


def first_problem(*problems) -> tf.Tensor:
  """The first non-empty problem string among `problems` ("" when all are empty)."""
  result = tf.constant("")
  for problem in reversed(problems):
    problem = tf.convert_to_tensor(problem, tf.string)
    result = tf.where(tf.equal(problem, ""), result, problem)
  return result


def nonempty_text(text: tf.Tensor) -> tf.Tensor:
  """tf.bool []: the text has a non-whitespace character."""
  return tf.strings.length(tf.strings.strip(text)) > 0


def boxes_inside(boxes_n4: tf.Tensor, height=1.0, width=1.0, tolerance: float = 1e-3
                 ) -> tf.Tensor:
  """tf.bool []: every (y1, x1, y2, x2) box is finite, ordered and inside [0, h] x [0, w].

  The tolerance (relative) absorbs rounding in stored coordinates; anything beyond it means
  the annotation does not belong to this image (or its axes are swapped).
  """
  boxes_n4 = tf.cast(boxes_n4, tf.float32)
  height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  y1, x1, y2, x2 = tf.unstack(boxes_n4, num=4, axis=-1)
  ty, tx = tolerance * height, tolerance * width
  ok = tf.reduce_all(tf.math.is_finite(boxes_n4), axis=-1)
  ok &= (y1 <= y2) & (x1 <= x2)
  ok &= (y1 >= -ty) & (x1 >= -tx) & (y2 <= height + ty) & (x2 <= width + tx)
  return tf.reduce_all(ok)


# ---- the filter ---------------------------------------------------------------------------------

def _keep(task: str, problem: tf.Tensor) -> tf.Tensor:
  @tf.autograph.experimental.do_not_convert
  def count_and_drop(problem_value):
    record(task, problem_value.numpy().decode("utf-8", "replace"))
    return False

  def bad():
    keep = tf.py_function(count_and_drop, [problem], tf.bool)
    keep.set_shape([])
    return keep

  return tf.cond(tf.equal(problem, ""), lambda: tf.constant(True), bad)


def skip_bad_examples(dataset: tf.data.Dataset, task: str) -> tf.data.Dataset:
  """Drops (and counts) or raises on examples whose `bad_input/problem` is set; strips the field.

  Examples without the field pass through unchanged.
  """
  if PROBLEM_KEY not in dataset.element_spec:
    return dataset
  dataset = dataset.filter(lambda ex: _keep(task, ex[PROBLEM_KEY]))
  return dataset.map(lambda ex: {k: v for k, v in ex.items() if k != PROBLEM_KEY},
                     num_parallel_calls=tf.data.AUTOTUNE)


def skip_bad_examples_preprocessor(task: str):
  """`skip_bad_examples` as a seqio preprocessor (a callable of the dataset only)."""
  def preprocessor(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return skip_bad_examples(dataset, task)
  preprocessor.__name__ = f"skip_bad_examples_{task}"
  return preprocessor
