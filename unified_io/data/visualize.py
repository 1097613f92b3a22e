"""Look at a task's examples after preprocessing: PNGs and an index.html.

  python -m unified_io.cli.visualize coco_detection --n 16 --out /tmp/look [--split validation]
      [--seed 0] [--no_shuffle] [--model models/tiny_multimodal.gin]

Takes examples of a registered seqio task or mixture (`import unified_io.tasks` registers them)
exactly as the model will get them from stage 2 (docs/data.md) and draws, per example: the input
image rebuilt from its (possibly sampled) patches with the boxes decoded from the location tokens
of the prompt (red) and of the target text (green), the image target, the video frames as a strip,
the input / history / target spectrograms, and the prompt and target text decoded by the
vocabulary. Patches the sampling left out show as grey. Sizes are those of the model whose size
gin `--model` names (the data contract of `make_config()` after that gin file; default: the
release's sizes, `unified_io.contract.DataConfig()`).
"""

import dataclasses
import html
import os
import textwrap
from typing import Dict, List, Optional, Sequence

import numpy as np

from unified_io.data import bad_input
from unified_io.data.ops import audio as audio_ops
from unified_io.data.ops import boxes as boxes_ops
from unified_io.data.ops import image as image_ops
from unified_io.modalities import Modality

_MISSING = 0.5  # grey for patches that were not sampled
_PADDING_TINT = (0.35, 0.45, 0.85)


# ---------------------------------------------------------------- stage-2 fields -> arrays

def unpatchify(patches_np: np.ndarray, pos_ids_n: np.ndarray, grid: Sequence[int], patch: int,
               channels: int, fill: float = np.nan) -> np.ndarray:
  """Sampled patches [N, p*p*C] at grid positions -> [gh*p, gw*p, C]; unsampled cells = `fill`.

  The inverse of stage 2's `patchify` (grid row-major, (dh dw c) inside a patch). Padding patches
  (mask 0) are drawn too: they carry the padded pixels.
  """
  gh, gw = grid
  cells = np.full([gh * gw, patch * patch * channels], fill, np.float32)
  cells[np.asarray(pos_ids_n)] = patches_np
  cells = cells.reshape(gh, gw, patch, patch, channels).transpose(0, 2, 1, 3, 4)
  return cells.reshape(gh * patch, gw * patch, channels)


def _frames(ex, modality):
  """(patches [F, N, P], pos_ids [F, N], mask [F, N]) of an input modality, None when absent."""
  patches = ex.get(f"{modality}_patches")
  if patches is None or patches.shape[0] == 0:
    return None
  frames = patches if Modality(modality).is_history else patches[None]
  shape = frames.shape[:2]
  return (frames, ex[f"{modality}_patch_pos_ids"].reshape(shape),
          ex[f"{modality}_patch_mask"].reshape(shape))


def _cell_mask(pos_n, mask_n, grid, patch) -> np.ndarray:
  """[H, W] bool: True on pixels of sampled patches whose mask says padding."""
  pad = unpatchify((1 - np.asarray(mask_n, np.float32))[:, None].repeat(patch * patch, 1), pos_n,
                   grid, patch, 1, fill=0.0)
  return pad[..., 0] > 0


def input_image(ex: Dict[str, np.ndarray], modality: str, cfg, tint_padding: bool = False
                ) -> Optional[np.ndarray]:
  """Image input (or history frames) -> [(F,) H, W, 3] in [0, 1], None when absent.

  Unsampled patches are grey; with `tint_padding`, padding patches (mask 0) are tinted blue.
  """
  parts = _frames(ex, modality)
  if parts is None:
    return None
  out = []
  for patches, pos, mask in zip(*parts):
    grid, patch = cfg.grid(modality), cfg.image_patch_size
    normalized = unpatchify(patches, pos, grid, patch, 3)
    image = np.array(image_ops.denormalize_clip(np.nan_to_num(normalized)))
    image[np.isnan(normalized)] = _MISSING
    if tint_padding:
      pad = _cell_mask(pos, mask, grid, patch)
      image[pad] = 0.5 * image[pad] + 0.5 * np.array(_PADDING_TINT)
    out.append(np.clip(image, 0, 1))
  return np.stack(out) if Modality(modality).is_history else out[0]


