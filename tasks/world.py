"""The built-in world's seqio tasks (`world_<name>`) and mixtures (`world_default`, ...).

Each task = a `WorldDataSource` (unified_io/datasets/world: example i of a split is a pure function
of the seed, the split and i) + one stage-1 preprocessor that words the prompt
(`unified_io.data.prompts`) and writes boxes as location tokens (`unified_io.data.ops.boxes`).
The world draws at its own sizes (128 px by default; stage 2 resizes to whatever model reads it);
gin changes them and the difficulty:

  make_world_config.difficulty = "medium"
  make_world_config.image_size = 256

Raw fields per task (every task also has text_inputs and meta/task, meta/answer):
  world_caption           image_inputs -> text_targets (a caption)
  world_vqa_{colour,shape,count,position}   image_inputs + question -> short answer
  world_refexp            image_inputs + "the red circle" -> text_targets: 4 location tokens
  world_detection         image_inputs -> text_targets: "<box> label <box> label ..."
  world_text_to_image     caption (10% null prompt) -> image_targets
  world_object_mask       image_inputs + "the red circle" -> image_targets (white mask on black)
  world_video_{direction,count}   image_history + audio_history + question -> answer
  world_audio_caption     audio_inputs -> description ("three high beeps of a square wave")
  world_audio_qa          audio_inputs + question (pitch / count / timbre) -> answer
  world_text_to_audio     description (10% null prompt) -> audio_targets
  world_sensor_taps       sensor_inputs (IMU [T, 6]) + "How many taps are in the signal?" -> "1".."4"
  world_sensor_gravity    sensor_inputs + "Which axis feels gravity: 1, 2 or 3?" -> "1".."3"
                          (needs a model reading sensor: gin/models/tiny_sensor.gin; in no mixture
                          of the release's modalities, only in world_sensor)
  world_depth             image_inputs -> image_targets: depth map (grey = metres / 10)
  world_normals           image_inputs -> image_targets: surface normals (RGB = (n + 1) / 2)
  world_segmentation      image_inputs -> image_targets: semantic classes (background + 7 shapes)
                          in dense_labels.PALETTE colours
  world_edges             image_inputs -> image_targets: object boundaries, white on black
  world_segmentation_to_image   segmentation picture -> image_targets: the scene's picture
  world_palette           image_inputs -> "light grey background; colours: red, blue"
                          (dense tasks: unified_io/datasets/world/dense.py; mixture world_dense)
  world_image_denoise     image_inputs -> image_targets, the same scene (for [R] denoising)
  world_audio_denoise     audio_inputs -> audio_targets, the same clip (for [R] denoising)
  world_text_scene_qa     a scene described in text + question -> answer
  world_arithmetic        "What is 3 plus 4?" -> "7" (validation/test problems never in train)
Image tasks carry meta/boxes (float32 [n, 4] pixels of image_inputs), meta/labels, meta/image_size.
"""

import dataclasses
from typing import Callable, Dict, Optional, Sequence, Tuple

import gin
import seqio
import tensorflow as tf

from unified_io.data import prompts, registry
from unified_io.data.curriculum import Curriculum
from unified_io.data.ops import boxes as box_ops
from unified_io.datasets.world import GENERATORS, WorldDataSource, dense, lexicon, make_world_config
from unified_io.evaluation import drawn_objects
from unified_io.evaluation import metric_fns as M
from unified_io.evaluation import postprocessors as P


@dataclasses.dataclass(frozen=True)
class WorldTask:
  generator: str                 # key of unified_io.datasets.world.GENERATORS
  prompt_kind: str               # key of prompts.PROMPTS
  modalities: Tuple[str, ...]    # what the examples use (for curricula)
  null_prompt: bool = False      # generation tasks: drop the prompt 10% of the time (CFG)
  # Builds text_targets from the example (location tokens); None: the generator's text is final.
  text_targets: Optional[Callable[[Dict[str, tf.Tensor]], tf.Tensor]] = None
  # How uio2-eval reads and scores it: seqio's postprocess_fn and metric_fns.
  postprocess_fn: Callable = P.answer
  metric_fns: Sequence[Callable] = (M.exact_match,)
  max_decode_length: Optional[int] = None  # text tokens to generate (default: the feature length)


def _normalised_boxes(example) -> tf.Tensor:
  """meta/boxes (pixels of image_inputs) as fractions, so location tokens need no static size."""
  size_hw = tf.cast(example["meta/image_size"], tf.float32)
  return example["meta/boxes"] / tf.tile(size_hw, [2])


