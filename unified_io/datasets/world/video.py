"""Video clips: objects gliding in one direction over a few frames, with a humming soundtrack.

Some objects move (all the same way, at the same speed); the rest stand still. Each moving object
hums its own steady tone, so both the frames and the sound say how many objects move. Frames are
rendered scenes at `frame_size`; the soundtrack is split into one segment per frame slot.
"""

import dataclasses
from typing import Tuple

import numpy as np

from unified_io.datasets.world import lexicon, scenes, tones
from unified_io.datasets.world.config import WorldConfig

_TRAVEL = (0.15, 0.35)   # distance covered from the first to the last frame, fraction of the side


@dataclasses.dataclass(frozen=True)
class Clip:
  first: scenes.Scene              # the scene in frame 0
  moving: Tuple[bool, ...]         # per object of `first`
  direction: str                   # one of lexicon.DIRECTIONS
  travel: float                    # distance each moving object covers over the clip
  tones_hz: Tuple[float, ...]      # one per moving object
  timbre: str

  @property
  def num_moving(self) -> int:
    return sum(self.moving)


def sample_clip(rng: np.random.Generator, cfg: WorldConfig) -> Clip:
  direction = lexicon.DIRECTIONS[int(rng.integers(len(lexicon.DIRECTIONS)))]
  travel = float(rng.uniform(*_TRAVEL))
  dy, dx = lexicon.DIRECTION_YX[direction]
  # Every object reserves its swept path, so moving objects never pass through others.
  first = scenes.sample_scene(rng, cfg, extent_yx=(dy * travel, dx * travel))
  num_moving = int(rng.integers(1, len(first.objects) + 1))
  moving = np.zeros(len(first.objects), bool)
  moving[rng.choice(len(first.objects), size=num_moving, replace=False)] = True
  tones_hz = rng.choice(lexicon.OBJECT_TONES_HZ, size=num_moving, replace=False)
  timbre = lexicon.TIMBRE_NAMES[int(rng.integers(len(lexicon.TIMBRE_NAMES)))]
  return Clip(first=first, moving=tuple(bool(m) for m in moving), direction=direction,
              travel=travel, tones_hz=tuple(float(f) for f in tones_hz), timbre=timbre)


def frame_scene(clip: Clip, frame: int, num_frames: int) -> scenes.Scene:
  """The scene at frame `frame` (0 .. num_frames - 1)."""
  dy, dx = lexicon.DIRECTION_YX[clip.direction]
  step = clip.travel * frame / (num_frames - 1)
  return clip.first.with_objects(
      obj.moved(dy * step, dx * step) if moving else obj
      for obj, moving in zip(clip.first.objects, clip.moving))


def render_frames(clip: Clip, cfg: WorldConfig) -> np.ndarray:
  """uint8 [F, frame_size, frame_size, 3]."""
  return np.stack([scenes.render(frame_scene(clip, f, cfg.num_frames), cfg.frame_size).image_hw3
                   for f in range(cfg.num_frames)])


def render_soundtrack(clip: Clip, cfg: WorldConfig) -> np.ndarray:
  """float32 [F, audio_samples]: the steady hum of the moving objects, one segment per frame.

  The hum does not change over the clip, so one segment is synthesised and repeated.
  """
  segment = tones.hum(clip.tones_hz, clip.timbre, cfg, cfg.audio_samples,
                      noise_seed=clip.first.noise_seed)
  return np.tile(segment[None], (cfg.num_frames, 1))
