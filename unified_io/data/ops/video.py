"""Video files -> evenly spaced frames and one 16 kHz audio segment per frame slot (PyAV).

Axis legend: F frames (= frame slots), h, w pixels, N samples per segment (65280 = 4.08 s).

The timing follows the release's video loader (`uio2/video_utils.py: load_video` in
allenai/unified-io-2.pytorch): with audio, only the first `min(duration, F * 4.08 s)` of the
video is used, so that its sound fits in F segments; that span is cut into F equal slots and each
slot's frame is the one showing at the slot's midpoint. Without audio the whole video is used.
Each slot's audio is the slot's own samples, centred in a 4.08 s segment and zero-padded (the
release's rule for a segment shorter than the spectrogram window); a slot is never longer than
4.08 s. Frames are decoded in one sequential pass, which is simple and robust but reads the whole
used span (fine for the clip lengths of video QA / captioning data).
"""

from typing import List, Optional, Tuple

import numpy as np

from unified_io.data.ops import audio as audio_ops


def _open(path: str, what: str):
  import av  # pylint: disable=import-outside-toplevel
  try:
    return av.open(str(path))
  except (av.error.FFmpegError, OSError) as err:
    raise ValueError(f"{what}: cannot read {path}: {err}") from err


def _video_duration(container, stream) -> Optional[float]:
  if stream.duration is not None and stream.time_base is not None:
    return float(stream.duration * stream.time_base)
  if container.duration is not None:
    return container.duration / 1e6
  return None


def _frame_times(container, stream) -> List[float]:
  return [float(frame.time) for frame in container.decode(stream) if frame.time is not None]


def _pick_frames(container, stream, times: np.ndarray) -> List[np.ndarray]:
  """Decode in order; for each target time keep the last frame shown at or before it."""
  picked, previous, i = [], None, 0
  for frame in container.decode(stream):
    start = float(frame.time) if frame.time is not None else 0.0
    while i < len(times) and start > times[i]:
      chosen = previous if previous is not None else frame
      picked.append(chosen.to_ndarray(format="rgb24"))
      i += 1
    if i == len(times):
      break
    previous = frame
  if previous is not None:
    last = previous.to_ndarray(format="rgb24")
    picked.extend([last] * (len(times) - len(picked)))
  return picked


def _slot_audio(waveform_n: np.ndarray, bounds_f2: np.ndarray) -> np.ndarray:
  """Waveform at 16 kHz, slot bounds in seconds -> [F, 65280], each slot centred in a segment."""
  segments = np.zeros([len(bounds_f2), audio_ops.SEGMENT_SAMPLES], np.float32)
  for f, (start, end) in enumerate(bounds_f2):
    samples = waveform_n[int(round(start * audio_ops.SAMPLE_RATE)):
                         int(round(end * audio_ops.SAMPLE_RATE))][:audio_ops.SEGMENT_SAMPLES]
    offset = (audio_ops.SEGMENT_SAMPLES - len(samples)) // 2
    segments[f, offset:offset + len(samples)] = samples
  return segments


def load_video(path: str, num_frames: int, *, with_audio: bool = True
               ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
  """Video file -> (frames uint8 [F, h, w, 3], audio segments float32 [F, 65280] or None).

  Audio is None when `with_audio` is False or the file has no (or an empty) audio stream. A file that cannot be
  read, has no video stream or no frames raises ValueError naming it.
  """
  if num_frames < 1:
    raise ValueError(f"load_video: num_frames must be >= 1, got {num_frames}")
  with _open(path, "load_video") as container:
    if not container.streams.video:
      raise ValueError(f"load_video: {path} has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    has_audio = with_audio and bool(container.streams.audio)
    duration = _video_duration(container, stream)
    if duration is None:  # some containers do not say: measure it
      times = _frame_times(container, stream)
      if not times:
        raise ValueError(f"load_video: {path} has no video frames")
      duration = times[-1] + (times[-1] - times[0]) / max(len(times) - 1, 1)
      container.seek(0)
    used = min(duration, num_frames * audio_ops.SEGMENT_SECONDS) if has_audio else duration
    edges = np.linspace(0.0, used, num_frames + 1)
    bounds_f2 = np.stack([edges[:-1], edges[1:]], 1)
    frames = _pick_frames(container, stream, bounds_f2.mean(1))
  if not frames:
    raise ValueError(f"load_video: {path} has no video frames")
  frames_fhw3 = np.stack(frames).astype(np.uint8)

  if not has_audio:
    return frames_fhw3, None
  with _open(path, "load_video") as container:
    try:
      waveform_n, _ = audio_ops.decode_audio_stream(
          container, container.streams.audio[0], audio_ops.SAMPLE_RATE, f"load_video: {path}")
    except ValueError:
      return frames_fhw3, None  # an empty audio track: treat as no sound
  return frames_fhw3, _slot_audio(waveform_n, bounds_f2)
