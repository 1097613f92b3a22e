"""One generator per world task: (random generator, config) -> the example's fields, in numpy.

The fields are raw fields of docs/data.md (`image_inputs`, `image_targets`,
`audio_inputs`, `audio_targets`, `image_history`, `audio_history`, `sensor_inputs`,
`text_targets`) plus the
words the task preprocessor turns into a prompt (`prompt_text`: a question, a caption, a referring
expression; "" when the prompt needs none), and ground truth under `meta/`:
  meta/task        the generator's name          meta/answer      the answer / target text
  meta/image_size  int32 [2] of image_inputs     meta/boxes       float32 [n, 4] pixel boxes
  meta/labels      string [n], one per box       meta/frequency_hz  float32, audio tasks' pitch
  meta/tap_onsets  int32 [k] sample index of each tap (sensor_taps)
Tasks with location tokens (refexp, detection) leave `text_targets` to the task preprocessor,
which writes the boxes as tokens; every other task's `text_targets` is final.

Dense tasks (dense.py: exact labels of the scene, drawn with unified_io/data/dense_labels.py's
encodings at target_size):
  depth       image_inputs -> image_targets: grey = depth / 10 m (ground 2 m bottom .. 8 m top)
  normals     image_inputs -> image_targets: RGB = (n + 1) / 2 (x right, y up, z to the camera)
  segmentation  image_inputs -> image_targets: dense_labels.PALETTE[class], classes
              dense.SEGMENTATION_CLASSES (background, then the seven shapes)
  edges       image_inputs -> image_targets: white object-mask boundaries on black
  segmentation_to_image  image_inputs = the segmentation drawn at image_size -> image_targets =
              the scene's picture
  palette     image_inputs -> text_targets "light grey background; colours: red, blue" (object
              colours by visible area, largest first)

`GENERATORS[name].field_specs(cfg)` gives each field's dtype and shape for tf.data.
"""

import dataclasses
import zlib
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from unified_io.data import dense_labels
from unified_io.datasets.world import dense, language, scenes, taps, tones, video
from unified_io.datasets.world.config import WorldConfig

Example = Dict[str, np.ndarray]
_MAX_SCENE_TRIES = 100


@dataclasses.dataclass(frozen=True)
class Generator:
  name: str
  generate: Callable[[np.random.Generator, WorldConfig], Example]
  # Field name -> (numpy dtype, shape as a function of the config; None = any length).
  fields: Dict[str, Tuple[type, Callable[[WorldConfig], Tuple]]]
  # For tasks whose whole content space is small (arithmetic): the split an example belongs to,
  # from its content, so validation/test hold problems train never shows. None: split by seed only.
  content_split: Optional[Callable[[Example], str]] = None

  def field_specs(self, cfg: WorldConfig) -> Dict[str, Tuple[np.dtype, Tuple]]:
    specs = {name: (dtype, shape(cfg)) for name, (dtype, shape) in self.fields.items()}
    specs.update({"prompt_text": (np.bytes_, ()), "meta/task": (np.bytes_, ()),
                  "meta/answer": (np.bytes_, ())})
    return specs


def _image(cfg): return (cfg.image_size, cfg.image_size, 3)
def _target(cfg): return (cfg.target_size, cfg.target_size, 3)
def _scalar(cfg): return ()
def _pair(cfg): return (2,)
def _boxes(cfg): return (None, 4)
def _list(cfg): return (None,)
def _audio(cfg): return (cfg.audio_samples,)
def _frames(cfg): return (cfg.num_frames, cfg.frame_size, cfg.frame_size, 3)
def _segments(cfg): return (cfg.num_frames, cfg.audio_samples)
def _sensor(cfg): return (cfg.sensor_samples, taps.CHANNELS)


IMAGE_FIELDS = {"image_inputs": (np.uint8, _image), "meta/image_size": (np.int32, _pair),
                "meta/boxes": (np.float32, _boxes), "meta/labels": (np.bytes_, _list)}
TEXT_TARGET = {"text_targets": (np.bytes_, _scalar)}


def _strings(values) -> np.ndarray:
  return np.array([v.encode() for v in values], dtype=object).reshape(-1)


def _text(value: str) -> np.ndarray:
  return np.array(value.encode(), dtype=object)


def _image_example(cfg: WorldConfig, scene: scenes.Scene, objects,
                   rendering: Optional[scenes.Rendering] = None, **fields) -> Example:
  """The scene rendered as image_inputs, with boxes and labels of `objects` (indices) as meta.
  `rendering`: the scene already rendered at cfg.image_size (None: render it here)."""
  rendering = rendering or scenes.render(scene, cfg.image_size)
  objects = list(objects)
  return {"image_inputs": rendering.image_hw3,
          "meta/image_size": np.array([cfg.image_size, cfg.image_size], np.int32),
          "meta/boxes": rendering.boxes_n4[objects].reshape(-1, 4),
          "meta/labels": _strings(scene.objects[i].name for i in objects),
          **fields}


