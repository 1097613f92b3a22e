"""Evaluating a model on seqio tasks: generate each task's target, read it, score it.

  evaluator = Evaluator(model, ["world_vqa_colour", "world_refexp"], lengths, split="validation")
  results = evaluator.evaluate(params, step=1000, out_dir="/tmp/run/eval")

Each task's first `max_examples` examples of the split are built once (stage 1 + 2 + the feature
converter, unshuffled, so every checkpoint sees the same ones) with their `meta/*` ground truth.
The target named by the task's `EvalSpec` (unified_io.evaluation.specs) is generated with the
cached decoder (unified_io.decoding) and scored by the spec's metrics. With `out_dir`, every
prediction goes to `<task>-<step>.jsonl` and the metrics are appended to `<task>-metrics.jsonl`.
"""

import dataclasses
import json
import os
import re
import time
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import numpy as np
import seqio
import tensorflow as tf

from unified_io import decoding
from unified_io.data import vocab as vocab_lib
from unified_io.contract import nest_batch
from unified_io.data import pipeline
from unified_io.data.converter import UnifiedIOFeatureConverter
from unified_io.data.ops import boxes as box_ops
from unified_io.evaluation import metrics as metrics_lib
from unified_io.evaluation.box_metrics import resize_transform, unresize_boxes
from unified_io.evaluation.specs import EvalSpec, Reads, spec_for
from unified_io.modalities import Modality
from unified_io.model import UnifiedIOModel

_LOCATION_GROUP = re.compile(r"((?:\s*<extra_id_\d+>){4})")


class TaskExamples(NamedTuple):
  batches: List[Dict]  # nested model batches (numpy), the last one padded to batch_size
  meta: List[Dict[str, Any]]  # per real example: meta/* fields as python values
  count: int  # real examples


class TaskResult(NamedTuple):
  metrics: Dict[str, float]
  records: List[Dict[str, Any]]  # per example: prompt, prediction, reference (+ arrays, not saved)


def to_json(value):
  """numpy and bytes values -> what json.dumps takes."""
  if isinstance(value, bytes):
    return value.decode("utf-8", "replace")
  if isinstance(value, np.ndarray):
    if value.dtype.kind in "SO":
      return [to_json(v) for v in value.tolist()]
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  return value


def load_examples(task_name: str, converter: UnifiedIOFeatureConverter,
                  lengths: Mapping[str, int], split: str, batch_size: int, max_examples: int,
                  seed: int = 0, start: int = 0, allow_empty: bool = False) -> TaskExamples:
  """Examples start .. start + max_examples - 1 of a task's split as model batches + meta, at
  the sizes of `converter`'s data contract (`UnifiedIOModel.feature_converter()`)."""
  task = seqio.get_mixture_or_task(task_name)
  if not isinstance(task, seqio.Task):
    raise ValueError(f"{task_name!r} is a mixture; evaluate its tasks (registry.task_names)")
  converter.data_config.check_lengths(lengths)
  stage2 = pipeline.task_examples(task, converter.data_config, lengths, split=split,
                                  shuffle=False, seed=seed, num_epochs=1)
  stage2 = stage2.skip(start).take(max_examples)
  converted = converter(stage2, dict(lengths))
  meta = stage2.map(lambda ex: {k: v for k, v in ex.items() if k.startswith("meta/")})
  rows, metas = [], []
  for features, example_meta in zip(converted.as_numpy_iterator(), meta.as_numpy_iterator()):
    rows.append(features)
    metas.append({k[len("meta/"):]: to_json(v) for k, v in example_meta.items()})
  del converted, meta, stage2  # tf.data iterators alive at interpreter exit can hang it
  if not rows:
    if allow_empty:
      return TaskExamples([], [], 0)
    raise ValueError(f"task {task_name!r} split {split!r} gave no examples")
  batches = []
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # pad the last batch by repetition
    batches.append(nest_batch({k: np.stack([r[k] for r in chunk]) for k in chunk[0]}))
  return TaskExamples(batches, metas, len(rows))


def decode_text(vocab, ids) -> str:
  """Token ids up to (not including) EOS -> text; location tokens come out as <extra_id_N>."""
  ids = [int(i) for i in ids]
  if decoding.EOS_ID in ids:
    ids = ids[:ids.index(decoding.EOS_ID)]
  return vocab.decode([i for i in ids if i > decoding.EOS_ID])