def refexp_target(example) -> tf.Tensor:
  return box_ops.boxes_to_text(_normalised_boxes(example), 1)


def detection_target(example) -> tf.Tensor:
  """'<box> label <box> label ...' in reading order (the release's box-then-label layout)."""
  pairs = tf.strings.join([box_ops.boxes_to_text_n(_normalised_boxes(example), 1),
                           example["meta/labels"]], separator=" ")
  return tf.strings.reduce_join(pairs, separator=" ")


_IMAGE, _TEXT = ("image", "text"), ("text",)
_VIDEO = ("image_history", "audio_history", "text")
# Scoring, by kind of answer (unified_io.evaluation.postprocessors / metric_fns).
_CAPTION = dict(postprocess_fn=P.captions, metric_fns=(M.exact_match, M.bleu, M.cider))
_VQA = dict(postprocess_fn=P.vqa_answers, metric_fns=(M.vqa_accuracy,))
_LABEL = dict(metric_fns=(M.exact_match, M.classification_accuracy))
_IMAGE_OUT = dict(postprocess_fn=P.generated_media, metric_fns=(M.token_accuracy, M.image_error))
# Generated world pictures: also whether they show the reference's objects, found by the world's
# flat object colours (a grey distractor counts with the backgrounds).
WORLD_PALETTE = drawn_objects.Palette.from_rgb255(
    lexicon.COLOUR_RGB_C3, list(lexicon.BACKGROUNDS.values()) + [lexicon.DISTRACTOR_GREY])
_SCENE_OUT = dict(_IMAGE_OUT, metric_fns=(*_IMAGE_OUT["metric_fns"],
                                          M.drawn_objects_for(WORLD_PALETTE)))
_AUDIO_OUT = dict(postprocess_fn=P.generated_media,
                  metric_fns=(M.token_accuracy, M.spectrogram_error))
# The dense world tasks' scoring, one line per task: generated pictures decoded back to labels
# (unified_io.data.dense_labels) and scored as the papers report them (metric_fns).
_DENSE_OUT = lambda metric: dict(postprocess_fn=P.generated_media,
                                 metric_fns=(M.token_accuracy, metric))
DENSE_SCORING = {
    "depth": _DENSE_OUT(M.depth_error),
    "normals": _DENSE_OUT(M.normals_error),
    "segmentation": _DENSE_OUT(M.segmentation_miou_for(len(dense.SEGMENTATION_CLASSES))),
    "edges": _DENSE_OUT(M.edge_fscore),
    "segmentation_to_image": _SCENE_OUT,
    "palette": dict(metric_fns=(M.exact_match,)),
}


@gin.configurable
def world_palette() -> drawn_objects.Palette:
  """The world's palette, for gin: `train_tokenizer.object_palette = @world_palette()` (the image
  tokenizer's held-out measures then say how many objects its reconstructions keep)."""
  return WORLD_PALETTE


