"""Bring any dataset as a JSONL manifest: one JSON object per line, text plus paths to media files.

Example line (every key optional except that an example needs an input and a target):

  {"prompt": "What is making this sound?", "target": "a dog barking", "audio": "clips/17.wav",
   "id": "17", "task_kind": "audio_vqa"}

Keys:
  prompt | text_inputs     the prompt (plain text; may hold location tokens <extra_id_K>)
  target | text_targets    the text answer
  task_kind                free text, kept as meta/task_kind. (The task-wide `task_kind=K` of
                           `add_manifest_task` picks prompt templates: see
                           `check_text_preprocessor`.)
  id                       kept as meta/id
  image, audio, video      input media: image file (anything PIL reads), audio file and video
                           file (anything PyAV reads); the video gives image_history frames and,
                           with `video_audio=True`, audio_history segments. Images and audio go
                           through the decoders uio2-predict uses (`image_ops.load_image`: EXIF
                           orientation, 16-bit, alpha on white; `audio.load_audio`: any rate
                           and channels -> 16 kHz mono, truncated files refused)
  target_image, target_audio   media to generate
  target_depth             a dense label drawn as image_targets by `unified_io.data.dense_labels`
  target_normals           (at most one target image per line: target_image or one of these),
  target_segmentation      read as stored (PIL without EXIF rotation or conversion, or np.load),
                           and as high and wide as the line's `image`:
                           depth: float .npy in metres (0 / NaN = none), or an integer PNG /
                             .npy with a scale (metres = value / depth_scale: the line's
                             "depth_scale" or the task's `depth_scale=`, e.g. 1000 for NYUv2's
                             millimetres); drawn grey up to the task's `max_depth` (10 m)
                           normals: float .npy [H, W, 3] (0 = none) or an RGB PNG of
                             (n + 1) / 2 * 255 (black = none)
                           segmentation: class ids in an 8/16-bit grey ("L", "I;16") or palette
                             ("P": its indices) PNG, or an integer .npy [H, W]; ids below the
                             task's `num_classes` (default and at most 20), 255 = ignore
  depth_scale              this line's integer depth units (see target_depth)
  meta                     optional {name: string or list of strings}, kept as meta/<name>
                           for the names given in `meta_fields`
Relative paths are resolved against the manifest file's directory.

    from unified_io.datasets import manifest
    manifest.add_manifest_task("my_sounds", {"train": "/data/sounds/train.jsonl",
                                             "validation": "/data/sounds/val.jsonl"})

Which media a task has is fixed per task (tf.data needs one structure): by default it is read
from the first line of the first manifest; a later line missing one of them is bad input.

Media decoding runs in python (`tf.numpy_function`, stateless: what a file decodes to depends on
its path only; in parallel maps), and never raises: a missing file, an undecodable image,
unreadable or truncated audio or a video without frames, an empty prompt with no other input or
an empty target with no other target, a line that is not a JSON object or has two target images,
and a dense label of the wrong size (dense_size_mismatch), shape or dtype (bad_dense_label),
integer depth with no depth_scale (depth_needs_scale) or an unknown class id (unknown_class) all
mark the example bad; `bad_input.skip_bad_examples` then skips and counts it or, in strict mode,
raises naming the file and the field.

The same machinery serves builders of datasets shipped as JSON/CSV plus media (VQAv2, Clotho,
MSR-VTT, Alpaca in `unified_io.tasks`): they produce records (dicts with the keys above, paths
already absolute) and call `add_records_task`.
"""

import functools
import json
import os
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence,
                    Tuple, Union)

import numpy as np
import seqio
import tensorflow as tf

from unified_io.data import bad_input
from unified_io.data import dense_labels
from unified_io.data import prompts
from unified_io.datasets import dense_files