def input_spectrogram(ex: Dict[str, np.ndarray], modality: str, cfg, blank_padding: bool = False
                      ) -> Optional[np.ndarray]:
  """Audio input (or history segments) -> log-mel [(F,) time, mel], None when absent.

  Unsampled patches are NaN (drawn blank); with `blank_padding`, so are padding patches (mask 0),
  which would otherwise show the release's log-mel value 0 for padding.
  """
  parts = _frames(ex, modality)
  if parts is None:
    return None
  out = []
  for patches, pos, mask in zip(*parts):
    grid, patch = cfg.grid(modality), cfg.audio_patch_size
    spec = unpatchify(patches, pos, grid, patch, 1)[..., 0]
    spec = audio_ops.denormalize_spectrogram(spec, audio_ops.AUDIO_VIT_MEAN, audio_ops.AUDIO_VIT_STD)
    if blank_padding:
      spec[_cell_mask(pos, mask, grid, patch)] = np.nan
    out.append(spec)
  return np.stack(out) if Modality(modality).is_history else out[0]


def decode_text(ids: np.ndarray, vocab) -> str:
  ids = [int(i) for i in np.asarray(ids) if int(i) != 0]
  return vocab.decode(ids) if ids else ""


def meta_text(ex: Dict[str, np.ndarray]) -> Dict[str, str]:
  out = {}
  for key in sorted(k for k in ex if k.startswith("meta/")):
    value = ex[key]
    if isinstance(value, bytes) or (isinstance(value, np.ndarray) and value.dtype == object):
      value = np.vectorize(lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else b)(
          value) if isinstance(value, np.ndarray) else value.decode("utf-8", "replace")
    text = str(value if np.ndim(value) == 0 else np.asarray(value).tolist())
    out[key[len("meta/"):]] = text if len(text) < 300 else text[:300] + " ..."
  return out


# ---------------------------------------------------------------- drawing

def _draw_boxes(ax, boxes_n4, color, style):
  import matplotlib.patches as mpatches  # pylint: disable=import-outside-toplevel
  for y1, x1, y2, x2 in boxes_n4:
    ax.add_patch(mpatches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color,
                                    linewidth=1.5, linestyle=style))