TASKS: Dict[str, WorldTask] = {
    "caption": WorldTask("caption", "image_caption", _IMAGE, **_CAPTION),
    "vqa_colour": WorldTask("vqa_colour", "vqa", _IMAGE, **_VQA),
    "vqa_shape": WorldTask("vqa_shape", "vqa", _IMAGE, **_VQA),
    "vqa_count": WorldTask("vqa_count", "vqa", _IMAGE, **_VQA),
    "vqa_position": WorldTask("vqa_position", "vqa", _IMAGE, **_VQA),
    # Four location tokens and EOS.
    "refexp": WorldTask("refexp", "refexp", _IMAGE, text_targets=refexp_target,
                        postprocess_fn=P.box, metric_fns=(M.refexp_accuracy,),
                        max_decode_length=6),
    "detection": WorldTask("detection", "detection", _IMAGE, text_targets=detection_target,
                           postprocess_fn=P.detections, metric_fns=(M.detection_map,)),
    "text_to_image": WorldTask("text_to_image", "text_to_image", _IMAGE, null_prompt=True,
                               **_SCENE_OUT),
    "object_mask": WorldTask("object_mask", "object_to_mask", _IMAGE, **_IMAGE_OUT),
    "image_denoise": WorldTask("image_denoise", "image_denoise", _IMAGE, **_SCENE_OUT),
    "depth": WorldTask("depth", "depth", _IMAGE, **DENSE_SCORING["depth"]),
    "normals": WorldTask("normals", "surface_normals", _IMAGE, **DENSE_SCORING["normals"]),
    "segmentation": WorldTask("segmentation", "semantic_segmentation", _IMAGE,
                              **DENSE_SCORING["segmentation"]),
    "edges": WorldTask("edges", "edge_detection", _IMAGE, **DENSE_SCORING["edges"]),
    "segmentation_to_image": WorldTask("segmentation_to_image", "segmentation_to_image", _IMAGE,
                                       **DENSE_SCORING["segmentation_to_image"]),
    "palette": WorldTask("palette", "colour_palette", _IMAGE, **DENSE_SCORING["palette"]),
    "audio_denoise": WorldTask("audio_denoise", "audio_denoise", ("audio", "text"), **_AUDIO_OUT),
    "video_direction": WorldTask("video_direction", "video_qa", _VIDEO, **_LABEL),
    "video_count": WorldTask("video_count", "video_qa", _VIDEO, **_LABEL),
    "audio_caption": WorldTask("audio_caption", "audio_caption", ("audio", "text"), **_CAPTION),
    "audio_qa": WorldTask("audio_qa", "audio_vqa", ("audio", "text"), **_LABEL),
    "text_to_audio": WorldTask("text_to_audio", "text_to_audio", ("audio", "text"),
                               null_prompt=True, **_AUDIO_OUT),
    "sensor_taps": WorldTask("sensor_taps", "sensor_vqa", ("sensor", "text"), **_LABEL),
    "sensor_gravity": WorldTask("sensor_gravity", "sensor_vqa", ("sensor", "text"), **_LABEL),
    "text_scene_qa": WorldTask("text_scene_qa", "text_instruction", _TEXT, **_LABEL),
    "arithmetic": WorldTask("arithmetic", "text_instruction", _TEXT),
}
assert set(TASKS) == set(GENERATORS), "every world generator is a task"


def stage1(task: WorldTask) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
  """The task preprocessor: prompt wording and location tokens; the rest is already raw fields."""
  takes_text = prompts.num_slots(task.prompt_kind) == 1

  @seqio.map_over_dataset
  def to_raw_fields(example):
    example = dict(example)
    seed, words = example.pop("prompt_seed"), example.pop("prompt_text")
    prompt = prompts.sample_prompt(task.prompt_kind, seed, *([words] if takes_text else []))
    if task.null_prompt:
      prompt = prompts.maybe_null_prompt(prompt, seed)
    example["text_inputs"] = prompt
    if task.text_targets is not None:
      example["text_targets"] = task.text_targets(example)
    return example

  to_raw_fields.__name__ = f"world_{task.generator}_stage1"
  return to_raw_fields


# Generation tasks trained with dropped prompts are evaluated with classifier-free guidance at this
# scale (registry.Inference.guidance_scale). The main job's model on 64 held-out prompts (greedy):
# token accuracy 0.339 unguided, 0.380 at 2 and 3, 0.233 at 5; the prompted colours appear for
# 0, 0, 5 and 25% of the objects, at 5 with 1.4 unprompted colours per image (noise).
GUIDANCE_SCALE = 3.0

# Examples are independent random draws and the source already shuffles indices, so seqio's
# example shuffle (which runs after stage 2, on patchified images) only needs a token buffer.
_SHUFFLE_BUFFER = 8

for _name, _task in TASKS.items():
  registry.add_task(f"world_{_name}", WorldDataSource(_task.generator, make_world_config),
                    [stage1(_task)], modalities=_task.modalities,
                    postprocess_fn=_task.postprocess_fn, metric_fns=list(_task.metric_fns),
                    max_decode_length=_task.max_decode_length,
                    guidance_scale=GUIDANCE_SCALE if _task.null_prompt else None,
                    shuffle_buffer_size=_SHUFFLE_BUFFER, replace=True)

VISION = ("caption", "vqa_colour", "vqa_shape", "vqa_count", "vqa_position", "refexp",
          "detection", "text_to_image", "object_mask")
VIDEO = ("video_direction", "video_count")
AUDIO = ("audio_caption", "audio_qa", "text_to_audio")
TEXT = ("text_scene_qa", "arithmetic")
SENSOR = ("sensor_taps", "sensor_gravity")
# Relative rates of world_default: the four VQA topics share one task's weight, as do the two
# text tasks; every other task counts once.
# The denoising tasks copy their input unless a denoising mixture masks it: pretraining only.
DENOISING = ("image_denoise", "audio_denoise")
# Sensor tasks need a model reading sensor (not the release's modalities): only world_sensor.
# Dense labels (and their inverse, segmentation -> image, and the colour palette): only world_dense.
DENSE = ("depth", "normals", "segmentation", "edges", "segmentation_to_image", "palette")
assert set(DENSE) == set(DENSE_SCORING)
DEFAULT_RATES = {**{name: 1.0 for name in TASKS if name not in DENOISING + SENSOR + DENSE},
                 **{f"vqa_{t}": 0.25 for t in ("colour", "shape", "count", "position")},
                 "video_direction": 0.5, "video_count": 0.5,
                 "text_scene_qa": 0.5, "arithmetic": 0.5}

