"""Mixture of denoisers: the paper's pretraining objective, applied to stage-2 examples.

Each example gets one mode, drawn per example from the rates of its target modality (read from
its prefix token, the first token of `text_inputs`), and the prefix says which:
  [S]  causal generation: the example is left exactly as stage 2 made it.
  [R]  text: T5-style span corruption. The document (the prompt tokens, then the target tokens,
       without prefix and EOS) has spans replaced by sentinels `<extra_id_i>` in `text_inputs`;
       `text_targets` is sentinel i followed by span i, for every span. Reading the inputs and
       replacing each sentinel by its span gives the document back.
       image / audio: a random `patch_rate` of the input's patch grid cells is masked. Their
       input patches are dropped (mask 0, values 0), and the target tokens whose centre falls in
       a masked cell get task_mask 1, which the model's dynamic masking reads: the decoder then
       reconstructs the target without seeing those tokens. The input and the target must show
       the same image / spectrogram (as a denoising task sets them up); the grids map by relative
       position, as resize-and-pad places both at the same relative geometry.
  [X]  text only: extreme span corruption (denser noise, longer spans). The vocabulary has no
       `[Image] [X]` / `[Audio] [X]` prefix, so image and audio have [S] and [R].
A mode that does not apply to an example (no text to corrupt, an image target without an image
input) is left out and the rates renormalised over the rest, [S] always applying.

Randomness is seqio's per-example stateless seeds: the same seed gives the same corruption.
Run as a seqio preprocessor after `unified_preprocessor` (`denoise`), before the converter.
"""

import dataclasses
import functools
from typing import Dict, Mapping, Optional, Tuple

import gin
import seqio
import tensorflow as tf

from unified_io.data import vocab as vocab_lib
from unified_io.contract import DataConfig

MODES = ("S", "R", "X")
_TARGET_MODES = {"text": ("S", "R", "X"), "image": ("S", "R"), "audio": ("S", "R")}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DenoisingConfig:
  """Rates of the modes per target modality, and how hard [R] / [X] corrupt."""

  text_rates: Tuple[float, float, float] = (0.25, 0.5, 0.25)  # [S], [R], [X]
  image_rates: Tuple[float, float] = (0.5, 0.5)  # [S], [R]
  audio_rates: Tuple[float, float] = (0.5, 0.5)  # [S], [R]
  # [R] text: the T5 defaults; [X]: dense noise and long spans (UL2's extreme setting).
  r_noise_density: float = 0.15
  r_mean_span_length: float = 3.0
  x_noise_density: float = 0.5
  x_mean_span_length: float = 32.0
  # [R] image / audio: the fraction of the input patch grid's valid cells that is masked.
  patch_rate: float = 0.5

  def __post_init__(self):
    for name, modality in (("text_rates", "text"), ("image_rates", "image"),
                           ("audio_rates", "audio")):
      rates = tuple(float(r) for r in getattr(self, name))
      object.__setattr__(self, name, rates)
      modes = " ".join(f"[{m}]" for m in _TARGET_MODES[modality])
      if len(rates) != len(_TARGET_MODES[modality]) or min(rates) < 0:
        raise ValueError(f"DenoisingConfig.{name} = {rates}: needs "
                         f"{len(_TARGET_MODES[modality])} non-negative rates, for {modes}")
      if abs(sum(rates) - 1.0) > 1e-6:
        raise ValueError(f"DenoisingConfig.{name} = {rates}: the rates of {modes} are "
                         f"probabilities and must sum to 1 (they sum to {sum(rates):g})")
    for name in ("r_noise_density", "x_noise_density", "patch_rate"):
      if not 0.0 < getattr(self, name) < 1.0:
        raise ValueError(f"DenoisingConfig.{name} = {getattr(self, name)}: must be in (0, 1)")
    for name in ("r_mean_span_length", "x_mean_span_length"):
      if getattr(self, name) < 1.0:
        raise ValueError(f"DenoisingConfig.{name} = {getattr(self, name)}: must be >= 1")

  def rates(self, modality: str) -> Tuple[float, ...]:
    return getattr(self, f"{modality}_rates")


# ------------------------------------------------------------------------------------------------
# Text: span selection and sentinel replacement (pure functions of tensors and a stateless seed)
# ------------------------------------------------------------------------------------------------
def span_counts(length: tf.Tensor, noise_density: float, mean_span_length: float
                ) -> Tuple[tf.Tensor, tf.Tensor]:
  """(noise tokens, spans) for a document of `length` tokens; (0, 0) when length < 2.

  At least one token stays clean and one is noised; at most NUM_SENTINELS spans.
  """
  length = tf.cast(length, tf.int32)
  noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
  noise = tf.clip_by_value(noise, 1, tf.maximum(length - 1, 1))
  spans = tf.cast(tf.round(tf.cast(noise, tf.float32) / mean_span_length), tf.int32)
  spans = tf.clip_by_value(spans, 1, tf.minimum(tf.minimum(noise, length - noise),
                                                vocab_lib.NUM_SENTINELS))
  usable = length >= 2
  return tf.where(usable, noise, 0), tf.where(usable, spans, 0)