# manifest key -> raw field it becomes
INPUT_MEDIA = {"image": "image_inputs", "audio": "audio_inputs", "video": "image_history"}
TARGET_MEDIA = {"target_image": "image_targets", "target_audio": "audio_targets"}
MEDIA_KEYS = tuple(INPUT_MEDIA) + tuple(TARGET_MEDIA)
# dense labels drawn as image_targets (`unified_io.data.dense_labels`); a line has at most one
# target image: target_image or one of these
DENSE_TARGETS = ("target_depth", "target_normals", "target_segmentation")
TARGET_IMAGE_KEYS = ("target_image",) + DENSE_TARGETS
ALL_MEDIA_KEYS = MEDIA_KEYS + DENSE_TARGETS
TEXT_ALIASES = {"text_inputs": ("text_inputs", "prompt"),
                "text_targets": ("text_targets", "target")}
STRING_KEYS = ("text_inputs", "text_targets", "task_kind", "id", "source", "depth_scale")
PROBLEM = "problem"  # record key: a structural problem found while reading the line

Record = Dict[str, Union[str, Sequence[str]]]
RecordsFn = Callable[[str], Iterable[Record]]


class ManifestError(ValueError):
  """A manifest (or a dataset's index file) that cannot be used at all."""


# ---- reading manifest lines into records --------------------------------------------------------

def _as_strings(value) -> list:
  if value is None:
    return []
  if isinstance(value, (list, tuple)):
    return [str(v) for v in value]
  return [str(value)]


def record_from_line(obj, base_dir: str, meta_fields: Mapping[str, int]) -> Record:
  """A parsed manifest line -> a record: text fields, absolute media paths, meta, problem."""
  if not isinstance(obj, dict):
    return {PROBLEM: bad_input.encode_problem(bad_input.BAD_MANIFEST_LINE, "line")}
  record: Record = {}
  for name, aliases in TEXT_ALIASES.items():
    record[name] = next((str(obj[a]) for a in aliases if obj.get(a) is not None), "")
  record["task_kind"] = str(obj.get("task_kind", ""))
  record["id"] = str(obj.get("id", ""))
  for key in ALL_MEDIA_KEYS:
    path = obj.get(key)
    record[key] = os.path.join(base_dir, str(path)) if path else ""
  record["depth_scale"] = "" if obj.get("depth_scale") is None else str(obj["depth_scale"])
  meta = obj.get("meta") or {}
  for name, rank in meta_fields.items():
    values = _as_strings(meta.get(name, obj.get(name)))
    record[f"meta/{name}"] = values if rank else (values[0] if values else "")
  return record


def read_manifest(path: str, meta_fields: Mapping[str, int] = ()) -> Iterator[Record]:
  """Records of a JSONL manifest; `source` = "path:line" says where each came from."""
  meta_fields = dict(meta_fields)
  if not tf.io.gfile.exists(path):
    raise ManifestError(f"manifest file {path!r} does not exist")
  base_dir = os.path.dirname(os.path.abspath(path))
  with tf.io.gfile.GFile(path) as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{number}"
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        obj = None
        problem = bad_input.encode_problem(bad_input.BAD_MANIFEST_LINE, f"line ({e.msg})", where)
      record = record_from_line(obj, base_dir, meta_fields)
      if obj is None:
        record[PROBLEM] = problem
      elif PROBLEM in record:
        record[PROBLEM] = bad_input.encode_problem(bad_input.BAD_MANIFEST_LINE,
                                                   "line (not a JSON object)", where)
      record["source"] = where
      yield record


def media_in_first_line(path: str) -> Sequence[str]:
  """The media keys present in the first record of a manifest (the task's media by default)."""
  for record in read_manifest(path):
    return tuple(k for k in ALL_MEDIA_KEYS if record.get(k))
  raise ManifestError(f"manifest file {path!r} has no lines to infer the task's media from; "
                      f"pass media=(...) explicitly")


# ---- records -> tf.data -------------------------------------------------------------------------

def _signature(media: Sequence[str], meta_fields: Mapping[str, int]):
  spec = {k: tf.TensorSpec([], tf.string) for k in STRING_KEYS + tuple(media) + (PROBLEM,)}
  for name, rank in meta_fields.items():
    spec[f"meta/{name}"] = tf.TensorSpec([None] * rank, tf.string)
  return spec


