"""A training run's report: loss curves, a metrics table against targets, and a gallery of
predictions (report.html + gallery.html + PNGs), from the trainer's metrics.jsonl and evaluation
results (unified_io.evaluation.evaluator).

Gallery cards per task kind: text answers beside the input image (or spectrogram, or video frames),
predicted boxes drawn in red beside the ground truth in green, generated images beside the
reference's own tokens decoded (what right tokens would draw) and the reference image, generated
audio as spectrograms the same way.
"""

import html
import json
import os
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from unified_io.data.ops.image import CLIP_MEAN, CLIP_STD
from unified_io.evaluation import render
from unified_io.evaluation.evaluator import TaskResult
from unified_io.evaluation.postprocessors import to_python
from unified_io.modalities import Modality


class Target(NamedTuple):
  task: str
  metric: str
  threshold: float
  label: str


def unpatchify(patches_np: np.ndarray, pos_ids_n: np.ndarray, mask_n: np.ndarray,
               grid_hw: Sequence[int], patch: int, channels: int) -> np.ndarray:
  """Sampled patches [N, p*p*C] (row-major grid positions) -> [H, W, C], missing patches 0."""
  gh, gw = grid_hw
  out = np.zeros((gh, gw, patch, patch, channels), np.float32)
  for p, pos, valid in zip(patches_np, pos_ids_n, mask_n):
    if valid:
      out[pos // gw, pos % gw] = p.reshape(patch, patch, channels)
  return out.transpose(0, 2, 1, 3, 4).reshape(gh * patch, gw * patch, channels)


def input_image(inputs: Mapping, data_config) -> Optional[np.ndarray]:
  """The example's input image (uint8 [H, W, 3]) rebuilt from its CLIP-normalised patches."""
  image = inputs.get(Modality.IMAGE.value)
  if image is None or not np.any(image["mask"]):
    return None
  patch = data_config.image_patch_size
  grid = data_config.grid(Modality.IMAGE)
  pixels = unpatchify(np.asarray(image["input"]), np.asarray(image["pos_ids"]),
                      np.asarray(image["mask"]), grid, patch, 3)
  pixels = pixels * np.asarray(CLIP_STD) + np.asarray(CLIP_MEAN)
  return render.to_uint8(np.clip(pixels, 0, 1))


def input_spectrogram(inputs: Mapping, data_config) -> Optional[np.ndarray]:
  """The example's input log-mel spectrogram [time, mel] rebuilt from its patches."""
  audio = inputs.get(Modality.AUDIO.value)
  if audio is None or not np.any(audio["mask"]):
    return None
  patch = data_config.audio_patch_size
  grid = data_config.grid(Modality.AUDIO)
  return unpatchify(np.asarray(audio["input"]), np.asarray(audio["pos_ids"]),
                    np.asarray(audio["mask"]), grid, patch, 1)[..., 0]


def history_frames(inputs: Mapping, data_config) -> Optional[np.ndarray]:
  """Video frames side by side (uint8 [H, F*W, 3]) from the image history's patches."""
  history = inputs.get(Modality.IMAGE_HISTORY.value)
  if history is None or not np.any(history["mask"]):
    return None
  patch = data_config.image_patch_size
  grid = data_config.grid(Modality.IMAGE_HISTORY)
  frames = [unpatchify(np.asarray(x), np.asarray(p), np.asarray(m), grid, patch, 3)
            for x, p, m in zip(history["input"], history["pos_ids"], history["mask"])
            if np.any(m)]
  pixels = np.concatenate(frames, axis=1) * np.asarray(CLIP_STD) + np.asarray(CLIP_MEAN)
  return render.to_uint8(np.clip(pixels, 0, 1))


def loss_curves_png(metrics_jsonl: str, path: str) -> str:
  """The total and per-modality training losses against the step."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  rows = [json.loads(line) for line in open(metrics_jsonl) if line.strip()]
  fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
  for key in ["loss"] + sorted({k for r in rows for k in r if k.startswith("loss/")}):
    # A per-modality loss is 0 at a step whose batch had no such target: not a point.
    points = [(r["step"], r[key]) for r in rows if r.get(key, 0) > 0]
    if points:
      ax.plot(*zip(*points), label=key, linewidth=1.5 if key == "loss" else 1.0)
  ax.set_xlabel("step")
  ax.set_ylabel("training loss")
  ax.set_yscale("log")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def training_examples_per_task(rates: Mapping[str, float], steps: int, batch_size: int
                                ) -> Dict[str, float]:
  """task -> the examples of it a run of `steps` batches of `batch_size` draws, in expectation,
  from a mixture with these `rates` (`registry.rates`)."""
  total = sum(rates.values())
  return {task: rate / total * steps * batch_size for task, rate in rates.items()}


def _target_value(results: Mapping[str, TaskResult], target: Target) -> Optional[float]:
  result = results.get(target.task)
  return None if result is None else result.metrics.get(target.metric)


def target_status(results: Mapping[str, TaskResult], target: Target
                  ) -> Tuple[Optional[float], bool]:
  """(the value `results` reached on `target`'s metric, or None if its task or metric is
  missing; whether it meets the threshold). The report's table and the main job's console."""
  value = _target_value(results, target)
  return value, value is not None and value >= target.threshold


def target_curves_png(curves: Mapping[int, Mapping[str, TaskResult]], targets: Sequence[Target],
                      path: str) -> str:
  """Each target's held-out metric at each evaluated checkpoint (`curves`: step -> results), with
  its threshold dashed: one panel per target."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  columns = min(len(targets), 3)
  rows = -(-len(targets) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), dpi=100,
                           squeeze=False)
  for ax, target in zip(axes.flat, targets):
    values = [(step, _target_value(results, target)) for step, results in sorted(curves.items())]
    points = [(step, value) for step, value in values if value is not None]
    if points:
      ax.plot(*zip(*points), marker="o", linewidth=1.5)
    ax.axhline(target.threshold, color="grey", linestyle="--", linewidth=1.0)
    ax.set_title(target.label, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylim(0, max([1.0] + [v for _, v in points]))
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(targets):]:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def _is_box(value) -> bool:
  return (isinstance(value, (list, tuple, np.ndarray)) and np.asarray(value).shape == (4,)
          and np.asarray(value).dtype.kind in "fi")


