"""`uio2-predict` / `python -m unified_io.cli.predict`: one example from the command line.

  uio2-predict --checkpoint /tmp/uio2 --image photo.png --prompt "What is in the image?"
  uio2-predict --checkpoint /tmp/uio2 --image photo.png --prompt "Locate the red circle." \
    --out boxes.png                                    # location tokens drawn on the image
  uio2-predict --checkpoint /tmp/uio2 --prompt "Generate an image of a red circle" --out out.png
  uio2-predict --checkpoint /tmp/uio2 --audio clip.wav --prompt "What kind of sound is this?"
  uio2-predict --checkpoint /tmp/uio2 --video clip.mp4 --prompt "What happens in the video?"
  uio2-predict --checkpoint /tmp/uio2 --prompt "Make the sound of a dog" --out dog.wav

`--checkpoint` is a uio2-train MODEL_DIR (newest step, or `--step`) or one of its
checkpoints/<step> folders (`unified_io.evaluation.run_loader.load_run`). `--dtype bfloat16`
casts the parameters; `--dtype int8` keeps the large matrices in int8 with per-channel scales,
dequantized inside each jitted forward (`unified_io.adapters.int8`).

Sharded, as training shards (`unified_io.evaluation.sharded_inference`): `--model_parallel N`
restores the parameters over a (data, model) mesh of every device, N per model replica (`--fsdp`
also splits their embed axis over data; `--dcn_data S` spreads data over S TPU slices); the example is repeated to fill the data axis. Several
hosts run the same command with `--coordinator_address HOST:PORT --num_processes P --process_id I`
(each reads the input files itself); only process 0 prints and writes. Without these flags the
model runs whole on one device. The example goes through
the training pipeline's stage 2 (`unified_preprocessor`) and converter with the run's sizes, so the
model sees exactly what it was trained on; inputs use every patch of the grid (eval behaviour).

The target is `--target text|image|audio`, or inferred from the prompt's first words ("Generate an
image ...", "Make the sound of ..."; otherwise text). Text is printed; location tokens are also
printed as boxes (y1, x1, y2, x2) in pixels of the input image, and drawn on it with `--out`.
Images are written as PNG (`--out`, default prediction.png); audio as WAV (Griffin-Lim, or
`--vocoder module:function`) plus a spectrogram PNG beside it (default prediction.wav).

Exit status 0, or 2 with one line on stderr for bad input (unknown checkpoint, unreadable file,
a file of another modality than its flag's, empty prompt, a target or input the model does not
have, bad decoding options); the input files are checked before the checkpoint loads. A
successful run writes nothing to stderr (`--verbose` shows TF / XLA / orbax logs).
"""

# TensorFlow and the model load inside the functions that need them: `--help` and argument errors
# answer at once (in about a second: the decode methods' enum brings JAX in).
# pylint: disable=import-outside-toplevel

import argparse
import os
import re
import sys
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from unified_io.cli import gin_flags, quiet
from unified_io.modalities import Modality

TARGETS = tuple(m.value for m in Modality if m.can_be_target)
_VERBS = ("generate", "create", "draw", "paint", "render", "make", "produce", "synthesise",
          "synthesize", "compose")
_IMAGE_WORDS = ("image", "picture", "photo", "photograph", "drawing", "painting", "illustration")
_AUDIO_WORDS = ("audio", "sound", "sounds", "recording", "music", "noise", "tone", "melody",
                "speech")
# A target image/audio is written when absent: the prefix token needs the target to be present.
_PLACEHOLDER_IMAGE = np.zeros([8, 8, 3], np.uint8)
_PLACEHOLDER_AUDIO = np.zeros([256], np.float32)


class PredictError(ValueError):
  """Bad input; the message is the one line printed before exiting with status 2."""