def _scene_with(rng, cfg, question_fn, min_objects: int = 1):
  """A scene (with at least `min_objects`) for which question_fn gives a question."""
  low = max(cfg.min_objects, min_objects)
  for _ in range(_MAX_SCENE_TRIES):
    count = int(rng.integers(low, max(low, cfg.max_objects) + 1))
    scene = scenes.sample_scene(rng, cfg, num_objects=count)
    qa = question_fn(rng, scene)
    if qa is not None:
      return scene, qa
  raise RuntimeError(f"world: no scene supports {question_fn.__name__} after {_MAX_SCENE_TRIES} "
                     f"tries with {cfg}")


# ------------------------------------------------------------------------------------ vision

def caption(rng, cfg):
  scene = scenes.sample_scene(rng, cfg)
  text = language.describe_scene(scene, cfg.min_object_size, cfg.max_object_size)
  return _image_example(cfg, scene, range(len(scene.objects)), prompt_text=_text(""),
                        text_targets=_text(text), **{"meta/answer": _text(text)})


def _vqa(topic: str, min_objects: int = 1):
  question_fn = language.SCENE_QUESTIONS[topic]

  def generate(rng, cfg):
    scene, (question, answer) = _scene_with(rng, cfg, question_fn, min_objects)
    return _image_example(cfg, scene, range(len(scene.objects)), prompt_text=_text(question),
                          text_targets=_text(answer), **{"meta/answer": _text(answer)})
  generate.__name__ = f"vqa_{topic}"
  return generate


def _referred_object(rng, scene):
  """Any object can be referred to by "the <colour> <shape>": a scene never repeats that pair."""
  index = int(rng.integers(len(scene.objects)))
  return index, language.referring_expression(scene.objects[index])


def refexp(rng, cfg):
  scene = scenes.sample_scene(rng, cfg)
  index, expression = _referred_object(rng, scene)
  return _image_example(cfg, scene, [index], prompt_text=_text(expression),
                        **{"meta/answer": _text(expression)})


def detection(rng, cfg):
  scene = scenes.sample_scene(rng, cfg)
  ordered = language.reading_order(scene)
  indices = [scene.objects.index(obj) for obj in ordered]
  return _image_example(cfg, scene, indices, prompt_text=_text(""),
                        **{"meta/answer": _text(" ".join(o.name for o in ordered))})


def text_to_image(rng, cfg):
  scene = scenes.sample_scene(rng, cfg)
  text = language.describe_scene(scene, cfg.min_object_size, cfg.max_object_size)
  return {"image_targets": scenes.render(scene, cfg.target_size).image_hw3,
          "prompt_text": _text(text), "meta/answer": _text(text)}


def image_denoise(rng, cfg):
  """The same scene as input and target (for [R] masked-patch denoising, which masks the input
  and reconstructs the target); the caption is kept as the answer."""
  scene = scenes.sample_scene(rng, cfg)
  text = language.describe_scene(scene, cfg.min_object_size, cfg.max_object_size)
  return _image_example(cfg, scene, range(len(scene.objects)), prompt_text=_text(""),
                        image_targets=scenes.render(scene, cfg.target_size).image_hw3,
                        **{"meta/answer": _text(text)})


def object_mask(rng, cfg):
  scene = scenes.sample_scene(rng, cfg)
  index, expression = _referred_object(rng, scene)
  mask_hw = scenes.render(scene, cfg.target_size).masks_nhw[index]
  mask_image = np.repeat((mask_hw.astype(np.uint8) * 255)[:, :, None], 3, axis=2)
  return _image_example(cfg, scene, [index], prompt_text=_text(expression),
                        image_targets=mask_image, **{"meta/answer": _text(expression)})


# ------------------------------------------------------------------------------------ dense

def _dense(kind: str):
  """image_inputs -> the scene's `kind` label drawn at target_size (dense.py, dense_labels.py);
  the caption is kept as the answer."""
  encode = {"depth": lambda scene, r: dense_labels.encode_depth(dense.depth(scene, r)),
            "normals": lambda scene, r: dense_labels.encode_normals(dense.normals(scene, r)),
            "segmentation": lambda scene, r: dense_labels.encode_segmentation(
                dense.segmentation(scene, r), len(dense.SEGMENTATION_CLASSES)),
            "edges": lambda scene, r: dense_labels.encode_edges(dense.edges(r))}[kind]

  def generate(rng, cfg):
    scene = scenes.sample_scene(rng, cfg)
    target = encode(scene, scenes.render(scene, cfg.target_size))
    text = language.describe_scene(scene, cfg.min_object_size, cfg.max_object_size)
    return _image_example(cfg, scene, range(len(scene.objects)), prompt_text=_text(""),
                          image_targets=target, **{"meta/answer": _text(text)})
  generate.__name__ = kind
  return generate


