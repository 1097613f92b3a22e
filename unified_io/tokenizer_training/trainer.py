"""The training loop behind `uio2-train-tokenizer`: every argument is a gin binding
(gin/runs/train_tokenizer.gin).

One call of `train_tokenizer()`:
  1. takes the tokenizer's size from the model config (`model_config.image_vqgan` or
     `audio_vqgan`), so the result drops into that model (`train.tokenizers`, `graft.py`);
     refuses in one line a MODEL_DIR that holds another kind or size of tokenizer, and a task or
     mixture with no images (or audio) to learn from;
  2. resumes from the newest checkpoint in MODEL_DIR/checkpoints (state, and the input
     pipeline's tf.data state, so the resumed run sees the batches the uninterrupted one would
     have: resuming is exact), or initialises;
  3. runs the jitted step (`objectives.py`: L2 (optionally L1) reconstruction and commitment, Adam on the
     encoder and decoder; the codebook follows moving averages with dead-code restarts,
     `codebook.py`) to TRAIN_STEPS, logging to TensorBoard, MODEL_DIR/train/metrics.jsonl and the
     console, checkpointing every `checkpoint_every` steps and on SIGTERM (exit 143 from the
     binary);
  4. before the first step (the random tokenizer's figures), every `eval_every` steps and at the
     end measures held-out reconstructions (PSNR, SSIM,
     codebook usage and perplexity; spectrogram L1 for audio: `measures.py`; with an
     `object_palette`, whether the reconstructions keep the pictures' objects:
     `unified_io.evaluation.drawn_objects`) into
     MODEL_DIR/eval/metrics.jsonl and TensorBoard, warning in one line when the codebook
     collapses (fewer than `usage_warning` of the codes in use);
  5. writes MODEL_DIR/report/index.html: held-out inputs beside their reconstructions, the
     measures and their curves.

A non-finite loss skips that step's update (counted as `nonfinite_steps`); a whole logging
interval of them stops the run with one line, never a silent NaN. A batch whose every example is
one flat colour (or silence) is reported in one line: it teaches the tokenizer nothing.
"""

import json
import os
import sys
from typing import Dict, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metric_writers

from unified_io import gin_required
from unified_io.config import ConfigError, UnifiedIOConfig
from unified_io.evaluation import drawn_objects
from unified_io.training import checkpoints as ckpt_lib
from unified_io.training import input as input_lib
from unified_io.training.progress import ProgressLog
from unified_io.training.trainer import Preempted, SigtermFlag, check_model_dir
from unified_io.tokenizer_training import codebook as codebook_lib
from unified_io.tokenizer_training import measures as measures_lib
from unified_io.tokenizer_training import objectives
from unified_io.tokenizer_training import report as report_lib
from unified_io.tokenizer_training.data import tokenizer_examples
from unified_io.tokenizer_training.state import (CONFIGS, RECORD, TokenizerState, read_record,
                                                 write_record)

INPUT_SHARD = "shard-0-of-1"  # the one input pipeline's name in a checkpoint's input/ folder
REPORT_EXAMPLES = 16


class TokenizerTrainingError(ValueError):
  """The run cannot start or go on (a one-line reason)."""


def tokenizer_config(model_config: UnifiedIOConfig, kind: str):
  """The model's VQ config of `kind` ("image" or "audio"); one line if the model has none."""
  if kind not in CONFIGS:
    raise ConfigError(f"config field `kind`: {kind!r} is not a tokenizer; choices: "
                      f"{sorted(CONFIGS)}")
  config = getattr(model_config, f"{kind}_vqgan")
  if config is None:
    raise ConfigError(f"config field `kind`: the model config has no {kind} tokenizer (add "
                      f"'{kind}' to make_config.target_modalities)")
  return config


def _check_same_tokenizer(model_dir: str, kind: str, config) -> None:
  path = os.path.join(model_dir, RECORD)
  if not os.path.exists(path):
    return
  saved_kind, saved_config = read_record(model_dir)  # (an unreadable record is one line too)
  if saved_kind != kind or saved_config != config:
    raise TokenizerTrainingError(
        f"{model_dir} holds a {saved_kind} tokenizer of another configuration "
        f"({path}); resume it with the model config it was trained with, or train in a new "
        "MODEL_DIR")


