"""Rendering what the model produced: boxes, points and masks on images, PNG, spectrograms, WAV,
and an HTML gallery of predictions.

Images are numpy [H, W, 3] (uint8, or float in [0, 1]; `to_uint8` maps other ranges such as the
VQGAN's [-1, 1]) or PIL images. Boxes are (y1, x1, y2, x2) and points (y, x) in pixels of the
image they are drawn on (unified_io/data/ops/boxes.py). Spectrograms are log-mel [T time, M mel]
as in unified_io/data/ops/audio.py; audio is 16 kHz mono.

Generated audio: the audio VQGAN decodes tokens to a spectrogram still normalised with the
AudioSet statistics (the audio target normalisation); `spectrogram_to_wav` undoes that with the
constants of unified_io/data/ops/audio.py and inverts the log-mel with its Griffin-Lim, or with a
vocoder the user names as "module:function" (see `load_vocoder`).
"""

import html
import importlib
import os
from typing import Callable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from unified_io.data.ops import audio as audio_ops

ImageLike = Union[np.ndarray, Image.Image]
Colour = Union[str, Tuple[int, int, int]]
Vocoder = Callable[[np.ndarray], Union[np.ndarray, Tuple[np.ndarray, int]]]

PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (255, 225, 25), (0, 128, 128))


# ---------------------------------------------------------------- images

def to_uint8(image: np.ndarray, value_range: Tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
  """Float image with values in `value_range` (clipped to it) -> uint8; uint8 passes through."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image
  lo, hi = value_range
  if not hi > lo:
    raise ValueError(f"to_uint8: value_range must be (low, high) with high > low, got "
                     f"{value_range}")
  scaled = (np.clip(image.astype(np.float64), lo, hi) - lo) / (hi - lo)
  return np.round(scaled * 255).astype(np.uint8)


def as_pil(image: ImageLike) -> Image.Image:
  """numpy [H, W, 3] / [H, W] (uint8, or float in [0, 1]) or PIL -> an RGB PIL image (a copy)."""
  if isinstance(image, Image.Image):
    return image.convert("RGB")
  array = to_uint8(image)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
    raise ValueError(f"expected an image [H, W, 3] or [H, W], got shape {array.shape}")
  return Image.fromarray(array).convert("RGB")


def _colours(colours: Optional[Sequence[Colour]], n: int) -> list:
  if colours is None:
    return [PALETTE[i % len(PALETTE)] for i in range(n)]
  if isinstance(colours, str) or (len(colours) == 3 and all(isinstance(c, int) for c in colours)):
    return [colours] * n  # one colour for all
  if len(colours) not in (1, n):
    raise ValueError(f"give one colour or one per item: {len(colours)} colours for {n} items")
  return list(colours) * (n if len(colours) == 1 else 1)


def _labels(labels: Optional[Sequence[str]], n: int) -> list:
  if labels is None:
    return [None] * n
  if len(labels) != n:
    raise ValueError(f"{len(labels)} labels for {n} items; give one label per item")
  return list(labels)


def _text_with_background(draw: ImageDraw.ImageDraw, xy, text: str, colour: Colour) -> None:
  font = ImageFont.load_default()
  left, top, right, bottom = draw.textbbox(xy, text, font=font)
  draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=colour)
  draw.text(xy, text, fill=(255, 255, 255), font=font)


def draw_boxes(image: ImageLike, boxes_n4, labels: Optional[Sequence[str]] = None,
               colours: Optional[Sequence[Colour]] = None, width: int = 2) -> Image.Image:
  """A copy of `image` with (y1, x1, y2, x2) boxes outlined, and their labels written above."""
  out = as_pil(image)
  boxes_n4 = np.asarray(boxes_n4, np.float64).reshape(-1, 4) if np.size(boxes_n4) else np.zeros(
      [0, 4])
  draw = ImageDraw.Draw(out)
  for (y1, x1, y2, x2), label, colour in zip(boxes_n4, _labels(labels, len(boxes_n4)),
                                             _colours(colours, len(boxes_n4))):
    top, bottom = sorted((y1, y2))
    left, right = sorted((x1, x2))
    draw.rectangle([left, top, right, bottom], outline=colour, width=width)
    if label:
      _text_with_background(draw, (left + width, top + width), str(label), colour)
  return out


def draw_points(image: ImageLike, points_n2, labels: Optional[Sequence[str]] = None,
                colours: Optional[Sequence[Colour]] = None, radius: int = 3) -> Image.Image:
  """A copy of `image` with (y, x) points drawn as filled discs (keypoints), labels beside them."""
  out = as_pil(image)
  points_n2 = np.asarray(points_n2, np.float64).reshape(-1, 2) if np.size(points_n2) else np.zeros(
      [0, 2])
  draw = ImageDraw.Draw(out)
  for (y, x), label, colour in zip(points_n2, _labels(labels, len(points_n2)),
                                   _colours(colours, len(points_n2))):
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    if label:
      _text_with_background(draw, (x + radius + 1, y - radius), str(label), colour)
  return out


def overlay_mask(image: ImageLike, mask_hw, colour: Tuple[int, int, int] = (255, 0, 0),
                 alpha: float = 0.5) -> Image.Image:
  """`image` with `colour` blended in where `mask_hw` is set (bool, or float weights in [0, 1])."""
  base = np.asarray(as_pil(image), np.float64)
  mask = np.asarray(mask_hw, np.float64)
  if mask.shape != base.shape[:2]:
    raise ValueError(f"overlay_mask: mask shape {mask.shape} != image size {base.shape[:2]}")
  weight = (alpha * np.clip(mask, 0.0, 1.0))[..., None]
  blended = base * (1 - weight) + np.asarray(colour, np.float64) * weight
  return Image.fromarray(np.round(blended).astype(np.uint8))


def save_png(image: ImageLike, path: str) -> str:
  """Writes `image` as PNG (parent folders created); returns the path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  as_pil(image).save(path, format="PNG")
  return path


def _as_log_mel(spectrogram) -> np.ndarray:
  """[T, M], [T, M, 1] or [1, T, M, 1] -> float64 [T, M]."""
  spec = np.asarray(spectrogram, np.float64)
  spec = spec.reshape(spec.shape[-3:-1]) if spec.ndim >= 3 and spec.shape[-1] == 1 else spec
  if spec.ndim != 2 or spec.size == 0:
    raise ValueError(f"expected a spectrogram [time, mel] (or [time, mel, 1]), got shape "
                     f"{np.shape(spectrogram)}")
  return spec


def spectrogram_png(log_mel_tm, path: str, title: str = "", figsize=(4.0, 3.0),
                    dpi: int = 80) -> str:
  """A log-mel spectrogram [T, M] as a PNG: time across, mel up (origin lower), no colourbar.

  NaN bins (padding, not sampled) are left blank.
  """
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  spec_tm = _as_log_mel(log_mel_tm)
  fig = Figure(figsize=figsize)  # no pyplot: no global state, no backend to pick
  ax = fig.add_subplot()
  ax.imshow(spec_tm.T, origin="lower", aspect="auto", cmap="magma", interpolation="nearest")
  ax.set_xlabel("time frame")
  ax.set_ylabel("mel bin")
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi, format="png")
  return path


