"""What evaluating a task means: which target to generate, how a prediction is read, what it is
compared with, and which metrics score it. One `EvalSpec` per task, registered by task name.

  register_eval("world_vqa_colour", EvalSpec(target="text", metrics=("vqa_accuracy",)))

Kinds of target handling (`EvalSpec.target` and `EvalSpec.reads`), with the metric inputs
(`metrics.MetricInput`) each gives in brackets:
  text  + TEXT    the decoded string vs `meta/answer` [TEXT]
  text  + BOX     location tokens -> the first box in image pixels vs `meta/boxes[0]` [BOX]
  text  + BOXES   "<box> label <box> label ..." -> {boxes, labels} vs meta/boxes, meta/labels
                  [BOXES]
  image / audio   generated VQ tokens vs the reference target's tokens [TOKENS] and, rendered by
                  the tokenizer's decoder, pixels / spectrogram vs the reference
                  [IMAGE / SPECTROGRAM]
Every metric of a spec must take an input the spec gives (checked at construction). A task
without a spec is evaluated as text with exact match (`spec_for`). `target` and `reads` take a
member or its string value.
"""

import dataclasses
import enum
from typing import Dict, Optional, Tuple

from unified_io.evaluation import metrics as metrics_lib
from unified_io.evaluation.metrics import MetricInput
from unified_io.modalities import Modality


class Reads(str, enum.Enum):
  """How a generated text target is read."""

  TEXT = "text"  # the string itself
  BOX = "box"  # its first location-token box
  BOXES = "boxes"  # "<box> label <box> label ..." -> {boxes, labels}


_TARGETS = tuple(m for m in Modality if m.can_be_target)
_RENDERED = {Modality.IMAGE: MetricInput.IMAGE, Modality.AUDIO: MetricInput.SPECTROGRAM}
_READ_AS = {Reads.TEXT: MetricInput.TEXT, Reads.BOX: MetricInput.BOX,
            Reads.BOXES: MetricInput.BOXES}


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  target: Modality = Modality.TEXT  # the modality generated: text | image | audio
  metrics: Tuple[str, ...] = ("exact_match",)  # names in unified_io.evaluation.metrics.METRICS
  reads: Reads = Reads.TEXT  # text targets
  max_length: Optional[int] = None  # text: tokens to generate (default: the text_targets length)
  guidance_scale: float = 1.0  # image / audio generation: classifier-free guidance

  def __post_init__(self):
    if self.target not in _TARGETS:
      raise ValueError(f"EvalSpec.target must be text, image or audio, got "
                       f"{getattr(self.target, 'value', self.target)!r}")
    if self.reads not in list(Reads):
      raise ValueError(f"EvalSpec.reads must be text, box or boxes, got {self.reads!r}")
    object.__setattr__(self, "target", Modality(self.target))
    object.__setattr__(self, "reads", Reads(self.reads))
    for name in self.metrics:
      inputs = metrics_lib.get_metric(name).inputs  # (raises naming the known metrics)
      if inputs not in self.metric_inputs:
        read_as = f" read as {self.reads.value}" if self.target == Modality.TEXT else ""
        raise ValueError(f"metric {name!r} takes {inputs.value} inputs and does not apply to "
                         f"{self.target.value} targets{read_as}, which give "
                         f"{[i.value for i in self.metric_inputs]}")

  @property
  def metric_inputs(self) -> Tuple[MetricInput, ...]:
    """What the evaluator can hand this task's metrics."""
    if self.target == Modality.TEXT:
      return (_READ_AS[self.reads],)
    return (MetricInput.TOKENS, _RENDERED[self.target])


_SPECS: Dict[str, EvalSpec] = {}
_DEFAULT = EvalSpec()


def register_eval(task_name: str, spec: EvalSpec) -> None:
  _SPECS[task_name] = spec


def spec_for(task_name: str) -> EvalSpec:
  return _SPECS.get(task_name, _DEFAULT)