def _check_crop(image_crop: Optional[int], config) -> Optional[int]:
  if image_crop is None:
    return None
  patch = config.patch_size[0]
  side = min(config.default_input_size)
  if image_crop <= 0 or image_crop % patch or image_crop > side:
    raise ConfigError(f"config field `train_tokenizer.image_crop`: {image_crop} is not a multiple "
                      f"of the tokenizer's patch ({patch} px) between {patch} and its image size "
                      f"({side} px); or None for whole images")
  return image_crop


def make_optimizer(learning_rate: float, warmup_steps: int, train_steps: int, params):
  """Adam with linear warmup and cosine decay to 0 at `train_steps` on the encoder and decoder;
  the codebook gets no gradient update (it follows the moving averages). Betas 0.9 / 0.99, not
  taming's 0.5 / 0.9 (set for its GAN term): on the world's images those reached 16.6 dB
  held-out PSNR after 60 s of CPU training where these reached 19.7."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(warmup_steps, 1),
                                                max(train_steps, warmup_steps + 1))
  labels = {k: ("codebook" if k == "quantize" else "trained") for k in params}
  optimizer = optax.multi_transform({"trained": optax.adam(schedule, b1=0.9, b2=0.99),
                                     "codebook": optax.set_to_zero()}, labels)
  return optimizer, schedule


def random_crops(x_bhwc: jax.Array, size: int, key: jax.Array, candidates: int = 1
                 ) -> jax.Array:
  """One `size` x `size` window of each example: of `candidates` windows at uniformly drawn
  positions, the one whose pixels vary most (1: a uniformly drawn window)."""
  b, h, w, c = x_bhwc.shape
  crop = lambda x, yx: jax.lax.dynamic_slice(x, (yx[0], yx[1], 0), (size, size, c))
  high = jnp.array([h - size + 1, w - size + 1])
  if candidates == 1:
    return jax.vmap(crop)(x_bhwc, jax.random.randint(key, (b, 2), 0, high))
  corners_bk2 = jax.random.randint(key, (b, candidates, 2), 0, high)
  windows_bkhwc = jax.vmap(lambda x, corners: jax.vmap(lambda yx: crop(x, yx))(corners))(
      x_bhwc, corners_bk2)
  best_b = jnp.argmax(jnp.var(windows_bkhwc, axis=(2, 3)).sum(-1), axis=1)
  return jnp.take_along_axis(windows_bkhwc, best_b[:, None, None, None, None], axis=1)[:, 0]


def make_step(obj: objectives.Objective, optimizer, schedule, *, commitment: float,
              codebook_decay: float, restart_below: float, seed: int,
              crop: Optional[int] = None, l1_weight: float = 0.0, crop_candidates: int = 1):
  """The jitted training step; `crop`: train on one random square window of each example
  (keyed by the step, so resuming stays exact), the most varied of `crop_candidates`."""
  restart_key = jax.random.key(seed + 17)
  crop_key = jax.random.key(seed + 29)

  def step(state: TokenizerState, x: jax.Array):
    if crop is not None and crop < max(x.shape[1:3]):
      x = random_crops(x, crop, jax.random.fold_in(crop_key, state.step), crop_candidates)
    (loss, aux), grads = jax.value_and_grad(obj.loss, has_aux=True)(state.params, x, commitment,
                                                               l1_weight)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    book = codebook_lib.update(state.code_counts, state.code_sums, aux["z"], aux["ids"],
                               aux["code_error"], jax.random.fold_in(restart_key, state.step),
                               decay=codebook_decay,
                               restart_below=restart_below, normalize=obj.normalized_codes)
    updated = state.replace(params=obj.with_codebook(params, book.codebook), opt_state=opt_state,
                            code_counts=book.counts, code_sums=book.sums)
    finite = jnp.isfinite(loss)  # a non-finite step changes nothing but the counters
    kept = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old), updated, state)
    kept = kept.replace(step=state.step + 1,
                        nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32))
    num_codes = book.counts.shape[0]
    metrics = {"loss": loss, **{f"loss/{k}": v for k, v in aux["terms"].items()},
               "codebook/batch_usage": book.used / num_codes,
               "codebook/restarted": book.restarted.astype(jnp.float32),
               "learning_rate": schedule(state.step), "nonfinite": (~finite).astype(jnp.float32),
               "nonfinite_steps": kept.nonfinite_steps,
               "target_tokens": jnp.asarray(aux["ids"].shape[0], jnp.float32)}
    return kept, metrics

  return jax.jit(step, donate_argnums=0)


class _Batches:
  """Host batches from the tf.data pipeline; its iterator state saves with each checkpoint."""

  def __init__(self, dataset, batch_size: int, example_shape):
    self._iterator = iter(dataset.batch(batch_size, drop_remainder=True).prefetch(2))
    self.example_shape = tuple(example_shape)

  def __next__(self) -> np.ndarray:
    try:
      batch = np.asarray(next(self._iterator), np.float32)
    except StopIteration:
      raise TokenizerTrainingError("the training data ran out (an empty task or split?)") from None
    if batch.shape[1:] != self.example_shape:
      raise TokenizerTrainingError(f"a batch of shape {batch.shape[1:]} per example; the "
                                   f"tokenizer takes {self.example_shape}")
    return batch

  def state(self):
    return {INPUT_SHARD: input_lib.iterator_files(self._iterator)}

  def restore(self, saved) -> bool:
    if INPUT_SHARD not in saved:
      return False
    input_lib.restore_iterator(self._iterator, saved[INPUT_SHARD])
    return True


def _flat_batches(batch: np.ndarray) -> int:
  """How many examples of `batch` are a single value (a flat colour, silence)."""
  spread = batch.reshape(batch.shape[0], -1)
  return int(np.sum(spread.max(axis=1) - spread.min(axis=1) <= 1e-6))


def held_out(name: str, kind: str, size, split: str, count: int) -> np.ndarray:
  """The first `count` examples of `split`, in order (the same ones at every evaluation)."""
  dataset = tokenizer_examples(name, kind, size, split=split, shuffle=False, repeat=False)
  examples = [np.asarray(x, np.float32) for x in dataset.take(count).as_numpy_iterator()]
  if not examples:
    raise TokenizerTrainingError(f"{name!r} has no {kind} examples in its {split!r} split to "
                                 "measure the tokenizer on")
  return np.stack(examples)


class Evaluator:
  """Held-out reconstructions and their measures, every `eval_every` steps and at the end."""

  def __init__(self, obj: objectives.Objective, examples: np.ndarray, model_dir: str,
               batch_size: int, usage_warning: float,
               object_palette: Optional[drawn_objects.Palette] = None):
    self.obj, self.examples, self.usage_warning = obj, examples, usage_warning
    self.object_palette = object_palette
    self.batch_size = min(batch_size, len(examples))
    self._reconstruct = jax.jit(lambda p, x: objectives.reconstruct(obj, p, x))
    eval_dir = os.path.join(model_dir, "eval")
    os.makedirs(eval_dir, exist_ok=True)
    self.jsonl_path = os.path.join(eval_dir, "metrics.jsonl")
    self._writer = metric_writers.create_default_writer(eval_dir, asynchronous=False)

  def reconstructions(self, params):
    outputs, ids = [], []
    for start in range(0, len(self.examples), self.batch_size):
      chunk = self.examples[start:start + self.batch_size]
      padded = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - len(chunk), 0)])
      out, chunk_ids = jax.device_get(self._reconstruct(params, padded))
      outputs.append(out[:len(chunk)])
      ids.append(chunk_ids[:len(chunk)])
    return np.concatenate(outputs), np.concatenate(ids)

  def __call__(self, step: int, params) -> Dict[str, float]:
    outputs, ids = self.reconstructions(params)
    self.last_outputs = outputs
    codebook_size = self.obj.codebook(params).shape[0]
    values = measures_lib.summary(self.obj.kind, self.examples, outputs, ids, codebook_size)
    if self.object_palette is not None:
      kept = drawn_objects.drawn_objects(list(_unit_range(outputs)),
                                         list(_unit_range(self.examples)), self.object_palette)
      values.update(objects_kept=kept["objects_drawn"], object_iou=kept["object_iou"])
    values = {f"eval/{k}": float(v) for k, v in values.items()}
    self._writer.write_scalars(step, values)
    self._writer.flush()
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps({"step": step, **values}) + "\n")
    shown = ", ".join(f"{k[5:]} {v:.3f}" for k, v in values.items())
    print(f"held-out at step {step} ({len(self.examples)} examples): {shown}", flush=True)
    usage = values["eval/codebook_usage"]
    if step > 0 and usage < self.usage_warning:  # (step 0: the untrained tokenizer)
      print(f"warning: codebook collapse at step {step}: {usage:.1%} of the {codebook_size} "
            f"codes in use on held-out examples (below {self.usage_warning:.0%})", flush=True)
    return values


def _unit_range(images_bhwc: np.ndarray) -> np.ndarray:
  """The VQGAN's [-1, 1] pixels as the [0, 1] pictures they show."""
  return np.clip((np.asarray(images_bhwc, np.float32) + 1) / 2, 0, 1)


