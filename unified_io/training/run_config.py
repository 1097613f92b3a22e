"""A training run's configuration as data: MODEL_DIR/run-config.json.

`uio2-train` writes it before training starts; `uio2-eval`, `uio2-infer`, `uio2-predict` and
`unified_io.evaluation.run_loader` rebuild the model from it without parsing the run's gin (the
resolved `config.gin` stays beside it for people to read).

  {"format": 1,
   "model": {...},                     the UnifiedIOConfig (unified_io.config.to_dict)
   "task_feature_lengths": {...},      what the run trained with (eval's default)
   "mixture_or_task_name": "...",
   "vocabulary": null | "/path/tokenizer.model"}   the SentencePiece model (null: the default)
"""

import dataclasses
import json
import os
from typing import Dict, Optional

from unified_io import config as config_lib
from unified_io.config import UnifiedIOConfig
from unified_io.data import vocab as vocab_lib

FILE = "run-config.json"
FORMAT = 1


class RunConfigError(ValueError):
  """A run-config.json that cannot be read; the message names the file and the field."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
  model: UnifiedIOConfig
  task_feature_lengths: Optional[Dict[str, int]] = None
  mixture_or_task_name: Optional[str] = None
  vocabulary: Optional[str] = None  # SentencePiece model path; None = the project's default

  def to_json(self) -> str:
    return json.dumps({"format": FORMAT, "model": config_lib.to_dict(self.model),
                       "task_feature_lengths": self.task_feature_lengths,
                       "mixture_or_task_name": self.mixture_or_task_name,
                       "vocabulary": self.vocabulary}, indent=2) + "\n"

  @classmethod
  def from_json(cls, text: str, where: str = FILE) -> "RunConfig":
    try:
      data = json.loads(text)
    except json.JSONDecodeError as exc:
      raise RunConfigError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT or "model" not in data:
      raise RunConfigError(f"{where}: expected a run config of format {FORMAT} with a `model`")
    try:
      model = config_lib.from_dict(UnifiedIOConfig, data["model"])
    except (ValueError, TypeError, KeyError) as exc:
      raise RunConfigError(f"{where}: `model`: {exc}") from exc
    lengths = data.get("task_feature_lengths")
    return cls(model=model, task_feature_lengths=dict(lengths) if lengths else None,
               mixture_or_task_name=data.get("mixture_or_task_name"),
               vocabulary=data.get("vocabulary"))

  def get_vocabulary(self) -> vocab_lib.UIO2Vocabulary:
    """The run's text vocabulary (whatever the caller's gin binds for `get_vocabulary`)."""
    return vocab_lib.get_vocabulary(self.vocabulary or vocab_lib.default_model_path())

  @classmethod
  def of_training(cls, model: UnifiedIOConfig, task_feature_lengths, mixture_or_task_name: str
                  ) -> "RunConfig":
    """The run config of a training run, with the vocabulary its gin selects."""
    path = vocab_lib.get_vocabulary().path
    return cls(model=model, task_feature_lengths=dict(task_feature_lengths),
               mixture_or_task_name=mixture_or_task_name,
               vocabulary=None if path == vocab_lib.default_model_path() else path)

  def save(self, model_dir: str) -> None:
    """Writes MODEL_DIR/run-config.json atomically (a reader never sees half a file)."""
    path = os.path.join(model_dir, FILE)
    with open(path + ".tmp", "w") as f:
      f.write(self.to_json())
    os.replace(path + ".tmp", path)


def load(model_dir: str) -> Optional[RunConfig]:
  """MODEL_DIR's run config, or None when it has none."""
  path = os.path.join(model_dir, FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return RunConfig.from_json(f.read(), path)