def segmentation_to_image(rng, cfg):
  """The dense label -> image direction: the segmentation (drawn at image_size) as input, the
  scene's picture as target."""
  scene = scenes.sample_scene(rng, cfg)
  rendering = scenes.render(scene, cfg.image_size)
  classes = dense.segmentation(scene, rendering)
  text = language.describe_scene(scene, cfg.min_object_size, cfg.max_object_size)
  return _image_example(cfg, scene, range(len(scene.objects)), rendering, prompt_text=_text(""),
                        image_inputs=dense_labels.encode_segmentation(
                            classes, len(dense.SEGMENTATION_CLASSES)),
                        image_targets=scenes.render(scene, cfg.target_size).image_hw3,
                        **{"meta/answer": _text(text)})


def palette(rng, cfg):
  """image_inputs -> "light grey background; colours: red, blue" (by visible area)."""
  scene = scenes.sample_scene(rng, cfg)
  rendering = scenes.render(scene, cfg.image_size)
  text = dense.palette_text(scene, rendering)
  return _image_example(cfg, scene, range(len(scene.objects)), rendering, prompt_text=_text(""),
                        text_targets=_text(text), **{"meta/answer": _text(text)})


# ------------------------------------------------------------------------------------ video

def _video(question_kind: str):
  def generate(rng, cfg):
    clip = video.sample_clip(rng, cfg)
    if question_kind == "direction":
      question, answer = language.direction_question(clip)
    else:
      question, answer = language.moving_count_question(rng, clip)
    return {"image_history": video.render_frames(clip, cfg),
            "audio_history": video.render_soundtrack(clip, cfg),
            "prompt_text": _text(question), "text_targets": _text(answer),
            "meta/answer": _text(answer)}
  generate.__name__ = f"video_{question_kind}"
  return generate


# ------------------------------------------------------------------------------------ audio

def _beeps_audio(rng, cfg):
  beeps = tones.sample_beeps(rng, cfg)
  return beeps, tones.synthesise_beeps(beeps, cfg, noise_seed=int(rng.integers(2**31)))


def audio_caption(rng, cfg):
  beeps, waveform = _beeps_audio(rng, cfg)
  text = language.describe_beeps(beeps)
  return {"audio_inputs": waveform, "prompt_text": _text(""), "text_targets": _text(text),
          "meta/answer": _text(text), "meta/frequency_hz": np.float32(beeps.frequency_hz)}


def audio_qa(rng, cfg):
  beeps, waveform = _beeps_audio(rng, cfg)
  question, answer = language.beeps_question(rng, beeps)
  return {"audio_inputs": waveform, "prompt_text": _text(question), "text_targets": _text(answer),
          "meta/answer": _text(answer), "meta/frequency_hz": np.float32(beeps.frequency_hz)}


def text_to_audio(rng, cfg):
  beeps, waveform = _beeps_audio(rng, cfg)
  text = language.describe_beeps(beeps)
  return {"audio_targets": waveform, "prompt_text": _text(text), "meta/answer": _text(text),
          "meta/frequency_hz": np.float32(beeps.frequency_hz)}


def audio_denoise(rng, cfg):
  """The same clip as input and target (for [R] masked-patch denoising of the spectrogram)."""
  beeps, waveform = _beeps_audio(rng, cfg)
  text = language.describe_beeps(beeps)
  return {"audio_inputs": waveform, "audio_targets": waveform, "prompt_text": _text(""),
          "meta/answer": _text(text), "meta/frequency_hz": np.float32(beeps.frequency_hz)}


# ------------------------------------------------------------------------------------ sensor

def sensor_taps(rng, cfg):
  """An IMU signal [T, 6] with 1-4 taps; "How many taps are in the signal?" -> "3"."""
  drawn = taps.sample_taps(rng, cfg)
  signal = taps.synthesise(drawn, rng, cfg)
  answer = str(drawn.count)
  return {"sensor_inputs": signal, "prompt_text": _text("How many taps are in the signal?"),
          "text_targets": _text(answer), "meta/answer": _text(answer),
          "meta/tap_onsets": np.array(drawn.onsets, np.int32)}


def sensor_gravity(rng, cfg):
  """An IMU signal [T, 6] at rest but for 1-4 taps; which accelerometer axis feels gravity:
  "Which axis feels gravity: 1, 2 or 3?" -> "2". A level read (the axis's mean), where counting
  taps needs the events: the easier of the two sensor tasks."""
  down = int(rng.integers(3))
  signal = taps.synthesise(taps.sample_taps(rng, cfg), rng, cfg, down=down)
  answer = str(down + 1)
  return {"sensor_inputs": signal, "prompt_text": _text("Which axis feels gravity: 1, 2 or 3?"),
          "text_targets": _text(answer), "meta/answer": _text(answer)}