def _boxes_drawn(image, record: Mapping):
  """Boxes in a postprocessed prediction / reference (one box, or {boxes, labels}) drawn on the
  input image: green the truth, red the prediction; the image unchanged when there are none."""
  prediction, reference = record.get("prediction"), record.get("reference")
  if _is_box(reference) and (prediction is None or _is_box(prediction)):
    boxes = [reference] + ([prediction] if prediction is not None else [])
    return render.draw_boxes(image, np.asarray(boxes, np.float32).reshape(-1, 4),
                             ["truth", "predicted"][:len(boxes)],
                             [(0, 200, 0), (230, 0, 0)][:len(boxes)])
  if isinstance(prediction, Mapping) and "boxes" in prediction:
    boxes = np.asarray(prediction["boxes"], np.float32).reshape(-1, 4)
    if len(boxes):
      return render.draw_boxes(image, boxes, [str(l) for l in prediction.get("labels", [])],
                               [(230, 0, 0)])
  return image


def _shown(value) -> str:
  return value if isinstance(value, str) else json.dumps(to_python(value))[:200]


def _card(task: str, record: Mapping, data_config, index: int, media: str) -> Dict:
  inputs = record.get("_inputs", {})
  card = {"title": f"{task} #{index}", "prompt": record.get("prompt", "")}
  image = input_image(inputs, data_config)
  frames = history_frames(inputs, data_config)
  spectrogram = input_spectrogram(inputs, data_config)
  output, target = record.get("_output"), record.get("_target")
  if not isinstance(output, Mapping):  # a text target
    card["prediction"] = record.get("text", _shown(record.get("prediction")))
    card["reference"] = _shown(record.get("reference", target))
    if image is not None:
      card["image"] = _boxes_drawn(image, record)
    elif frames is not None:
      card["image"] = frames
    if spectrogram is not None:
      card["spectrogram"] = render.spectrogram_png(
          spectrogram, os.path.join(media, f"{task}-{index}-input.png"), title="input audio")
    return card
  # The reference's own tokens decoded (when the evaluator gave them) sit between the two: what
  # a generation with every token right would show, so a tokenizer's limits are not taken for
  # the model's.
  decoded = "reconstruction" in target
  if "image" in output:
    panels = [output["image"]] + ([target["reconstruction"]] if decoded else []) + [target["image"]]
    card["image"] = render.to_uint8(np.concatenate(panels, axis=1))
    card["prediction"] = "left: generated (VQ tokens -> tokenizer decoder)"
    card["reference"] = ("middle: the reference's tokens decoded; right: the reference image"
                         if decoded else "right: the reference image")
  else:
    rows = ([output["spectrogram"]] + ([target["reconstruction"]] if decoded else [])
            + [target["spectrogram"]])
    card["spectrogram"] = render.spectrogram_png(
        np.concatenate(rows, axis=0), os.path.join(media, f"{task}-{index}-audio.png"),
        title="generated | reference tokens decoded | reference" if decoded
        else "generated | reference")
    card["prediction"] = ("generated spectrogram (first third of the time axis)" if decoded else
                          "generated spectrogram (first half of the time axis)")
  tokens, ref = np.asarray(output["tokens"]), np.asarray(target["tokens"])
  card["metrics"] = {"token accuracy": float(np.mean(tokens[:len(ref)] == ref[:len(tokens)]))}
  return card