def infer_target(prompt: str) -> Modality:
  """IMAGE / AUDIO for prompts that start by asking to generate one, else TEXT."""
  words = re.findall(r"[a-z]+", prompt.lower())[:6]
  if not words or words[0] not in _VERBS:
    return Modality.TEXT
  if any(w in _AUDIO_WORDS for w in words):
    return Modality.AUDIO
  if any(w in _IMAGE_WORDS for w in words) or words[0] in ("draw", "paint"):
    return Modality.IMAGE
  return Modality.TEXT


# ------------------------------------------------------------------------------------------------
# Reading inputs.
# ------------------------------------------------------------------------------------------------
def read_image(path: str) -> np.ndarray:
  """An image file -> uint8 [h, w, 3] by `image_ops.load_image`, the decoder of the training
  pipeline (EXIF orientation, 16-bit, palette, alpha on white: the same pixels)."""
  from unified_io.data.ops import image as image_ops
  if not os.path.isfile(path):
    raise PredictError(f"--image {path}: no such file")
  try:
    return image_ops.load_image(path)
  except (image_ops.ImageDecodeError, OSError) as exc:
    raise PredictError(f"--image {path}: cannot read it as an image (JPEG/PNG/GIF/BMP/WebP/TIFF): "
                       f"{' '.join(str(exc).split())[:200]}") from exc


def read_audio(path: str) -> np.ndarray:
  """An audio file -> float32 [n] mono 16 kHz by `audio_ops.load_audio`, the training pipeline's
  decoder (a truncated file is refused, as training skips it)."""
  from unified_io.data.ops import audio as audio_ops
  if not os.path.isfile(path):
    raise PredictError(f"--audio {path}: no such file")
  try:
    return audio_ops.load_audio(path, audio_ops.SAMPLE_RATE)[0]
  except ValueError as exc:
    raise PredictError(f"--audio {path}: {exc}; give a WAV/FLAC/MP3 (anything FFmpeg reads)"
                       ) from exc


