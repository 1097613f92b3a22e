"""How well a VQ tokenizer reconstructs its input, and how much of its codebook it uses.

All functions take numpy-convertible batches (jax arrays included) and compute in float64 on the
host. Images are [B, H, W, C] (C = 3 for the image VQGAN's [-1, 1] pixels, 1 for the audio
ViT-VQGAN's normalised log-mel [B, time, mel, 1]); the per-example measures return [B].

- `psnr`: peak signal-to-noise ratio in dB, of the reconstruction clipped to the value range (as
  the image would be shown). Identical images give +inf; `mean_psnr` caps each value at
  `PSNR_CAP_DB` before averaging so that one perfect reconstruction does not make the mean inf.
- `ssim`: the structural similarity of Wang et al. 2004 (11x11 Gaussian window, sigma 1.5,
  K1 = 0.01, K2 = 0.03, 'valid' positions only), mean over positions and channels.
- `spectrogram_l1`: mean absolute error per example.
- `codebook_usage`: the fraction of codes used and the perplexity of the code histogram.
- `summary`: the scalars the tokenizer trainer logs at evaluation, per tokenizer kind.
"""

import enum
from typing import Dict, NamedTuple, Tuple, Union

import numpy as np

PSNR_CAP_DB = 100.0  # a perfect reconstruction's +inf PSNR counts as this in `mean_psnr`

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

ValueRange = Tuple[float, float]


class TokenizerKind(str, enum.Enum):
  """Which tokenizer's batch is measured; `TokenizerKind("image")` parses the string form."""
  IMAGE = "image"
  AUDIO = "audio"


def tokenizer_kind(kind: Union[str, TokenizerKind]) -> TokenizerKind:
  """"image" / "audio" (or the enum) -> TokenizerKind; a ValueError naming the choices else."""
  try:
    return TokenizerKind(kind)
  except ValueError:
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of "
                     f"{[k.value for k in TokenizerKind]}") from None


def _pair(reference, reconstruction, name: str) -> Tuple[np.ndarray, np.ndarray]:
  """Both as float64 [B, ...] of the same shape, or a ValueError naming the measure."""
  reference = np.asarray(reference, np.float64)
  reconstruction = np.asarray(reconstruction, np.float64)
  if reference.shape != reconstruction.shape:
    raise ValueError(f"{name}: reference shape {reference.shape} != reconstruction shape "
                     f"{reconstruction.shape}")
  if reference.ndim < 2 or reference.shape[0] == 0:
    raise ValueError(f"{name}: expected a non-empty batch [B, ...], got shape {reference.shape}")
  return reference, reconstruction


def _range_width(value_range: ValueRange, name: str) -> float:
  lo, hi = (float(v) for v in value_range)
  if not hi > lo:
    raise ValueError(f"{name}: value_range must be (low, high) with high > low, got "
                     f"{tuple(value_range)}")
  return hi - lo


# ---------------------------------------------------------------- PSNR

def psnr(reference, reconstruction, value_range: ValueRange = (-1.0, 1.0)) -> np.ndarray:
  """PSNR per example [B] in dB: 10 log10(peak^2 / MSE), peak = the width of `value_range`.

  The reconstruction is clipped to `value_range` first (what a viewer would see); the reference
  is taken as is. An exact reconstruction (MSE 0) gives +inf.
  """
  reference, reconstruction = _pair(reference, reconstruction, "psnr")
  peak = _range_width(value_range, "psnr")
  shown = np.clip(reconstruction, *value_range)
  mse_b = np.mean((reference - shown) ** 2, axis=tuple(range(1, reference.ndim)))
  with np.errstate(divide="ignore"):
    return 10.0 * np.log10(peak ** 2 / mse_b)


def mean_psnr(psnr_b, cap_db: float = PSNR_CAP_DB) -> float:
  """The mean of per-example PSNRs, each capped at `cap_db` (so +inf counts as `cap_db`)."""
  return float(np.mean(np.minimum(np.asarray(psnr_b, np.float64), cap_db)))


# ---------------------------------------------------------------- SSIM

def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
  """The 1-D Gaussian [size], summing to 1; the 2-D SSIM window is its outer product."""
  offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
  window = np.exp(-offsets ** 2 / (2 * sigma ** 2))
  return window / window.sum()


def _filter_valid(x_bhwc: np.ndarray, window: np.ndarray) -> np.ndarray:
  """Gaussian-weighted local means at 'valid' positions: [B, H, W, C] -> [B, H-k+1, W-k+1, C].

  The 2-D window is separable, so rows then columns are filtered with the 1-D window (it is
  symmetric: correlation and convolution agree).
  """
  k = window.shape[0]
  # sliding_window_view appends the window axis last: [B, H-k+1, W, C, k] @ [k].
  rows = np.lib.stride_tricks.sliding_window_view(x_bhwc, k, axis=1) @ window
  return np.lib.stride_tricks.sliding_window_view(rows, k, axis=2) @ window


