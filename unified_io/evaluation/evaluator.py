"""Evaluating a model on seqio tasks as seqio and t5x do: produce each task's target, run the task's
own `postprocess_fn` on predictions and targets, then its `metric_fns`.

  evaluator = Evaluator(model, ["world_vqa_colour", "vqa_v2"], lengths, split="validation")
  results = evaluator.evaluate(params, step=1000, out_dir="/tmp/run/eval")

Each task's first `max_examples` examples of the split are built once (stage 1 + 2 + the feature
converter, unshuffled, so every checkpoint sees the same ones). The target modality is the one
the task's examples have (image > audio > text). Text is generated with the cached decoder
(unified_io.decoding), or, for a closed-vocabulary task (`registry.Inference.answer_options`), the
most likely answer option is chosen (`decoding.score_options`), as the paper scores such tasks.

What a task's functions receive, seqio's semantics with UIO2's targets:
  postprocess_fn(output, example=example, is_target=...)   once for the target, once for the
                                                           prediction of every example
    example  the example's `meta/<name>` fields as python values (keys keep "meta/"; bytes ->
             str, arrays -> lists), plus "model/image_input_hw" = [H, W], the model's input image
             size, the frame location tokens are in.
    output   text: the decoded string, location tokens as "<extra_id_N>" (the target: the
             example's tokenised target decoded the same way); an option-scored task's
             prediction is the chosen option.
             image: {"tokens": int [L], "image": float [H, W, 3] in [0, 1]}
             audio: {"tokens": int [L], "spectrogram": log-mel [T, M]}
             the target's dict also has "mask" [L] (its loss mask, nonzero = counted); tokens are
             VQ codes + 2, images and spectrograms rendered by the model's VQ decoder (predictions)
             or the preprocessed reference (targets).
  metric_fns, sorted by seqio from their argument names:
    fn(targets, predictions)               predict metrics
    fn(targets, scores)                    score metrics; scores[i] = log-likelihood of target i
    fn(targets, predictions, aux_values)   aux_values = {"scores": [the prediction's
                                           log-probability, or the chosen option's]}
  each returns {name: float or seqio.metrics.Scalar}. A task without metric_fns is predicted and
  written but not scored (as in seqio).

With `out_dir`, every prediction goes to `<task>-<step>.jsonl` (prompt, prediction and reference
postprocessed, the generated text) and the metrics are appended to `<task>-metrics.jsonl`; a
TensorBoard writer gets `<task>/<metric>`. A step's files are written only once every task of it
has been scored, each file whole (written aside, then renamed).
"""

import dataclasses
import functools
import json
import numbers
import os
import time
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import numpy as np
import seqio
import tensorflow as tf

from unified_io import decoding
from unified_io.contract import nest_batch
from unified_io.data import bad_input
from unified_io.data import pipeline
from unified_io.data import registry
from unified_io.data import vocab as vocab_lib
from unified_io.data.converter import UnifiedIOFeatureConverter
from unified_io.evaluation import postprocessors
from unified_io.evaluation import sharded_inference
from unified_io.modalities import Modality
from unified_io.model import UnifiedIOModel

_RENDERED_KEY = {Modality.IMAGE: "image", Modality.AUDIO: "spectrogram"}


class EvalInputError(ValueError):
  """A task that cannot be evaluated as given; one line naming the task (and example, field)."""


class TaskExamples(NamedTuple):
  batches: List[Dict]  # nested model batches (numpy), the last one padded to batch_size
  examples: List[Dict[str, Any]]  # per real example: what postprocess_fn gets as `example`
  targets: List[Any]  # per real example: the target text (text tasks; None otherwise)
  count: int  # real examples
  target: Modality  # the modality the task's examples target


class TaskResult(NamedTuple):
  metrics: Dict[str, float]
  records: List[Dict[str, Any]]  # per example: prompt, prediction, reference (+ "_" arrays)