# ------------------------------------------------------------------------------------ text only

def text_scene_qa(rng, cfg):
  topic = ("colour", "shape", "count")[int(rng.integers(3))]
  scene, (question, answer) = _scene_with(rng, cfg, language.SCENE_QUESTIONS[topic])
  description = language.describe_scene(scene, cfg.min_object_size, cfg.max_object_size)
  return {"prompt_text": _text(f"{description} {question}"), "text_targets": _text(answer),
          "meta/answer": _text(answer)}


def arithmetic(rng, cfg):
  del cfg
  op = ("plus", "minus", "times")[int(rng.integers(3))]
  if op == "times":
    a, b = (int(v) for v in rng.integers(0, 13, size=2))
    value = a * b
  else:
    a, b = (int(v) for v in rng.integers(0, 100, size=2))
    if op == "minus":
      a, b = max(a, b), min(a, b)
    value = a + b if op == "plus" else a - b
  return {"prompt_text": _text(f"What is {a} {op} {b}?"), "text_targets": _text(str(value)),
          "meta/answer": _text(str(value))}


def arithmetic_split(example: Example) -> str:
  """1/20 of the problems are validation, 1/20 test, by a hash of the question."""
  bucket = zlib.crc32(example["prompt_text"].item()) % 20
  return {0: "validation", 1: "test"}.get(bucket, "train")


_FREQUENCY = {"meta/frequency_hz": (np.float32, _scalar)}
DENSE_KINDS = ("depth", "normals", "segmentation", "edges")
GENERATORS: Dict[str, Generator] = {g.name: g for g in [
    Generator("caption", caption, {**IMAGE_FIELDS, **TEXT_TARGET}),
    Generator("vqa_colour", _vqa("colour"), {**IMAGE_FIELDS, **TEXT_TARGET}),
    Generator("vqa_shape", _vqa("shape"), {**IMAGE_FIELDS, **TEXT_TARGET}),
    Generator("vqa_count", _vqa("count"), {**IMAGE_FIELDS, **TEXT_TARGET}),
    Generator("vqa_position", _vqa("position", min_objects=2), {**IMAGE_FIELDS, **TEXT_TARGET}),
    Generator("refexp", refexp, IMAGE_FIELDS),
    Generator("detection", detection, IMAGE_FIELDS),
    Generator("text_to_image", text_to_image, {"image_targets": (np.uint8, _target)}),
    Generator("image_denoise", image_denoise,
              {**IMAGE_FIELDS, "image_targets": (np.uint8, _target)}),
    Generator("object_mask", object_mask, {**IMAGE_FIELDS, "image_targets": (np.uint8, _target)}),
    *(Generator(kind, _dense(kind), {**IMAGE_FIELDS, "image_targets": (np.uint8, _target)})
      for kind in DENSE_KINDS),
    Generator("segmentation_to_image", segmentation_to_image,
              {**IMAGE_FIELDS, "image_targets": (np.uint8, _target)}),
    Generator("palette", palette, {**IMAGE_FIELDS, **TEXT_TARGET}),
    Generator("video_direction", _video("direction"),
              {"image_history": (np.uint8, _frames), "audio_history": (np.float32, _segments),
               **TEXT_TARGET}),
    Generator("video_count", _video("count"),
              {"image_history": (np.uint8, _frames), "audio_history": (np.float32, _segments),
               **TEXT_TARGET}),
    Generator("audio_caption", audio_caption,
              {"audio_inputs": (np.float32, _audio), **TEXT_TARGET, **_FREQUENCY}),
    Generator("audio_qa", audio_qa,
              {"audio_inputs": (np.float32, _audio), **TEXT_TARGET, **_FREQUENCY}),
    Generator("text_to_audio", text_to_audio,
              {"audio_targets": (np.float32, _audio), **_FREQUENCY}),
    Generator("audio_denoise", audio_denoise,
              {"audio_inputs": (np.float32, _audio), "audio_targets": (np.float32, _audio),
               **_FREQUENCY}),
    Generator("sensor_taps", sensor_taps,
              {"sensor_inputs": (np.float32, _sensor), "meta/tap_onsets": (np.int32, _list),
               **TEXT_TARGET}),
    Generator("sensor_gravity", sensor_gravity,
              {"sensor_inputs": (np.float32, _sensor), **TEXT_TARGET}),
    Generator("text_scene_qa", text_scene_qa, TEXT_TARGET),
    Generator("arithmetic", arithmetic, TEXT_TARGET, content_split=arithmetic_split),
]}
