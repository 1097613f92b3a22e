"""The data visualiser: stage-2 fields back to pictures, boxes from location tokens, the command.

The task is registered here from raw fields (all modalities, geometry done with the image ops), so
the test does not depend on which dataset tasks exist.
"""

import os

import numpy as np
import pytest
import seqio
import tensorflow as tf
from PIL import Image

from unified_io.data import prompts, registry, visualize
from unified_io.data import vocab as vocab_lib
from unified_io.contract import DataConfig
from unified_io.data.ops import audio as audio_ops
from unified_io.data.ops import boxes as boxes_ops
from unified_io.data.ops import image as image_ops
from unified_io.data.preprocess import patchify, sample_patches

TASK = "visualize_test_all_modalities"
CFG = DataConfig(image_input_size=(64, 64), image_history_size=(32, 32), image_history_max_frames=3,
                 audio_input_size=(64, 32), audio_history_size=(64, 32), audio_history_max_frames=3,
                 image_target_size=(32, 32), audio_target_size=(64, 32))
BOX = (10.0, 30.0, 40.0, 75.0)  # the red square in the raw 60 x 90 image


def _raw_examples():
  for i in range(3):
    image = np.zeros([60, 90, 3], np.uint8)
    image[10:40, 30:75, 0] = 255
    t = np.arange(audio_ops.SAMPLE_RATE) / audio_ops.SAMPLE_RATE
    tone = (0.3 * np.sin(2 * np.pi * 500 * (i + 1) * t)).astype(np.float32)
    yield {"image": image, "tone": tone, "id": str(i)}


def _stage1(ds):
  def fn(ex):
    seed = tf.stack([tf.strings.to_number(ex["id"], tf.int64), 0])
    image01, valid, transform = image_ops.resize_and_pad(ex["image"], CFG.image_input_size)
    box, _ = image_ops.transform_boxes([BOX], transform, CFG.image_input_size)
    box_text = boxes_ops.boxes_to_text(box, CFG.image_input_size)
    return {"text_inputs": tf.strings.join([prompts.sample_prompt("vqa", seed, "what is at "),
                                            box_text]),
            "text_targets": tf.strings.join(["red square ", box_text]),
            "image_inputs": image01, "image_input_masks": valid,
            "image_targets": ex["image"], "audio_inputs": ex["tone"],
            "image_history": tf.stack([ex["image"]] * 3), "audio_history": tf.stack([ex["tone"]] * 3),
            "meta/id": ex["id"], "meta/box": box[0]}
  return ds.map(fn)


@pytest.fixture(scope="module")
def task():
  source = seqio.FunctionDataSource(
      lambda split, shuffle_files, seed=None: tf.data.Dataset.from_generator(
          _raw_examples, output_signature={
              "image": tf.TensorSpec([60, 90, 3], tf.uint8), "tone": tf.TensorSpec([None], tf.float32),
              "id": tf.TensorSpec([], tf.string)}),
      splits=["train"])
  registry.add_task(TASK, source, [_stage1], replace=True)
  yield TASK
  seqio.TaskRegistry.remove(TASK)


def test_unpatchify_inverts_patchify_on_the_sampled_cells():
  image = tf.random.stateless_uniform([1, 64, 48, 3], [0, 1])
  patches = patchify(image, 16)
  sampled, mask, pos = sample_patches(patches, tf.ones([1, 12], tf.bool), 5, tf.constant([1, 2]))
  out = visualize.unpatchify(sampled[0].numpy(), pos[0].numpy(), (4, 3), 16, 3)
  kept = ~np.isnan(out[..., 0])
  assert kept.sum() == 5 * 16 * 16
  np.testing.assert_allclose(out[kept], image[0].numpy()[kept], atol=1e-6)


def test_examples_come_back_as_pictures_with_their_boxes(task):
  vocab = vocab_lib.get_vocabulary()
  ex = visualize.load_examples(task, 1, "train", None, CFG)[0]
  image = visualize.input_image(ex, "image", CFG)
  want, _, transform = image_ops.resize_and_pad(next(_raw_examples())["image"], CFG.image_input_size)
  np.testing.assert_allclose(image, want.numpy(), atol=1e-5)
  target = visualize.decode_text(ex["text_targets"], vocab)
  assert target.startswith("red square <extra_id_")
  boxes = boxes_ops.text_to_boxes_np(target, CFG.image_input_size)
  np.testing.assert_allclose(boxes[0], ex["meta/box"], atol=64 / 1998 + 1e-4)
  frames = visualize.input_image(ex, "image_history", CFG)
  assert frames.shape == (3, 32, 32, 3)
  spec = visualize.input_spectrogram(ex, "audio", CFG)
  assert spec.shape == (64, 32)
  # 1 s of tone in 4.08 s: the first quarter of the frames holds the tone (one loud mel band over
  # near-silent ones), the rest is padding, which the release writes as log-mel 0
  assert spec[:12].max() > 0 and np.median(spec[:12]) < -4
  np.testing.assert_allclose(spec[-12:], 0, atol=1e-4)


def test_the_command_writes_pngs_and_an_index(task, tmp_path):
  from unified_io.cli import visualize as visualize_cli
  assert visualize_cli.main([task, "--n", "3", "--out", str(tmp_path), "--no_shuffle"]) == 0
  pngs = sorted(p for p in os.listdir(tmp_path) if p.endswith(".png"))
  assert pngs == ["example_000.png", "example_001.png", "example_002.png"]
  page = (tmp_path / "index.html").read_text()
  assert all(p in page for p in pngs) and "red square &lt;extra_id_" in page
  assert "<b>id</b>: 0" in page
  picture = np.asarray(Image.open(tmp_path / pngs[0]))
  assert picture.shape[1] > 4 * picture.shape[0]  # five panels side by side
  assert picture[..., :3].std() > 20  # not a blank canvas


def test_an_unknown_task_names_the_registered_ones(task):
  with pytest.raises(ValueError, match="no task or mixture named 'nope'.*" + task):
    visualize.load_examples("nope", 1, "train", None, CFG)
