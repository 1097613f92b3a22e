"""Audio ops: 16 kHz mono waveforms, 4.08 s segments, the release's log-mel spectrogram and back.

Axis legend: N samples, S segments, T spectrogram time frames (256 per segment), M mel bins (128),
F linear frequency bins (n_fft / 2 + 1 = 513).

The spectrogram is the release's (`demo/utils/audio_utils.py: make_spectrogram`, a librosa
`melspectrogram` call, then `tf.math.log(tf.clip_by_value(x, 1e-5, 1e5))` zeroed where the mel
power is exactly 0, in the UIO2 preprocessors):
  * a segment is 4.08 s at 16 kHz = 65280 samples; shorter audio is zero-padded at the end;
  * STFT with n_fft = win = 1024, hop 256, a SYMMETRIC Hann window (librosa called
    `scipy.signal.windows.hann(1024)`, whose default is symmetric), centred frames with reflect
    padding of n_fft / 2 on both sides -> 1 + 65280 / 256 = 256 frames;
  * power spectrum |X|^2 (librosa's power=2.0);
  * 128 mel filters from 0 to 8000 Hz on the Slaney mel scale with Slaney area normalisation
    (librosa's defaults: htk=False, norm='slaney');
  * log with floor 1e-5 and ceiling 1e5; bins whose mel power is exactly 0 (digital silence,
    padding) become 0 and are invalid in the mask;
  * laid out [time, mel] = [256, 128], as the model's audio features.
Normalisation before the model (also the release's): inputs and histories use
(x - AUDIO_VIT_MEAN) / AUDIO_VIT_STD = (x + 4.26) / 9.14 (`InputAudioViTEncoder`), targets use the
AudioSet statistics (x + 5.0945) / 3.8312 (`TargetAudioDVAEEmbedder`; `config.py`).

Waveform I/O (`load_audio`, the one audio decoder of manifests, dataset tasks and uio2-predict)
goes through PyAV, so any container FFmpeg reads works: decoded at the file's rate, channels
averaged, resampled to 16 kHz by `resample` (scipy's polyphase filter); a file whose header
declares more audio than it holds is bad input (truncated_audio), never a silently short clip;
`spectrogram_to_waveform` inverts a log-mel spectrogram with Griffin-Lim (numpy) for listening to
generated audio.
"""

import os
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from unified_io.data import bad_input

SAMPLE_RATE = 16000
SEGMENT_SECONDS = 4.08
SEGMENT_SAMPLES = int(round(SAMPLE_RATE * SEGMENT_SECONDS))  # 65280
N_FFT = 1024
HOP_LENGTH = 256
NUM_MELS = 128
MEL_FMIN = 0.0
MEL_FMAX = 8000.0
LOG_FLOOR = 1e-5
LOG_CEILING = 1e5
NUM_FRAMES = 1 + SEGMENT_SAMPLES // HOP_LENGTH  # 256

AUDIOSET_MEAN = -5.0945  # targets
AUDIOSET_STD = 3.8312
AUDIO_VIT_MEAN = -4.26  # inputs and audio history
AUDIO_VIT_STD = 9.14


# ---------------------------------------------------------------- mel filters (numpy, cached)

def hz_to_mel(hz):
  """Slaney mel scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above."""
  hz = np.asarray(hz, np.float64)
  linear = hz / (200.0 / 3)
  log_step = np.log(6.4) / 27.0
  return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step, linear)


def mel_to_hz(mel):
  mel = np.asarray(mel, np.float64)
  log_step = np.log(6.4) / 27.0
  return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * (200.0 / 3))


_FILTERS = {}


def mel_filterbank() -> np.ndarray:
  """float32 [F, M]: Slaney-normalised triangular filters, linear power -> mel power."""
  if "fm" not in _FILTERS:
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(MEL_FMIN), hz_to_mel(MEL_FMAX), NUM_MELS + 2))
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (fft_hz[None] - lower) / (centre - lower)
    falling = (upper - fft_hz[None]) / (upper - centre)
    weights_mf = np.maximum(0.0, np.minimum(rising, falling))
    weights_mf *= (2.0 / (upper - lower))  # equal area per filter (Slaney)
    _FILTERS["fm"] = weights_mf.T.astype(np.float32)
  return _FILTERS["fm"]


# ---------------------------------------------------------------- segments (tf and numpy)