def _panels(ex, cfg, prompt, target):
  """[(title, kind, data)] for each part of the example that is present."""
  panels = []
  image = input_image(ex, "image", cfg, tint_padding=True)
  if image is not None:
    boxes = {"prompt": boxes_ops.text_to_boxes_np(prompt, cfg.image_input_size),
             "target": boxes_ops.text_to_boxes_np(target, cfg.image_input_size)}
    panels.append(("input image", "image", (image, boxes)))
  if ex.get("image_target") is not None and ex["image_target"].shape[0]:
    panels.append(("image target", "image", (np.clip((ex["image_target"] + 1) / 2, 0, 1), None)))
  frames = input_image(ex, "image_history", cfg, tint_padding=True)
  if frames is not None:
    panels.append((f"video frames ({len(frames)})", "image", (np.concatenate(list(frames), 1), None)))
  for modality, title in (("audio", "audio input"), ("audio_history", "audio history")):
    spec = input_spectrogram(ex, modality, cfg, blank_padding=True)
    if spec is not None:
      spec = np.concatenate(list(spec), 0) if spec.ndim == 3 else spec
      panels.append((title, "spectrogram", spec))
  if ex.get("audio_target") is not None and ex["audio_target"].shape[0]:
    spec = audio_ops.denormalize_spectrogram(ex["audio_target"][..., 0])
    cells = ex["audio_target_mask"].reshape(
        [s // cfg.audio_target_patch_size for s in cfg.audio_target_size]) == 0
    spec[np.kron(cells, np.ones([cfg.audio_target_patch_size] * 2)) > 0] = np.nan
    panels.append(("audio target", "spectrogram", spec))
  sensor = ex.get("sensor_patches")
  if sensor is not None and sensor.shape[0]:
    signal = sensor[ex["sensor_patch_mask"] > 0].reshape(-1, cfg.sensor_channels)  # [T, C]
    panels.append(("sensor input", "signal", signal))
  return panels


def render_example(ex: Dict[str, np.ndarray], cfg, vocab, path: str, title: str = "") -> Dict:
  """Draw one stage-2 example to `path` (PNG); returns its decoded texts for the index page."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  prompt = decode_text(ex["text_inputs"], vocab)
  target = decode_text(ex.get("text_targets", np.zeros([0])), vocab)
  panels = _panels(ex, cfg, prompt, target)
  cols = max(len(panels), 1)
  fig, axes = plt.subplots(1, cols, figsize=(4 * cols, 4.4), squeeze=False)
  for ax, (name, kind, data) in zip(axes[0], panels):
    if kind == "image":
      image, boxes = data
      ax.imshow(image, interpolation="nearest")
      if boxes:
        _draw_boxes(ax, boxes["target"], "lime", "-")
        _draw_boxes(ax, boxes["prompt"], "red", "--")
    elif kind == "signal":  # one line per channel over time
      for c in range(data.shape[1]):
        ax.plot(data[:, c], linewidth=0.8, label=f"ch {c}")
      ax.legend(fontsize=6, ncol=3)
      ax.set_xlabel("sample")
    else:  # spectrogram: time across, mel up
      ax.imshow(data.T, origin="lower", aspect="auto", cmap="magma")
      ax.set_xlabel("time frame")
      ax.set_ylabel("mel bin")
    ax.set_title(name, fontsize=9)
    if kind == "image":
      ax.axis("off")
  if not panels:
    axes[0][0].axis("off")
  wrap = lambda s: "\n".join(textwrap.wrap(s, 110)[:3])
  fig.suptitle(f"{title}\nprompt: {wrap(prompt)}\ntarget: {wrap(target)}", fontsize=8, ha="left",
               x=0.01)
  fig.tight_layout(rect=(0, 0, 1, 0.86))
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return {"prompt": prompt, "target": target, "meta": meta_text(ex)}


def write_index(out_dir: str, task: str, rows: List[Dict]) -> str:
  """index.html: one row per example with its PNG and texts."""
  cells = []
  for row in rows:
    meta = "<br>".join(f"<b>{html.escape(k)}</b>: {html.escape(v)}" for k, v in row["meta"].items())
    cells.append(
        f"<tr><td><img src=\"{html.escape(row['png'])}\" style=\"max-width:900px\"></td>"
        f"<td><p><b>prompt</b>: {html.escape(row['prompt'])}</p>"
        f"<p><b>target</b>: {html.escape(row['target'])}</p><p>{meta}</p></td></tr>")
  page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(task)}</title>"
          f"</head><body><h1>{html.escape(task)}: {len(rows)} examples after preprocessing</h1>"
          "<p>Boxes: red dashed = from the prompt's location tokens, green = from the target "
          "text's. Grey = patches not sampled; blue tint = padding patches; blank spectrogram "
          "cells = padding or not sampled.</p>"
          f"<table border=\"1\" cellpadding=\"4\">{''.join(cells)}</table></body></html>")
  path = os.path.join(out_dir, "index.html")
  with open(path, "w", encoding="utf-8") as f:
    f.write(page)
  return path


# ---------------------------------------------------------------- the command

def load_examples(task: str, n: int, split: str, seed: Optional[int], cfg) -> List[Dict]:
  """The first `n` stage-2 examples of a registered task or mixture at `cfg`'s sizes (a
  DataConfig), as numpy dicts."""
  import seqio  # pylint: disable=import-outside-toplevel
  from unified_io.data import pipeline  # pylint: disable=import-outside-toplevel
  try:
    seqio.get_mixture_or_task(task)
  except ValueError as err:
    names = sorted(seqio.TaskRegistry.names()) + sorted(seqio.MixtureRegistry.names())
    raise ValueError(f"no task or mixture named {task!r}; registered: {names}") from err
  ds = pipeline.mixed_examples(task, cfg, cfg.default_lengths(), split=split,
                               shuffle=seed is not None, seed=seed, num_epochs=1)
  # (strict mode: one-line BadInputError, the tf.data readers stopped first)
  return list(bad_input.numpy_iterator(ds.take(n)))


@dataclasses.dataclass(frozen=True)
class Written:
  """What `visualize` wrote: `written` of the `requested` examples, and the bad ones it skipped."""
  index: str  # the index.html path
  requested: int
  written: int
  skipped: str  # `bad_input.summary()` of the examples skipped on the way ("" when none)

  def __str__(self) -> str:
    line = f"wrote {self.written} of {self.requested} examples to {self.index}"
    return f"{line}; {self.skipped}" if self.skipped else line


def visualize(task: str, n: int, out_dir: str, split: str = "train",
              seed: Optional[int] = 0, data_config=None) -> Written:
  """Render `n` examples of `task` into `out_dir` at `data_config`'s sizes (default: the
  release's); says what it wrote and which bad examples it skipped (`Written`). Strict mode
  (`bad_input.strict`) raises `bad_input.BadInputError` at the first bad example."""
  from unified_io.contract import DataConfig  # pylint: disable=import-outside-toplevel
  from unified_io.data import vocab as vocab_lib  # pylint: disable=import-outside-toplevel
  cfg = data_config or DataConfig()
  before = bad_input.counts()
  examples = load_examples(task, n, split, seed, cfg)
  skipped = bad_input.summary(since=before)
  if not examples:
    raise ValueError(f"task {task!r} split {split!r} gave no examples"
                     + (f" ({skipped})" if skipped else ""))
  os.makedirs(out_dir, exist_ok=True)
  vocab = vocab_lib.get_vocabulary()
  rows = []
  for i, ex in enumerate(examples):
    png = f"example_{i:03d}.png"
    row = render_example(ex, cfg, vocab, os.path.join(out_dir, png), f"{task} [{split}] #{i}")
    rows.append({**row, "png": png})
  return Written(write_index(out_dir, task, rows), n, len(rows), skipped)