def decode_text(vocab, ids) -> str:
  """Token ids up to (not including) EOS -> text; location tokens come out as <extra_id_N>."""
  ids = [int(i) for i in ids]
  if decoding.EOS_ID in ids:
    ids = ids[:ids.index(decoding.EOS_ID)]
  return vocab.decode([i for i in ids if i > decoding.EOS_ID])


def _target_modality(spec: Mapping[str, tf.TensorSpec]) -> Modality:
  """image > audio > text, as stage 2 chooses the prefix (an absent target has no rows)."""
  for modality in (Modality.IMAGE, Modality.AUDIO):
    shape = spec[f"{modality.value}_target"].shape
    if shape.rank and shape[0] != 0:
      return modality
  return Modality.TEXT


def get_task(task_name: str) -> seqio.Task:
  task = seqio.get_mixture_or_task(task_name)
  if not isinstance(task, seqio.Task):
    raise ValueError(f"{task_name!r} is a mixture; evaluate its tasks (registry.task_names)")
  return task


def load_examples(task_name: str, converter: UnifiedIOFeatureConverter,
                  lengths: Mapping[str, int], split: str, batch_size: int, max_examples: int,
                  seed: int = 0, start: int = 0, allow_empty: bool = False) -> TaskExamples:
  """Examples start .. start + max_examples - 1 of a task's split as model batches and the
  `example` dicts postprocessors get, at the sizes of `converter`'s data contract
  (`UnifiedIOModel.feature_converter()`)."""
  task = get_task(task_name)
  data_config = converter.data_config
  data_config.check_lengths(lengths)
  stage2 = pipeline.task_examples(task, data_config, lengths, split=split,
                                  shuffle=False, seed=seed, num_epochs=1)
  target = _target_modality(stage2.element_spec)
  stage2 = stage2.skip(start).take(max_examples)
  converted = converter(stage2, dict(lengths))
  kept = stage2.map(lambda ex: {k: v for k, v in ex.items()
                                if k.startswith("meta/") or k == "text_targets"})
  vocab = vocab_lib.get_vocabulary()
  rows, examples, targets = [], [], []
  # (strict mode: one-line BadInputError, the tf.data readers stopped first)
  for features, raw in zip(bad_input.numpy_iterator(converted), bad_input.numpy_iterator(kept)):
    rows.append(features)
    examples.append(postprocessors.postprocess_example(raw, data_config.image_input_size))
    targets.append(decode_text(vocab, raw["text_targets"]) if target == Modality.TEXT else None)
  del converted, kept, stage2  # tf.data iterators alive at interpreter exit can hang it
  if not rows:
    if allow_empty:
      return TaskExamples([], [], [], 0, target)
    raise ValueError(f"task {task_name!r} split {split!r} gave no examples")
  batches = []
  for first in range(0, len(rows), batch_size):
    chunk = rows[first:first + batch_size]
    chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # pad the last batch by repetition
    batches.append(nest_batch({k: np.stack([r[k] for r in chunk]) for k in chunk[0]}))
  return TaskExamples(batches, examples, targets, len(rows), target)


# ------------------------------------------------------------------------------------------------
# seqio's side: postprocessing and metric functions.
# ------------------------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
  return " ".join(str(exc).split()) or type(exc).__name__


def postprocess(task: seqio.Task, outputs: Sequence, examples: Sequence[Mapping],
                is_target: bool) -> List:
  """`task.postprocess_fn` on each output; a failure names the task, the example and the cause."""
  out = []
  for i, (output, example) in enumerate(zip(outputs, examples)):
    try:
      out.append(task.postprocess_fn(output, example=example, is_target=is_target))
    except (KeyError, ValueError, TypeError, IndexError) as exc:
      what = "target" if is_target else "prediction"
      missing = f"field {exc.args[0]!r} missing" if isinstance(exc, KeyError) else _one_line(exc)
      raise EvalInputError(f"task {task.name}: example {i}: postprocessing the {what}: "
                           f"{missing}") from exc
  return out


