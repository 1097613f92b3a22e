"""Synthesised IMU signals with taps: the world's sensor input (`sensor_inputs` [T, 6]).

Channels: 0-2 a 3-axis accelerometer (m/s^2), 3-5 a 3-axis gyroscope (rad/s), sampled at
`WorldConfig.sensor_rate_hz`. At rest the device feels gravity on one accelerometer axis, swaying
slowly; every channel has a little white noise. A tap is a short damped burst (a decaying
oscillation of ~`_TAP_HZ`) on the accelerometer channels, with a much smaller kick on the gyroscope;
taps are at least `_MIN_GAP_SECONDS` apart, so each is a separate event a 16-sample token can see.
"""

import dataclasses
from typing import Optional, Tuple

import numpy as np

from unified_io.datasets.world.config import WorldConfig

CHANNELS = 6
GRAVITY = 9.81
MAX_TAPS = 4
_TAP_HZ = 12.0
_TAP_DECAY_SECONDS = 0.06
_TAP_AMPLITUDE = (6.0, 12.0)  # m/s^2 at onset
_MIN_GAP_SECONDS = 0.5
_EDGE_SECONDS = 0.2  # no tap starts this close to either end
_NOISE = (0.05, 0.01)  # white-noise std of the accelerometer, the gyroscope


@dataclasses.dataclass(frozen=True)
class Taps:
  count: int
  onsets: Tuple[int, ...]  # sample index of each tap, increasing


def sample_taps(rng: np.random.Generator, cfg: WorldConfig) -> Taps:
  """1..MAX_TAPS taps at random onsets at least _MIN_GAP_SECONDS apart."""
  count = int(rng.integers(1, MAX_TAPS + 1))
  rate, samples = cfg.sensor_rate_hz, cfg.sensor_samples
  gap, edge = int(round(_MIN_GAP_SECONDS * rate)), int(round(_EDGE_SECONDS * rate))
  # Onsets = sorted draws from the room left after the gaps, each shifted by the gaps before it.
  room = samples - 2 * edge - (count - 1) * gap
  draws = np.sort(rng.integers(0, room, size=count))
  onsets = tuple(int(edge + d + i * gap) for i, d in enumerate(draws))
  return Taps(count, onsets)


def synthesise(taps: Taps, rng: np.random.Generator, cfg: WorldConfig,
               down: Optional[int] = None) -> np.ndarray:
  """float32 [sensor_samples, 6]: gravity (on accelerometer axis `down`, default drawn), sway,
  noise and the taps."""
  samples, rate = cfg.sensor_samples, cfg.sensor_rate_hz
  t = np.arange(samples) / rate
  signal = np.zeros((samples, CHANNELS), np.float64)
  down = int(rng.integers(3)) if down is None else down
  sway_hz, sway = rng.uniform(0.1, 0.5), rng.uniform(0.0, 0.3)
  signal[:, down] = GRAVITY + sway * np.sin(2 * np.pi * sway_hz * t + rng.uniform(0, 2 * np.pi))
  signal[:, 3 + down] = sway * 2 * np.pi * sway_hz / GRAVITY * np.cos(2 * np.pi * sway_hz * t)
  for onset in taps.onsets:
    dt = t[onset:] - t[onset]
    burst = np.exp(-dt / _TAP_DECAY_SECONDS) * np.sin(2 * np.pi * _TAP_HZ * dt + np.pi / 2)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    amplitude = rng.uniform(*_TAP_AMPLITUDE)
    signal[onset:, :3] += amplitude * burst[:, None] * direction
    signal[onset:, 3:] += 0.05 * amplitude * burst[:, None] * rng.normal(size=3)
  noise = np.repeat([_NOISE[0] + cfg.sensor_noise, _NOISE[1]], 3)  # [6] std per channel
  signal += rng.normal(size=signal.shape) * noise
  return signal.astype(np.float32)
