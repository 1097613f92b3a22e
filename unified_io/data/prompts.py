"""Prompt templates per task kind, sampled per example with a stateless seed.

`PROMPTS[kind]` lists templates for one kind of task; `{}` marks where the task's words go (a
question, a referring expression, a caption to draw, ...). All templates of a kind have the same
number of slots, so `sample_prompt(kind, seed, *args)` can fill any of them. Sampling is stateless:
the same seed picks the same template, which keeps seqio pipelines deterministic.

Generation tasks (text -> image, text -> audio) drop their prompt with probability
NULL_PROMPT_RATE (`maybe_null_prompt`), so the model also learns the unconditional distribution
that classifier-free guidance needs at inference time.

The wording here is ours. Like the release's prompt lists, several paraphrases per task keep the
model from latching onto one phrasing.
"""

from typing import Dict, List, Union

import tensorflow as tf

NULL_PROMPT_RATE = 0.1
SLOT = "{}"

PROMPTS: Dict[str, List[str]] = {
    "image_caption": [
        "Describe this image.",
        "Write a short caption for the picture.",
        "What does this image show? Answer in one sentence.",
        "Give a brief description of the scene.",
        "Caption the image.",
        "Summarise what you see in this photo.",
    ],
    "vqa": [
        "{}",
        "Question: {} Answer:",
        "Look at the image and answer: {}",
        "{} Reply with a short answer.",
        "Answer this question about the picture: {}",
    ],
    "refexp": [
        "Which region does \"{}\" describe?",
        "Find the box around: {}",
        "Locate {} in the image.",
        "Give the bounding box of {}.",
        "Where is {}? Answer with a box.",
    ],
    "detection": [
        "List every object in the image with its box.",
        "Detect all objects and name them.",
        "Find the objects in this picture and give their locations.",
        "Give a box and a label for each object you see.",
        "Mark each object in the image with a bounding box.",
    ],
    "text_to_image": [
        "{}",
        "Draw: {}",
        "Generate a picture of {}",
        "Create an image that shows {}",
        "Paint this scene: {}",
        "Render an image matching the description: {}",
    ],
    "object_to_mask": [
        "Segment {}.",
        "Draw the mask of {}.",
        "Which pixels belong to {}?",
        "Highlight {} in the image.",
        "Produce a segmentation mask for {}.",
    ],
    # Dense labels drawn as pictures (unified_io/data/dense_labels.py's encodings). Not
    # "segmentation": that name is an alias of object_to_mask.
    "depth": [
        "What is the depth map of this image?",
        "Estimate the depth of every pixel.",
        "Draw the depth of the scene.",
        "Generate a depth image for this picture.",
        "How far away is each part of the image? Answer with a depth map.",
    ],
    "surface_normals": [
        "What are the surface normals of this image?",
        "Estimate the surface normal at every pixel.",
        "Draw the surface orientation of the scene.",
        "Generate a surface normal map for this picture.",
    ],
    "semantic_segmentation": [
        "Segment the image into classes.",
        "What is the semantic segmentation of this image?",
        "Label every pixel with its class.",
        "Draw a semantic segmentation map of the scene.",
    ],
    "edge_detection": [
        "Find the edges in this image.",
        "Draw the object boundaries.",
        "What are the edges of the objects in the picture?",
        "Generate an edge map of the scene.",
    ],
    "segmentation_to_image": [
        "Generate an image from this segmentation map.",
        "Draw the picture this segmentation describes.",
        "Turn the segmentation into a realistic image.",
        "Render an image matching the segmentation.",
    ],
    "colour_palette": [
        "What colours are in this image?",
        "List the colours of the picture, the most visible first.",
        "Describe the colour palette of the image.",
        "Name the background colour and the object colours.",
    ],
    # Masked-patch denoising ([R] image / audio): the input shows the picture or sound with
    # patches masked out, the target is the whole of it.
    "image_denoise": [
        "Fill in the masked parts of the image.",
        "Reconstruct the image.",
        "Restore the missing patches of this picture.",
        "What does the complete image look like?",
    ],
    "audio_denoise": [
        "Fill in the masked parts of the audio.",
        "Reconstruct the sound.",
        "Restore the missing parts of this recording.",
        "What does the complete recording sound like?",
    ],
    "video_caption": [
        "Describe what happens in the video.",
        "Write a caption for this clip.",
        "Summarise the video in one sentence.",
        "What is going on in this video?",
        "Give a short description of the clip.",
    ],
    "video_qa": [
        "{}",
        "Watch the video and answer: {}",
        "Question about the clip: {} Answer:",
        "{} Answer briefly, based on the video.",
        "Answer this question about the video: {}",
    ],
    "audio_caption": [
        "Describe the sound.",
        "What can be heard in this recording?",
        "Write a caption for the audio.",
        "Summarise the audio clip in one sentence.",
        "Give a short description of what you hear.",
    ],
    "audio_classification": [
        "What kind of sound is this?",
        "Classify the audio.",
        "Which category does this sound belong to?",
        "Name the sound you hear.",
        "Label this audio clip.",
    ],
    "audio_vqa": [
        "{}",
        "Listen and answer: {}",
        "Question about the sound: {} Answer:",
        "{} Answer based on the audio.",
        "Answer this question about the recording: {}",
    ],
    "sensor_vqa": [
        "{}",
        "Read the motion sensor and answer: {}",
        "Question about the IMU signal: {} Answer:",
        "{} Answer based on the sensor data.",
    ],
    "text_to_audio": [
        "{}",
        "Make the sound of {}",
        "Generate audio: {}",
        "Produce a recording of {}",
        "Synthesise this sound: {}",
    ],
    "text_instruction": [
        "{}",
        "{}\nResponse:",
        "Instruction: {}\nAnswer:",
        "Follow the instruction below.\n{}",
    ],
}