def _normalise(record: Record, media: Sequence[str], meta_fields: Mapping[str, int]) -> Record:
  out = {k: str(record.get(k, "")) for k in STRING_KEYS + tuple(media) + (PROBLEM,)}
  for name, rank in meta_fields.items():
    value = record.get(f"meta/{name}", [] if rank else "")
    out[f"meta/{name}"] = np.array(_as_strings(value), dtype=object) if rank else str(value)
  if not out[PROBLEM]:
    missing = [k for k in media if not out[k]]
    targets = [k for k in TARGET_IMAGE_KEYS if record.get(k)]
    if missing:
      out[PROBLEM] = bad_input.encode_problem(bad_input.MISSING_FIELD, missing[0], out["source"])
    elif len(targets) > 1:
      out[PROBLEM] = bad_input.encode_problem(
          bad_input.BAD_MANIFEST_LINE, f"{targets[1]} (a line has one target image; this one "
          f"also has {targets[0]})", out["source"])
  return out


def records_dataset(records_fn: RecordsFn, split: str, media: Sequence[str],
                    meta_fields: Mapping[str, int] = ()) -> tf.data.Dataset:
  """tf.data of string records (paths, not pixels yet) from `records_fn(split)`."""
  meta_fields = dict(meta_fields)

  def generate():
    for record in records_fn(split):
      yield _normalise(record, media, meta_fields)

  return tf.data.Dataset.from_generator(generate,
                                        output_signature=_signature(media, meta_fields))


# ---- python loaders (run inside tf.numpy_function; they flag problems, never raise) -----------

def _missing(path: str, field: str) -> Optional[str]:
  if not path:
    return bad_input.encode_problem(bad_input.MISSING_FIELD, field)
  if not os.path.exists(path):
    return bad_input.encode_problem(bad_input.MISSING_FILE, field, path)
  return None


def load_image_np(path: bytes, field: bytes):
  """-> (uint8 [h, w, 3], problem bytes), decoded by `image_ops.load_image` (the one decoder)."""
  from unified_io.data.ops import image as image_ops  # pylint: disable=import-outside-toplevel
  path, field = path.decode(), field.decode()
  problem = _missing(path, field)
  if problem is None:
    try:
      return image_ops.load_image(path), b""
    except (image_ops.ImageDecodeError, OSError):
      problem = bad_input.encode_problem(bad_input.CORRUPT_IMAGE, field, path)
  return np.zeros([1, 1, 3], np.uint8), problem.encode()


def load_audio_np(path: bytes, field: bytes):
  """-> (float32 [n] mono 16 kHz, problem bytes), decoded by `audio.load_audio` (the one decoder);
  a truncated file is marked truncated_audio, any other failure unreadable_audio."""
  from unified_io.data.ops import audio  # pylint: disable=import-outside-toplevel
  path, field = path.decode(), field.decode()
  problem = _missing(path, field)
  if problem is None:
    try:
      waveform, _ = audio.load_audio(path, audio.SAMPLE_RATE)
      return np.asarray(waveform, np.float32).reshape([-1]), b""
    except audio.AudioDecodeError as err:
      problem = bad_input.encode_problem(err.reason, field, path)
    except Exception:  # pylint: disable=broad-except  (PyAV raises many kinds for bad files)
      problem = bad_input.encode_problem(bad_input.UNREADABLE_AUDIO, field, path)
  return np.zeros([1], np.float32), problem.encode()


