"""RefCOCO, RefCOCO+ and RefCOCOg referring expressions from prepared TFDS `ref_coco` data.

Data: TFDS `ref_coco` builder configs `refcoco_unc`, `refcocoplus_unc`, `refcocog_umd` (COCO
train2014 images + the expressions; TFDS needs the files placed by hand before `tfds build`),
prepared in the TFDS data_dir (see `unified_io.datasets.directories`). Nothing is downloaded.

One TFDS example is an image with its annotated objects, each with several expressions. Every
expression becomes one example: image (resized + padded here, because the target is geometry) +
a prompt holding the expression -> the object's box as four location tokens. meta/box keeps the
box in original pixels, meta/transform the resize and meta/image_size the original size, so eval
maps predictions back to original pixels; scored by Acc@0.5 (IoU >= 0.5) and mean IoU there.

Tasks: refcoco, refcoco_plus, refcocog (splits train / validation / test; RefCOCO and RefCOCO+
also testA / testB).
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

VERSION = "1.1.0"
CONFIGS = {
    # task name: (builder config, splits)
    "refcoco": ("refcoco_unc", ("train", "validation", "testA", "testB")),
    "refcoco_plus": ("refcocoplus_unc", ("train", "validation", "testA", "testB")),
    "refcocog": ("refcocog_umd", ("train", "validation", "test")),
}


def _as_ragged(values) -> tf.RaggedTensor:
  """Expressions per object: TFDS gives a RaggedTensor [objects, None] (dense when mocked)."""
  if isinstance(values, tf.RaggedTensor):
    return values
  return tf.RaggedTensor.from_tensor(values)


def expressions(ex) -> tf.data.Dataset:
  """One TFDS example -> a dataset of (image, expression, box) for each expression."""
  objects = ex["objects"]
  raw = _as_ragged(objects["refexp"]["raw"])
  boxes_n4 = tf.reshape(objects["bbox"], [-1, 4])
  object_of_expression = tf.cast(raw.value_rowids(), tf.int32)
  present = object_of_expression < tf.shape(boxes_n4)[0]  # an expression has its object's box
  texts = tf.boolean_mask(raw.flat_values, present)
  boxes = tf.gather(boxes_n4, tf.boolean_mask(object_of_expression, present))
  per_expression = tf.data.Dataset.from_tensor_slices({"expression": texts, "box": boxes})
  image = tf.data.Dataset.from_tensors({"image": ex["image"],
                                        "image_id": tf.strings.as_string(ex["image/id"])})
  return tf.data.Dataset.zip((image.repeat(), per_expression)).map(lambda a, b: {**a, **b})


@seqio.map_over_dataset(num_seeds=1)
def expression_to_raw(ex, seed):
  """(image, expression, normalised box) -> raw fields with the box as location tokens."""
  size = image_ops.CANVAS_SIZE
  image_id = ex["image_id"]
  problem = bad_input.first_problem(
      bad_input.problem_if(bad_input.nonempty_text(ex["expression"]), bad_input.EMPTY_TEXT,
                           "objects/refexp/raw", image_id),
      bad_input.problem_if(bad_input.boxes_inside(ex["box"][None]),
                           bad_input.BOXES_OUTSIDE_IMAGE, "objects/bbox", image_id))
  hw = tf.cast(tf.shape(ex["image"])[:2], tf.float32)
  box_14 = tf.reshape(ex["box"], [1, 4]) * tf.tile(hw, [2])
  image, valid, transform = image_ops.resize_and_pad(ex["image"], size)
  model_box_14, _ = image_ops.transform_boxes(box_14, transform, size)
  return {
      "image_inputs": image,
      "image_input_masks": valid,
      "text_inputs": prompts.sample_prompt("refexp", seed, ex["expression"]),
      "text_targets": box_ops.boxes_to_text(model_box_14, size),
      "meta/box": box_14[0],
      "meta/expression": ex["expression"],
      "meta/transform": image_ops.transform_to_tensor(transform),
      "meta/image_size": tf.shape(ex["image"])[:2],
      "meta/image_id": image_id,
      bad_input.PROBLEM_KEY: problem,
  }


def refexp_preprocessors(task_name: str):
  def flatten(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.flat_map(expressions)
  return [flatten, expression_to_raw, bad_input.skip_bad_examples_preprocessor(task_name)]


for _name, (_config, _splits) in CONFIGS.items():
  registry.add_task(
      _name,
      TfdsSource(f"ref_coco/{_config}:{VERSION}", {s: s for s in _splits}),
      refexp_preprocessors(_name),
      postprocess_fn=postprocessors.box, metric_fns=[metric_fns.refexp_accuracy],
      modalities=("image", "text"))
