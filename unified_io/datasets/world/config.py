"""WorldConfig: everything that shapes the built-in world (sizes, difficulty, split sizes).

The world is drawn at its own sizes (input images at `image_size`, image targets at `target_size`,
video frames at `frame_size`; 128 px by default, the tiny all-modality model's sizes, so stage 2
has nothing to resize there); stage 2 resizes them to whatever model reads them, as it does any
image file. For a model at the release's sizes, draw at them (`make_world_config.image_size =
384`, `target_size = 256`, `frame_size = 256`) rather than upsampling. Scenes are
resolution-free: the same seed draws the same scene at every size.
Difficulty presets set the object count, sizes, overlap,
distractors and noise together; any field can still be overridden (in Python or gin):

  make_world_config.difficulty = "hard"
  make_world_config.image_size = 256
"""

import dataclasses
from typing import Mapping

import gin

SPLITS = ("train", "validation", "test")
_SIZE_FIELDS = ("image_size", "target_size", "frame_size")


class WorldConfigError(ValueError):
  """A WorldConfig field has a value the world cannot be drawn with."""


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """The world's knobs. Sizes are in pixels; object sizes are fractions of the image side."""
  seed: int = 0
  # Sizes in pixels (square images).
  image_size: int = 128            # input images
  target_size: int = 128           # image targets: text -> image, object masks
  frame_size: int = 128            # video frames
  num_frames: int = 4              # video frames per clip
  sample_rate: int = 16000
  audio_seconds: float = 4.08      # length of every waveform (audio inputs/targets, video segments)
  sensor_samples: int = 256        # IMU signal length (the tiny SensorConfig's), ~5 s at 50 Hz
  sensor_rate_hz: float = 50.0
  # Difficulty.
  min_objects: int = 1
  max_objects: int = 4
  min_object_size: float = 0.10    # object diameter / image side
  max_object_size: float = 0.28
  max_overlap: float = 0.0         # largest allowed box intersection / smaller box area
  max_distractors: int = 0         # thin grey strokes that are not objects (never counted or asked)
  texture: float = 0.04            # amplitude of the smooth background texture, fraction of 255
  pixel_noise: float = 0.0         # std of per-pixel noise, fraction of 255
  audio_noise: float = 0.0         # std of white noise added to waveforms (tone amplitude is 0.5)
  sensor_noise: float = 0.0        # extra accelerometer noise std in m/s^2 (taps are 6-12)
  # Split sizes (examples are generated on demand; the train split is effectively endless).
  train_examples: int = 1_000_000
  validation_examples: int = 1000
  test_examples: int = 1000

  def __post_init__(self):
    def check(ok: bool, field: str, expected: str):
      if not ok:
        raise WorldConfigError(
            f"WorldConfig.{field} = {getattr(self, field)!r}: expected {expected}")
    for field in _SIZE_FIELDS:
      check(isinstance(getattr(self, field), int) and getattr(self, field) >= 16, field,
            "an image side of at least 16 pixels")
    check(self.num_frames >= 2, "num_frames", "at least 2 frames (motion needs two)")
    check(1 <= self.min_objects <= self.max_objects <= 8, "max_objects",
          f"1 <= min_objects ({self.min_objects}) <= max_objects <= 8")
    check(0.02 <= self.min_object_size <= self.max_object_size <= 0.5, "max_object_size",
          f"0.02 <= min_object_size ({self.min_object_size}) <= max_object_size <= 0.5")
    check(0.0 <= self.max_overlap <= 0.5, "max_overlap", "a fraction in [0, 0.5]")
    check(self.audio_seconds >= 1.0, "audio_seconds", "at least 1 second (room for beeps)")
    # Room for four taps 0.5 s apart and 0.2 s from either end.
    check(self.sensor_rate_hz > 0 and self.sensor_samples >= 2.4 * self.sensor_rate_hz,
          "sensor_samples", "at least 2.4 s of samples at sensor_rate_hz (room for four taps)")
    for split in SPLITS:
      check(self.split_sizes[split] >= 1, f"{split}_examples", "at least one example")

  @property
  def audio_samples(self) -> int:
    return int(round(self.audio_seconds * self.sample_rate))

  @property
  def split_sizes(self) -> Mapping[str, int]:
    return {"train": self.train_examples, "validation": self.validation_examples,
            "test": self.test_examples}


DIFFICULTIES = {
    "easy": dict(min_objects=1, max_objects=4, min_object_size=0.10, max_object_size=0.28,
                 max_overlap=0.0, max_distractors=0, texture=0.04, pixel_noise=0.0,
                 audio_noise=0.0, sensor_noise=0.0),
    "medium": dict(min_objects=2, max_objects=6, min_object_size=0.08, max_object_size=0.24,
                   max_overlap=0.1, max_distractors=2, texture=0.08, pixel_noise=0.02,
                   audio_noise=0.02, sensor_noise=0.5),
    "hard": dict(min_objects=3, max_objects=8, min_object_size=0.05, max_object_size=0.22,
                 max_overlap=0.25, max_distractors=5, texture=0.12, pixel_noise=0.05,
                 audio_noise=0.06, sensor_noise=1.5),
}


@gin.configurable
def make_world_config(difficulty: str = "easy", **overrides) -> WorldConfig:
  """A difficulty preset with any field overridden; the gin entry point."""
  if difficulty not in DIFFICULTIES:
    raise WorldConfigError(f"make_world_config: unknown difficulty {difficulty!r}; "
                           f"known: {list(DIFFICULTIES)}")
  known = {f.name for f in dataclasses.fields(WorldConfig)}
  unknown = sorted(set(overrides) - known)
  if unknown:
    raise WorldConfigError(f"make_world_config: {unknown} are not WorldConfig fields; "
                           f"known: {sorted(known)}")
  return WorldConfig(**{**DIFFICULTIES[difficulty], **overrides})