def parse_detections(text: str, size_hw) -> Dict[str, Any]:
  """'<box> label <box> label ...' -> {"boxes": [n, 4] pixels, "labels": [n]}."""
  parts = _LOCATION_GROUP.split(text)
  boxes, labels = [], []
  for i in range(1, len(parts), 2):
    found = box_ops.text_to_boxes_np(parts[i], size_hw)
    if len(found):
      boxes.append(found[0])
      labels.append(parts[i + 1].strip() if i + 1 < len(parts) else "")
  return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "labels": labels}


# What each kind of metric input is, from the evaluator's records: (predictions, references,
# keyword options). Text records carry what `EvalSpec.reads` read; image / audio records their
# tokens, the reference loss mask, and both rendered (the VQGAN's pixels are in [-1, 1]).
_METRIC_INPUTS = {
    metrics_lib.MetricInput.TEXT: lambda records: (
        [r["prediction"] for r in records], [r["reference"] for r in records], {}),
    metrics_lib.MetricInput.BOX: lambda records: (
        [r["prediction_box"] for r in records], [r["reference"] for r in records], {}),
    metrics_lib.MetricInput.BOXES: lambda records: (
        [r["prediction_boxes"] for r in records], [r["reference"] for r in records], {}),
    metrics_lib.MetricInput.TOKENS: lambda records: (
        [r["prediction"] for r in records], [r["reference"] for r in records],
        {"masks": [r["mask"] for r in records]}),
    metrics_lib.MetricInput.IMAGE: lambda records: (
        [np.clip((r["_rendered"] + 1) / 2, 0, 1) for r in records],
        [np.clip((r["_reference_raw"] + 1) / 2, 0, 1) for r in records], {}),
    metrics_lib.MetricInput.SPECTROGRAM: lambda records: (
        [np.squeeze(r["_rendered"]) for r in records],
        [np.squeeze(r["_reference_raw"]) for r in records], {}),
}