# Other names the same templates go by.
ALIASES = {
    "captioning": "image_caption",
    "caption": "image_caption",
    "segmentation": "object_to_mask",
    "instruction": "text_instruction",
}


def templates(kind: str) -> List[str]:
  """The templates of `kind` (aliases resolved); a clear error for an unknown kind."""
  name = ALIASES.get(kind, kind)
  if name not in PROMPTS:
    raise KeyError(f"no prompts for task kind {kind!r}; known kinds: {sorted(PROMPTS)} "
                   f"(aliases {sorted(ALIASES)})")
  return PROMPTS[name]


def num_slots(kind: str) -> int:
  """How many `{}` the templates of `kind` take (the same for all of them)."""
  counts = {t.count(SLOT) for t in templates(kind)}
  if len(counts) != 1:
    raise ValueError(f"prompts for {kind!r} disagree on the number of {SLOT} slots: {counts}")
  return counts.pop()


def _template_index(count: int, seed: tf.Tensor) -> tf.Tensor:
  return tf.random.stateless_uniform([], seed, 0, count, dtype=tf.int32)


def sample_prompt(kind: str, seed: tf.Tensor, *args: Union[str, tf.Tensor]) -> tf.Tensor:
  """A template of `kind` chosen by the stateless `seed` ([2] ints), slots filled with `args`.

  Graph-safe: `args` may be tf.string scalars from the example. Returns a tf.string scalar.
  """
  options = templates(kind)
  slots = num_slots(kind)
  if len(args) != slots:
    raise ValueError(f"sample_prompt({kind!r}): its templates take {slots} argument(s), got "
                     f"{len(args)}")
  chosen = tf.gather(tf.constant(options), _template_index(len(options), seed))
  if slots == 0:
    return chosen
  pieces = tf.strings.split(chosen, SLOT)
  parts = [pieces[0]]
  for i, arg in enumerate(args):
    parts += [tf.convert_to_tensor(arg, tf.string), pieces[i + 1]]
  return tf.strings.join(parts)


def maybe_null_prompt(prompt: tf.Tensor, seed: tf.Tensor,
                      rate: float = NULL_PROMPT_RATE) -> tf.Tensor:
  """The prompt, or "" with probability `rate` (classifier-free guidance training).

  The seed is folded with a constant first, so reusing the seed given to `sample_prompt` does
  not tie the two draws together.
  """
  seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), 0x6e756c6c)
  drop = tf.random.stateless_uniform([], seed) < rate
  return tf.where(drop, tf.constant(""), tf.convert_to_tensor(prompt, tf.string))
