"""The gin entry points of `uio2-eval` and `uio2-infer` (run files gin/runs/eval.gin, infer.gin).

evaluate: every checkpoint of a training MODEL_DIR (or one step directory) on a task or mixture;
  checkpoints already evaluated are listed in EVAL_OUTPUT_DIR/evaluated.json and skipped, and with
  `wait_seconds` it keeps polling for new ones (an evaluator beside a training job). Writes
  TensorBoard scalars `<task>/<metric>`, `<task>-metrics.jsonl` and `<task>-<step>.jsonl`.
infer: predictions of one checkpoint for a task's split, in chunks of `chunk_size` examples
  (`<task>-<split>-<first>-<last>.jsonl`); a rerun skips the chunks already written. The bad
  examples skipped are said in a last line (`bad_input.summary`).
Both read through `bad_input.numpy_iterator`: in strict mode (gin bad_input.strict) the first bad
example raises one-line `bad_input.BadInputError` (the binaries exit 2 with it).
"""

import json
import os
import time
from typing import Dict, Mapping, Optional, Sequence

import gin
import jax

from unified_io import decoding

from unified_io import gin_required
from unified_io.config import UnifiedIOConfig
from unified_io.data import bad_input, registry
from unified_io.evaluation import evaluator as evaluator_lib
from unified_io.evaluation import run_loader
from unified_io.evaluation import sharded_inference
from unified_io.training import run_config as run_config_lib

gin.external_configurable(decoding.DecodeOptions, module="decoding")
DONE_FILE = "evaluated.json"


def _steps_to_evaluate(checkpoint_path: str) -> Sequence[Optional[int]]:
  """Every step of a MODEL_DIR, or [None] for a step directory / converted checkpoint."""
  checkpoints = os.path.join(checkpoint_path, run_loader.CHECKPOINTS)
  if os.path.isdir(checkpoints):
    return sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())
  return [None]


def _task_names(name: str) -> Sequence[str]:
  """The tasks of a registered mixture or task; an unknown name is a one-line ValueError naming
  the close registered names (`registry.get_mixture_or_task`)."""
  return registry.task_names(name)


def _open_run(checkpoint_path: str, log) -> sharded_inference.InferenceMesh:
  """Checks the checkpoint path exists, makes the run's data configuration this process's
  (`run_config.apply_run_data`, before task names are looked up) and returns gin's mesh."""
  if not os.path.exists(checkpoint_path):
    raise run_loader.RunLoadError(f"checkpoint path {checkpoint_path} does not exist")
  run_config_lib.apply_run_data(checkpoint_path, log=log)
  return sharded_inference.inference_mesh()


def _lengths(given: Optional[Mapping[str, int]], run: run_loader.Run) -> Mapping[str, int]:
  """The task feature lengths given, or the training run's."""
  lengths = given or run.task_feature_lengths
  if not lengths:
    raise gin_required.GinRequiredError(
        "the checkpoint has no run config with task feature lengths; set TASK_FEATURE_LENGTHS")
  return lengths


def _read_done(path: str) -> Dict[str, Dict]:
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {}


