"""The built-in multimodal world: procedurally generated scenes, clips and tones, no files.

  config.py      WorldConfig (sizes, difficulty, split sizes), gin entry `make_world_config`
  lexicon.py     colours, shapes, backgrounds, pitches, timbres and their words
  shapes.py      shape rasterisation in normalised coordinates
  scenes.py      scene sampling (resolution-free) and rendering with exact masks and boxes
  video.py       clips of objects moving one way, with a hum per moving object
  tones.py       beeps of a pitch / count / timbre, 16 kHz waveforms
  language.py    captions, referring expressions, questions and answers
  generators.py  one numpy generator per task: the example's raw fields and meta/ ground truth
  source.py      seqio DataSource: example i of split s is a pure function of (seed, s, task, i)

Tasks and mixtures built on it are registered in `unified_io.tasks.world` (`world_*`).
"""

from unified_io.datasets.world.config import (DIFFICULTIES, SPLITS, WorldConfig, WorldConfigError,
                                          make_world_config)
from unified_io.datasets.world.generators import GENERATORS, Generator
from unified_io.datasets.world.source import WorldDataSource, example_rng, generate_example

__all__ = ["DIFFICULTIES", "SPLITS", "WorldConfig", "WorldConfigError", "make_world_config",
           "GENERATORS", "Generator", "WorldDataSource", "example_rng", "generate_example"]