def _as_float(value) -> Optional[float]:
  value = getattr(value, "value", value)  # seqio.metrics.Scalar
  if isinstance(value, (numbers.Number, np.number)) or (
      isinstance(value, np.ndarray) and value.size == 1):
    return float(value)
  return None


def run_metric_fns(task: seqio.Task, targets: Sequence, predictions: Optional[Sequence],
                   scores: Optional[Sequence[float]], aux_scores: Optional[Sequence[float]],
                   log: Callable = print) -> Dict[str, float]:
  """Every metric function of `task`, called as seqio calls it; one merged dict of floats."""
  calls = [(fn, lambda fn=fn: fn(targets, predictions)) for fn in task.predict_metric_fns]
  calls += [(fn, lambda fn=fn: fn(targets, predictions, {"scores": list(aux_scores)}))
            for fn in task.predict_with_aux_metric_fns]
  calls += [(fn, lambda fn=fn: fn(targets, list(scores))) for fn in task.score_metric_fns]
  out: Dict[str, float] = {}
  for fn, call in calls:
    name = getattr(fn, "__name__", repr(fn))
    try:
      values = call()
    except (KeyError, ValueError, TypeError, IndexError, ZeroDivisionError) as exc:
      raise EvalInputError(f"task {task.name}: metric function {name}: {_one_line(exc)}") from exc
    if not isinstance(values, Mapping):
      raise EvalInputError(f"task {task.name}: metric function {name} returned "
                           f"{type(values).__name__}, not a dict of metric values")
    for key, value in values.items():
      number = _as_float(value)
      if number is None:
        log(f"eval: {task.name}/{key} is a {type(value).__name__}, not a number: not written")
        continue
      if key in out:
        raise EvalInputError(f"task {task.name}: metric {key!r} is returned by two metric "
                             "functions; rename one")
      out[key] = number
  return out