MIXTURES = {"world_default": DEFAULT_RATES,
            "world_vision": {n: DEFAULT_RATES[n] for n in VISION},
            "world_video": {n: DEFAULT_RATES[n] for n in VIDEO},
            "world_audio": {n: DEFAULT_RATES[n] for n in AUDIO},
            "world_text": {n: DEFAULT_RATES[n] for n in TEXT},
            "world_sensor": {n: 1.0 for n in SENSOR},
            "world_dense": {n: 1.0 for n in DENSE},
            # Progressive alignment's second stage (runs/align_modality.gin): the sensor task
            # keeps its place while the audio input is aligned beside it.
            "world_sensor_audio": {"sensor_gravity": 1.0, "audio_qa": 1.0}}
for _mixture, _rates in MIXTURES.items():
  registry.add_mixture(_mixture, [(f"world_{n}", r) for n, r in _rates.items()], replace=True)

# The main job's mixture (unified_io/experiments/main_job.py): the tasks its targets and gallery use, weighted
# towards the measured ones. It trains with grouped batches (`train.group_batches`), where every
# (modality set, text-target length) group costs one compile; these tasks make five groups.
MAIN_RATES = {"vqa_colour": 2.5, "vqa_shape": 1.0, "vqa_count": 0.5, "vqa_position": 0.5,
              "refexp": 1.5, "caption": 1.5, "audio_qa": 2.0, "text_to_image": 1.0}
registry.add_mixture("world_main", [(f"world_{n}", r) for n, r in MAIN_RATES.items()],
                     replace=True)

# UIO2-style pretraining on the world: the mixture of denoisers (unified_io.data.denoising) over
# image-text pairs, audio, video and text, with the image / audio [R] tasks whose input and target
# show the same picture or clip. The supervised VQA, referring, detection, mask, audio QA and
# arithmetic tasks are left out, so a pretrained model can be fine-tuned and evaluated on them as
# unseen tasks. Used by gin/runs/pretrain_mod.gin.
PRETRAIN_RATES = {"caption": 1.0, "text_scene_qa": 0.5, "text_to_image": 0.5, "image_denoise": 1.0,
                  "audio_caption": 0.5, "text_to_audio": 0.25, "audio_denoise": 0.5,
                  "video_direction": 0.25}
registry.add_mixture("world_pretrain_mod", [(f"world_{n}", r) for n, r in PRETRAIN_RATES.items()],
                     denoising=True, replace=True)


@gin.configurable
def world_pretrain_curriculum(modality_starts: Optional[Dict[str, int]] = None) -> Curriculum:
  """The pretraining mixture brought in by modality (UnIVAL): text-only tasks first, then image
  tasks, then audio and video. `modality_starts` are training steps (gin:
  `world_pretrain_curriculum.modality_starts = {"text": 0, "image": 200, ...}`)."""
  starts = modality_starts or {"text": 0, "image": 100, "audio": 200, "image_history": 200,
                               "audio_history": 200}
  rates = {f"world_{n}": r for n, r in PRETRAIN_RATES.items()}
  return Curriculum.by_modality(rates, {t: registry.task_modalities(t) for t in rates}, starts)


registry.add_mixture("world_pretrain_mod_curriculum",
                     [(f"world_{n}", r) for n, r in PRETRAIN_RATES.items()], denoising=True,
                     curriculum=world_pretrain_curriculum, replace=True)

# Supervised tasks the pretraining mixture leaves out: fine-tuned and evaluated after pretraining
# (unified_io/experiments/pretrain_vs_scratch.py), unseen by the denoising objective.
HELDOUT_RATES = {"vqa_colour": 1.0, "vqa_shape": 1.0, "vqa_count": 0.5, "vqa_position": 0.5,
                 "refexp": 1.0, "audio_qa": 1.0}
assert not set(HELDOUT_RATES) & set(PRETRAIN_RATES)
registry.add_mixture("world_heldout", [(f"world_{n}", r) for n, r in HELDOUT_RATES.items()],
                     replace=True)
