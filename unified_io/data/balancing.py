"""Task balancing: a mixture's rates from its tasks' example counts with a temperature.

T5 and UnIVAL sample a task with probability proportional to min(n, maximum) ** (1 / T), n its
training examples: T = 1 is proportional to size (small tasks are rarely seen), larger T flattens
towards uniform (T -> infinity: every task equally often), and `maximum` stops a huge task from
taking the whole mixture. Explicit rates stay the default; balancing replaces them when asked:

  # for every mixture a run trains on (gin):
  mixture_rates.temperature = 2.0
  mixture_rates.maximum = 100000          # optional cap on each task's count
  # or for one mixture, when registering it:
  registry.add_mixture("my_mix", ["vqa_v2", "coco_captions", "my_manifest_task"], temperature=2.0)

Counts come from each task's source (`num_input_examples`: TFDS split sizes, the world's split
sizes); a source that does not record them (a manifest, a python records task) is counted once by
reading its split (records only: media are not decoded), and the count is kept for the process.
"""

import dataclasses
from typing import Dict, Mapping, Optional, Sequence, Set, Tuple

import gin
import seqio
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class TaskBalance:
  """rate = min(count, maximum) ** (1 / temperature)."""
  temperature: float = 1.0
  maximum: Optional[float] = None

  def __post_init__(self):
    if not self.temperature > 0:
      raise ValueError(f"task balancing: temperature must be > 0, got {self.temperature}")
    if self.maximum is not None and not self.maximum > 0:
      raise ValueError(f"task balancing: maximum must be > 0, got {self.maximum}")

  def rate(self, count: int) -> float:
    capped = count if self.maximum is None else min(count, self.maximum)
    return float(capped) ** (1.0 / self.temperature)

  def rates(self, counts: Mapping[str, int]) -> Dict[str, float]:
    """{task: rate}, normalised to sum to 1 (sampling only uses the ratios)."""
    empty = sorted(name for name, n in counts.items() if n <= 0)
    if empty:
      raise ValueError(f"task balancing: {', '.join(empty)} has no examples; drop it from the "
                       "mixture or give explicit rates")
    raw = {name: self.rate(n) for name, n in counts.items()}
    total = sum(raw.values())
    return {name: r / total for name, r in raw.items()}


_COUNTED: Dict[Tuple[str, str], int] = {}
_REPORTED: Set[str] = set()


def example_count(task: seqio.Task, split: str = "train") -> int:
  """The number of examples of `task`'s split: recorded by its source, else counted once."""
  key = (task.name, split)
  if key not in _COUNTED:
    recorded = task.source.num_input_examples(split)
    if recorded is None:
      print(f"task balancing: counting the {split!r} examples of {task.name} (its source does "
            "not record them)", flush=True)
      dataset = task.source.get_dataset(split=split, shuffle=False)
      recorded = int(dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1).numpy())
    _COUNTED[key] = int(recorded)
  return _COUNTED[key]


def balanced_rates(tasks: Sequence[seqio.Task], balance: TaskBalance,
                   split: str = "train") -> Dict[str, float]:
  counts = {task.name: example_count(task, split) for task in tasks}
  rates = balance.rates(counts)
  line = (f"task balancing (T={balance.temperature}, maximum={balance.maximum}): "
          + ", ".join(f"{n} {counts[n]} examples -> {r:.3f}" for n, r in rates.items()))
  if line not in _REPORTED:  # pipelines are built more than once per run: say it once
    _REPORTED.add(line)
    print(line, flush=True)
  return rates


@gin.configurable(denylist=["provider", "registered"])
def mixture_rates(provider: seqio.Mixture, registered: Optional[TaskBalance] = None, *,
                  temperature: Optional[float] = None, maximum: Optional[float] = None,
                  split: str = "train") -> Dict[str, float]:
  """The rates `provider`'s tasks are sampled by: with gin's `temperature` (or a balance given at
  registration, `registered`), from example counts; else the mixture's explicit rates."""
  if temperature is not None:
    return balanced_rates(provider.tasks, TaskBalance(temperature, maximum), split)
  if maximum is not None:
    raise ValueError("mixture_rates.maximum is set without mixture_rates.temperature; set the "
                     "temperature too (1.0: proportional to the capped counts)")
  if registered is not None:
    return balanced_rates(provider.tasks, registered, split)
  return {t.name: float(provider.get_rate(t)) for t in provider.tasks}