@gin.configurable
def evaluate(checkpoint_path: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
             output_dir: str = gin.REQUIRED,
             task_feature_lengths: Optional[Mapping[str, int]] = None,
             split: str = "validation", batch_size: int = 8, max_examples: int = 64,
             decode_options: decoding.DecodeOptions = decoding.DecodeOptions(),
             wait_seconds: float = 0.0, poll_seconds: float = 30.0,
             model_config: Optional[UnifiedIOConfig] = None, dtype: Optional[str] = None,
             log=print) -> Dict[int, Dict[str, Dict[str, float]]]:
  """Evaluates each new checkpoint; returns {step: {task: metrics}} of this call's evaluations.

  `task_feature_lengths` default: the training run's. `model_config`: the model to load into
  instead of the run's own config (needed for a checkpoint without run-config.json, e.g.
  `--gin_file=models/large.gin --gin.evaluate.model_config=@make_config()`). `wait_seconds` > 0:
  after the last new checkpoint, keep polling every `poll_seconds` until that long passes with
  none. `dtype`: "bfloat16" restores the parameters cast (half the memory). The mesh is gin's
  `inference_mesh` (model_parallel, fsdp; every device of every process); the run's data
  configuration (world, directories, task modules) is applied first (`run_config.apply_run_data`).
  """
  gin_required.check_required("evaluate", checkpoint_path=checkpoint_path,
                           mixture_or_task_name=mixture_or_task_name, output_dir=output_dir)
  from clu import metric_writers  # pylint: disable=import-outside-toplevel
  mesh = _open_run(checkpoint_path, log)
  tasks = _task_names(mixture_or_task_name)
  writes = mesh.is_writer
  os.makedirs(output_dir, exist_ok=True)
  done_path = os.path.join(output_dir, DONE_FILE)
  done = _read_done(done_path)
  writer = (metric_writers.create_default_writer(output_dir, asynchronous=False)
            if writes else None)
  evaluator, results = None, {}
  last_new = time.time()
  while True:
    steps = _steps_to_evaluate(checkpoint_path)
    if not steps and not done and wait_seconds <= 0:
      raise run_loader.RunLoadError(f"no checkpoints in {checkpoint_path}/{run_loader.CHECKPOINTS}"
                                    " yet; train first, or pass --gin.evaluate.wait_seconds=N to "
                                    "wait for them")
    pending = [s for s in steps if str(s) not in done]
    for step in pending:
      run = mesh.load_run(checkpoint_path, step, dtype, model_config=model_config)
      if evaluator is None:
        evaluator = evaluator_lib.Evaluator(run.model, tasks,
                                            _lengths(task_feature_lengths, run), split=split,
                                            batch_size=batch_size, max_examples=max_examples,
                                            decode_options=decode_options, log=log, mesh=mesh)
      metrics = {name: r.metrics for name, r in evaluator.evaluate(
          run.params, run.step, output_dir if writes else None, writer).items()}
      results[run.step] = metrics
      done[str(step)] = {"step": run.step, "time": time.time()}
      if writes:
        with open(done_path + ".tmp", "w") as f:
          json.dump(done, f, indent=1)
        os.replace(done_path + ".tmp", done_path)
      last_new = time.time()
    if wait_seconds <= 0 or time.time() - last_new > wait_seconds:
      break
    time.sleep(poll_seconds)
  if writer is not None:
    writer.close()
  if evaluator is None:
    log(f"uio2-eval: nothing new to evaluate in {checkpoint_path} (see {done_path})")
  return results


@gin.configurable
def infer(checkpoint_path: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          output_dir: str = gin.REQUIRED, task_feature_lengths: Optional[Mapping[str, int]] = None,
          split: str = "test", batch_size: int = 8, chunk_size: int = 256,
          max_examples: Optional[int] = None, step: Optional[int] = None,
          decode_options: decoding.DecodeOptions = decoding.DecodeOptions(),
          model_config: Optional[UnifiedIOConfig] = None, dtype: Optional[str] = None,
          log=print) -> Dict[str, int]:
  """Writes predictions chunk by chunk; returns {task: examples predicted in this call}.
  `model_config`, `dtype`, the mesh and the run's data: as for `evaluate`."""
  gin_required.check_required("infer", checkpoint_path=checkpoint_path,
                           mixture_or_task_name=mixture_or_task_name, output_dir=output_dir)
  mesh = _open_run(checkpoint_path, log)
  tasks = _task_names(mixture_or_task_name)  # (before the checkpoint loads)
  run = mesh.load_run(checkpoint_path, step, dtype, model_config=model_config)
  lengths = _lengths(task_feature_lengths, run)
  predictor = evaluator_lib.Evaluator(run.model, tasks, lengths, split=split,
                                      batch_size=batch_size, decode_options=decode_options,
                                      log=log, load=False, mesh=mesh)
  os.makedirs(output_dir, exist_ok=True)
  counts, skipped_before = {}, bad_input.counts()
  for name in tasks:
    counts[name] = 0
    start = 0
    while max_examples is None or start < max_examples:
      size = chunk_size if max_examples is None else min(chunk_size, max_examples - start)
      path = os.path.join(output_dir, f"{name}-{split}-{start:07d}-{start + size - 1:07d}.jsonl")
      if os.path.exists(path):
        log(f"infer: {os.path.basename(path)} exists, skipped")
        start += size
        continue
      data = evaluator_lib.load_examples(name, predictor.converter, lengths, split,
                                         predictor.batch_size, size, start=start,
                                         allow_empty=True)
      if data.count == 0:
        break
      records = predictor.predict(run.params, name, data, jax.random.PRNGKey(start))
      predictor.postprocess_predictions(name, records)
      if mesh.is_writer:  # a chunk exists only once complete: a rerun redoes a cut-off one
        evaluator_lib.write_records(path, records, first_index=start)
      counts[name] += data.count
      log(f"infer: {name} {split} examples {start}..{start + data.count - 1} -> {path}")
      if data.count < size:
        break
      start += size
  skipped = bad_input.summary(since=skipped_before)  # (each bad example once)
  if skipped:
    log(f"infer: {skipped}")
  return counts
