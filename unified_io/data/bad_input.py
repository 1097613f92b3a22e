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
logs; `summary()` says them in one line with the first file of each. A bad example is counted once
however often it comes back: an endless training stream repeats its source, and each pass would
count the same broken file again. It is known by its task and problem string (reason, field and
file, or "manifest:line" for a bad line); one without a file (some TFDS fields) cannot be told
apart from another and is counted each time it is seen.

Strict mode (gin `bad_input.strict = True`, or `set_strict(True)` / `with strict_mode():`): the
first bad example stops the pipeline. Inside tf.data that is an error of the filter (iterating a
dataset yourself gives a `tf.errors.OpError` naming BadInputError). Readers that end a run
(`numpy_iterator` here, the training input, the evaluator) turn it into one `BadInputError` whose
message is one line naming the task, the reason, the field and the file, and delete their tf.data
iterator before raising it. That order matters: a tf.data iterator still alive when the interpreter
exits, with a python step (`tf.numpy_function` decoders, the filter's `tf.py_function`, a
generator source) in flight on one of its reader threads, hangs the process: the iterator's
destructor waits for that call, which can no longer take the GIL. An uncaught tf.data error keeps
the iterator alive that long (the traceback in `sys.last_traceback` holds the frames that hold it).
"""

import contextlib
import gc
import logging
import threading
from typing import Dict, Iterator, Optional, Set, Tuple

import gin
import tensorflow as tf

PROBLEM_KEY = "bad_input/problem"
SEPARATOR = "\x1f"

# Reasons in use (free-form strings are accepted too; these are the ones our tasks write).
CORRUPT_IMAGE = "corrupt_image"
UNREADABLE_AUDIO = "unreadable_audio"
TRUNCATED_AUDIO = "truncated_audio"  # the header declares more samples than the file holds
EMPTY_VIDEO = "empty_video"
EMPTY_TEXT = "empty_text"
BOXES_OUTSIDE_IMAGE = "boxes_outside_image"
MISSING_FILE = "missing_file"
MISSING_FIELD = "missing_field"
BAD_MANIFEST_LINE = "bad_manifest_line"

_lock = threading.Lock()
_counts: Dict[str, int] = {}  # "<task>/<reason>" -> distinct bad examples skipped
_first_file: Dict[str, str] = {}  # "<task>/<reason>" -> the file of the first ("" if none)
_seen: Set[Tuple[str, str]] = set()  # (task, problem) of the bad examples counted so far
_stopped_by: Optional[str] = None  # strict mode: the message of the first bad example
_strict_override: Optional[bool] = None
_STRICT_HINT = ("; strict mode (bad_input.strict=True) stops at the first bad example: fix or "
                "remove it, or turn strict mode off to skip and count such examples")


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
  """{"<task>/<reason>": distinct examples skipped} since start (or the last `reset_counts`)."""
  with _lock:
    return dict(_counts)


def reset_counts() -> None:
  """Forget the counts, the examples already counted and a strict-mode stop."""
  global _stopped_by
  with _lock:
    _counts.clear()
    _first_file.clear()
    _seen.clear()
    _stopped_by = None


def summary(since: Optional[Dict[str, int]] = None) -> str:
  """The counts (those added after `since`, an earlier `counts()`) in one line, e.g.
  "skipped 6 bad: unreadable_audio 6 (first: /data/x.wav)" (reasons prefixed by their task when
  several tasks had some); "" when none were skipped."""
  with _lock:
    added = {k: n - (since or {}).get(k, 0) for k, n in _counts.items()}
    first = dict(_first_file)
  added = {k: n for k, n in sorted(added.items()) if n > 0}
  if not added:
    return ""
  one_task = len({k.rsplit("/", 1)[0] for k in added}) == 1
  parts = [f"{k.rsplit('/', 1)[1] if one_task else k} {n}"
           + (f" (first: {first[k]})" if first.get(k) else "") for k, n in added.items()]
  return f"skipped {sum(added.values())} bad: " + ", ".join(parts)


def encode_problem(reason: str, field: str, file: str = "") -> str:
  return SEPARATOR.join((reason, field, file))


def describe(task: str, problem: str) -> str:
  """A readable sentence for one problem string."""
  reason, field, file = (problem.split(SEPARATOR) + ["", "", ""])[:3]
  where = f" in file {file!r}" if file else ""
  return f"bad input in task {task!r}: {reason} (field {field!r}{where})"


def record(task: str, problem: str) -> None:
  """Count one skipped example (once, however often it comes back), or raise `BadInputError` in
  strict mode (the first such message is kept for `strict_failure`)."""
  global _stopped_by
  message = describe(task, problem)
  if is_strict():
    with _lock:
      _stopped_by = _stopped_by or message + _STRICT_HINT
    raise BadInputError(message + _STRICT_HINT)
  reason, _, file = (problem.split(SEPARATOR) + ["", "", ""])[:3]
  key = f"{task}/{reason}"
  with _lock:
    if file and (task, problem) in _seen:  # the same example, on a later pass of its source
      return
    if file:
      _seen.add((task, problem))
    _counts[key] = _counts.get(key, 0) + 1
    first = _counts[key] == 1
    if first:
      _first_file[key] = file
  if first:  # one line per task and reason: enough to find the file, not a flood
    logging.warning("%s; skipping it (counted as %s, further ones are counted silently)",
                    message, key)


def strict_failure(error: Exception) -> Optional[BadInputError]:
  """The one-line `BadInputError` a tf.data `error` stands for when a strict-mode bad example
  stopped the pipeline (the first one this process met), else None."""
  text = str(error)
  if "BadInputError" not in text:
    return None
  with _lock:
    message = _stopped_by
  if message is None:  # (not recorded here, e.g. counts were reset since: read it from the error)
    message = text.split("BadInputError: ", 1)[-1].splitlines()[0]
  return BadInputError(message)


def numpy_iterator(dataset: tf.data.Dataset) -> Iterator:
  """`dataset.as_numpy_iterator()`, except that a strict-mode bad example ends it with the
  one-line `BadInputError` (`strict_failure`), raised after the tf.data iterator is deleted and
  its reader threads have stopped (see the module docstring: otherwise the exit can hang)."""
  iterator = dataset.as_numpy_iterator()
  while True:
    failure = None
    try:
      element = next(iterator)
    except StopIteration:
      return
    except tf.errors.OpError as error:
      failure = strict_failure(error)
      if failure is None:
        raise
    if failure is not None:  # (outside the except block: the tf.data error is gone)
      del iterator
      release_iterators()
      raise failure
    yield element


def release_iterators() -> None:
  """Collects the garbage now, so a tf.data iterator dropped on an error path (one held in a
  reference cycle through the error's frames) stops its threads while python can still run
  the calls they are in, not at interpreter exit."""
  gc.collect()


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