# ------------------------------------------------------------------------------------------------
# The evaluator.
# ------------------------------------------------------------------------------------------------
class Evaluator:
  """Scores a model on tasks; examples are built once, at construction."""

  def __init__(self, model: UnifiedIOModel, task_names: Sequence[str],
               lengths: Mapping[str, int], *, split: str = "validation", batch_size: int = 8,
               max_examples: Union[int, Mapping[str, int]] = 64,
               decode_options: decoding.DecodeOptions = decoding.DecodeOptions(), seed: int = 0,
               log=print, load: bool = True,
               mesh: Optional[sharded_inference.InferenceMesh] = None):
    """`max_examples`: per task, or {task: count}; `load=False` builds no examples (for
    `infer`, which loads chunks itself). `mesh`: run on it, the parameters given to `evaluate`
    sharded on it (`InferenceMesh.load_run`); every process builds the same examples and
    gets every row back, so all score alike (only process 0 should write:
    `InferenceMesh.is_writer`)."""
    if mesh is not None and batch_size % mesh.data_size:
      rounded = -(-batch_size // mesh.data_size) * mesh.data_size
      log(f"eval: batch size {batch_size} -> {rounded}, a multiple of the mesh's data axis "
          f"({mesh.describe()})")
      batch_size = rounded
    self.batch_size = batch_size
    self.mesh = mesh
    self.model = model
    self.lengths = dict(lengths)
    self.split = split
    self.decode_options = decode_options
    self.log = log
    self.converter = model.feature_converter()
    self.data_config = self.converter.data_config
    self.vocab = vocab_lib.get_vocabulary()
    self.text_vocab_size = self.vocab._base_vocab_size  # pylint: disable=protected-access
    self.tasks: Dict[str, TaskExamples] = {}
    for name in task_names:
      task = get_task(name)
      if len(task.metric_objs) > len(task.metric_fns):  # seqio wraps each metric_fn in one
        raise EvalInputError(f"task {name!r}: metric_objs (seqio.metrics.Metric classes) are not "
                             "run by this evaluator; give the task metric_fns")
      if not load:
        continue
      start = time.time()
      count = max_examples if isinstance(max_examples, int) else max_examples[name]
      data = load_examples(name, self.converter, self.lengths, split, batch_size, count, seed)
      self.check_target(name, data.target)
      self.tasks[name] = data
      log(f"eval data: {name} {split}: {data.count} examples, {data.target.value} targets "
          f"({time.time() - start:.1f} s)")
    self._reference = jax.jit(lambda p, b: {m: (o.targets, o.loss_mask)
                                            for m, o in model.outputs(p, b).items()})
    self._log_likelihood = jax.jit(lambda p, b: decoding.target_log_likelihood(model, p, b))
    self._render = {m: jax.jit(lambda p, tokens, m=m: model.render(p, m.value, tokens))
                    for m in (Modality.IMAGE, Modality.AUDIO)}

  def _apply(self, fn, params, *batch_args):
    """`fn(params, *batch_args)` as numpy, every row; on the mesh when there is one."""
    if self.mesh is None:
      return jax.device_get(fn(params, *batch_args))
    local = [self.mesh.local_rows(a) for a in batch_args]
    return self.mesh.apply(fn, params, *local, batch_size=_batch_rows(batch_args[0]), gather=True)

  def _generate(self, params, batch, target: Modality, options: decoding.DecodeOptions, rng):
    if self.mesh is None:
      return jax.device_get(decoding.generate(self.model, params, batch["inputs"], target,
                                              options, rng, self.text_vocab_size))
    return sharded_inference.generate_global(
        self.mesh, self.model, params, self.mesh.local_rows(batch["inputs"]), target, options,
        rng, self.text_vocab_size, batch_size=_batch_rows(batch), gather=True)

  def check_target(self, name: str, target: Modality) -> None:
    targets = self.model.cfg.target_modalities
    if target not in targets:
      raise EvalInputError(f"task {name!r} has {target.value} targets but the model generates "
                           f"{sorted(m.value for m in targets)}")
    options = registry.inference(name).answer_options
    if options is not None and target != Modality.TEXT:
      raise EvalInputError(f"task {name!r}: answer_options are for text targets, the task's are "
                           f"{target.value}")

  def _options(self, name: str, target: Modality) -> decoding.DecodeOptions:
    max_length = (registry.inference(name).max_decode_length
                  or self.lengths.get("text_targets", 32))
    changes: Dict[str, Any] = dict(max_length=max_length)
    if target == Modality.TEXT:
      changes["guidance_scale"] = 1.0  # guidance is for image and audio targets
    else:
      if self.decode_options.method == decoding.DecodeMethod.BEAM:
        changes["method"] = decoding.DecodeMethod.GREEDY  # a full token grid: beams buy nothing
      task_scale = registry.inference(name).guidance_scale
      if task_scale is not None and self.decode_options.guidance_scale == 1.0:
        changes["guidance_scale"] = task_scale
    return dataclasses.replace(self.decode_options, **changes)

  # -- producing outputs ------------------------------------------------------------------------
  def predict(self, params, name: str, data: TaskExamples,
              rng: Optional[jax.Array] = None) -> List[Dict[str, Any]]:
    """One record per example: the raw output (`_output`), the target's (`_target`), the
    prediction's log-probability (`_score`), the prompt and the generated text."""
    task = get_task(name)
    self.check_target(name, data.target)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    answer_options = registry.inference(name).answer_options
    wants_scores = bool(task.score_metric_fns)
    records: List[Dict[str, Any]] = []
    for i, batch in enumerate(data.batches):
      size = _batch_rows(batch)
      rows = range(i * size, min((i + 1) * size, data.count))
      if answer_options is not None:
        outputs, scores = self._choose_options(params, batch, data, rows, answer_options, name)
      elif data.target == Modality.TEXT:
        out = self._generate(params, batch, Modality.TEXT, self._options(name, data.target),
                             jax.random.fold_in(rng, i))
        tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
        outputs = [decode_text(self.vocab, tokens[r][:lengths[r]]) for r in range(len(rows))]
        scores = np.asarray(out.scores).tolist()
      else:
        outputs, scores = self._generate_media(params, batch, data.target, name,
                                               jax.random.fold_in(rng, i))
      likelihood = (np.asarray(self._apply(self._log_likelihood, params, batch)).tolist()
                    if wants_scores else None)
      targets = (self._media_targets(params, batch, data.target)
                 if data.target != Modality.TEXT else None)
      prompt = batch["inputs"].get(Modality.TEXT.value)
      for r, index in enumerate(rows):
        prompt_ids = prompt["tokens"][r][1:] if prompt is not None else []
        record = {"prompt": decode_text(self.vocab, prompt_ids),
                  "_output": outputs[r], "_score": float(scores[r]),
                  "_target": data.targets[index] if targets is None else targets[r],
                  "_example": data.examples[index],
                  # The example's model inputs, for galleries.
                  "_inputs": jax.tree_util.tree_map(lambda a, r=r: a[r], batch["inputs"])}
        if isinstance(outputs[r], str):
          record["text"] = outputs[r]
        if likelihood is not None:
          record["_log_likelihood"] = float(likelihood[r])
        records.append(record)
    return records

  def _choose_options(self, params, batch, data: TaskExamples, rows: range, options, name: str):
    """The most likely option per example (and its log-likelihood)."""
    per_row = []
    for index in rows:
      if isinstance(options, str):
        given = data.examples[index].get(options)
        if not isinstance(given, list) or not given or not all(isinstance(o, str) for o in given):
          raise EvalInputError(f"task {name}: example {index}: field {options!r} must hold the "
                               f"answer options (a non-empty list of strings), got {given!r}")
        per_row.append(given)
      else:
        per_row.append(list(options))
    batch_rows = _batch_rows(batch)
    per_row += [per_row[-1]] * (batch_rows - len(per_row))  # the padding rows
    encoded = [[list(self.vocab.encode(o)) + [decoding.EOS_ID] for o in opts] for opts in per_row]
    width = max(len(ids) for opts in encoded for ids in opts)
    count = max(len(opts) for opts in encoded)
    option_ids = np.zeros([batch_rows, count, width], np.int32)
    valid = np.zeros([batch_rows, count], bool)
    for r, opts in enumerate(encoded):
      for k, ids in enumerate(opts):
        option_ids[r, k, :len(ids)] = ids
        valid[r, k] = True
    score = functools.partial(decoding.score_options, self.model)
    losses = np.asarray(self._apply(score, params, batch["inputs"], option_ids))
    losses = np.where(valid, losses, np.inf)
    best = np.argmin(losses, axis=1)
    # score_options gives each option's mean token loss; the aux score is minus it.
    return ([per_row[r][best[r]] for r in range(len(rows))],
            [-float(losses[r, best[r]]) for r in range(len(rows))])

  def _generate_media(self, params, batch, target: Modality, name: str, rng):
    out = self._generate(params, batch, target, self._options(name, target), rng)
    tokens = np.asarray(out.tokens)
    rendered = np.asarray(self._apply(self._render[target], params, tokens))
    outputs = [{"tokens": tokens[r], _RENDERED_KEY[target]: _rendered(target, rendered[r])}
               for r in range(tokens.shape[0])]
    return outputs, np.asarray(out.scores).tolist()

  def _media_targets(self, params, batch, target: Modality) -> List[Dict[str, np.ndarray]]:
    """The reference's tokens, loss mask and picture (or spectrogram), and its tokens decoded
    ("reconstruction": what a generation with every token right would show)."""
    ref_tokens, ref_mask = self._apply(self._reference, params, batch)[target.value]
    ref_tokens = np.asarray(ref_tokens)
    decoded = np.asarray(self._apply(self._render[target], params, ref_tokens))
    raw = batch["targets"][target.value][target.value]
    return [{"tokens": ref_tokens[r], "mask": np.asarray(ref_mask[r]),
             _RENDERED_KEY[target]: _rendered(target, raw[r]),
             "reconstruction": _rendered(target, decoded[r])} for r in range(raw.shape[0])]

  # -- scoring ----------------------------------------------------------------------------------
  def score(self, name: str, records: List[Dict[str, Any]]) -> Dict[str, float]:
    """Postprocesses every record (filling its `prediction` and `reference`) and runs the task's
    metric functions."""
    task = get_task(name)
    examples = [r["_example"] for r in records]
    targets = postprocess(task, [r["_target"] for r in records], examples, is_target=True)
    predictions = postprocess(task, [r["_output"] for r in records], examples, is_target=False)
    for record, target, prediction in zip(records, targets, predictions):
      record["prediction"], record["reference"] = prediction, target
    if not task.metric_fns:
      return {}
    scores = [r.get("_log_likelihood") for r in records]
    return run_metric_fns(task, targets, predictions, scores, [r["_score"] for r in records],
                          self.log)

  def postprocess_predictions(self, name: str, records: List[Dict[str, Any]]) -> None:
    """Fills each record's `prediction` (inference: there may be no targets to read)."""
    predictions = postprocess(get_task(name), [r["_output"] for r in records],
                              [r["_example"] for r in records], is_target=False)
    for record, prediction in zip(records, predictions):
      record["prediction"] = prediction

  def evaluate_task(self, params, name: str, rng: Optional[jax.Array] = None) -> TaskResult:
    records = self.predict(params, name, self.tasks[name], rng)
    return TaskResult(self.score(name, records), records)

  def evaluate(self, params, step: int, out_dir: Optional[str] = None,
               writer=None) -> Dict[str, TaskResult]:
    """Every task; then (all scored) the jsonl files under `out_dir` and scalars `<task>/<metric>`
    to `writer`."""
    results = {}
    for name in self.tasks:
      start = time.time()
      result = self.evaluate_task(params, name)
      results[name] = result
      shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(result.metrics.items())
                        if "/" not in k) or "no metric_fns"
      self.log(f"eval step {step} {name}: {shown} ({time.time() - start:.1f} s)")
    if out_dir:
      for name, result in results.items():
        write_results(out_dir, name, step, result)
    if writer is not None:
      for name, result in results.items():
        writer.write_scalars(step, {f"{name}/{k}": v for k, v in result.metrics.items()})
      writer.flush()
    return results


