"""COCO captioning and detection from prepared TFDS data (nothing is downloaded).

Data: TFDS `coco_captions` (2014 images, Karpathy splits: train / val / test / restval) and
`coco/2017` (train / validation), prepared beforehand in the TFDS data_dir (gin
`tfds_data_dir.path`, or seqio's `--tfds_data_dir` override; see `unified_io.datasets.directories`).

Tasks:
  coco_captions     image -> one of its captions (drawn per example); meta/captions holds all of
                    them, meta/image_id the COCO id. Scored by BLEU-4 and CIDEr-D against all of
                    an image's captions.
  coco_detection    image -> "<y1> <x1> <y2> <x2> label <y1> ... label" with location tokens on the
                    resized+padded model image, boxes in the dataset's order; meta/boxes (original
                    pixels, y1 x1 y2 x2), meta/labels (class ids), meta/is_crowd, meta/image_size
                    and meta/transform for eval. Scored by COCO box AP@[.5:.95], AP50, AP75
                    (crowd regions ignored as COCO ignores them; the text's order ranks boxes).

COCO's TFDS label names are only known once the data is prepared, so the 80 category names
(2017, in TFDS's contiguous label order) are written out here.
"""

import tensorflow as tf
import seqio

from unified_io.data import bad_input
from unified_io.data import prompts
from unified_io.data import registry
from unified_io.datasets.directories import TfdsSource
from unified_io.data.ops import boxes as box_ops
from unified_io.data.ops import image as image_ops
from unified_io.evaluation import metric_fns
from unified_io.evaluation import postprocessors

COCO_CATEGORIES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush")

CAPTIONS_TFDS = "coco_captions:1.1.0"
DETECTION_TFDS = "coco/2017:1.1.0"
CAPTIONS_SPLITS = {"train": "train", "validation": "val", "test": "test"}
DETECTION_SPLITS = {"train": "train", "validation": "validation"}


def image_id_string(image_id: tf.Tensor) -> tf.Tensor:
  return tf.strings.as_string(image_id)


@seqio.map_over_dataset(num_seeds=1)
def captions_to_raw(ex, seed):
  """TFDS coco_captions example -> raw fields: image, prompt, one caption; meta: all captions."""
  captions = ex["captions"]["text"]
  index = tf.random.stateless_uniform([], seed, 0, tf.maximum(tf.size(captions), 1), tf.int32)
  caption = tf.cond(tf.size(captions) > 0, lambda: captions[index], lambda: tf.constant(""))
  problem = bad_input.problem_if(bad_input.nonempty_text(caption), bad_input.EMPTY_TEXT,
                                 "captions/text", ex["image/filename"])
  return {
      "image_inputs": ex["image"],
      "text_inputs": prompts.sample_prompt("image_caption", seed),
      "text_targets": caption,
      "meta/captions": captions,
      "meta/image_id": image_id_string(ex["image/id"]),
      bad_input.PROBLEM_KEY: problem,
  }


def _pixel_boxes(boxes_n4, image_hw3):
  """TFDS BBoxFeature boxes (normalised y1 x1 y2 x2) -> pixels of `image_hw3`."""
  hw = tf.cast(tf.shape(image_hw3)[:2], tf.float32)
  return tf.reshape(boxes_n4, [-1, 4]) * tf.tile(hw, [2])


def detection_target(boxes_n4, labels_n, size) -> tf.Tensor:
  """Model-image boxes + label ids -> "<loc> <loc> <loc> <loc> name <loc> ... name"."""
  names = tf.gather(tf.constant(COCO_CATEGORIES), labels_n)
  per_box = tf.strings.join([box_ops.boxes_to_text_n(boxes_n4, size), names], separator=" ")
  return tf.strings.reduce_join(per_box, separator=" ")


def boxes_problem(boxes_n4, labels_n, file):
  """Boxes outside [0, 1] (normalised) or labels outside COCO's 80 mark the example bad."""
  labels_ok = tf.reduce_all((labels_n >= 0) & (labels_n < len(COCO_CATEGORIES)))
  return bad_input.first_problem(
      bad_input.problem_if(bad_input.boxes_inside(boxes_n4), bad_input.BOXES_OUTSIDE_IMAGE,
                           "objects/bbox", file),
      bad_input.problem_if(labels_ok, "bad_label", "objects/label", file))


@seqio.map_over_dataset(num_seeds=1)
def detection_to_raw(ex, seed):
  """TFDS coco/2017 example -> resized+padded image, detection target text, gt in meta."""
  size = image_ops.CANVAS_SIZE
  objects = ex["objects"]
  n = tf.minimum(tf.shape(objects["bbox"])[0], tf.shape(objects["label"])[0])
  norm_boxes_n4, labels_n = objects["bbox"][:n], objects["label"][:n]
  crowd_n = (tf.zeros([n], tf.bool) if "is_crowd" not in objects
             else tf.cast(objects["is_crowd"][:n], tf.bool))
  problem = boxes_problem(norm_boxes_n4, labels_n, ex["image/filename"])
  boxes_n4 = _pixel_boxes(norm_boxes_n4, ex["image"])
  image, valid, transform = image_ops.resize_and_pad(ex["image"], size)
  model_boxes_n4, keep_n = image_ops.transform_boxes(boxes_n4, transform, size)
  target = detection_target(tf.boolean_mask(model_boxes_n4, keep_n),
                            tf.boolean_mask(labels_n, keep_n), size)
  return {
      "image_inputs": image,
      "image_input_masks": valid,
      "text_inputs": prompts.sample_prompt("detection", seed),
      "text_targets": target,
      "meta/boxes": boxes_n4,
      "meta/labels": labels_n,
      "meta/is_crowd": crowd_n,
      "meta/image_size": tf.shape(ex["image"])[:2],
      "meta/transform": image_ops.transform_to_tensor(transform),
      "meta/image_id": image_id_string(ex["image/id"]),
      bad_input.PROBLEM_KEY: problem,
  }


registry.add_task(
    "coco_captions",
    TfdsSource(CAPTIONS_TFDS, CAPTIONS_SPLITS),
    [captions_to_raw, bad_input.skip_bad_examples_preprocessor("coco_captions")],
    postprocess_fn=postprocessors.captions, metric_fns=metric_fns.CAPTIONING,
    modalities=("image", "text"))


@seqio.map_over_dataset(num_seeds=1)
def image_denoise_to_raw(ex, seed):
  """TFDS coco_captions example -> the photo as input and as target (for [R] masked-patch
  denoising in a denoising mixture, e.g. pretrain_mod_real); the captions stay as meta."""
  return {
      "image_inputs": ex["image"],
      "image_targets": ex["image"],
      "text_inputs": prompts.sample_prompt("image_denoise", seed),
      "meta/captions": ex["captions"]["text"],
      "meta/image_id": image_id_string(ex["image/id"]),
  }


registry.add_task(
    "coco_image_denoise",
    TfdsSource(CAPTIONS_TFDS, CAPTIONS_SPLITS),
    [image_denoise_to_raw],
    modalities=("image", "text"))

registry.add_task(
    "coco_detection",
    TfdsSource(DETECTION_TFDS, DETECTION_SPLITS),
    [detection_to_raw, bad_input.skip_bad_examples_preprocessor("coco_detection")],
    postprocess_fn=postprocessors.detections_for(COCO_CATEGORIES),
    metric_fns=[metric_fns.detection_map],
    modalities=("image", "text"))
