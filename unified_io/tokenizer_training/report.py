"""A tokenizer run's report: inputs beside their reconstructions, the measures, and the evaluation
curves, as out_dir/index.html with PNGs next to it.

- image: reconstructions.png, a grid of up to 16 examples, each input above its reconstruction,
  upscaled (nearest neighbour, at least 2x) so that 128 px images are readable.
- audio: spectrograms_NNN.png, up to 8 examples, each the input log-mel beside its reconstruction
  on the input's colour scale (so a reconstruction that is too loud or too quiet looks so).
- curves.png: every "eval/*" metric of the trainer's evaluation jsonl against the step.
"""

import html
import json
import math
import os
from typing import Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from unified_io.evaluation import render
from unified_io.tokenizer_training.measures import TokenizerKind, tokenizer_kind

MAX_IMAGE_EXAMPLES = 16
MAX_AUDIO_EXAMPLES = 8
EXAMPLES_PER_ROW = 4  # image grid: examples across; each takes two tiles down
MIN_TILE_PX = 256  # images are upscaled by an integer factor >= 2 to at least this size
LABEL_PX = 14  # the caption strip above each tile
GAP_PX = 4  # white space between tiles and around the grid

SPECTROGRAM_PAIR_PX = (640, 240)  # width, height of one input/reconstruction figure
CURVE_PANEL_PX = (256, 192)  # one metric's subplot
CURVES_PER_ROW = 3
_DPI = 64

_CSS = ("body{font-family:sans-serif;margin:16px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
        "td.value{text-align:right;font-family:monospace}figure{margin:8px 0}"
        "figcaption{color:#666;font-size:90%}")


# ---------------------------------------------------------------- image grid

def upscale_factor(height: int, width: int) -> int:
  """The integer nearest-neighbour factor: at least 2, and enough to reach MIN_TILE_PX."""
  return max(2, math.ceil(MIN_TILE_PX / max(height, width)))