def load_video_np(path: bytes, field: bytes, num_frames: int, with_audio: bool):
  """-> (uint8 [F, h, w, 3], float32 [F, n] audio segments (silence if none), problem bytes)."""
  from unified_io.data.ops import audio, video  # pylint: disable=import-outside-toplevel
  path, field = path.decode(), field.decode()
  problem = _missing(path, field)
  segment = audio.SEGMENT_SAMPLES
  if problem is None:
    try:
      frames, segments = video.load_video(path, int(num_frames), with_audio=bool(with_audio))
      frames = np.asarray(frames, np.uint8)
      if frames.ndim == 4 and frames.shape[0] > 0 and frames.shape[1] > 0:
        if segments is None:  # a silent video: silence is what it sounds like
          segments = np.zeros([frames.shape[0], segment], np.float32)
        return frames, np.asarray(segments, np.float32), b""
    except Exception:  # pylint: disable=broad-except
      pass
    problem = bad_input.encode_problem(bad_input.EMPTY_VIDEO, field, path)
  return (np.zeros([1, 1, 1, 3], np.uint8), np.zeros([1, segment], np.float32),
          problem.encode())


# ---- dense labels (depth, normals, segmentation) -> image_targets --------------------------------

def load_dense_np(path: bytes, field: bytes, line_scale: bytes, *, depth_scale: Optional[float],
                  max_depth: float, num_classes: Optional[int]):
  """-> (uint8 [h, w, 3] drawn by `dense_labels.encode_*`, problem bytes) for the dense key
  `field`; wrong shapes, unknown classes and unscaled integer depth are problems, not errors."""
  path, field = path.decode(), field.decode()
  problem = _missing(path, field)
  if problem is None:
    try:
      array = dense_files.read_dense_file(path)
    except Exception:  # pylint: disable=broad-except  (PIL and np.load raise many kinds)
      problem = bad_input.encode_problem(bad_input.CORRUPT_IMAGE, field, path)
  if problem is None:
    try:
      return dense_files.dense_image(array, field, line_scale.decode(), depth_scale=depth_scale,
                                     max_depth=max_depth, num_classes=num_classes), b""
    except dense_files.DenseLabelError as bad:
      problem = bad_input.encode_problem(bad.reason, f"{field} ({bad.detail})", path)
  return np.zeros([1, 1, 3], np.uint8), problem.encode()


def _size_problem(image, label, field: str, path) -> tf.Tensor:
  """tf.string []: a dense_size_mismatch problem unless `label` is as high and wide as `image`."""
  image_hw, label_hw = tf.shape(image)[:2], tf.shape(label)[:2]
  size = lambda hw: tf.strings.join([tf.strings.as_string(hw[0]), tf.strings.as_string(hw[1])],
                                    separator="x")
  detail = tf.strings.join([field, " (is ", size(label_hw), " but image is ", size(image_hw), ")"])
  return bad_input.problem_if(tf.reduce_all(tf.equal(image_hw, label_hw)),
                              dense_files.DENSE_SIZE_MISMATCH, detail, path)


# ---- the decoding preprocessor ------------------------------------------------------------------

def _decode(ex, media: Sequence[str], num_video_frames: int, video_audio: bool,
            dense: Mapping[str, Any]):
  """Record with paths -> raw fields (media decoded) + the bad_input problem string; `dense`:
  the keyword arguments of `load_dense_np` (depth_scale, max_depth, num_classes)."""
  out = {"text_inputs": ex["text_inputs"], "text_targets": ex["text_targets"]}
  problems = [ex[PROBLEM]]
  for key in media:
    field = tf.constant(key)
    if key in DENSE_TARGETS:
      label, problem = tf.numpy_function(functools.partial(load_dense_np, **dense),
                                         [ex[key], field, ex["depth_scale"]],
                                         (tf.uint8, tf.string), stateful=False)
      out["image_targets"] = tf.ensure_shape(label, [None, None, 3])
    elif key in ("image", "target_image"):
      image, problem = tf.numpy_function(load_image_np, [ex[key], field], (tf.uint8, tf.string),
                                        stateful=False)
      out[INPUT_MEDIA.get(key) or TARGET_MEDIA[key]] = tf.ensure_shape(image, [None, None, 3])
    elif key in ("audio", "target_audio"):
      wave, problem = tf.numpy_function(load_audio_np, [ex[key], field], (tf.float32, tf.string),
                                       stateful=False)
      out[INPUT_MEDIA.get(key) or TARGET_MEDIA[key]] = tf.ensure_shape(wave, [None])
    else:
      loader = functools.partial(load_video_np, num_frames=num_video_frames,
                                 with_audio=video_audio)
      frames, segments, problem = tf.numpy_function(loader, [ex[key], field],
                                                    (tf.uint8, tf.float32, tf.string),
                                                    stateful=False)
      out["image_history"] = tf.ensure_shape(frames, [None, None, None, 3])
      if video_audio:
        out["audio_history"] = tf.ensure_shape(segments, [None, None])
    problems.append(tf.ensure_shape(problem, []))
  for key, value in ex.items():
    if key.startswith("meta/"):
      out[key] = value
  for key in ("id", "task_kind", "source"):
    out[f"meta/{key}"] = ex[key]
  dense_key = next((k for k in media if k in DENSE_TARGETS), None)
  if dense_key and "image" in media:  # (after the files: their own problems come first)
    problems.append(_size_problem(out["image_inputs"], out["image_targets"], dense_key,
                                  ex[dense_key]))
  out[bad_input.PROBLEM_KEY] = bad_input.first_problem(*problems)
  return out


