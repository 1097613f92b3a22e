"""Registering tasks and mixtures: a task is a source + its stage-1 preprocessors.

  add_task("my_captions", source, [my_stage1_fn], metric_fns=[...], modalities=("image", "text"))
  add_mixture("my_mixture", [("my_captions", 1.0), ("world_vqa", 0.5)], curriculum=...)
  add_mixture("my_pretraining", [("my_captions", 1.0), ("world_image_denoise", 0.5)], denoising=True)

A task's preprocessors are its own stage-1 functions, ending in raw fields (docs/data.md):
strings for text, images, waveforms, frames, plus `meta/*`. Everything that depends on the model
(sizes, patches, tokens) happens later, in `unified_io.data.pipeline`, with the data contract of
the model being trained or evaluated: stage 2 (`unified_preprocessor`), then the task's
`after_stage2` steps (e.g. the denoising objective, which works on stage-2 fields), then the
model's feature converter. A mixture registered with `denoising=True` applies the mixture of
denoisers (`unified_io.data.denoising`, its rates from gin's `DenoisingConfig`) to every one of its
tasks' stage-2 examples, so any task, a user's own seqio task included, takes the pretraining
objective by being named in such a mixture. Any seqio Task whose preprocessors end in raw fields works the same;
`raw_output_features()` gives the output features to declare.
"""

import dataclasses
import difflib
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import seqio

import tensorflow as tf

from unified_io.data import balancing
from unified_io.data import vocab as vocab_lib
from unified_io.modalities import Modality

_TASK_MODALITIES: Dict[str, Tuple[Modality, ...]] = {}
_TASK_AFTER_STAGE2: Dict[str, Tuple[Callable, ...]] = {}
_MIXTURE_CURRICULA: Dict[str, Any] = {}
_MIXTURE_DENOISING: Dict[str, bool] = {}
_MIXTURE_BALANCE: Dict[str, Optional[balancing.TaskBalance]] = {}


@dataclasses.dataclass(frozen=True)
class Inference:
  """How the evaluator produces a task's predictions (how they are read and scored is the task's
  seqio `postprocess_fn` and `metric_fns`).

  answer_options: closed-vocabulary tasks are scored, not generated: each option's likelihood is
    computed and the most likely one is the prediction (`unified_io.decoding.score_options`), as
    the paper evaluates multiple-choice tasks. A tuple of strings (the same options for every
    example), or the name of a `meta/` field holding each example's own options.
  max_decode_length: text tokens to generate (default: the `text_targets` feature length).
  guidance_scale: image / audio generation: the classifier-free guidance scale to generate with
    (`unified_io.decoding`), for a task trained with dropped prompts (the model must know the
    unconditional distribution). None: the evaluator's decode options decide; they also win when
    they set a scale of their own (other than 1).
  """

  answer_options: Union[None, Tuple[str, ...], str] = None
  max_decode_length: Optional[int] = None
  guidance_scale: Optional[float] = None

  def __post_init__(self):
    options = self.answer_options
    if options is not None and not isinstance(options, str):
      options = tuple(str(o) for o in options)
      if not options or any(not o.strip() for o in options):
        raise ValueError(f"answer_options must be non-empty strings, got {list(options)}")
      object.__setattr__(self, "answer_options", options)
    elif isinstance(options, str) and not options.startswith("meta/"):
      raise ValueError(f"answer_options {options!r}: give a list of options or the name of a "
                       "meta/ field holding each example's options")
    if self.max_decode_length is not None and self.max_decode_length < 2:
      raise ValueError(f"max_decode_length must be at least 2, got {self.max_decode_length}")
    if self.guidance_scale is not None and not self.guidance_scale > 0:
      raise ValueError(f"guidance_scale must be > 0, got {self.guidance_scale}")


_TASK_INFERENCE: Dict[str, Inference] = {}


def raw_output_features(vocabulary: Optional[seqio.Vocabulary] = None
                        ) -> Dict[str, seqio.Feature]:
  """What a task declares to seqio: its raw text fields (scalar strings) with the vocabulary
  stage 2 tokenises them with. Image, audio and meta fields are optional and checked by stage 2
  (`unified_io.data.preprocess.RAW_FIELDS`), since their dtypes vary (uint8 or float32)."""
  vocabulary = vocabulary or vocab_lib.get_vocabulary()
  # Stage 2 appends EOS itself; add_eos=False keeps seqio's EOS helpers from adding another.
  return {"text_inputs": seqio.Feature(vocabulary, add_eos=False, dtype=tf.string, rank=0),
          "text_targets": seqio.Feature(vocabulary, add_eos=False, dtype=tf.string, rank=0,
                                        required=False)}