def read_video(path: str, num_frames: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
  from unified_io.data.ops import video as video_ops
  if not os.path.isfile(path):
    raise PredictError(f"--video {path}: no such file")
  try:
    return video_ops.load_video(path, num_frames)
  except ValueError as exc:
    raise PredictError(f"--video {path}: {exc}; give a video file FFmpeg reads") from exc


# What a file's name says it holds (mimetypes), and the flags that cannot take such a file: a
# video's sound track is a fine --audio, anything else given to another modality's flag is refused.
_WRONG_FLAG = {"image": ("audio", "video"), "audio": ("image", "video"), "video": ("image",)}


def check_file_kinds(args) -> None:
  """Refuses, in one line, a file whose name says it is another modality than its flag's (an
  audio file given to --image, ...), before anything is decoded or loaded."""
  import mimetypes
  for flag in ("image", "audio", "video"):
    path = getattr(args, flag)
    kind = (mimetypes.guess_type(path)[0] or "").split("/")[0] if path else ""
    if kind in _WRONG_FLAG and flag in _WRONG_FLAG[kind]:
      raise PredictError(f"--{flag} {path}: this is {'an' if kind[0] in 'aeiou' else 'a'} "
                         f"{kind} file; give it with --{kind}")


def read_files(args) -> Dict[str, np.ndarray]:
  """The --image and --audio files as raw fields (the video needs the run's frame count: it is
  only checked here, by decoding one frame, so that a broken video fails before the checkpoint
  loads)."""
  check_file_kinds(args)
  files = {}
  if args.image:
    files["image_inputs"] = read_image(args.image)
  if args.audio:
    files["audio_inputs"] = read_audio(args.audio)
  if args.video:
    read_video(args.video, 1)
  return files


def raw_example(args, run, target: Modality, files: Dict[str, np.ndarray], num_frames: int
                ) -> Dict[str, np.ndarray]:
  """The stage-1 (raw) fields of docs/data.md for the command line's inputs."""
  reads = run.model.cfg.input_modalities
  given = [(flag, modality) for flag, modality in (("image", Modality.IMAGE),
                                                   ("audio", Modality.AUDIO),
                                                   ("video", Modality.IMAGE_HISTORY))
           if getattr(args, flag)]
  for flag, modality in given:
    if modality not in reads:
      raise PredictError(f"--{flag}: this model reads {sorted(m.value for m in reads)}, not "
                         f"{modality.value}; drop --{flag} or use a checkpoint of a model with "
                         f"{modality.value} inputs")
  raw = {"text_inputs": args.prompt, **files}
  if args.video:
    frames, audio = read_video(args.video, num_frames)
    raw["image_history"] = frames
    if audio is not None and Modality.AUDIO_HISTORY in reads:
      raw["audio_history"] = audio
  if target == Modality.IMAGE:
    raw["image_targets"] = _PLACEHOLDER_IMAGE
  elif target == Modality.AUDIO:
    raw["audio_targets"] = _PLACEHOLDER_AUDIO
  return raw


# ------------------------------------------------------------------------------------------------
# One example through the training pipeline (stage 2 + converter).
# ------------------------------------------------------------------------------------------------
def example_lengths(run, prompt_tokens: int) -> Dict[str, int]:
  """Task feature lengths: the run's, every input patch, and room for the whole prompt."""
  data_cfg = run.data_config
  lengths = dict(data_cfg.default_lengths())
  lengths.update(run.task_feature_lengths or {})
  for modality in Modality:
    if modality.has_patches and modality in data_cfg.input_modalities:
      lengths[f"{modality.value}_input_samples"] = data_cfg.num_patches(modality)
  longest = run.model.cfg.trunk.max_text_length
  lengths["text_inputs"] = min(max(lengths["text_inputs"], prompt_tokens + 2), longest)
  return lengths


def build_batch(run, raw: Dict[str, np.ndarray], lengths: Dict[str, int], seed: int = 0) -> Dict:
  """Raw fields -> a nested model batch of one example (numpy), exactly as training builds it."""
  import seqio
  import tensorflow as tf
  from unified_io.contract import nest_batch  # pylint: disable=import-outside-toplevel
  from unified_io.data.preprocess import unified_preprocessor
  ds = tf.data.Dataset.from_tensors({k: tf.constant(v) for k, v in raw.items()})
  features = {"text_inputs": seqio.Feature(run.vocabulary), "text_targets":
              seqio.Feature(run.vocabulary)}
  with seqio.utils.map_seed_manager(seed):
    ds = unified_preprocessor(ds, lengths, features, data_config=run.data_config)
  ds = run.model.feature_converter()(ds, lengths)
  example = next(ds.as_numpy_iterator())
  return nest_batch({k: v[None] for k, v in example.items()})


# ------------------------------------------------------------------------------------------------
# Showing what was generated.
# ------------------------------------------------------------------------------------------------
def boxes_in_image(text: str, run, image: Optional[np.ndarray]) -> np.ndarray:
  """The text's location tokens as boxes [n, 4] (y1, x1, y2, x2): in pixels of `image` when given
  (undoing the pipeline's resize and pad), else of the model's input image."""
  from unified_io.data.ops import boxes as box_ops
  size = run.data_config.image_input_size
  boxes_n4 = box_ops.text_to_boxes_np(text, size)
  if image is None or not len(boxes_n4):
    return boxes_n4
  from unified_io.data.ops import image as image_ops
  _, _, transform = image_ops.resize_and_pad(image, size)
  boxes_n4 = image_ops.untransform_boxes(boxes_n4, transform).numpy()
  h, w = image.shape[:2]
  return np.clip(boxes_n4, 0, [h, w, h, w]).astype(np.float32)


def _text_result(args, run, tokens: np.ndarray, raw) -> None:
  from unified_io.evaluation import render
  text = run.vocabulary.decode([int(t) for t in tokens])
  print(text, flush=True)
  image = raw.get("image_inputs")
  boxes_n4 = boxes_in_image(text, run, image)
  if len(boxes_n4):
    where = "input image" if image is not None else "model image"
    for box in boxes_n4:
      print(f"box (y1, x1, y2, x2) in {where} pixels: "
            f"({box[0]:.1f}, {box[1]:.1f}, {box[2]:.1f}, {box[3]:.1f})", flush=True)
  if args.out and image is not None:
    render.save_png(render.draw_boxes(image, boxes_n4), args.out)
    print(f"wrote {args.out} ({len(boxes_n4)} boxes drawn)", file=sys.stderr)


def _image_result(args, pixels: np.ndarray, tokens: np.ndarray) -> None:
  from unified_io.evaluation import render
  out = args.out or "prediction.png"
  render.save_png(render.to_uint8(pixels, (-1.0, 1.0)), out)
  print(f"wrote {out} ({pixels.shape[0]}x{pixels.shape[1]} image from {tokens.size} tokens)")


def _full_size_spectrogram(spec_tm: np.ndarray) -> np.ndarray:
  """A spectrogram of a model with a coarser [time, mel] layout back at the op's 256 x 128, the
  layout Griffin-Lim inverts (bilinear: undoes the pipeline's bilinear shrink up to blur)."""
  import tensorflow as tf
  from unified_io.data.ops import audio as audio_ops
  full = (audio_ops.NUM_FRAMES, audio_ops.NUM_MELS)
  if tuple(spec_tm.shape) == full:
    return spec_tm
  return tf.image.resize(spec_tm[..., None], full, method="bilinear").numpy()[..., 0]


def _audio_result(args, rendered: np.ndarray, tokens: np.ndarray) -> None:
  from unified_io.data.ops import audio as audio_ops
  from unified_io.evaluation import render
  spec = rendered[..., 0]  # [time, mel], AudioSet-normalised
  out = args.out or "prediction.wav"
  full_tm = _full_size_spectrogram(spec)
  render.spectrogram_to_wav(full_tm, out, normalized=True, vocoder=args.vocoder)
  png = os.path.splitext(out)[0] + "_spectrogram.png"
  render.spectrogram_png(audio_ops.denormalize_spectrogram(full_tm), png, title=args.prompt[:60])
  print(f"wrote {out} and {png} ({spec.shape[0]}x{spec.shape[1]} spectrogram from "
        f"{tokens.size} tokens)")


# ------------------------------------------------------------------------------------------------
# The binary.
# ------------------------------------------------------------------------------------------------
def make_parser() -> argparse.ArgumentParser:
  from unified_io.decoding import DecodeMethod
  p = argparse.ArgumentParser(prog="uio2-predict", description=__doc__.splitlines()[0],
                              allow_abbrev=False)
  p.add_argument("--checkpoint", required=True, help="uio2-train MODEL_DIR or checkpoints/<step>")
  p.add_argument("--step", type=int, default=None, help="step to load (default: the newest)")
  p.add_argument("--prompt", required=True, help="the instruction, plain text")
  p.add_argument("--image", help="input image file")
  p.add_argument("--audio", help="input audio file (first 4.08 s are used)")
  p.add_argument("--video", help="input video file (frames and their audio)")
  p.add_argument("--target", choices=TARGETS, default=None,
                 help="what to generate (default: inferred from the prompt's first words)")
  p.add_argument("--out", default=None, help="PNG / WAV to write (image: boxes drawn on it)")
  p.add_argument("--decode", choices=[m.value for m in DecodeMethod],
                 default=DecodeMethod.GREEDY.value)
  p.add_argument("--num_beams", type=int, default=4)
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--top_k", type=int, default=0)
  p.add_argument("--top_p", type=float, default=1.0)
  p.add_argument("--guidance_scale", type=float, default=1.0,
                 help="classifier-free guidance for image / audio targets (1 = off)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max_length", type=int, default=None,
                 help="longest text answer in tokens (default: the run's text_targets length)")
  p.add_argument("--dtype", choices=("float32", "bfloat16", "int8"), default="float32",
                 help="parameter dtype for inference (int8: weight-only, a quarter of the "
                      "float32 bytes, dequantized in each forward; unified_io.adapters.int8)")
  p.add_argument("--model_parallel", type=int, default=None,
                 help="shard over every device, N per model replica (default: one device; 1 "
                      "with the multi-host flags)")
  p.add_argument("--fsdp", action="store_true",
                 help="with a mesh: also split the parameters' embed axis over data")
  p.add_argument("--dcn_data", type=int, default=1,
                 help="with a mesh: spread data over this many TPU slices (hosts elsewhere)")
  p.add_argument("--vocoder", default=None, help="audio: module:function instead of Griffin-Lim")
  p.add_argument("--gin_file", action="append", default=[],
                 help="a model gin for a checkpoint without run-config.json, or to override it "
                      "(e.g. models/large.gin)")
  p.add_argument("--gin_bindings", action="append", default=[], help="one gin binding")
  gin_flags.add_verbose_flag(p)
  gin_flags.add_distributed_flags(p)
  return p


def _checked_target(args, run) -> Modality:
  can = run.model.cfg.target_modalities
  names = [m.value for m in can]
  if args.target is not None:
    if args.target not in can:
      raise PredictError(f"--target {args.target}: this model generates {names} only; pick one "
                         "of those, or a checkpoint of a model with that target")
    return Modality(args.target)
  target = infer_target(args.prompt)
  if target not in can:
    print(f"uio2-predict: the prompt reads like a request for {target.value}, which this model "
          f"cannot generate ({names}); answering in text", file=sys.stderr)
    target = Modality.TEXT
  return target


def _options(args, run):
  from unified_io import decoding
  max_length = args.max_length or (run.task_feature_lengths or {}).get("text_targets") or 32
  try:
    return decoding.DecodeOptions(
        method=decoding.DecodeMethod(args.decode), max_length=max_length,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        num_beams=args.num_beams, guidance_scale=args.guidance_scale)
  except ValueError as exc:
    raise PredictError(f"decoding options: {exc}") from exc


_RUNS = {}  # (step dir, dtype, gin, mesh) -> Run: repeated in-process calls reuse the model


def load(checkpoint: str, step: Optional[int] = None, dtype: str = "float32",
         gin_files: Sequence[str] = (), gin_bindings: Sequence[str] = (), *, mesh=None):
  """`run_loader.load_run` (onto `mesh`, an `InferenceMesh`, when given), memoised per step
  directory, so that calling `main` again in one process (a notebook, the tests) reuses the model
  object and with it the compiled decoder."""
  from unified_io.evaluation import run_loader
  try:
    _, step_dir, _ = run_loader.resolve_checkpoint(checkpoint, step)
    key = (step_dir, dtype, tuple(gin_files), tuple(gin_bindings), mesh)
    if key not in _RUNS:
      model_config = _gin_model_config(gin_files, gin_bindings)
      _RUNS[key] = run_loader.load_run(
          checkpoint, step, None if dtype == "float32" else dtype, model_config=model_config,
          mesh=None if mesh is None else mesh.mesh, fsdp=mesh is not None and mesh.fsdp)
    return _RUNS[key]
  except run_loader.RunLoadError as exc:
    raise PredictError(f"--checkpoint: {exc}") from exc


def _gin_model_config(gin_files: Sequence[str], gin_bindings: Sequence[str]):
  """The model config that --gin_file / --gin bindings describe (None when none are given)."""
  if not gin_files and not gin_bindings:
    return None
  try:
    return gin_flags.model_config(gin_files, gin_bindings)
  except (OSError, ValueError, SyntaxError, ImportError) as exc:
    raise PredictError(f"--gin_file / --gin: {' '.join(str(exc).split())}") from exc


def predict(args) -> None:
  """Runs one prediction for parsed `args`; raises PredictError on bad input."""
  if not args.prompt.strip():
    raise PredictError("--prompt is empty; say what to do, e.g. --prompt \"What is in the "
                       "image?\" or --prompt \"Generate an image of a red circle\"")
  explicit_target = Modality(args.target) if args.target else infer_target(args.prompt)
  if args.out and explicit_target == Modality.TEXT and not args.image:
    raise PredictError("--out writes a generated image / audio, or the boxes drawn on --image; "
                       "this prediction has neither (add --image, or --target image|audio)")
  files = read_files(args)  # before the (slow) checkpoint load: unreadable files fail at once
  mesh = _mesh(args)
  run = load(args.checkpoint, args.step, args.dtype, args.gin_file, args.gin_bindings, mesh=mesh)
  target = _checked_target(args, run)
  options = _options(args, run)
  lengths = example_lengths(run, len(run.vocabulary.encode(args.prompt)))
  raw = raw_example(args, run, target, files, lengths.get("num_frames", 1))
  with quiet.held_stderr(getattr(args, "verbose", True)):  # (tf_text's tokenizer log line)
    batch = build_batch(run, raw, lengths, args.seed)
  tokens = _generate(run, mesh, batch["inputs"], target, options, args.seed)
  rendered = None if target == Modality.TEXT else _render(run, mesh, target, tokens)
  if mesh is not None and not mesh.is_writer:
    return  # (every process took part in the collectives above; process 0 reports)
  if target == Modality.TEXT:
    _text_result(args, run, tokens, raw)
  elif target == Modality.IMAGE:
    _image_result(args, rendered, tokens)
  else:
    _audio_result(args, rendered, tokens)


def _mesh(args):
  """The `InferenceMesh` of --model_parallel / --fsdp, or None: the model whole on one device."""
  import jax
  if (args.model_parallel is None and not args.fsdp and args.dcn_data == 1
      and jax.process_count() == 1):
    return None
  from unified_io import partitioning
  from unified_io.evaluation import sharded_inference
  try:
    return sharded_inference.InferenceMesh(
        partitioning.make_mesh(model=args.model_parallel or 1, dcn_data=args.dcn_data), args.fsdp)
  except ValueError as exc:  # a model axis or slice count that does not divide the devices
    flag = "--dcn_data" if "dcn_data" in str(exc) else "--model_parallel"
    raise PredictError(f"{flag}: {exc}") from exc


def _generate(run, mesh, inputs, target: Modality, options, seed: int) -> np.ndarray:
  """The generated tokens of the one example, up to and including EOS."""
  import jax
  from unified_io import decoding
  from unified_io.evaluation import sharded_inference
  rng = jax.random.PRNGKey(seed)
  vocab_size = run.vocabulary.tokenizer.GetPieceSize()
  try:
    if mesh is None:
      out = decoding.generate(run.model, run.params, inputs, target, options, rng, vocab_size)
    else:  # the example repeated to fill the data axis
      padded, _ = sharded_inference.pad_rows(inputs, mesh.data_size)
      out = sharded_inference.generate_global(mesh, run.model, run.params,
                                              mesh.local_rows(padded), target, options, rng,
                                              vocab_size, gather=True)
  except ValueError as exc:
    raise PredictError(str(exc)) from exc
  return np.asarray(out.tokens)[0, :int(out.lengths[0])]


def _render(run, mesh, target: Modality, tokens: np.ndarray) -> np.ndarray:
  """Image / audio tokens -> float32 pixels or spectrogram, no batch axis."""
  from unified_io.evaluation import sharded_inference
  tokens_1t = np.asarray(tokens, np.int32)[None]
  render = lambda params, t: run.model.render(params, target, t)  # noqa: E731
  if mesh is None:
    return np.asarray(render(run.params, tokens_1t), np.float32)[0]
  padded, _ = sharded_inference.pad_rows(tokens_1t, mesh.data_size)
  return np.asarray(mesh.apply(render, run.params, mesh.local_rows(padded), gather=True),
                    np.float32)[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  quiet.start("--verbose" in argv)  # TF / XLA / orbax logs off the console (before JAX loads)
  parser = make_parser()
  args, bindings = gin_flags.parse(parser, argv)  # (the multi-host flags checked together)
  args.gin_bindings = bindings
  quiet.import_tensorflow(args.verbose)
  gin_flags.initialize_distributed(args)
  try:
    predict(args)
  except PredictError as exc:
    print(f"uio2-predict: {exc}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