def decode_preprocessor(media: Sequence[str], *, num_video_frames: int = 4,
                        video_audio: bool = True, depth_scale: Optional[float] = None,
                        max_depth: float = dense_labels.DEFAULT_MAX_DEPTH,
                        num_classes: Optional[int] = None):
  """seqio preprocessor: records -> raw fields with media decoded, problems marked."""
  dense = dict(depth_scale=depth_scale, max_depth=max_depth, num_classes=num_classes)

  def preprocessor(dataset: tf.data.Dataset) -> tf.data.Dataset:
    decode = functools.partial(_decode, media=tuple(media), num_video_frames=num_video_frames,
                               video_audio=video_audio, dense=dense)
    return dataset.map(tf.autograph.experimental.do_not_convert(decode),
                       num_parallel_calls=tf.data.AUTOTUNE)
  return preprocessor


def check_text_preprocessor(media: Sequence[str], task_kind: Optional[str] = None):
  """seqio preprocessor: prompts from `task_kind`'s templates, then flag empty text.

  A kind whose templates take no argument (e.g. "audio_caption") fills empty prompts; one with a
  slot (e.g. "vqa", "text_instruction") wraps the line's prompt, which must then be non-empty.

  An empty prompt is allowed when the example has another input, an empty text target when it
  has another target (the brief's contract for `text_inputs` / `text_targets`).
  """
  has_input = any(k in INPUT_MEDIA for k in media)
  has_target = any(k in TARGET_MEDIA or k in DENSE_TARGETS for k in media)

  @seqio.map_over_dataset(num_seeds=1)
  @tf.autograph.experimental.do_not_convert
  def fill_and_check(ex, seed):
    ex = dict(ex)
    if task_kind and prompts.num_slots(task_kind) == 0:  # a fixed request: fills empty prompts
      empty = tf.logical_not(bad_input.nonempty_text(ex["text_inputs"]))
      ex["text_inputs"] = tf.where(empty, prompts.sample_prompt(task_kind, seed),
                                   ex["text_inputs"])
    elif task_kind:  # templates around the line's text (a question, an instruction)
      problems_before = bad_input.problem_if(bad_input.nonempty_text(ex["text_inputs"]),
                                             bad_input.EMPTY_TEXT, "text_inputs",
                                             ex["meta/source"])
      ex[bad_input.PROBLEM_KEY] = bad_input.first_problem(ex[bad_input.PROBLEM_KEY],
                                                          problems_before)
      ex["text_inputs"] = prompts.sample_prompt(task_kind, seed, ex["text_inputs"])
    source = ex["meta/source"]
    problems = [ex[bad_input.PROBLEM_KEY]]
    if not has_input:
      problems.append(bad_input.problem_if(bad_input.nonempty_text(ex["text_inputs"]),
                                           bad_input.EMPTY_TEXT, "text_inputs", source))
    if not has_target:
      problems.append(bad_input.problem_if(bad_input.nonempty_text(ex["text_targets"]),
                                           bad_input.EMPTY_TEXT, "text_targets", source))
    ex[bad_input.PROBLEM_KEY] = bad_input.first_problem(*problems)
    return ex

  return fill_and_check