def _random_segmentation(total: tf.Tensor, segments: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """[segments] positive int32 lengths summing to `total` (segments <= total), uniform cuts."""
  noise = tf.random.stateless_uniform([tf.maximum(total - 1, 0)], seed)
  cuts = tf.sort(tf.argsort(noise)[:segments - 1] + 1)
  bounds = tf.concat([[0], tf.cast(cuts, tf.int32), [total]], axis=0)
  return bounds[1:] - bounds[:-1]


def span_noise_mask(length: tf.Tensor, noise_density: float, mean_span_length: float,
                    seed: tf.Tensor) -> tf.Tensor:
  """[length] bool, T5 style: clean and noised spans alternate, the document starts clean."""
  length = tf.cast(length, tf.int32)
  noise, spans = span_counts(length, noise_density, mean_span_length)
  seeds = tf.random.experimental.stateless_split(seed, 2)
  clean_lengths = _random_segmentation(length - noise, spans, seeds[0])
  noise_lengths = _random_segmentation(noise, spans, seeds[1])
  interleaved = tf.reshape(tf.stack([clean_lengths, noise_lengths], axis=1), [-1])
  ends = tf.cumsum(interleaved)  # [2 * spans]: where each clean / noised segment ends
  segment = tf.searchsorted(ends, tf.range(length), side="right")
  return tf.equal(segment % 2, 1)


def corrupt_spans(tokens: tf.Tensor, noise_mask: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """(inputs, targets): noised spans -> one sentinel each in the inputs; the targets list
  sentinel i and span i's tokens, span by span."""
  tokens = tf.cast(tokens, tf.int32)
  previous = tf.concat([[False], noise_mask[:-1]], axis=0)
  first = noise_mask & ~previous
  span_id = tf.cumsum(tf.cast(first, tf.int32)) - 1
  sentinels = tf.constant([vocab_lib.sentinel_id(i) for i in range(vocab_lib.NUM_SENTINELS)],
                          tf.int32)
  sentinel = tf.gather(sentinels, tf.maximum(span_id, 0))
  inputs = tf.boolean_mask(tf.where(first, sentinel, tokens), ~noise_mask | first)
  # Each noised token emits [its span's sentinel if it starts the span, itself].
  pairs = tf.reshape(tf.stack([sentinel, tokens], axis=1), [-1])
  keep = tf.reshape(tf.stack([first, noise_mask], axis=1), [-1])
  return inputs, tf.boolean_mask(pairs, keep)


def longest_fitting_document(length: tf.Tensor, noise_density: float, mean_span_length: float,
                             max_inputs: Optional[int], max_targets: Optional[int]) -> tf.Tensor:
  """The longest prefix of a `length`-token document whose corruption fits the text lengths
  (inputs: prefix + corrupted + EOS; targets: sentinels + spans + EOS)."""
  n = tf.range(tf.cast(length, tf.int32) + 1)
  noise, spans = span_counts(n, noise_density, mean_span_length)
  fits = tf.ones_like(n, tf.bool)
  if max_inputs is not None:
    fits &= n - noise + spans + 2 <= max_inputs
  if max_targets is not None:
    fits &= noise + spans + 1 <= max_targets
  return tf.reduce_max(tf.boolean_mask(n, fits))  # n = 0 always fits


# ------------------------------------------------------------------------------------------------
# Image / audio: patch-grid masking
# ------------------------------------------------------------------------------------------------
def masked_cells(valid_cells: tf.Tensor, rate: float, seed: tf.Tensor) -> tf.Tensor:
  """[cells] bool: round(rate * valid) of the valid cells, chosen uniformly (stateless)."""
  valid_cells = tf.cast(valid_cells, tf.bool)
  count = tf.cast(tf.round(rate * tf.reduce_sum(tf.cast(valid_cells, tf.float32))), tf.int32)
  key = tf.random.stateless_uniform(tf.shape(valid_cells), seed) + tf.cast(~valid_cells,
                                                                           tf.float32) * 2.0
  rank = tf.argsort(tf.argsort(key))  # valid cells rank first
  return rank < count


def target_cells(input_grid: Tuple[int, int], target_grid: Tuple[int, int]) -> tf.Tensor:
  """[target tokens] int32: the input grid cell under each target token's centre (row-major)."""
  (gh, gw), (th, tw) = input_grid, target_grid
  rows = (2 * tf.range(th) + 1) * gh // (2 * th)
  cols = (2 * tf.range(tw) + 1) * gw // (2 * tw)
  return tf.reshape(rows[:, None] * gw + cols[None, :], [-1])


def mask_patches(patch_mask: tf.Tensor, pos_ids: tf.Tensor, target_mask: tf.Tensor,
                 input_grid: Tuple[int, int], target_grid: Tuple[int, int], rate: float,
                 seed: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """(new input patch mask [N], target task_mask [T]) for [R] on one image / spectrogram.

  Cells are those of the input patch grid; the valid ones are where a sampled patch is valid.
  """
  cells = input_grid[0] * input_grid[1]
  patch_mask = tf.cast(patch_mask, tf.int32)
  valid_cells = tf.scatter_nd(pos_ids[:, None], patch_mask, [cells]) > 0
  masked = masked_cells(valid_cells, rate, seed)
  dropped = tf.gather(masked, pos_ids)
  new_patch_mask = patch_mask * tf.cast(~dropped, tf.int32)
  task_mask = tf.gather(masked, target_cells(input_grid, target_grid))
  return new_patch_mask, tf.cast(task_mask, tf.int32) * tf.cast(target_mask, tf.int32)


# ------------------------------------------------------------------------------------------------
# Which modes a mixture's tasks can take (checked once, from static shapes, before any data flows)
# ------------------------------------------------------------------------------------------------
def takeable_modes(spec: Mapping[str, tf.TensorSpec]) -> Dict[str, Tuple[str, ...]]:
  """{target modality: modes its examples can take} for a task's stage-2 element spec.

  A field of static length 0 is a modality the task never has. Text [R] / [X] need a text
  target (a document to corrupt); image / audio [R] need that input and target together.
  """
  def present(field):
    return spec[field].shape.rank >= 1 and spec[field].shape[0] != 0

  modes = {}
  if present("text_targets"):
    modes["text"] = ("S", "R", "X")
  for m in ("image", "audio"):
    if present(f"{m}_target_mask"):
      modes[m] = ("S", "R") if present(f"{m}_patch_mask") else ("S",)
  return modes


def check_modes(mixture: str, config: DenoisingConfig,
                specs: Mapping[str, Mapping[str, tf.TensorSpec]]) -> None:
  """Refuses, in one line, a mode with a positive rate that no task of `mixture` can take (for
  a target modality some task has; rates of modalities no task targets are never used)."""
  takeable: Dict[str, set] = {}
  for spec in specs.values():
    for modality, modes in takeable_modes(spec).items():
      takeable.setdefault(modality, set()).update(modes)
  for modality, modes in takeable.items():
    for mode, rate in zip(_TARGET_MODES[modality], config.rates(modality)):
      if rate > 0 and mode not in modes:
        need = {"R": f"an {modality} input and an {modality} target in one example"}[mode]
        raise ValueError(
            f"denoising mixture {mixture!r}: DenoisingConfig.{modality}_rates gives [{mode}] "
            f"rate {rate:g}, but no task in it can take [{mode}] (it needs {need}, e.g. "
            f"world_{modality}_denoise); add such a task or set that rate to 0")


# ------------------------------------------------------------------------------------------------
# The seqio preprocessor
# ------------------------------------------------------------------------------------------------
def _prefix_id(modality: str, mode: str) -> int:
  return vocab_lib.PREFIX_TOKENS[f"[{modality.capitalize()}] [{mode}]"]


def _target_grid(cfg: DataConfig, modality: str) -> Tuple[int, int]:
  size, patch = {"image": (cfg.image_target_size, cfg.image_target_patch_size),
                 "audio": (cfg.audio_target_size, cfg.audio_target_patch_size)}[modality]
  return size[0] // patch, size[1] // patch


def denoise(dataset: tf.data.Dataset, sequence_length: Optional[Mapping[str, int]] = None,
            output_features=None, config: Optional[DenoisingConfig] = None, *,
            data_config: DataConfig) -> tf.data.Dataset:
  """An after-stage-2 step (`registry.add_task(after_stage2=...)`): one denoising mode per
  example (module doc), at `data_config`'s target grids.

  Adds `meta/denoising_mode` (0 = [S], 1 = [R], 2 = [X]).
  """
  del output_features
  config = config or DenoisingConfig()
  lengths = dict(sequence_length or {})
  fn = functools.partial(_denoise_example, config=config, data_config=data_config,
                         max_inputs=lengths.get("text_inputs"),
                         max_targets=lengths.get("text_targets"))
  # (not through autograph: see unified_io.data.preprocess.unified_preprocessor)
  return seqio.map_over_dataset(num_seeds=2)(tf.autograph.experimental.do_not_convert(fn))(
      dataset)


def _mode_logits(applicable: Dict[str, tf.Tensor], rates: Tuple[float, ...],
                 modes: Tuple[str, ...]) -> tf.Tensor:
  weights = [tf.where(applicable[m], r, 0.0) for m, r in zip(modes, rates)]
  weights += [0.0] * (len(MODES) - len(modes))
  weights = tf.stack(weights)
  # [S] always applies; if its rate is 0 and nothing else applies, fall back to it anyway.
  weights = tf.where(tf.reduce_sum(weights) > 0, weights, tf.one_hot(0, len(MODES)))
  return tf.math.log(weights)


def _denoise_example(ex, seeds, *, config: DenoisingConfig, data_config: DataConfig,
                     max_inputs, max_targets):
  ex = dict(ex)
  prefix = ex["text_inputs"][0]
  modality_of = {_prefix_id(m, "S"): i for i, m in enumerate(("text", "image", "audio"))}
  modality = tf.constant(-1)
  for prefix_id, i in modality_of.items():
    modality = tf.where(tf.equal(prefix, prefix_id), i, modality)

  text_len = tf.size(ex["text_inputs"]) - 2 + tf.maximum(tf.size(ex["text_targets"]) - 1, 0)
  has = {m: tf.reduce_any(ex[f"{m}_patch_mask"] > 0) & tf.reduce_any(ex[f"{m}_target_mask"] > 0)
         for m in ("image", "audio")}
  yes = tf.constant(True)
  logits = tf.stack([
      _mode_logits({"S": yes, "R": text_len >= 2, "X": text_len >= 2}, config.text_rates,
                   _TARGET_MODES["text"]),
      _mode_logits({"S": yes, "R": has["image"]}, config.image_rates, _TARGET_MODES["image"]),
      _mode_logits({"S": yes, "R": has["audio"]}, config.audio_rates, _TARGET_MODES["audio"])])
  choice = tf.random.stateless_categorical(
      tf.gather(logits, tf.maximum(modality, 0))[None], 1, seeds[0])[0, 0]
  mode = tf.where(modality >= 0, tf.cast(choice, tf.int32), 0)  # unknown prefix: untouched
  corrupt_seed = seeds[1]

  def text_mode(density, span, name):
    return lambda: _corrupt_text(ex, density, span, _prefix_id("text", name), corrupt_seed,
                                 max_inputs, max_targets)

  def patch_mode(m):
    return lambda: _mask_modality(ex, m, config.patch_rate, data_config, corrupt_seed)

  branches = {(0, 1): text_mode(config.r_noise_density, config.r_mean_span_length, "R"),
              (0, 2): text_mode(config.x_noise_density, config.x_mean_span_length, "X")}
  for i, m in ((1, "image"), (2, "audio")):
    # A modality that is statically absent (zero-length fields) has nothing to mask.
    if ex[f"{m}_patch_mask"].shape[0] != 0 and ex[f"{m}_target_mask"].shape[0] != 0:
      branches[(i, 1)] = patch_mode(m)
  out = {k: ex[k] for k in _CHANGED}
  for (m, md), fn in branches.items():
    taken = tf.equal(modality, m) & tf.equal(mode, md)
    out = tf.cond(taken, fn, lambda o=out: o)
  ex.update(out)
  ex["meta/denoising_mode"] = mode
  return ex


_CHANGED = ("text_inputs", "text_targets", "image_patches", "image_patch_mask",
            "image_target_task_mask", "audio_patches", "audio_patch_mask", "audio_target_task_mask")


def _corrupt_text(ex, density, span, prefix_id, seed, max_inputs, max_targets):
  eos = ex["text_inputs"][-1]
  prompt = ex["text_inputs"][1:-1]
  targets = ex["text_targets"][:-1]
  document = tf.concat([prompt, targets], axis=0)
  n = longest_fitting_document(tf.size(document), density, span, max_inputs, max_targets)
  document = document[:n]
  inputs, spans = corrupt_spans(document, span_noise_mask(n, density, span, seed))
  out = {k: ex[k] for k in _CHANGED}
  out["text_inputs"] = tf.concat([[prefix_id], inputs, [eos]], axis=0)
  out["text_targets"] = tf.concat([spans, [eos]], axis=0)
  return out


def _mask_modality(ex, modality, rate, cfg: DataConfig, seed):
  patch_mask, task_mask = mask_patches(
      ex[f"{modality}_patch_mask"], ex[f"{modality}_patch_pos_ids"],
      ex[f"{modality}_target_mask"], cfg.grid(modality), _target_grid(cfg, modality), rate, seed)
  out = {k: ex[k] for k in _CHANGED}
  out[f"{modality}_patch_mask"] = patch_mask
  out[f"{modality}_patches"] = ex[f"{modality}_patches"] * tf.cast(patch_mask, tf.float32)[:, None]
  out[f"{modality}_target_task_mask"] = task_mask
  out["text_inputs"] = tf.concat([[_prefix_id(modality, "R")], ex["text_inputs"][1:]], axis=0)
  return out