def ssim_map(reference, reconstruction, value_range: ValueRange = (-1.0, 1.0)) -> np.ndarray:
  """The local SSIM [B, H-10, W-10, C] of [B, H, W, C] images, per channel, 'valid' positions.

  The reconstruction is clipped to `value_range` (as in `psnr`); L = the range's width.
  Local statistics use the normalised Gaussian window, with the biased (weighted) variances and
  covariance of Wang et al.'s reference implementation.
  """
  reference, reconstruction = _pair(reference, reconstruction, "ssim")
  if reference.ndim != 4:
    raise ValueError(f"ssim: expected images [B, H, W, C], got shape {reference.shape}")
  if min(reference.shape[1:3]) < SSIM_WINDOW:
    raise ValueError(f"ssim: images must be at least {SSIM_WINDOW}x{SSIM_WINDOW} (the window), "
                     f"got {reference.shape[1]}x{reference.shape[2]}")
  width = _range_width(value_range, "ssim")
  x = reference
  y = np.clip(reconstruction, *value_range)
  c = x.shape[-1]
  # One filtering pass over the five local moments, stacked along the channel axis.
  moments = _filter_valid(np.concatenate([x, y, x * x, y * y, x * y], axis=-1), gaussian_window())
  mu_x, mu_y, xx, yy, xy = (moments[..., i * c:(i + 1) * c] for i in range(5))
  var_x = xx - mu_x ** 2
  var_y = yy - mu_y ** 2
  cov_xy = xy - mu_x * mu_y
  c1 = (SSIM_K1 * width) ** 2
  c2 = (SSIM_K2 * width) ** 2
  return (((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2))
          / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)))


def ssim(reference, reconstruction, value_range: ValueRange = (-1.0, 1.0)) -> np.ndarray:
  """SSIM per example [B]: `ssim_map` averaged over positions and channels."""
  return np.mean(ssim_map(reference, reconstruction, value_range), axis=(1, 2, 3))


# ---------------------------------------------------------------- spectrograms

def spectrogram_l1(reference, reconstruction) -> np.ndarray:
  """Mean absolute error per example [B] (over time, mel and channel)."""
  reference, reconstruction = _pair(reference, reconstruction, "spectrogram_l1")
  return np.mean(np.abs(reference - reconstruction), axis=tuple(range(1, reference.ndim)))


# ---------------------------------------------------------------- codebook

class CodebookUsage(NamedTuple):
  fraction_used: float  # codes_used / codebook_size
  perplexity: float  # exp(entropy in nats of the code histogram): 1 (one code) .. codebook_size
  codes_used: int  # distinct codes among the ids


def codebook_usage(ids, codebook_size: int) -> CodebookUsage:
  """How many codes of the book the ids use, and how evenly (perplexity), over all ids given."""
  ids = np.asarray(ids)
  if codebook_size < 1:
    raise ValueError(f"codebook_usage: codebook_size must be >= 1, got {codebook_size}")
  if ids.size == 0:
    raise ValueError("codebook_usage: no ids given")
  if not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"codebook_usage: ids must be integers, got dtype {ids.dtype}")
  lowest, highest = int(ids.min()), int(ids.max())
  if lowest < 0 or highest >= codebook_size:
    bad = lowest if lowest < 0 else highest
    raise ValueError(f"codebook_usage: id {bad} outside the codebook [0, {codebook_size})")
  counts = np.bincount(ids.reshape(-1), minlength=codebook_size)
  p = counts[counts > 0] / ids.size
  entropy = float(-np.sum(p * np.log(p)))
  return CodebookUsage(fraction_used=len(p) / codebook_size, perplexity=float(np.exp(entropy)),
                       codes_used=int(len(p)))


# ---------------------------------------------------------------- what the trainer logs

def summary(kind: Union[str, TokenizerKind], reference, reconstruction, ids,
            codebook_size: int) -> Dict[str, float]:
  """The evaluation scalars for one batch (means over its examples).

  image (reference/reconstruction [B, H, W, 3] in [-1, 1]): psnr (`mean_psnr`: +inf capped at
    PSNR_CAP_DB), ssim, codebook_usage (fraction of codes used), perplexity, tokens_per_example.
  audio (normalised log-mel [B, time, mel, 1]): spectrogram_l1, psnr, codebook_usage,
    perplexity, tokens_per_example. The spectrogram has no fixed range, so its PSNR takes
    value_range = (min, max) of the reference over the whole batch (the reconstruction is clipped
    to it); a constant reference has no such range and gives psnr NaN.
  `ids` are the codes of the batch [B, ...]; tokens_per_example = ids.size / B.
  """
  kind = tokenizer_kind(kind)
  reference = np.asarray(reference, np.float64)
  ids = np.asarray(ids)
  usage = codebook_usage(ids, codebook_size)
  out = {}
  if kind is TokenizerKind.IMAGE:
    out["psnr"] = mean_psnr(psnr(reference, reconstruction))
    out["ssim"] = float(np.mean(ssim(reference, reconstruction)))
  else:
    out["spectrogram_l1"] = float(np.mean(spectrogram_l1(reference, reconstruction)))
    lo, hi = float(reference.min()), float(reference.max())
    out["psnr"] = mean_psnr(psnr(reference, reconstruction, (lo, hi))) if hi > lo else float("nan")
  out["codebook_usage"] = usage.fraction_used
  out["perplexity"] = usage.perplexity
  out["tokens_per_example"] = ids.size / reference.shape[0]
  return out
