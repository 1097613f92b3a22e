"""Audio ops: the release's log-mel spectrogram against an independent numpy/scipy computation,
segments, resampling, PyAV loading (and its errors), Griffin-Lim back to a waveform."""

import wave

import av
import numpy as np
import pytest
import tensorflow as tf
from scipy.signal import windows

from unified_io.data.ops import audio as A

RATE = 16000


def _tone(freq, seconds, rate=RATE, amp=0.5):
  t = np.arange(int(seconds * rate)) / rate
  return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _reference_log_mel(waveform):
  """Written independently of the module: explicit Slaney mel scale, np.interp triangles."""
  def to_mel(f):
    return f * 3 / 200 if f < 1000 else 15 + 27 * np.log(f / 1000) / np.log(6.4)

  def to_hz(m):
    return m * 200 / 3 if m < 15 else 1000 * 6.4 ** ((m - 15) / 27)

  x = np.zeros(65280, np.float64)
  x[:min(len(waveform), 65280)] = waveform[:65280]
  x = np.pad(x, 512, mode="reflect")
  frames = np.lib.stride_tricks.sliding_window_view(x, 1024)[::256]
  power = np.abs(np.fft.rfft(frames * windows.hann(1024, sym=True), axis=-1)) ** 2
  fft_hz = np.arange(513) * 8000 / 512
  edges = [to_hz(m) for m in np.linspace(to_mel(0.0), to_mel(8000.0), 130)]
  filters = np.stack([np.interp(fft_hz, edges[i:i + 3], [0, 1, 0]) * 2 / (edges[i + 2] - edges[i])
                      for i in range(128)])
  mel = power @ filters.T
  return np.where(mel > 0, np.log(np.clip(mel, 1e-5, 1e5)), 0.0)


def test_constants_are_the_releases():
  assert (A.SAMPLE_RATE, A.SEGMENT_SAMPLES, A.NUM_FRAMES, A.NUM_MELS) == (16000, 65280, 256, 128)
  assert (A.N_FFT, A.HOP_LENGTH, A.MEL_FMAX, A.LOG_FLOOR) == (1024, 256, 8000.0, 1e-5)
  assert (A.AUDIOSET_MEAN, A.AUDIOSET_STD, A.AUDIO_VIT_MEAN, A.AUDIO_VIT_STD) == (
      -5.0945, 3.8312, -4.26, 9.14)


def test_log_mel_matches_an_independent_numpy_computation():
  rng = np.random.default_rng(0)
  waveform = (_tone(440, 4.08) + _tone(3000, 4.08, amp=0.1) +
              0.05 * rng.standard_normal(65280).astype(np.float32))
  got = A.log_mel_spectrogram(waveform).numpy()
  want = _reference_log_mel(waveform)
  assert got.shape == (256, 128)
  np.testing.assert_allclose(got, want, atol=2e-3)
  # the tone's energy sits in the mel band whose centre is nearest 440 Hz
  centres = A.mel_to_hz(np.linspace(0, A.hz_to_mel(8000.0), 130))[1:-1]
  assert abs(int(np.argmax(got[128])) - int(np.argmin(np.abs(centres - 440)))) <= 1


def test_short_audio_is_padded_and_silence_is_masked():
  log_mel, valid = A.log_mel_spectrogram_and_mask(_tone(1000, 1.0))
  log_mel, valid = log_mel.numpy(), valid.numpy()
  np.testing.assert_allclose(log_mel, _reference_log_mel(_tone(1000, 1.0)), atol=2e-3)
  assert valid[:50].all()            # 1 s = 62.5 frames of sound
  assert not valid[70:].any() and (log_mel[70:] == 0).all()
  silent, silent_valid = A.log_mel_spectrogram_and_mask(np.zeros([100], np.float32))
  assert not silent_valid.numpy().any() and not silent.numpy().any()


def test_log_mel_runs_inside_tf_data():
  ds = tf.data.Dataset.from_tensor_slices([_tone(300, 5.0), _tone(600, 5.0)])
  shapes = [x.shape for x in ds.map(A.log_mel_spectrogram)]
  assert shapes == [(256, 128), (256, 128)]


