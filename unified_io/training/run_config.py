"""A training run's configuration as data: MODEL_DIR/run-config.json.

`uio2-train` writes it before training starts; `uio2-eval`, `uio2-infer`, `uio2-predict` and
`unified_io.evaluation.run_loader` rebuild the model from it without parsing the run's gin (the
resolved `config.gin` stays beside it for people to read), and `apply_run_data` gives an
evaluating process the run's data configuration (below).

  {"format": 2,
   "model": {...},                     the UnifiedIOConfig (unified_io.config.to_dict)
   "task_feature_lengths": {...},      what the run trained with (eval's default)
   "mixture_or_task_name": "...",
   "vocabulary": null | "/path/tokenizer.model",   the SentencePiece model (null: the default)
   "data": {                           what shaped the run's examples (`RunData`)
     "world": {...},                   the WorldConfig `make_world_config()` gave (every field)
     "denoising": {...},               the DenoisingConfig `DenoisingConfig()` gave (every field)
     "dataset_root": null | "/data/raw",           gin `dataset_dir.root`, else $UIO2_DATA_DIR
     "dataset_overrides": null | {"vqav2": "/x"},  gin `dataset_dir.overrides`
     "tfds_data_dir": null | "/data/tfds",         gin `tfds_data_dir.path` (or --tfds_data_dir)
     "task_modules": ["my_tasks"],     modules the run's gin imports, outside unified_io
     "manifest_tasks": null | {...}}}  gin `register_configured_manifests.tasks` (JSONL tasks)
Format 1 (before "data") is still read: its run has no data section, and an evaluating process
keeps its own data configuration.

Applying the data section (`apply_run_data(CHECKPOINT_PATH)`, which `unified_io.evaluation.runs`
calls at the start of `evaluate` and `infer`, after the binary has parsed its gin and before any
task name is looked up): the task modules are imported (one that cannot be, e.g. not on
PYTHONPATH, is a `RunConfigError` naming it), the manifest tasks not registered yet are
registered, and the saved world, denoising and directory values are bound with
`gin.bind_parameter` to `make_world_config`, `DenoisingConfig`, `dataset_dir` and `tfds_data_dir`.
Precedence: a setting the evaluating process gives itself wins over the run's. A saved value is
bound only where the evaluating gin (its --gin_file files and --gin.X / --gin_bindings, all parsed
before) binds nothing for that parameter; a `make_world_config.difficulty` binding also keeps the
preset's fields (object counts and sizes, overlap, distractors, noise) from the run's values; the
eval binary's --tfds_data_dir is its gin binding of `tfds_data_dir.path`
(`gin_flags.bind_tfds_data_dir`), and a set $UIO2_DATA_DIR keeps `dataset_dir.root` unbound.
Apply once per process: what it binds then counts as the evaluating gin's own
(`gin.clear_config()` undoes it).
"""

import dataclasses
import importlib
import json
import os
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import gin

from unified_io import config as config_lib
from unified_io.config import UnifiedIOConfig
from unified_io.data import vocab as vocab_lib
from unified_io.data.denoising import DenoisingConfig
from unified_io.datasets import directories
from unified_io.datasets.world.config import DIFFICULTIES, WorldConfig, make_world_config

FILE = "run-config.json"
FORMAT = 2
READABLE_FORMATS = (1, 2)  # 1: before the data section
_CHECKPOINTS = "checkpoints"  # MODEL_DIR/checkpoints/<step> (as run_loader reads it)
_OWN_PACKAGE = "unified_io"
_PRESET_FIELDS = frozenset(name for preset in DIFFICULTIES.values() for name in preset)


class RunConfigError(ValueError):
  """A run-config.json that cannot be read or applied; one line naming the file and the field."""


def _one_line(exc: BaseException) -> str:
  return " ".join(str(exc).split())


def _bindings_of(configurable: Callable, resolve: bool = True) -> Dict[str, Any]:
  """The parameters the current gin binds (unscoped) for a registered configurable."""
  return gin.get_bindings(configurable, resolve_references=resolve)


def _selector(configurable: Callable) -> str:
  return f"{configurable.__module__}.{configurable.__name__}"