def add_task(name: str, source: seqio.DataSource, preprocessors: Sequence[Callable],
             *, metric_fns: Sequence[Callable] = (), postprocess_fn: Optional[Callable] = None,
             modalities: Optional[Sequence[str]] = None,
             after_stage2: Sequence[Callable] = (),
             answer_options: Union[None, Sequence[str], str] = None,
             max_decode_length: Optional[int] = None,
             guidance_scale: Optional[float] = None,
             vocabulary: Optional[seqio.Vocabulary] = None,
             shuffle_buffer_size: Optional[int] = 128, replace: bool = False) -> seqio.Task:
  """Register a seqio Task: `source` + `preprocessors` (stage 1, ending in raw fields);
  `after_stage2`: steps the pipeline runs on this task's stage-2 examples, each called as
  `step(dataset, sequence_length=..., data_config=...)` (e.g. `unified_io.data.denoising.denoise`).

  `modalities` names the modalities the task's examples use (e.g. ("image", "text")); a mixture's
  curriculum reads them with `task_modalities`. `replace=True` re-registers an existing name.
  `shuffle_buffer_size` counts raw (decoded) examples: keep it small (the first batch waits for
  the buffer to fill; 1000 decoded photos are gigabytes).
  `postprocess_fn` and `metric_fns` are seqio's: `uio2-eval` calls
  `postprocess_fn(output, example=..., is_target=...)` and each metric function as seqio does
  (unified_io/evaluation/evaluator.py says what `output` and `example` are for UIO2 targets).
  `answer_options`, `max_decode_length` and `guidance_scale`: see `Inference`.
  """
  if modalities is not None:
    modalities = tuple(Modality(m) for m in modalities)
  if replace:
    seqio.TaskRegistry.remove(name)
  task = seqio.TaskRegistry.add(
      name, source=source, output_features=raw_output_features(vocabulary),
      preprocessors=list(preprocessors),
      postprocess_fn=postprocess_fn, metric_fns=list(metric_fns),
      shuffle_buffer_size=shuffle_buffer_size)
  _TASK_MODALITIES[name] = modalities
  _TASK_AFTER_STAGE2[name] = tuple(after_stage2)
  _TASK_INFERENCE[name] = Inference(answer_options, max_decode_length, guidance_scale)
  return task


def add_mixture(name: str, tasks_and_rates: Sequence[Union[str, Tuple[str, float]]],
                *, curriculum: Any = None, denoising: bool = False,
                default_rate: Optional[float] = None, temperature: Optional[float] = None,
                maximum: Optional[float] = None, replace: bool = False) -> seqio.Mixture:
  """Register a seqio Mixture; `curriculum` (a unified_io.data.curriculum.Curriculum, or a
  function that builds one when training starts) is stored with it, and
  `denoising=True` puts every example of its tasks through the mixture of denoisers.
  `temperature` (and `maximum`): sample the tasks by their example counts instead of explicit
  rates (`unified_io.data.balancing`); the tasks may then be given by name alone."""
  balance = None
  if temperature is not None:
    balance = balancing.TaskBalance(temperature, maximum)
    default_rate = 1.0 if default_rate is None else default_rate  # seqio needs one; unused
  elif maximum is not None:
    raise ValueError(f"mixture {name!r}: maximum needs a temperature")
  if replace:
    seqio.MixtureRegistry.remove(name)
  mixture = seqio.MixtureRegistry.add(name, list(tasks_and_rates), default_rate=default_rate)
  _MIXTURE_CURRICULA[name] = curriculum
  _MIXTURE_DENOISING[name] = bool(denoising)
  _MIXTURE_BALANCE[name] = balance
  return mixture


def after_stage2_steps(name: str) -> Tuple[Callable, ...]:
  """The after-stage-2 steps given to `add_task` (none for tasks registered with seqio directly)."""
  return _TASK_AFTER_STAGE2.get(name, ())


def inference(name: str) -> Inference:
  """How a task's predictions are produced (the defaults for tasks registered with seqio directly)."""
  return _TASK_INFERENCE.get(name, Inference())


def task_modalities(name: str) -> Optional[Tuple[Modality, ...]]:
  """The modalities a task declared in `add_task` (None if it declared none)."""
  if name not in _TASK_MODALITIES:
    raise KeyError(f"task {name!r} was not registered with unified_io.data.registry.add_task")
  return _TASK_MODALITIES[name]


def mixture_denoising(name: str) -> bool:
  """Whether `name` is a mixture registered with `denoising=True` (False for anything else)."""
  return _MIXTURE_DENOISING.get(name, False)


def mixture_curriculum(name: str) -> Any:
  """The curriculum given to `add_mixture` (None if none). A callable given there is called now,
  so a curriculum built by a gin-configurable function follows the run's gin bindings."""
  if name not in _MIXTURE_CURRICULA:
    raise KeyError(f"mixture {name!r} was not registered with unified_io.data.registry.add_mixture")
  curriculum = _MIXTURE_CURRICULA[name]
  return curriculum() if callable(curriculum) else curriculum


def get_mixture_or_task(name: str) -> Union[seqio.Task, seqio.Mixture]:
  """The registered task or mixture `name`; else a one-line ValueError naming the close names."""
  known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  if name not in known:
    close = difflib.get_close_matches(str(name), sorted(known), n=5, cutoff=0.6)
    hint = (f"did you mean {', '.join(close)}?" if close else
            f"{len(known)} are registered, e.g. {', '.join(sorted(known)[:5])}")
    raise ValueError(f"no task or mixture named {name!r} is registered ({hint}); set "
                     "MIXTURE_OR_TASK_NAME to a registered one (a user's task needs its module "
                     "imported: an `import` line in a --gin_file)")
  return seqio.get_mixture_or_task(name)


def task_names(mixture_or_task: str) -> Tuple[str, ...]:
  """The task names behind a mixture (or the task itself)."""
  provider = get_mixture_or_task(mixture_or_task)
  if isinstance(provider, seqio.Mixture):
    return tuple(t.name for t in provider.tasks)
  return (provider.name,)


def rates(mixture: str) -> Mapping[str, float]:
  """{task name: rate} a registered mixture is sampled by: its explicit rates, or rates from
  example counts when it was registered with a temperature or gin sets
  `mixture_rates.temperature` (`unified_io.data.balancing`)."""
  provider = seqio.get_mixture_or_task(mixture)
  return balancing.mixture_rates(provider, _MIXTURE_BALANCE.get(mixture))