def _batch_rows(batch) -> int:
  return len(jax.tree_util.tree_leaves(batch)[0])


def _rendered(target: Modality, array: np.ndarray) -> np.ndarray:
  """The model's image layout ([-1, 1]) -> [0, 1]; a spectrogram loses its channel axis."""
  array = np.asarray(array, np.float32)
  if target == Modality.IMAGE:
    return np.clip((array + 1) / 2, 0, 1)
  return np.squeeze(array, axis=-1) if array.ndim == 3 else array


def write_results(out_dir: str, task: str, step: int, result: TaskResult) -> None:
  tf.io.gfile.makedirs(out_dir)
  write_records(os.path.join(out_dir, f"{task}-{step}.jsonl"), result.records)
  if result.metrics:
    with open(os.path.join(out_dir, f"{task}-metrics.jsonl"), "a") as f:
      f.write(json.dumps({"step": int(step), **result.metrics}) + "\n")


def _saved(record: Mapping[str, Any]) -> Dict[str, Any]:
  """What a record's jsonl line holds: keys not starting "_", media predictions as tokens."""
  out = {}
  for key, value in record.items():
    if key.startswith("_"):
      continue
    if isinstance(value, Mapping) and "tokens" in value:
      value = value["tokens"]  # a generated image / audio: its tokens (the pixels are in the report)
    out[key] = postprocessors.to_python(value)
  return out


def write_records(path: str, records: Sequence[Mapping[str, Any]], first_index: int = 0) -> None:
  """One JSON line per record, numbered from `first_index`; written aside, then renamed."""
  with open(path + ".tmp", "w") as f:
    for i, record in enumerate(records):
      f.write(json.dumps({"index": first_index + i, **_saved(record)}) + "\n")
  os.replace(path + ".tmp", path)