# ------------------------------------------------------------------------------------------------
# The data section.
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RunData:
  """What shaped a run's examples beyond its task names (the module docstring's "data")."""
  world: Optional[WorldConfig] = None        # None: not recorded (the evaluating process's own)
  denoising: Optional[DenoisingConfig] = None
  dataset_root: Optional[str] = None
  dataset_overrides: Optional[Dict[str, str]] = None
  tfds_data_dir: Optional[str] = None
  task_modules: Tuple[str, ...] = ()
  manifest_tasks: Optional[Dict[str, Any]] = None

  def to_dict(self) -> Dict[str, Any]:
    return {"world": None if self.world is None else config_lib.to_dict(self.world),
            "denoising": None if self.denoising is None else config_lib.to_dict(self.denoising),
            "dataset_root": self.dataset_root, "dataset_overrides": self.dataset_overrides,
            "tfds_data_dir": self.tfds_data_dir, "task_modules": list(self.task_modules),
            "manifest_tasks": self.manifest_tasks}

  @classmethod
  def from_dict(cls, data: Dict[str, Any], where: str = FILE) -> "RunData":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
      raise RunConfigError(f"{where}: `data.{unknown[0]}` is not a data field (known: "
                           f"{sorted(known)}); was it written by a newer unified_io?")
    parsed = dict(data)
    for name, cls_ in (("world", WorldConfig), ("denoising", DenoisingConfig)):
      if parsed.get(name) is not None:
        try:
          parsed[name] = config_lib.from_dict(cls_, parsed[name])
        except (ValueError, TypeError) as exc:
          raise RunConfigError(f"{where}: `data.{name}`: {_one_line(exc)}") from exc
    parsed["task_modules"] = tuple(parsed.get("task_modules") or ())
    return cls(**parsed)

  @classmethod
  def of_training(cls, gin_imports: Sequence[str] = ()) -> "RunData":
    """The data configuration the current gin gives; `gin_imports`: the modules the run's gin
    imports (`gin_flags.parse_gin`), of which those outside unified_io are the task modules."""
    try:
      world, denoising = make_world_config(), DenoisingConfig()
    except ValueError as exc:  # (gin adds context lines; the first names the cause)
      raise RunConfigError(f"data configuration: {str(exc).strip().splitlines()[0]}") from exc
    dirs = _bindings_of(directories.dataset_dir)
    return cls(world=world, denoising=denoising,
               dataset_root=dirs.get("root") or os.environ.get(directories.DATA_DIR_ENV) or None,
               dataset_overrides=dict(dirs["overrides"]) if dirs.get("overrides") else None,
               tfds_data_dir=directories.tfds_data_dir(),
               task_modules=tuple(dict.fromkeys(m for m in gin_imports if _is_task_module(m))),
               manifest_tasks=_configured_manifest_tasks())


def _is_task_module(name: str) -> bool:
  """A module a run's gin imports that an evaluating process would not import by itself."""
  return not (name == _OWN_PACKAGE or name.startswith(_OWN_PACKAGE + ".")
              or name.startswith("__gin__"))


def _configured_manifest_tasks() -> Optional[Dict[str, Any]]:
  try:
    tasks = gin.get_bindings("register_configured_manifests").get("tasks")
  except ValueError:  # unified_io.tasks is not imported: nothing registers manifests from gin
    return None
  return dict(tasks) if tasks else None


# ------------------------------------------------------------------------------------------------
# The run config.
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RunConfig:
  model: UnifiedIOConfig
  task_feature_lengths: Optional[Dict[str, int]] = None
  mixture_or_task_name: Optional[str] = None
  vocabulary: Optional[str] = None  # SentencePiece model path; None = the project's default
  data: Optional[RunData] = None  # None: a format-1 file (no data section)

  def to_json(self) -> str:
    return json.dumps({"format": FORMAT, "model": config_lib.to_dict(self.model),
                       "task_feature_lengths": self.task_feature_lengths,
                       "mixture_or_task_name": self.mixture_or_task_name,
                       "vocabulary": self.vocabulary,
                       "data": None if self.data is None else self.data.to_dict()},
                      indent=2) + "\n"

  @classmethod
  def from_json(cls, text: str, where: str = FILE) -> "RunConfig":
    try:
      data = json.loads(text)
    except json.JSONDecodeError as exc:
      raise RunConfigError(f"{where}: not JSON ({exc})") from exc
    if (not isinstance(data, dict) or data.get("format") not in READABLE_FORMATS
        or "model" not in data):
      found = data.get("format") if isinstance(data, dict) else None
      raise RunConfigError(f"{where}: expected a run config of format {FORMAT} (or "
                           f"{', '.join(map(str, READABLE_FORMATS[:-1]))}) with a `model`, got "
                           f"format {found!r}")
    try:
      model = config_lib.from_dict(UnifiedIOConfig, data["model"])
    except (ValueError, TypeError, KeyError) as exc:
      raise RunConfigError(f"{where}: `model`: {exc}") from exc
    lengths = data.get("task_feature_lengths")
    run_data = data.get("data")
    return cls(model=model, task_feature_lengths=dict(lengths) if lengths else None,
               mixture_or_task_name=data.get("mixture_or_task_name"),
               vocabulary=data.get("vocabulary"),
               data=None if run_data is None else RunData.from_dict(run_data, where))

  def get_vocabulary(self) -> vocab_lib.UIO2Vocabulary:
    """The run's text vocabulary (whatever the caller's gin binds for `get_vocabulary`)."""
    return vocab_lib.get_vocabulary(self.vocabulary or vocab_lib.default_model_path())

  @classmethod
  def of_training(cls, model: UnifiedIOConfig, task_feature_lengths, mixture_or_task_name: str,
                  gin_imports: Sequence[str] = ()) -> "RunConfig":
    """The run config of a training run: the vocabulary and data configuration its gin gives
    (`RunData.of_training`; raises RunConfigError when the world or denoising config is bad)."""
    path = vocab_lib.get_vocabulary().path
    return cls(model=model, task_feature_lengths=dict(task_feature_lengths),
               mixture_or_task_name=mixture_or_task_name,
               vocabulary=None if path == vocab_lib.default_model_path() else path,
               data=RunData.of_training(gin_imports))

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