def to_segments(waveform_n: tf.Tensor, num_segments: int) -> tf.Tensor:
  """Waveform [N] -> float32 [S, SEGMENT_SAMPLES]: consecutive segments, zero-padded at the end."""
  waveform_n = tf.reshape(tf.cast(waveform_n, tf.float32), [-1])
  total = num_segments * SEGMENT_SAMPLES
  waveform_n = waveform_n[:total]
  waveform_n = tf.pad(waveform_n, [[0, total - tf.shape(waveform_n)[0]]])
  return tf.reshape(waveform_n, [num_segments, SEGMENT_SAMPLES])


def to_segments_np(waveform_n: np.ndarray, num_segments: int) -> np.ndarray:
  """numpy twin of `to_segments`."""
  waveform_n = np.asarray(waveform_n, np.float32).reshape(-1)[:num_segments * SEGMENT_SAMPLES]
  out = np.zeros([num_segments * SEGMENT_SAMPLES], np.float32)
  out[:len(waveform_n)] = waveform_n
  return out.reshape(num_segments, SEGMENT_SAMPLES)


# ---------------------------------------------------------------- the spectrogram (tf)

def _symmetric_hann(length, dtype=tf.float32):
  return tf.signal.hann_window(length, periodic=False, dtype=dtype)


def mel_power(waveform_n: tf.Tensor) -> tf.Tensor:
  """One segment's waveform (padded/trimmed to 4.08 s) -> mel power float32 [T, M]."""
  segment = to_segments(waveform_n, 1)[0]
  half = N_FFT // 2
  padded = tf.concat([tf.reverse(segment[1:half + 1], [0]), segment,
                      tf.reverse(segment[-half - 1:-1], [0])], 0)  # reflect, as numpy/librosa
  stft_tf = tf.signal.stft(padded, frame_length=N_FFT, frame_step=HOP_LENGTH, fft_length=N_FFT,
                           window_fn=_symmetric_hann, pad_end=False)
  power_tf = tf.math.square(tf.math.abs(stft_tf))
  return tf.matmul(power_tf, tf.constant(mel_filterbank()))