# ---------------------------------------------------------------- audio

def write_wav(waveform_n, path: str, sample_rate: int = audio_ops.SAMPLE_RATE,
              peak_normalize: bool = False) -> str:
  """Mono float waveform in [-1, 1] (clipped) or int16 -> 16-bit PCM WAV; returns the path.

  `peak_normalize` scales the loudest sample to 0.9 first (Griffin-Lim output has no set level).
  """
  from scipy.io import wavfile  # pylint: disable=import-outside-toplevel
  waveform_n = np.asarray(waveform_n)
  if waveform_n.ndim != 1 or waveform_n.size == 0:
    raise ValueError(f"write_wav: expected a non-empty mono waveform [N], got shape "
                     f"{waveform_n.shape}")
  if waveform_n.dtype != np.int16:
    samples = waveform_n.astype(np.float64)
    if not np.all(np.isfinite(samples)):
      raise ValueError(f"write_wav: the waveform for {path} has NaN or infinite samples")
    peak = np.max(np.abs(samples))
    if peak_normalize and peak > 0:
      samples = samples * (0.9 / peak)
    waveform_n = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  wavfile.write(path, int(sample_rate), waveform_n)
  return path


def load_vocoder(spec: str) -> Vocoder:
  """"package.module:function" -> that function: log-mel [T, M] (un-normalised) -> waveform [N]
  at 16 kHz, or (waveform, sample_rate)."""
  module_name, sep, attr = str(spec).partition(":")
  if not sep or not module_name or not attr:
    raise ValueError(f"vocoder must be given as 'module:function' (e.g. mypkg.voc:mel_to_wave), "
                     f"got {spec!r}")
  try:
    module = importlib.import_module(module_name)
  except ImportError as err:
    raise ValueError(f"vocoder {spec!r}: cannot import module {module_name!r}: {err}") from err
  fn = getattr(module, attr, None)
  if not callable(fn):
    raise ValueError(f"vocoder {spec!r}: module {module_name!r} has no callable {attr!r}")
  return fn


