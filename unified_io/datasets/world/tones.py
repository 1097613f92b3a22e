"""Synthesised tones: beeps of a pitch and timbre, and the steady hum of video objects.

Waveforms are float32 mono at the config's sample rate, amplitude 0.5 per tone, with 5 ms fades so
beeps do not click. Every timbre has its fundamental as the strongest partial (square and sawtooth
fall as 1/k, triangle as 1/k^2), so the spectrum's peak is the tone's frequency.
"""

import dataclasses
from typing import Sequence

import numpy as np

from unified_io.datasets.world import lexicon
from unified_io.datasets.world.config import WorldConfig

AMPLITUDE = 0.5
_FADE_SECONDS = 0.005
_BEEP_SECONDS = (0.18, 0.35)
_GAP_SECONDS = (0.10, 0.25)
MAX_BEEPS = 6


@dataclasses.dataclass(frozen=True)
class Beeps:
  """`count` beeps of one pitch and timbre starting at `onset` seconds."""
  pitch: str            # a key of lexicon.PITCH_BANDS_HZ
  frequency_hz: float
  timbre: str           # one of lexicon.TIMBRE_NAMES
  count: int
  onset: float
  beep_seconds: float
  gap_seconds: float


def oscillator(timbre: str, frequency_hz: float, num_samples: int, sample_rate: int,
               phase: float = 0.0) -> np.ndarray:
  """float32 [num_samples] in [-1, 1]: a periodic wave of the timbre (naive, not band-limited)."""
  cycles = (np.arange(num_samples, dtype=np.float64) * (frequency_hz / sample_rate) + phase) % 1.0
  if timbre == "sine":
    wave = np.sin(2 * np.pi * cycles)
  elif timbre == "square":
    wave = np.where(cycles < 0.5, 1.0, -1.0)
  elif timbre == "sawtooth":
    wave = 2.0 * cycles - 1.0
  elif timbre == "triangle":
    wave = 1.0 - 4.0 * np.abs(cycles - 0.5)
  else:
    raise ValueError(f"oscillator: unknown timbre {timbre!r}; known: {lexicon.TIMBRE_NAMES}")
  return wave.astype(np.float32)


def _faded(wave: np.ndarray, sample_rate: int) -> np.ndarray:
  fade = min(int(_FADE_SECONDS * sample_rate), wave.size // 2)
  if fade:
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    wave[:fade] *= ramp
    wave[-fade:] *= ramp[::-1]
  return wave


def sample_beeps(rng: np.random.Generator, cfg: WorldConfig) -> Beeps:
  """Random beeps that fit in the config's waveform length."""
  pitch = lexicon.PITCH_NAMES[int(rng.integers(len(lexicon.PITCH_NAMES)))]
  low, high = lexicon.PITCH_BANDS_HZ[pitch]
  frequency = float(np.exp(rng.uniform(np.log(low), np.log(high))))
  timbre = lexicon.TIMBRE_NAMES[int(rng.integers(len(lexicon.TIMBRE_NAMES)))]
  beep, gap = float(rng.uniform(*_BEEP_SECONDS)), float(rng.uniform(*_GAP_SECONDS))
  fits = int((cfg.audio_seconds - 0.1 + gap) // (beep + gap))
  count = int(rng.integers(1, max(1, min(MAX_BEEPS, fits)) + 1))
  total = count * beep + (count - 1) * gap
  onset = float(rng.uniform(0.05, max(0.05, cfg.audio_seconds - total - 0.05)))
  return Beeps(pitch=pitch, frequency_hz=frequency, timbre=timbre, count=count, onset=onset,
               beep_seconds=beep, gap_seconds=gap)


def synthesise_beeps(beeps: Beeps, cfg: WorldConfig, noise_seed: int = 0) -> np.ndarray:
  """float32 [cfg.audio_samples]: the beeps in silence (plus the config's white noise)."""
  rate = cfg.sample_rate
  waveform = np.zeros(cfg.audio_samples, np.float32)
  beep_samples = int(beeps.beep_seconds * rate)
  tone = _faded(AMPLITUDE * oscillator(beeps.timbre, beeps.frequency_hz, beep_samples, rate), rate)
  for k in range(beeps.count):
    start = int((beeps.onset + k * (beeps.beep_seconds + beeps.gap_seconds)) * rate)
    stop = min(start + beep_samples, waveform.size)
    waveform[start:stop] += tone[:stop - start]
  return _with_noise(waveform, cfg, noise_seed)


def hum(frequencies_hz: Sequence[float], timbre: str, cfg: WorldConfig, num_samples: int,
        noise_seed: int = 0) -> np.ndarray:
  """float32 [num_samples]: steady tones, one per frequency, summed and kept within [-1, 1]."""
  waveform = np.zeros(num_samples, np.float32)
  for frequency in frequencies_hz:
    waveform += oscillator(timbre, frequency, num_samples, cfg.sample_rate)
  if len(frequencies_hz):
    waveform *= AMPLITUDE / max(1.0, len(frequencies_hz) / 2)
  return _with_noise(_faded(waveform, cfg.sample_rate), cfg, noise_seed)


# Even the noiseless difficulty gets a -80 dB floor: the release's spectrogram marks cells of zero
# power invalid, so exact digital silence between beeps would drop out of inputs and targets (the
# model would never be taught the gaps that make "three beeps" three).
NOISE_FLOOR = 1e-4


def _with_noise(waveform: np.ndarray, cfg: WorldConfig, noise_seed: int) -> np.ndarray:
  noise = np.random.default_rng(noise_seed).standard_normal(waveform.size, np.float32)
  return np.clip(waveform + max(cfg.audio_noise, NOISE_FLOOR) * noise, -1.0, 1.0)