def log_mel_spectrogram_and_mask(waveform_n: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Waveform [N] at 16 kHz -> (log-mel float32 [256, 128], valid bool [256, 128]).

  Only the first 4.08 s is used; shorter audio is zero-padded. Bins with zero mel power (silence
  or padding) are 0 and invalid, as in the release.
  """
  mel_tm = mel_power(waveform_n)
  valid_tm = mel_tm > 0
  log_tm = tf.math.log(tf.clip_by_value(mel_tm, LOG_FLOOR, LOG_CEILING))
  log_tm = tf.where(valid_tm, log_tm, tf.zeros_like(log_tm))
  return tf.ensure_shape(log_tm, [NUM_FRAMES, NUM_MELS]), tf.ensure_shape(valid_tm,
                                                                          [NUM_FRAMES, NUM_MELS])


def log_mel_spectrogram(waveform_n: tf.Tensor) -> tf.Tensor:
  """Waveform [N] at 16 kHz -> log-mel float32 [256 time, 128 mel] (see the module docstring)."""
  return log_mel_spectrogram_and_mask(waveform_n)[0]


def normalize_spectrogram(log_mel, mean: float = AUDIOSET_MEAN, std: float = AUDIOSET_STD):
  """(x - mean) / std. Defaults: AudioSet statistics (targets); inputs pass AUDIO_VIT_MEAN/STD."""
  return (log_mel - mean) / std


def denormalize_spectrogram(normalized, mean: float = AUDIOSET_MEAN, std: float = AUDIOSET_STD):
  """Inverse of `normalize_spectrogram` (same constants)."""
  return normalized * std + mean


# ---------------------------------------------------------------- waveforms (numpy, PyAV)

def resample(waveform_n: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
  """Polyphase resampling (scipy) of a float waveform [N] from rate_in to rate_out Hz."""
  from scipy import signal  # pylint: disable=import-outside-toplevel
  waveform_n = np.asarray(waveform_n, np.float32)
  if rate_in == rate_out:
    return waveform_n
  g = np.gcd(int(rate_in), int(rate_out))
  return signal.resample_poly(waveform_n, int(rate_out) // g, int(rate_in) // g).astype(np.float32)


class AudioDecodeError(ValueError):
  """Audio that cannot be used; `reason` is its bad-input reason (unreadable / truncated)."""

  def __init__(self, message: str, reason: str = bad_input.UNREADABLE_AUDIO):
    super().__init__(message)
    self.reason = reason


def decode_audio_stream(container, stream, rate: Optional[int], name: str
                        ) -> Tuple[np.ndarray, int]:
  """All of `stream` in an open PyAV container -> (mono float32 [N], rate). Used by video too.

  Decoded at the file's own rate, channels averaged (as librosa, which the release used, does;
  FFmpeg's own stereo -> mono downmix would scale by 1/sqrt(2) instead), then resampled to `rate`
  (None: keep the file's) by `resample`. No samples, or a NaN/inf sample, raise AudioDecodeError.
  """
  import av  # pylint: disable=import-outside-toplevel
  native_rate = int(stream.codec_context.sample_rate or stream.rate)
  resampler = av.AudioResampler(format="fltp", rate=native_rate)  # keeps the channel layout
  chunks = []
  for frame in container.decode(stream):
    for out in resampler.resample(frame):
      chunks.append(out.to_ndarray().mean(axis=0))
  for out in resampler.resample(None):  # flush what the resampler still holds
    chunks.append(out.to_ndarray().mean(axis=0))
  waveform_n = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros([0], np.float32)
  if waveform_n.size == 0:
    raise AudioDecodeError(f"{name}: the audio stream has no samples (zero-length audio)")
  if not np.all(np.isfinite(waveform_n)):
    raise AudioDecodeError(f"{name}: the audio holds NaN or infinite samples")
  out_rate = int(rate or native_rate)
  return resample(waveform_n, native_rate, out_rate), out_rate


def _riff_data_sizes(path: str) -> Optional[Tuple[int, int]]:
  """A RIFF/WAVE file -> (bytes of audio its header declares, bytes the file holds after the data
  chunk's header); None for other files and for streaming headers that declare no size."""
  with open(path, "rb") as f:
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
      return None
    order = "little" if head[:4] == b"RIFF" else "big"
    size_of_file = os.fstat(f.fileno()).st_size
    position = 12
    while position + 8 <= size_of_file:
      f.seek(position)
      chunk = f.read(8)
      declared = int.from_bytes(chunk[4:], order)
      if chunk[:4] == b"data":
        if declared in (0, 0xFFFFFFFF):  # written while streaming: the size was never filled in
          return None
        return declared, size_of_file - position - 8
      position += 8 + declared + (declared & 1)  # chunks are word-aligned
  return None


def _has_vbr_header(path: str) -> bool:
  """An MP3 whose first frame holds a Xing/Info/VBRI header (which declares the frame count)."""
  with open(path, "rb") as f:
    head = f.read(10)
    start = 0
    if head[:3] == b"ID3" and len(head) == 10:  # skip the ID3v2 tag (syncsafe size)
      start = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(head[6:10]))
    f.seek(start)
    frame = f.read(200)
  return any(tag in frame for tag in (b"Xing", b"Info", b"VBRI"))


# Formats whose header declares the length (FLAC's STREAMINFO, an MP4's moov, an MP3's
# Xing/Info frame): FFmpeg's stream duration is then the header's word, not an estimate.
_DECLARED_LENGTH_FORMATS = ("flac", "mov,mp4,m4a,3gp,3g2,mj2")
TRUNCATION_TOLERANCE_SECONDS = 0.1  # codec priming / padding, for formats other than WAV


def _check_complete(path: str, container, stream, decoded_seconds: float) -> None:
  """Raises AudioDecodeError(reason truncated_audio) for a file shorter than its header says."""
  if container.format.name in ("wav", "w64"):
    sizes = _riff_data_sizes(path)
    if sizes is not None and sizes[1] < sizes[0]:
      raise AudioDecodeError(
          f"load_audio: {path} is truncated: its header declares {sizes[0]} bytes of audio, the "
          f"file holds {sizes[1]} ({decoded_seconds:.2f} s decoded)", bad_input.TRUNCATED_AUDIO)
    return
  trusted = (container.format.name in _DECLARED_LENGTH_FORMATS or
             (container.format.name == "mp3" and _has_vbr_header(path)))
  if not trusted or stream.duration is None or stream.time_base is None:
    return
  declared_seconds = float(stream.duration * stream.time_base)
  slack = max(TRUNCATION_TOLERANCE_SECONDS, 0.02 * declared_seconds)
  if decoded_seconds + slack < declared_seconds:
    raise AudioDecodeError(
        f"load_audio: {path} is truncated: its header declares {declared_seconds:.2f} s, the "
        f"file holds {decoded_seconds:.2f} s", bad_input.TRUNCATED_AUDIO)


def load_audio(path: str, rate: Optional[int] = SAMPLE_RATE) -> Tuple[np.ndarray, int]:
  """Any audio (or video) file FFmpeg reads -> (mono float32 waveform [N] in [-1, 1], rate).

  The one audio decoder of every path (manifests and dataset tasks, uio2-predict --audio): any
  sample format (8/16/24/32-bit integer, float), rate and channel count; channels averaged,
  resampled to `rate` (16 kHz by default; None keeps the file's). Unreadable files, files without
  an audio stream, zero-length audio, NaN/inf samples and files shorter than their header declares
  (a WAV cut short: FFmpeg alone would decode what is there without a word) raise
  AudioDecodeError (a ValueError) naming the file; its `reason` is the bad-input reason.
  """
  import av  # pylint: disable=import-outside-toplevel
  try:
    container = av.open(str(path))
  except (av.error.FFmpegError, OSError) as err:
    raise AudioDecodeError(f"load_audio: cannot read {path}: {err}") from err
  with container:
    if not container.streams.audio:
      raise AudioDecodeError(f"load_audio: {path} has no audio stream")
    stream = container.streams.audio[0]
    try:
      waveform_n, native_rate = decode_audio_stream(container, stream, None,
                                                    f"load_audio: {path}")
    except av.error.FFmpegError as err:
      raise AudioDecodeError(f"load_audio: cannot decode the audio of {path}: {err}") from err
    _check_complete(str(path), container, stream, waveform_n.size / native_rate)
  out_rate = int(rate or native_rate)
  return resample(waveform_n, native_rate, out_rate), out_rate


# ---------------------------------------------------------------- back to a waveform (numpy)

def _stft_np(waveform_n, window_k):
  half = N_FFT // 2
  padded = np.pad(waveform_n, half, mode="reflect")
  frames = 1 + (len(padded) - N_FFT) // HOP_LENGTH
  idx = np.arange(N_FFT)[None] + HOP_LENGTH * np.arange(frames)[:, None]
  return np.fft.rfft(padded[idx] * window_k, axis=-1)  # [T, F]


def _istft_np(stft_tf, window_k, length):
  frames_tk = np.fft.irfft(stft_tf, n=N_FFT, axis=-1) * window_k
  total = N_FFT + HOP_LENGTH * (len(stft_tf) - 1)
  signal_n, norm_n = np.zeros(total), np.zeros(total)
  for t, frame in enumerate(frames_tk):
    signal_n[t * HOP_LENGTH:t * HOP_LENGTH + N_FFT] += frame
    norm_n[t * HOP_LENGTH:t * HOP_LENGTH + N_FFT] += window_k ** 2
  signal_n /= np.maximum(norm_n, 1e-8)
  half = N_FFT // 2
  return signal_n[half:half + length]


def spectrogram_to_waveform(log_mel_tm: np.ndarray, num_iters: int = 32,
                            seed: int = 0) -> np.ndarray:
  """Log-mel [T, M] (un-normalised) -> waveform [(T - 1) * hop] at 16 kHz by Griffin-Lim.

  The mel power is mapped back to linear frequencies with the filterbank's pseudo-inverse
  (negative values clipped), then Griffin-Lim recovers a phase. Good enough to listen to.
  """
  log_mel_tm = np.asarray(log_mel_tm, np.float64)
  mel_tm = np.where(log_mel_tm == 0, 0.0, np.exp(log_mel_tm))
  power_tf = np.maximum(mel_tm @ np.linalg.pinv(mel_filterbank().astype(np.float64)), 0.0)
  magnitude_tf = np.sqrt(power_tf)
  window_k = np.hanning(N_FFT)  # symmetric Hann, as the forward transform
  length = (len(log_mel_tm) - 1) * HOP_LENGTH
  phase = np.exp(2j * np.pi * np.random.default_rng(seed).uniform(size=magnitude_tf.shape))
  waveform_n = _istft_np(magnitude_tf * phase, window_k, length)
  for _ in range(num_iters):
    rebuilt_tf = _stft_np(waveform_n, window_k)
    phase = np.exp(1j * np.angle(rebuilt_tf))
    waveform_n = _istft_np(magnitude_tf * phase, window_k, length)
  return waveform_n.astype(np.float32)