def spectrogram_to_waveform(spectrogram, normalized: bool = True,
                            vocoder: Union[None, str, Vocoder] = None, num_iters: int = 32,
                            mean: float = audio_ops.AUDIOSET_MEAN,
                            std: float = audio_ops.AUDIOSET_STD) -> Tuple[np.ndarray, int]:
  """Spectrogram [T, M] (or [T, M, 1]) -> (float32 waveform [N], sample rate).

  With `normalized` (the audio VQGAN's output) the log-mel is first recovered as x * std + mean
  (the AudioSet target statistics by default). Then `vocoder` (a callable or "module:function")
  makes the waveform, else Griffin-Lim (`num_iters` iterations) at 16 kHz.
  """
  log_mel_tm = _as_log_mel(spectrogram)
  if normalized:
    log_mel_tm = audio_ops.denormalize_spectrogram(log_mel_tm, mean, std)
  if vocoder is not None:
    fn = load_vocoder(vocoder) if isinstance(vocoder, str) else vocoder
    result = fn(log_mel_tm)
    waveform, rate = result if isinstance(result, tuple) else (result, audio_ops.SAMPLE_RATE)
    return np.asarray(waveform, np.float32).reshape(-1), int(rate)
  if log_mel_tm.shape[-1] != audio_ops.NUM_MELS:
    raise ValueError(f"Griffin-Lim needs {audio_ops.NUM_MELS} mel bins (the last axis), got "
                     f"spectrogram shape {log_mel_tm.shape}; is it [mel, time]? transpose it")
  return audio_ops.spectrogram_to_waveform(log_mel_tm, num_iters=num_iters), audio_ops.SAMPLE_RATE


def spectrogram_to_wav(spectrogram, path: str, normalized: bool = True,
                       vocoder: Union[None, str, Vocoder] = None, num_iters: int = 32) -> str:
  """`spectrogram_to_waveform`, peak-normalised, written as a WAV; returns the path."""
  waveform, rate = spectrogram_to_waveform(spectrogram, normalized, vocoder, num_iters)
  return write_wav(waveform, path, rate, peak_normalize=True)


# ---------------------------------------------------------------- the gallery

_ITEM_KEYS = ("title", "image", "prompt", "prediction", "reference", "audio", "spectrogram",
              "metrics")
_CSS = ("body{font-family:sans-serif;margin:16px}.cards{display:flex;flex-wrap:wrap;gap:12px}"
        ".card{border:1px solid #ccc;border-radius:6px;padding:8px;width:300px}"
        ".card img{max-width:100%}.card p{margin:4px 0;word-wrap:break-word}"
        ".card audio{width:100%}.label{color:#666;font-size:90%}")


def _media_path(value, out_dir: str, name: str, writer) -> str:
  """A path relative to out_dir: existing file paths are kept, arrays are written first."""
  if isinstance(value, (str, os.PathLike)):
    path = os.fspath(value)
    return os.path.relpath(path, out_dir) if os.path.isabs(path) else path
  return os.path.relpath(writer(value, os.path.join(out_dir, "media", name)), out_dir)


def _card(i: int, item: Mapping, out_dir: str) -> str:
  unknown = set(item) - set(_ITEM_KEYS)
  if unknown:
    raise ValueError(f"gallery_html: item {i} has unknown keys {sorted(unknown)}; known keys: "
                     f"{list(_ITEM_KEYS)}")
  esc = lambda t: html.escape(str(t), quote=True)
  parts = []
  if item.get("title"):
    parts.append(f"<h3>{esc(item['title'])}</h3>")
  if item.get("image") is not None:
    src = _media_path(item["image"], out_dir, f"item_{i:04d}.png", save_png)
    parts.append(f"<img src=\"{esc(src)}\" alt=\"image {i}\">")
  if item.get("spectrogram") is not None:
    src = _media_path(item["spectrogram"], out_dir, f"item_{i:04d}_spectrogram.png",
                      spectrogram_png)
    parts.append(f"<img src=\"{esc(src)}\" alt=\"spectrogram {i}\">")
  if item.get("audio") is not None:
    src = _media_path(item["audio"], out_dir, f"item_{i:04d}.wav", write_wav)
    parts.append(f"<audio controls src=\"{esc(src)}\"></audio>")
  for key in ("prompt", "prediction", "reference"):
    value = item.get(key)
    if value is not None:
      text = " | ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
      parts.append(f"<p><span class=\"label\">{key}:</span> {esc(text)}</p>")
  for name, value in dict(item.get("metrics") or {}).items():
    shown = f"{value:.4g}" if isinstance(value, (float, np.floating)) else value
    parts.append(f"<p><span class=\"label\">{esc(name)}:</span> {esc(shown)}</p>")
  return f"<div class=\"card\">{''.join(parts)}</div>"


def gallery_html(items: Sequence[Mapping], out_dir: str, title: str = "Predictions",
                 filename: str = "gallery.html") -> str:
  """An HTML page of cards, one per item; returns its path (out_dir/filename).

  Each item is a dict with any of: "title", "image" (a file path, or an image array / PIL image,
  written to out_dir/media/), "spectrogram" (a PNG path, or a log-mel [T, M] array, drawn),
  "audio" (a WAV path, or a 16 kHz waveform array, written), "prompt", "prediction", "reference"
  (text; a list is joined with " | "), "metrics" (name -> value). Relative paths are relative to
  out_dir. All text is HTML-escaped.
  """
  os.makedirs(out_dir, exist_ok=True)
  cards = "".join(_card(i, item, out_dir) for i, item in enumerate(items))
  page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
          f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
          f"<div class=\"cards\">{cards}</div></body></html>\n")
  path = os.path.join(out_dir, filename)
  with open(path, "w", encoding="utf-8") as f:
    f.write(page)
  return path