def write_report(out_dir: str, results: Mapping[str, TaskResult], data_config,
                 train_metrics_jsonl: Optional[str] = None, targets: Sequence[Target] = (),
                 examples_per_task: int = 4, title: str = "unified-io run report",
                 notes: Sequence[str] = (),
                 curves: Optional[Mapping[int, Mapping[str, TaskResult]]] = None,
                 training_examples: Optional[Mapping[str, float]] = None) -> str:
  """Writes out_dir/report.html (and gallery.html, PNGs); returns the report's path.

  `curves` (step -> results of some checkpoints, `results` being the last): each target's
  held-out metric at each of them, as a plot and a table. `training_examples` (task -> how many
  examples of it training drew, e.g. `training_examples_per_task`): a column of the targets
  table, to see which tasks starve in the mixture."""
  os.makedirs(out_dir, exist_ok=True)
  media = os.path.join(out_dir, "media")
  os.makedirs(media, exist_ok=True)
  parts = [f"<h1>{html.escape(title)}</h1>"]
  parts += [f"<p>{html.escape(n)}</p>" for n in notes]
  if targets:
    rows = []
    for t in targets:
      value, passed = target_status(results, t)
      shown = "—" if value is None else f"{value:.3f}"
      seen = ("" if training_examples is None else
              f"<td>{training_examples[t.task]:,.0f}</td>" if t.task in training_examples
              else "<td>—</td>")
      rows.append(f"<tr><td>{html.escape(t.label)}</td><td>{html.escape(t.task)}</td>"
                  f"<td>{html.escape(t.metric)}</td><td>{shown}</td><td>&ge; {t.threshold}</td>"
                  f"<td class=\"{'ok' if passed else 'miss'}\">{'met' if passed else 'missed'}"
                  f"</td>{seen}</tr>")
    seen_header = "" if training_examples is None else "<th>training examples</th>"
    parts.append("<h2>Targets</h2><table><tr><th>what</th><th>task</th><th>metric</th>"
                 f"<th>reached</th><th>target</th><th></th>{seen_header}</tr>" + "".join(rows)
                 + "</table>")
  if targets and curves:
    target_curves_png(curves, targets, os.path.join(out_dir, "target_curves.png"))
    steps = sorted(curves)
    rows = []
    for t in targets:
      values = [_target_value(curves[s], t) for s in steps]
      cells = "".join("<td>—</td>" if v is None else f"<td>{v:.3f}</td>" for v in values)
      rows.append(f"<tr><td>{html.escape(t.label)}</td>{cells}</tr>")
    parts.append("<h2>Held-out metrics at each checkpoint</h2>"
                 "<p>Each target's metric on held-out examples at each evaluated checkpoint "
                 "(the dashed line is its target).</p>"
                 "<img src=\"target_curves.png\" alt=\"held-out metric per checkpoint\">"
                 "<table><tr><th>what</th>" + "".join(f"<th>step {s}</th>" for s in steps)
                 + "</tr>" + "".join(rows) + "</table>")
  if train_metrics_jsonl and os.path.exists(train_metrics_jsonl):
    loss_curves_png(train_metrics_jsonl, os.path.join(out_dir, "loss_curves.png"))
    parts.append("<h2>Training loss</h2><img src=\"loss_curves.png\" alt=\"loss curves\">")
  rows = []
  for task, result in results.items():
    shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(result.metrics.items())
                      if "/" not in k)
    rows.append(f"<tr><td>{html.escape(task)}</td><td>{len(result.records)}</td>"
                f"<td>{html.escape(shown)}</td></tr>")
  parts.append("<h2>All metrics (held-out examples)</h2><table><tr><th>task</th><th>examples</th>"
               "<th>metrics</th></tr>" + "".join(rows) + "</table>")
  cards: List[Dict] = []
  for task, result in results.items():
    for i, record in enumerate(result.records[:examples_per_task]):
      cards.append(_card(task, record, data_config, i, media))
  render.gallery_html(cards, out_dir, title="Predictions on held-out examples")
  parts.append("<h2>Gallery</h2><p><a href=\"gallery.html\">predictions on held-out examples"
               "</a>: answers beside their inputs, boxes (green truth, red predicted), generated "
               "images and audio beside their references.</p>")
  style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:"
           "collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
           ".ok{color:#080;font-weight:bold}.miss{color:#b00;font-weight:bold}")
  page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
          f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
  path = os.path.join(out_dir, "report.html")
  with open(path, "w", encoding="utf-8") as f:
    f.write(page)
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump({task: r.metrics for task, r in results.items()}, f, indent=1)
  return path