# ---- registration -------------------------------------------------------------------------------

def records_source(records_fn: RecordsFn, splits: Iterable[str], media: Sequence[str],
                   meta_fields: Mapping[str, int] = (),
                   check_fn: Optional[Callable[[str], None]] = None) -> seqio.DataSource:
  """A seqio source of records; `check_fn(split)` runs when a dataset is built, so missing
  index files raise there, clearly, rather than later inside tf.data's generator."""
  def dataset_fn(split: str, shuffle_files: bool = False, seed=None) -> tf.data.Dataset:
    del shuffle_files, seed  # one ordered stream per split; seqio shuffles examples after
    if check_fn is not None:
      check_fn(split)
    return records_dataset(records_fn, split, media, meta_fields)
  return seqio.FunctionDataSource(dataset_fn, splits=tuple(splits))


def modalities_of(media: Sequence[str], *, video_audio: bool = True) -> Tuple[str, ...]:
  """The modalities (`unified_io.modalities.Modality` values) a task with these media uses."""
  modalities = ["text"]
  for key in media:
    modality = {"image": "image", "target_image": "image", "audio": "audio",
                "target_audio": "audio", "video": "image_history",
                **{dense_key: "image" for dense_key in DENSE_TARGETS}}[key]
    if modality not in modalities:
      modalities.append(modality)
  if "video" in media and video_audio:
    modalities.append("audio_history")
  return tuple(modalities)


def _check_media_and_dense_options(name: str, media: Sequence[str], depth_scale, max_depth,
                                   num_classes) -> None:
  unknown = set(media) - set(ALL_MEDIA_KEYS)
  if unknown:
    raise ManifestError(f"task {name!r}: unknown media {sorted(unknown)}; known: "
                        f"{ALL_MEDIA_KEYS}")
  targets = [k for k in media if k in TARGET_IMAGE_KEYS]
  if len(targets) > 1:
    raise ManifestError(f"task {name!r}: media {targets}: a task has one target image, "
                        f"target_image or one of {DENSE_TARGETS}")
  if depth_scale is not None and not depth_scale > 0:
    raise ManifestError(f"task {name!r}: depth_scale must be positive, got {depth_scale!r}")
  if not max_depth > 0:
    raise ManifestError(f"task {name!r}: max_depth must be positive, got {max_depth!r}")
  if num_classes is not None and not 0 < num_classes <= dense_labels.MAX_CLASSES:
    raise ManifestError(f"task {name!r}: num_classes must be 1..{dense_labels.MAX_CLASSES} (the "
                        f"segmentation palette's size), got {num_classes!r}")


def add_records_task(name: str, records_fn: RecordsFn, splits: Iterable[str], *,
                     media: Sequence[str], meta_fields: Mapping[str, int] = (),
                     task_kind: Optional[str] = None, num_video_frames: int = 4,
                     video_audio: bool = True, depth_scale: Optional[float] = None,
                     max_depth: float = dense_labels.DEFAULT_MAX_DEPTH,
                     num_classes: Optional[int] = None, preprocessors: Sequence[Callable] = (),
                     check_fn: Optional[Callable[[str], None]] = None, **registry_kwargs):
  """Registers a task over python records: decode media, `preprocessors`, check text, skip bad.

  `preprocessors` (task-specific stage-1 maps, e.g. a prompt from the question) see the raw fields
  plus meta/* and the bad_input problem field, and must keep the latter two. `depth_scale`,
  `max_depth` and `num_classes` say how dense targets are read and drawn (module docstring).
  """
  from unified_io.data import registry  # pylint: disable=import-outside-toplevel
  media = tuple(media)
  _check_media_and_dense_options(name, media, depth_scale, max_depth, num_classes)
  stage1 = [decode_preprocessor(media, num_video_frames=num_video_frames,
                                video_audio=video_audio, depth_scale=depth_scale,
                                max_depth=max_depth, num_classes=num_classes), *preprocessors,
            check_text_preprocessor(media, task_kind),
            bad_input.skip_bad_examples_preprocessor(name)]
  registry_kwargs.setdefault("modalities", modalities_of(media, video_audio=video_audio))
  source = records_source(records_fn, splits, media, meta_fields, check_fn)
  return registry.add_task(name, source, stage1, **registry_kwargs)


