"""A modality curriculum for mixtures (UnIVAL style): stages that bring tasks in by training step.

A `Curriculum` is an ordered tuple of `Stage`s. Stage i starts at `start_step` and samples its
tasks with its rates until the next stage starts; the first stage starts at step 0. Typical:
text-only tasks first, then image tasks join, then audio and video. `Curriculum.by_modality`
builds that from one rate table and the step at which each modality enters.

`registry.add_mixture(name, ..., curriculum=...)` keeps the curriculum with the mixture; the
training input (`unified_io.training.input.TrainInput`) samples the tasks of the stage in effect
at each batch with that stage's rates (`unified_io.data.pipeline`, `rates=`), switches at the
stage's first batch, says so on the console, and a resumed run starts in the stage of its step.
"""

import dataclasses
from typing import Dict, Mapping, Sequence, Tuple, Union

import gin

Rates = Tuple[Tuple[str, float], ...]


def _as_rates(rates: Union[Mapping[str, float], Sequence[Tuple[str, float]]], where: str) -> Rates:
  items = tuple(rates.items()) if isinstance(rates, Mapping) else tuple(tuple(r) for r in rates)
  if not items:
    raise ValueError(f"{where}: has no tasks")
  for task, rate in items:
    if not isinstance(task, str) or not rate > 0:
      raise ValueError(f"{where}: task {task!r} has rate {rate!r}; rates must be > 0")
  names = [t for t, _ in items]
  if len(set(names)) != len(names):
    raise ValueError(f"{where}: a task is listed twice in {names}")
  return tuple((t, float(r)) for t, r in items)


@dataclasses.dataclass(frozen=True)
class Stage:
  start_step: int
  rates: Rates  # (task name, rate); seqio normalises the rates of a mixture

  def __post_init__(self):
    object.__setattr__(self, "rates", _as_rates(self.rates, f"stage at step {self.start_step}"))
    if not isinstance(self.start_step, int) or self.start_step < 0:
      raise ValueError(f"stage start_step must be an int >= 0, got {self.start_step!r}")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Curriculum:
  stages: Tuple[Stage, ...]

  def __post_init__(self):
    stages = tuple(s if isinstance(s, Stage) else Stage(*s) for s in self.stages)
    object.__setattr__(self, "stages", stages)
    if not stages or stages[0].start_step != 0:
      raise ValueError(f"the first curriculum stage must start at step 0, got "
                       f"{[s.start_step for s in stages]}")
    starts = [s.start_step for s in stages]
    if any(b <= a for a, b in zip(starts, starts[1:])):
      raise ValueError(f"curriculum stage start steps must increase, got {starts}")

  @classmethod
  def by_modality(cls, tasks_and_rates: Mapping[str, float],
                  task_modalities: Mapping[str, Sequence[str]],
                  modality_starts: Mapping[str, int]) -> "Curriculum":
    """A task joins when the last of its modalities has started; one stage per distinct start.

    E.g. modality_starts = {"text": 0, "image": 10_000, "audio": 20_000}: text tasks from step 0,
    tasks with images from 10k, tasks with audio (and audio + image) from 20k.
    """
    joins = {}
    for task in tasks_and_rates:
      modalities = tuple(task_modalities[task])
      unknown = [m for m in modalities if m not in modality_starts]
      if unknown:
        raise ValueError(f"task {task!r} has modalities {unknown} without a start step in "
                         f"modality_starts {dict(modality_starts)}")
      joins[task] = max((modality_starts[m] for m in modalities), default=0)
    starts = sorted(set(joins.values()) | {0})
    stages = [Stage(s, tuple((t, r) for t, r in tasks_and_rates.items() if joins[t] <= s))
              for s in starts if any(joins[t] <= s for t in tasks_and_rates)]
    return cls(tuple(stages))

  def stage_index(self, step: int) -> int:
    """The stage in effect at `step`."""
    index = 0
    for i, stage in enumerate(self.stages):
      if step >= stage.start_step:
        index = i
    return index

  def rates_at(self, step: int) -> Dict[str, float]:
    """{task: normalised rate} at `step`; tasks not yet introduced are absent."""
    rates = self.stages[self.stage_index(step)].rates
    total = sum(r for _, r in rates)
    return {t: r / total for t, r in rates}

  def task_names(self) -> Tuple[str, ...]:
    """Every task any stage samples, in first-appearance order."""
    names = []
    for stage in self.stages:
      names += [t for t, _ in stage.rates if t not in names]
    return tuple(names)