# ------------------------------------------------------------------------------------------------
# Applying a run's data section in an evaluating process.
# ------------------------------------------------------------------------------------------------
def _saved_bindings(data: RunData) -> Iterator[Tuple[Callable, str, Any]]:
  """(configurable, parameter, value) for every value the data section holds."""
  if data.world is not None:
    for field in dataclasses.fields(WorldConfig):
      yield make_world_config, field.name, getattr(data.world, field.name)
  if data.denoising is not None:
    for field in dataclasses.fields(DenoisingConfig):
      yield DenoisingConfig, field.name, getattr(data.denoising, field.name)
  for configurable, name, value in ((directories.dataset_dir, "root", data.dataset_root),
                                    (directories.dataset_dir, "overrides", data.dataset_overrides),
                                    (directories.tfds_data_dir, "path", data.tfds_data_dir)):
    if value is not None:
      yield configurable, name, value


def _kept_by_evaluating_process(configurable: Callable, name: str) -> bool:
  """Whether the evaluating process sets this parameter itself (the module docstring's rule)."""
  bound = _bindings_of(configurable, resolve=False)
  if name in bound:
    return True
  if configurable is make_world_config and "difficulty" in bound:
    return name in _PRESET_FIELDS
  if configurable is directories.dataset_dir and name == "root":
    return bool(os.environ.get(directories.DATA_DIR_ENV))
  return False


def _import_task_modules(modules: Sequence[str], where: str) -> None:
  for name in modules:
    try:
      importlib.import_module(name)
    except ImportError as exc:
      raise RunConfigError(
          f"{where}: task module {name!r}, which the run's gin imports to register its tasks, "
          f"cannot be imported ({_one_line(exc)}); put the folder holding it on PYTHONPATH"
          ) from exc


def apply_data(data: RunData, where: str = FILE) -> Tuple[str, ...]:
  """Makes `data` this process's data configuration (the module docstring's rule); returns the
  parameters ("make_world_config.image_size", ...) whose saved value the evaluating gin overrides.

  Raises RunConfigError (one line) for a task module that cannot be imported.
  """
  _import_task_modules(data.task_modules, where)
  if data.manifest_tasks:
    from unified_io.datasets import manifest  # pylint: disable=import-outside-toplevel
    manifest.register_manifests(data.manifest_tasks)  # (names registered already are kept)
  kept, to_bind = [], []
  for configurable, name, value in _saved_bindings(data):  # decide all first: then bind
    if _kept_by_evaluating_process(configurable, name):
      kept.append(f"{configurable.__name__}.{name}")
    else:
      to_bind.append((f"{_selector(configurable)}.{name}", value))
  for key, value in to_bind:
    gin.bind_parameter(key, value)
  return tuple(kept)


def find_model_dir(checkpoint_path: str) -> Optional[str]:
  """The MODEL_DIR holding run-config.json of a MODEL_DIR, its checkpoints/ folder or one of its
  checkpoints/<step> folders; None for anything else (e.g. a converted checkpoint)."""
  path = os.path.abspath(os.path.expanduser(str(checkpoint_path)))
  candidates = [path]
  if os.path.basename(path) == _CHECKPOINTS:
    candidates.append(os.path.dirname(path))
  if os.path.basename(path).isdigit() and os.path.basename(os.path.dirname(path)) == _CHECKPOINTS:
    candidates.append(os.path.dirname(os.path.dirname(path)))
  return next((c for c in candidates if os.path.isfile(os.path.join(c, FILE))), None)


def apply_run_data(checkpoint_path: str, log: Optional[Callable[[str], Any]] = None
                   ) -> Optional[RunData]:
  """Applies the data section of the run `checkpoint_path` belongs to (`apply_data`); returns it,
  or None when there is none to apply (no run-config.json, or one of format 1).

  Call it after the evaluating process's gin is parsed and before any task name is looked up.
  Raises RunConfigError (one line) for a run config that cannot be read or a task module that
  cannot be imported.
  """
  model_dir = find_model_dir(checkpoint_path)
  saved = load(model_dir) if model_dir is not None else None
  if saved is None or saved.data is None:
    return None
  where = os.path.join(model_dir, FILE)
  kept = apply_data(saved.data, where)
  if log is not None:
    modules = ", ".join(saved.data.task_modules)
    modules = f"; task modules {modules}" if modules else ""
    own = f"; the evaluating gin's own {', '.join(kept)}" if kept else ""
    log(f"data configuration of the run from {where}{modules}{own}")
  return saved.data
