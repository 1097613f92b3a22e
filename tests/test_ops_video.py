"""Video loading: evenly spaced frames, one audio segment per frame slot, clear errors."""

import av
import numpy as np
import pytest

from unified_io.data.ops import audio as audio_ops
from unified_io.data.ops import video as V

FPS = 10
AUDIO_RATE = 44100


def _write_video(path, seconds, *, codec="mpeg4", audio_freqs=None, size=(32, 48)):
  """Frame k is a flat grey of level 8k; second s of audio is a tone at audio_freqs[s]."""
  with av.open(str(path), "w") as container:
    video = container.add_stream(codec, rate=FPS)
    video.height, video.width = size
    video.pix_fmt = "yuv420p"
    audio = None
    if audio_freqs is not None:
      audio = container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
    for k in range(int(seconds * FPS)):
      frame = av.VideoFrame.from_ndarray(np.full(size + (3,), 8 * k, np.uint8), format="rgb24")
      for packet in video.encode(frame):
        container.mux(packet)
    for packet in video.encode(None):
      container.mux(packet)
    if audio is not None:
      t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
      tone = 0.5 * np.sin(2 * np.pi * np.asarray(audio_freqs)[(t).astype(int)] * t)
      chunk = 1024  # aac takes 1024-sample frames
      for start in range(0, len(tone), chunk):
        frame = av.AudioFrame.from_ndarray(tone[None, start:start + chunk].astype(np.float32),
                                           format="fltp", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = start
        for packet in audio.encode(frame):
          container.mux(packet)
      for packet in audio.encode(None):
        container.mux(packet)


def _peak_hz(x):
  spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
  return np.argmax(spectrum) * audio_ops.SAMPLE_RATE / len(x)


def test_frames_at_slot_midpoints_and_audio_per_slot(tmp_path):
  path = tmp_path / "clip.mp4"
  _write_video(path, 3.0, audio_freqs=[300, 600, 900])
  frames, audio = V.load_video(path, 3)
  assert frames.shape == (3, 32, 48, 3) and frames.dtype == np.uint8
  # slots of 1 s -> midpoints 0.5, 1.5, 2.5 s -> frames 5, 15, 25 -> grey 40, 120, 200
  np.testing.assert_allclose(frames.reshape(3, -1).mean(1), [40, 120, 200], atol=6)
  assert audio.shape == (3, audio_ops.SEGMENT_SAMPLES) and audio.dtype == np.float32
  for f, freq in enumerate([300, 600, 900]):
    middle = audio[f, audio_ops.SEGMENT_SAMPLES // 2 - 4000:audio_ops.SEGMENT_SAMPLES // 2 + 4000]
    assert abs(_peak_hz(middle) - freq) < 5
    # a 1 s slot is centred in the 4.08 s segment: the edges are zero padding
    assert np.abs(audio[f, :20000]).max() == 0 and np.abs(audio[f, -20000:]).max() == 0


def test_without_audio_and_more_frames_than_seconds(tmp_path):
  path = tmp_path / "clip.mp4"
  _write_video(path, 2.0, audio_freqs=[440, 440])
  frames, audio = V.load_video(path, 4, with_audio=False)
  assert audio is None and frames.shape[0] == 4
  # slots of 0.5 s -> midpoints 0.25, 0.75, 1.25, 1.75 s -> frames 2, 7, 12, 17
  np.testing.assert_allclose(frames.reshape(4, -1).mean(1), [16, 56, 96, 136], atol=6)


def test_a_video_without_sound_gives_no_audio(tmp_path):
  path = tmp_path / "silent.mp4"
  codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
  _write_video(path, 1.0, codec=codec)
  frames, audio = V.load_video(path, 2)
  assert frames.shape == (2, 32, 48, 3) and audio is None


def test_zero_frame_and_unreadable_videos_name_the_file(tmp_path):
  empty = tmp_path / "empty.avi"
  with av.open(str(empty), "w") as container:
    stream = container.add_stream("mpeg4", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    container.start_encoding()
  with pytest.raises(ValueError, match="empty.avi has no video frames"):
    V.load_video(empty, 4)
  broken = tmp_path / "broken.mp4"
  broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
  with pytest.raises(ValueError, match="broken.mp4"):
    V.load_video(broken, 4)
  with pytest.raises(ValueError, match="num_frames"):
    V.load_video(broken, 0)