def test_normalisation_round_trip():
  x = np.linspace(-11.5, 11.5, 7).astype(np.float32)
  np.testing.assert_allclose(A.normalize_spectrogram(A.AUDIOSET_MEAN), 0.0)
  np.testing.assert_allclose(A.denormalize_spectrogram(A.normalize_spectrogram(x)), x, atol=1e-5)
  y = A.normalize_spectrogram(x, A.AUDIO_VIT_MEAN, A.AUDIO_VIT_STD)
  np.testing.assert_allclose(y, (x + 4.26) / 9.14, rtol=1e-6)


def test_segments_pad_and_trim():
  waveform = np.arange(65280 + 10, dtype=np.float32)
  seg = A.to_segments(waveform, 2).numpy()
  assert seg.shape == (2, 65280)
  assert seg[1, 9] == 65289 and (seg[1, 10:] == 0).all()
  np.testing.assert_array_equal(A.to_segments_np(waveform, 2), seg)
  np.testing.assert_array_equal(A.to_segments_np(waveform, 1)[0], waveform[:65280])


def _peak_hz(waveform, rate):
  spectrum = np.abs(np.fft.rfft(waveform * np.hanning(len(waveform))))
  return np.argmax(spectrum) * rate / len(waveform)


def test_resample_keeps_the_pitch():
  tone = _tone(1000, 1.0, rate=44100)
  out = A.resample(tone, 44100, 16000)
  assert abs(len(out) - 16000) <= 1
  assert abs(_peak_hz(out, 16000) - 1000) < 2


def _write_audio(path, waveform_cn, rate, codec, layout, fmt):
  with av.open(str(path), "w") as container:
    stream = container.add_stream(codec, rate=rate, layout=layout)
    frame = av.AudioFrame.from_ndarray(waveform_cn, format=fmt, layout=layout)
    frame.sample_rate = rate
    for packet in stream.encode(frame):
      container.mux(packet)
    for packet in stream.encode(None):
      container.mux(packet)


@pytest.mark.parametrize("suffix,codec,fmt", [(".wav", "pcm_s16le", "s16"), (".m4a", "aac", "fltp")])
def test_load_audio_downmixes_and_resamples(tmp_path, suffix, codec, fmt):
  left, right = _tone(660, 1.5, rate=44100), _tone(660, 1.5, rate=44100)
  stereo = np.stack([left, right])
  if fmt == "s16":
    data = (stereo * 32767).astype(np.int16).T.reshape(1, -1)  # packed: interleaved
  else:
    data = stereo  # planar
  path = tmp_path / f"tone{suffix}"
  _write_audio(path, data, 44100, codec, "stereo", fmt)
  waveform, rate = A.load_audio(path)
  assert rate == 16000 and waveform.dtype == np.float32 and waveform.ndim == 1
  assert abs(len(waveform) / 16000 - 1.5) < 0.1
  assert abs(_peak_hz(waveform, 16000) - 660) < 3
  assert 0.4 < np.abs(waveform).max() < 0.6
  native, native_rate = A.load_audio(path, rate=None)
  assert native_rate == 44100 and abs(len(native) / 44100 - 1.5) < 0.1


def test_unreadable_and_empty_audio_raise_naming_the_file(tmp_path):
  bad = tmp_path / "bad.wav"
  bad.write_bytes(b"RIFF this is not really a wav file")
  with pytest.raises(ValueError, match="bad.wav"):
    A.load_audio(bad)
  with pytest.raises(ValueError, match="missing.wav"):
    A.load_audio(tmp_path / "missing.wav")
  empty = tmp_path / "empty.wav"
  with wave.open(str(empty), "wb") as handle:  # a valid WAV header with no samples
    handle.setnchannels(1)
    handle.setsampwidth(2)
    handle.setframerate(16000)
  with pytest.raises(ValueError, match="empty.wav.*zero-length"):
    A.load_audio(empty)


def test_griffin_lim_recovers_the_tone():
  tone = _tone(440, 4.08)
  log_mel = A.log_mel_spectrogram(tone).numpy()
  waveform = A.spectrogram_to_waveform(log_mel, num_iters=16)
  assert waveform.shape == (255 * 256,)
  assert abs(_peak_hz(waveform, 16000) - 440) < 40  # within a mel band at 440 Hz
  again = A.log_mel_spectrogram(waveform).numpy()[8:-8]
  loud = log_mel[8:-8] > log_mel.max() - 5  # where the tone is; the rest is leakage
  assert np.abs(again - log_mel[8:-8])[loud].mean() < 0.5
  assert np.corrcoef(again.ravel(), log_mel[8:-8].ravel())[0, 1] > 0.8  # noise: about 0