def add_manifest_task(name: str, manifest_paths_by_split: Mapping[str, Union[str, Sequence[str]]],
                      *, media: Optional[Sequence[str]] = None, meta_fields: Mapping[str, int] = (),
                      task_kind: Optional[str] = None, num_video_frames: int = 4,
                      video_audio: bool = True, depth_scale: Optional[float] = None,
                      max_depth: float = dense_labels.DEFAULT_MAX_DEPTH,
                      num_classes: Optional[int] = None, **registry_kwargs):
  """Registers `name` reading JSONL manifests, e.g. {"train": "train.jsonl", "validation": [...]}.

  `media`: which of the media keys (image, audio, video, target_image, target_audio,
  target_depth, target_normals, target_segmentation) every line has (default: those of the first
  line of the first manifest). `meta_fields`: {name: 0 for a string, 1 for a list} kept as
  meta/<name>. `depth_scale` (integer depth files: metres = value / depth_scale; a line's own
  "depth_scale" wins), `max_depth` (metres drawn white) and `num_classes` (segmentation ids
  allowed, besides 255) are for dense targets. Other keyword arguments go to `registry.add_task`
  (metric_fns, ...).
  """
  paths_by_split = {split: [paths] if isinstance(paths, str) else list(paths)
                    for split, paths in manifest_paths_by_split.items()}
  if media is None:
    media = media_in_first_line(next(iter(paths_by_split.values()))[0])

  def records_fn(split: str) -> Iterator[Record]:
    for path in paths_by_split[split]:
      yield from read_manifest(path, meta_fields)

  def check_fn(split: str) -> None:
    for path in paths_by_split[split]:
      if not tf.io.gfile.exists(path):
        raise ManifestError(f"task {name!r}, split {split!r}: manifest file {path!r} does not "
                            f"exist")

  return add_records_task(name, records_fn, paths_by_split, media=media, meta_fields=meta_fields,
                          task_kind=task_kind, num_video_frames=num_video_frames,
                          video_audio=video_audio, depth_scale=depth_scale, max_depth=max_depth,
                          num_classes=num_classes, check_fn=check_fn, **registry_kwargs)


# Task specs ({name: {"splits": ..., options}}), as gin, $UIO2_MANIFEST_TASKS and a run's
# run-config.json give them.
_OPTIONS = ("media", "meta_fields", "task_kind", "num_video_frames", "video_audio",
            "depth_scale", "max_depth", "num_classes")


def register_manifests(tasks: Mapping[str, Mapping[str, Any]]) -> List[str]:
  """Registers each {name: spec} not registered yet; returns the names registered now."""
  added = []
  for name, spec in tasks.items():
    if name in seqio.TaskRegistry.names():
      continue
    if "splits" not in spec:
      raise ManifestError(f"manifest task {name!r}: the spec needs \"splits\": "
                          f"{{split: path}}, got keys {sorted(spec)}")
    unknown = set(spec) - {"splits", *_OPTIONS}
    if unknown:
      raise ManifestError(f"manifest task {name!r}: unknown spec keys {sorted(unknown)}; "
                          f"known: splits, {', '.join(_OPTIONS)}")
    options = {k: spec[k] for k in _OPTIONS if k in spec}
    if "media" in options:
      options["media"] = tuple(options["media"])
    add_manifest_task(name, spec["splits"], **options)
    added.append(name)
  return added
