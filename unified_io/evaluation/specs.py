"""What evaluating a task means: which target to generate, how a prediction is read, what it is
compared with, and which metrics score it. One `EvalSpec` per task, registered by task name.

  register_eval("world_vqa_colour", EvalSpec(target="text", metrics=("vqa_accuracy",)))

Kinds of target handling (`EvalSpec.target` and `EvalSpec.reads`):
  text  + "text"        the decoded string vs `meta/answer`
  text  + "box"         location tokens -> the first box in image pixels vs `meta/boxes[0]`
  text  + "boxes"       "<box> label <box> label ..." -> {boxes, labels} vs meta/boxes, meta/labels
  image / audio         generated VQ tokens vs the reference target's tokens (token accuracy) and,
                        rendered by the tokenizer's decoder, pixels / spectrogram vs the reference
A task without a spec is evaluated as text with exact match (`spec_for`).
"""

import dataclasses
from typing import Dict, Optional, Tuple

from unified_io.evaluation import metrics as metrics_lib


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  target: str = "text"  # the modality generated: text | image | audio
  metrics: Tuple[str, ...] = ("exact_match",)  # names in unified_io.evaluation.metrics.METRICS
  reads: str = "text"  # text targets: "text" | "box" | "boxes"
  max_length: Optional[int] = None  # text: tokens to generate (default: the text_targets length)
  guidance_scale: float = 1.0  # image / audio generation: classifier-free guidance

  def __post_init__(self):
    if self.target not in ("text", "image", "audio"):
      raise ValueError(f"EvalSpec.target must be text, image or audio, got {self.target!r}")
    if self.reads not in ("text", "box", "boxes"):
      raise ValueError(f"EvalSpec.reads must be text, box or boxes, got {self.reads!r}")
    for name in self.metrics:
      metrics_lib.get_metric(name)  # raises naming the known metrics


_SPECS: Dict[str, EvalSpec] = {}
_DEFAULT = EvalSpec()


def register_eval(task_name: str, spec: EvalSpec) -> None:
  _SPECS[task_name] = spec


def spec_for(task_name: str) -> EvalSpec:
  return _SPECS.get(task_name, _DEFAULT)