class Evaluator:
  """Scores a model on tasks; examples are built once, at construction."""

  def __init__(self, model: UnifiedIOModel, task_names: Sequence[str],
               lengths: Mapping[str, int], *, split: str = "validation", batch_size: int = 8,
               max_examples: Union[int, Mapping[str, int]] = 64, decode_options: decoding.DecodeOptions =
               decoding.DecodeOptions(), seed: int = 0, log=print, load: bool = True):
    """`max_examples`: per task, or {task: count}; `load=False` builds no examples (for
    `predict` on chunks the caller loads)."""
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
    targets = model.cfg.target_modalities
    for name in task_names:
      spec = spec_for(name)
      if spec.target not in targets:
        raise ValueError(f"task {name!r} generates {spec.target.value!r} but the model's targets "
                         f"are {sorted(m.value for m in targets)}")
      if not load:
        continue
      start = time.time()
      count = max_examples if isinstance(max_examples, int) else max_examples[name]
      self.tasks[name] = load_examples(name, self.converter, self.lengths, split, batch_size,
                                       count, seed)
      log(f"eval data: {name} {split}: {self.tasks[name].count} examples "
          f"({time.time() - start:.1f} s)")
    self._reference = jax.jit(lambda p, b: {m: (o.targets, o.loss_mask)
                                            for m, o in model.outputs(p, b).items()})
    self._render = jax.jit(model.render, static_argnums=(1,))

  def _options(self, spec: EvalSpec) -> decoding.DecodeOptions:
    max_length = spec.max_length or self.lengths.get("text_targets", 32)
    changes = dict(max_length=max_length)
    if spec.target != Modality.TEXT and spec.guidance_scale != 1.0:
      changes["guidance_scale"] = spec.guidance_scale
    if spec.target != Modality.TEXT and self.decode_options.method == decoding.DecodeMethod.BEAM:
      # a full token grid: beam search buys nothing there
      changes["method"] = decoding.DecodeMethod.GREEDY
    return dataclasses.replace(self.decode_options, **changes)

  def evaluate_task(self, params, name: str, rng: Optional[jax.Array] = None) -> TaskResult:
    records = self.predict(params, name, self.tasks[name], rng)
    return TaskResult(self._score(spec_for(name), records), records)

  def predict(self, params, name: str, data: TaskExamples,
              rng: Optional[jax.Array] = None) -> List[Dict[str, Any]]:
    """One record per example: prompt, prediction (and its reading), reference from meta."""
    spec = spec_for(name)
    options = self._options(spec)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    records: List[Dict[str, Any]] = []
    for i, batch in enumerate(data.batches):
      out = decoding.generate(self.model, params, batch["inputs"], spec.target, options,
                              jax.random.fold_in(rng, i), self.text_vocab_size)
      tokens = np.asarray(out.tokens)
      references = (jax.device_get(self._reference(params, batch))
                    if spec.target != Modality.TEXT else None)
      rendered = (np.asarray(self._render(params, spec.target, out.tokens))
                  if spec.target != Modality.TEXT else None)
      for row in range(tokens.shape[0]):
        index = i * tokens.shape[0] + row
        if index >= data.count:
          break
        record = self._record(spec, batch, row, tokens[row], int(out.lengths[row]),
                              data.meta[index], references, rendered)
        # The example's model inputs, for galleries (keys starting "_" are never saved).
        record["_inputs"] = jax.tree_util.tree_map(lambda a, r=row: a[r], batch["inputs"])
        records.append(record)
    return records

  def _record(self, spec: EvalSpec, batch, row, tokens, length, meta, references, rendered):
    prompt = batch["inputs"].get(Modality.TEXT.value)
    prompt_ids = prompt["tokens"][row] if prompt is not None else []
    record: Dict[str, Any] = {"prompt": decode_text(self.vocab, prompt_ids[1:]),
                              "answer": meta.get("answer")}
    if spec.target == Modality.TEXT:
      text = decode_text(self.vocab, tokens[:length])
      record["prediction"] = text
      if spec.reads == Reads.TEXT:
        record["reference"] = meta.get("answer")
      else:
        model_hw = self._input_image_hw()
        transform = resize_transform(meta["image_size"], model_hw)
        if spec.reads == Reads.BOX:
          boxes = box_ops.text_to_boxes_np(text, model_hw)
          record["prediction_box"] = (unresize_boxes(boxes[:1], transform, meta["image_size"])
                                      .tolist() if len(boxes) else None)
          record["reference"] = meta["boxes"][0]
        else:
          found = parse_detections(text, model_hw)
          found["boxes"] = unresize_boxes(found["boxes"], transform, meta["image_size"])
          record["prediction_boxes"] = {"boxes": found["boxes"].tolist(),
                                        "labels": found["labels"]}
          record["reference"] = {"boxes": meta["boxes"], "labels": meta["labels"]}
      return record
    target = spec.target.value
    ref_tokens, ref_mask = references[target]
    raw = batch["targets"][target][target]
    record.update(prediction=tokens.tolist(), reference=ref_tokens[row].tolist(),
                  mask=ref_mask[row].tolist())
    record["_rendered"] = rendered[row]
    record["_reference_raw"] = raw[row]
    return record

  def _input_image_hw(self):
    return tuple(self.data_config.image_input_size)

  def _score(self, spec: EvalSpec, records: List[Dict[str, Any]]) -> Dict[str, float]:
    """Each metric gets the input its registry entry declares (`Metric.inputs`); metrics taking
    the same input run together (`compute_metrics`: no two may return the same key)."""
    by_input: Dict[metrics_lib.MetricInput, List[str]] = {}
    for name in spec.metrics:
      by_input.setdefault(metrics_lib.get_metric(name).inputs, []).append(name)
    out: Dict[str, float] = {}
    for kind, names in by_input.items():
      predictions, references, options = _METRIC_INPUTS[kind](records)
      out.update(metrics_lib.compute_metrics(names, predictions, references,
                                             {name: options for name in names}))
    return out


  def evaluate(self, params, step: int, out_dir: Optional[str] = None,
               writer=None) -> Dict[str, TaskResult]:
    """Every task; writes jsonl files under `out_dir` and scalars `<task>/<metric>` to `writer`."""
    results = {}
    for name in self.tasks:
      start = time.time()
      result = self.evaluate_task(params, name)
      results[name] = result
      shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(result.metrics.items()))
      self.log(f"eval step {step} {name}: {shown} ({time.time() - start:.1f} s)")
      if out_dir:
        write_results(out_dir, name, step, result)
      if writer is not None:
        writer.write_scalars(step, {f"{name}/{k}": v for k, v in result.metrics.items()})
    if writer is not None:
      writer.flush()
    return results


def write_results(out_dir: str, task: str, step: int, result: TaskResult) -> None:
  tf.io.gfile.makedirs(out_dir)
  write_records(os.path.join(out_dir, f"{task}-{step}.jsonl"), result.records)
  with open(os.path.join(out_dir, f"{task}-metrics.jsonl"), "a") as f:
    f.write(json.dumps({"step": int(step), **result.metrics}) + "\n")


def write_records(path: str, records: Sequence[Mapping[str, Any]], first_index: int = 0) -> None:
  """One JSON line per record, numbered from `first_index`; keys starting "_" are not saved."""
  with open(path, "w") as f:
    for i, record in enumerate(records):
      saved = {k: to_json(v) for k, v in record.items() if not k.startswith("_")}
      f.write(json.dumps({"index": first_index + i, **saved}) + "\n")