def image_pairs_grid(inputs_bhwc, reconstructions_bhwc) -> Image.Image:
  """[B, H, W, 3] in [-1, 1] (both) -> one RGB grid: per example a column, input above
  reconstruction, each tile captioned; EXAMPLES_PER_ROW examples across, the first
  MAX_IMAGE_EXAMPLES only. The reconstruction is clipped to [-1, 1] as it would be shown."""
  n = min(len(inputs_bhwc), MAX_IMAGE_EXAMPLES)
  h, w = inputs_bhwc.shape[1:3]
  factor = upscale_factor(h, w)
  tile_h, tile_w = h * factor, w * factor
  columns = min(n, EXAMPLES_PER_ROW)
  rows = math.ceil(n / EXAMPLES_PER_ROW)
  cell_h = LABEL_PX + tile_h + GAP_PX  # one captioned tile and the gap below it
  grid = Image.new("RGB", (columns * (tile_w + GAP_PX) + GAP_PX, rows * 2 * cell_h + GAP_PX),
                   (255, 255, 255))
  draw = ImageDraw.Draw(grid)
  font = ImageFont.load_default()
  for i in range(n):
    left = GAP_PX + (i % EXAMPLES_PER_ROW) * (tile_w + GAP_PX)
    top = GAP_PX + (i // EXAMPLES_PER_ROW) * 2 * cell_h
    for j, (label, image) in enumerate((("input", inputs_bhwc[i]),
                                        ("reconstruction", reconstructions_bhwc[i]))):
      tile = Image.fromarray(render.to_uint8(image, (-1.0, 1.0)))
      tile = tile.resize((tile_w, tile_h), Image.NEAREST)
      y = top + j * cell_h
      draw.text((left, y + 1), f"{i} {label}", fill=(0, 0, 0), font=font)
      grid.paste(tile, (left, y + LABEL_PX))
  return grid


# ---------------------------------------------------------------- spectrograms

def spectrogram_pair_png(input_tm, reconstruction_tm, path: str, title: str = "") -> str:
  """Input and reconstruction log-mel [time, mel] side by side (time across, mel up) as a PNG of
  SPECTROGRAM_PAIR_PX, both on the input's colour scale; returns the path."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  # Not render.spectrogram_png: it scales each spectrogram to its own range, which would hide a
  # reconstruction's wrong level.
  vmin, vmax = float(np.min(input_tm)), float(np.max(input_tm))
  fig = Figure(figsize=(SPECTROGRAM_PAIR_PX[0] / _DPI, SPECTROGRAM_PAIR_PX[1] / _DPI))
  axes = fig.subplots(1, 2, sharey=True)
  for ax, label, spec_tm in zip(axes, ("input", "reconstruction"), (input_tm, reconstruction_tm)):
    ax.imshow(np.asarray(spec_tm).T, origin="lower", aspect="auto", cmap="magma",
              interpolation="nearest", vmin=vmin, vmax=vmax)
    ax.set_title(f"{title} {label}".strip(), fontsize=9)
    ax.set_xlabel("time frame", fontsize=8)
  axes[0].set_ylabel("mel bin", fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=_DPI, format="png")
  return path


# ---------------------------------------------------------------- evaluation curves

def read_eval_curves(eval_curve_jsonl: str) -> Dict[str, List[Tuple[float, float]]]:
  """"eval/*" metric -> [(step, value)] from a jsonl of {"step": ..., "eval/...": ...} rows.

  Blank lines, other keys and non-finite or non-numeric values are skipped.
  """
  curves: Dict[str, List[Tuple[float, float]]] = {}
  with open(eval_curve_jsonl, encoding="utf-8") as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as err:
        raise ValueError(f"{eval_curve_jsonl}:{line_number}: not JSON: {err}") from None
      metrics = {k: v for k, v in row.items() if k.startswith("eval/")}
      if metrics and "step" not in row:
        raise ValueError(f"{eval_curve_jsonl}:{line_number}: eval metrics without a \"step\"")
      for key, value in metrics.items():
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if is_number and math.isfinite(value):
          curves.setdefault(key, []).append((float(row["step"]), float(value)))
  return curves


def eval_curves_png(eval_curve_jsonl: str, path: str) -> Optional[str]:
  """One subplot (CURVE_PANEL_PX) per "eval/*" metric against the step, CURVES_PER_ROW across;
  returns the path, or None (nothing written) when the file has no such metric."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  curves = read_eval_curves(eval_curve_jsonl)
  if not curves:
    return None
  columns = min(len(curves), CURVES_PER_ROW)
  rows = math.ceil(len(curves) / CURVES_PER_ROW)
  fig = Figure(figsize=(columns * CURVE_PANEL_PX[0] / _DPI, rows * CURVE_PANEL_PX[1] / _DPI))
  for i, (key, points) in enumerate(sorted(curves.items())):
    ax = fig.add_subplot(rows, columns, i + 1)
    steps, values = zip(*sorted(points))
    ax.plot(steps, values, marker="o", markersize=3, linewidth=1.2)
    ax.set_title(key, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=_DPI, format="png")
  return path


# ---------------------------------------------------------------- the page

def _checked_batch(kind: TokenizerKind, inputs, reconstructions) -> Tuple[np.ndarray, np.ndarray]:
  inputs = np.asarray(inputs, np.float64)
  reconstructions = np.asarray(reconstructions, np.float64)
  channels = 3 if kind is TokenizerKind.IMAGE else 1
  expected = "[B, H, W, 3]" if kind is TokenizerKind.IMAGE else "[B, time, mel, 1]"
  for name, batch in (("inputs", inputs), ("reconstructions", reconstructions)):
    if batch.ndim != 4 or batch.shape[-1] != channels or batch.shape[0] == 0:
      raise ValueError(f"write_tokenizer_report: {kind.value} {name} must be {expected}, got "
                       f"shape {batch.shape}")
  if inputs.shape != reconstructions.shape:
    raise ValueError(f"write_tokenizer_report: inputs shape {inputs.shape} != reconstructions "
                     f"shape {reconstructions.shape}")
  return inputs, reconstructions


def _shown(value) -> str:
  if isinstance(value, (float, np.floating)):
    return f"{value:.4g}"
  return str(value)


def _measures_table(measures: Mapping[str, float]) -> str:
  esc = html.escape
  rows = "".join(f"<tr><td>{esc(str(name))}</td><td class=\"value\">{esc(_shown(value))}</td></tr>"
                 for name, value in measures.items())
  return f"<table><tr><th>measure</th><th>value</th></tr>{rows}</table>"


def _reconstruction_figures(kind: TokenizerKind, inputs, reconstructions, out_dir: str) -> str:
  """Writes the reconstruction PNGs; returns their HTML."""
  if kind is TokenizerKind.IMAGE:
    render.save_png(image_pairs_grid(inputs, reconstructions),
                    os.path.join(out_dir, "reconstructions.png"))
    shown = min(len(inputs), MAX_IMAGE_EXAMPLES)
    return (f"<figure><img src=\"reconstructions.png\" alt=\"reconstructions\"><figcaption>"
            f"{shown} of {len(inputs)} examples: each input above its reconstruction"
            f"</figcaption></figure>")
  parts = []
  for i in range(min(len(inputs), MAX_AUDIO_EXAMPLES)):
    name = f"spectrograms_{i:03d}.png"
    spectrogram_pair_png(inputs[i, ..., 0], reconstructions[i, ..., 0],
                         os.path.join(out_dir, name), title=f"{i}")
    parts.append(f"<figure><img src=\"{name}\" alt=\"example {i}\"><figcaption>example {i}: "
                 f"input (left), reconstruction (right), on the input's colour scale"
                 f"</figcaption></figure>")
  return "".join(parts)


def write_tokenizer_report(out_dir: str, kind: Union[str, TokenizerKind], inputs, reconstructions,
                           measures: Mapping[str, float], eval_curve_jsonl: Optional[str] = None,
                           title: str = "Tokenizer reconstructions") -> str:
  """Writes out_dir/index.html and its PNGs; returns the HTML's path.

  kind "image": inputs/reconstructions [B, H, W, 3] in [-1, 1]; kind "audio": normalised log-mel
  [B, time, mel, 1]. `measures` (name -> value, e.g. `measures.summary`) is shown as a table;
  `eval_curve_jsonl`, when given and present, is plotted as curves.png.
  """
  kind = tokenizer_kind(kind)
  inputs, reconstructions = _checked_batch(kind, inputs, reconstructions)
  os.makedirs(out_dir, exist_ok=True)
  sections = [f"<h1>{html.escape(title)}</h1>", "<h2>Measures</h2>", _measures_table(measures)]
  if eval_curve_jsonl and os.path.exists(eval_curve_jsonl):
    if eval_curves_png(eval_curve_jsonl, os.path.join(out_dir, "curves.png")):
      sections += ["<h2>Evaluation curves</h2>",
                   "<img src=\"curves.png\" alt=\"evaluation metrics against step\">"]
  sections += ["<h2>Reconstructions</h2>",
               _reconstruction_figures(kind, inputs, reconstructions, out_dir)]
  page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
          f"</title><style>{_CSS}</style></head><body>{''.join(sections)}</body></html>\n")
  path = os.path.join(out_dir, "index.html")
  with open(path, "w", encoding="utf-8") as f:
    f.write(page)
  return path