def _check_crop_candidates(crop_candidates: int) -> int:
  if not isinstance(crop_candidates, int) or crop_candidates < 1:
    raise ConfigError(f"config field `train_tokenizer.crop_candidates`: {crop_candidates!r} is "
                      "not a whole number of windows >= 1")
  return crop_candidates


@gin.configurable(denylist=["gin_imports"])
def train_tokenizer(*, model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
                    kind: str = gin.REQUIRED, model_config: UnifiedIOConfig = gin.REQUIRED,
                    train_steps: int = gin.REQUIRED, batch_size: int = gin.REQUIRED,
                    learning_rate: float = 1e-3, warmup_steps: int = 50,
                    commitment: float = 0.25, l1_weight: float = 0.0,
                    codebook_decay: float = 0.99,
                    restart_below: float = 0.03, seed: int = 0, checkpoint_every: int = 500,
                    keep_checkpoints: Optional[int] = 2, log_every: int = 25,
                    eval_every: int = 500, eval_examples: int = 64,
                    eval_split: str = "validation", usage_warning: float = 0.25,
                    image_crop: Optional[int] = 64, crop_candidates: int = 1,
                    object_palette: Optional[drawn_objects.Palette] = None,
                    gin_imports=()) -> Dict[str, float]:
  """Trains the `kind` tokenizer of `model_config` to step `train_steps`; returns the last
  held-out measures (module docstring). `restart_below`: a code whose moving-average count falls
  below this fraction of an even share is restarted; `codebook_decay`: the moving averages';
  `l1_weight`: taming's L1 reconstruction term beside L2 (0: why, in `objectives.py`).

  `image_crop`: the image tokenizer's steps train on one random `image_crop`-pixel square of each
  image (taming trains on crops too; the VQGAN is convolutional and held-out measures use whole
  images); None trains on whole images. A step on 64 px crops of 128 px images costs a quarter,
  and per second of CPU training the tokenizer learns much faster: 23.0 dB held-out PSNR after
  170 s against 20.7 dB on whole images. The audio tokenizer (a ViT with one position embedding
  per patch) always takes whole spectrograms. `crop_candidates` > 1: each crop is the most varied
  (pixel variance) of that many random windows, so pictures of small objects on flat backgrounds
  train on their objects rather than on empty background.

  `object_palette` (image tokenizers; e.g. `@world_palette()` for the built-in world): the held-out
  measures add objects_kept and object_iou, how many of the pictures' flat-colour objects the
  reconstructions keep (`drawn_objects`; PSNR barely sees small objects: a tokenizer at 24.9 dB
  kept 7% of the world's objects, one at 29.0 dB 93%)."""
  del gin_imports
  gin_required.check_required(
      "train_tokenizer", model_dir=model_dir, mixture_or_task_name=mixture_or_task_name,
      kind=kind, model_config=model_config, train_steps=train_steps, batch_size=batch_size)
  check_model_dir(model_dir)
  config = tokenizer_config(model_config, kind)
  obj = objectives.objective(kind, config)
  size = obj.example_shape[:2]
  crop = _check_crop(image_crop, config) if kind == "image" else None
  crop_candidates = _check_crop_candidates(crop_candidates)
  if object_palette is not None and kind != "image":
    raise ConfigError("config field `train_tokenizer.object_palette`: objects are measured on "
                      f"pictures, and this is the {kind} tokenizer")
  _check_same_tokenizer(model_dir, kind, config)
  # A task without such examples fails here, in one line, before MODEL_DIR is written.
  eval_set = held_out(mixture_or_task_name, kind, size, eval_split, eval_examples)
  dataset = tokenizer_examples(mixture_or_task_name, kind, size, split="train", shuffle=True,
                               seed=seed)
  batches = _Batches(dataset, batch_size, obj.example_shape)
  sigterm = SigtermFlag()
  try:
    checkpoints = ckpt_lib.TrainCheckpoints(os.path.join(model_dir, "checkpoints"),
                                            save_every=checkpoint_every, keep=keep_checkpoints)
    params = obj.init(jax.random.key(seed))
    optimizer, schedule = make_optimizer(learning_rate, warmup_steps, train_steps, params)
    # Committed to its device as a restored state is: the step then compiles to one program
    # whether the run starts fresh or resumes (an uncommitted state's differs in its sharding
    # annotations, and XLA may fuse the two differently: resumes would drift by rounding).
    state = jax.device_put(TokenizerState.create(params, optimizer, obj.codebook(params)),
                           jax.devices()[0])
    resume_step = checkpoints.latest_step()
    if resume_step is not None:
      state, _ = checkpoints.restore(state, resume_step)
      how = ("input state restored"
             if batches.restore(checkpoints.input_states(resume_step, [INPUT_SHARD]))
             else "input restarted: the checkpoint has no input state")
      print(f"resumed from step {resume_step} ({checkpoints.directory}), {how}", flush=True)
    write_record(model_dir, kind, config)
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    print(f"{kind} tokenizer: {num_params:,} parameters, {obj.codebook(state.params).shape[0]} "
          f"codes; examples {obj.example_shape} from {mixture_or_task_name!r}"
          + (f", trained on random {crop} px crops" if crop else "")
          + (f" (each the most varied of {crop_candidates})" if crop and crop_candidates > 1
             else ""), flush=True)
    step_fn = make_step(obj, optimizer, schedule, commitment=commitment,
                        codebook_decay=codebook_decay, restart_below=restart_below, seed=seed,
                        crop=crop, l1_weight=l1_weight, crop_candidates=crop_candidates)
    evaluator = Evaluator(obj, eval_set, model_dir, batch_size, usage_warning, object_palette)
    log = ProgressLog(model_dir, start_step=int(state.step), total_steps=train_steps,
                      log_every=log_every)
    last_eval: Dict[str, float] = {}
    step = int(state.step)
    if step == 0 and eval_every > 0:  # the untrained tokenizer: where the curves start
      last_eval = evaluator(0, state.params)
    nonfinite_at_log = int(state.nonfinite_steps)
    while step < train_steps:
      batch = next(batches)
      flat = _flat_batches(batch)
      if flat == len(batch):
        print(f"warning: step {step + 1}: every example of the batch is a single flat value "
              "(constant colour or silence): nothing to learn from it", flush=True)
      state, metrics = step_fn(state, jnp.asarray(batch))
      step += 1
      sigterm.started()
      log.step_done(step, metrics)
      if step % log.log_every == 0 or step == train_steps:
        nonfinite = int(state.nonfinite_steps)
        if nonfinite - nonfinite_at_log >= min(log.log_every, step):
          checkpoints.save(step, state, {}, force=True, input_states=batches.state)
          checkpoints.wait()
          raise FloatingPointError(f"tokenizer training: every step from {step - log.log_every + 1} "
                                   f"to {step} had a non-finite loss; last good state saved as "
                                   f"step {step}; lower train_tokenizer.learning_rate")
        nonfinite_at_log = nonfinite
      checkpoints.save(step, state, {}, input_states=batches.state)
      if sigterm.raised:
        checkpoints.save(step, state, {}, force=True, input_states=batches.state)
        checkpoints.wait()
        raise Preempted(step)
      if eval_every > 0 and step % eval_every == 0 and step != train_steps:
        last_eval = evaluator(step, state.params)
    checkpoints.save(step, state, {}, force=True, input_states=batches.state)
    last_eval = evaluator(step, state.params)
    path = report_lib.write_tokenizer_report(
        os.path.join(model_dir, "report"), kind, eval_set[:REPORT_EXAMPLES],
        evaluator.last_outputs[:REPORT_EXAMPLES], last_eval, eval_curve_jsonl=evaluator.jsonl_path,
        title=f"{kind} tokenizer: held-out reconstructions at step {step}")
    print(f"report: {path}", flush=True)
    checkpoints.wait()
    checkpoints.close()
    log.close()
    return last_eval
  finally:
    sigterm.restore()
    sys.stdout.flush()
