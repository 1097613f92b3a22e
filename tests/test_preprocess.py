"""Stage 2 (the unified preprocessor): tokens, patches, spectrograms, targets, seeds, bad input."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from unified_io.data import vocab as V
from unified_io.contract import DataConfig
from unified_io.data.ops import audio as audio_ops
from unified_io.data.ops import image as image_ops
from unified_io.data.preprocess import STAGE2_FIELDS, unified_preprocessor

# Small sizes keep every test fast: 32 px images in 8 px patches (16 patches), 32 x 16 spectrograms.
CFG = DataConfig(image_input_size=(32, 32), image_patch_size=8, image_history_size=(16, 16),
                 audio_input_size=(32, 16), audio_patch_size=8, audio_history_size=(32, 16),
                 image_target_size=(16, 16), image_target_patch_size=8,
                 audio_target_size=(32, 16), audio_target_patch_size=8,
                 image_history_max_frames=3, audio_history_max_frames=3)
LENGTHS = {"text_inputs": 16, "text_targets": 8}


def run(example, lengths=LENGTHS, seed=0, cfg=CFG):
  ds = tf.data.Dataset.from_tensors(example)
  with seqio.utils.map_seed_manager(seed):
    out = unified_preprocessor(ds, lengths, data_config=cfg)
  return {k: v.numpy() for k, v in next(iter(out)).items()}


def tone(seconds, hz=440.0):
  t = np.arange(int(seconds * audio_ops.SAMPLE_RATE)) / audio_ops.SAMPLE_RATE
  return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def numpy_patchify(x_hwc, p):
  h, w, c = x_hwc.shape
  return x_hwc.reshape(h // p, p, w // p, p, c).transpose(0, 2, 1, 3, 4).reshape(-1, p * p * c)


# ------------------------------------------------------------------------------------------------
def test_text_prefix_eos_and_truncation():
  vocab = V.get_vocabulary()
  out = run({"text_inputs": "what is this?", "text_targets": "a cat"})
  assert out["text_inputs"].tolist() == ([V.PREFIX_TOKENS["[Text] [S]"]] +
                                         vocab.encode("what is this?") + [1])
  assert out["text_targets"].tolist() == vocab.encode("a cat") + [1]
  long = run({"text_inputs": " ".join(["word"] * 40), "text_targets": " ".join(["x"] * 40)})
  assert len(long["text_inputs"]) == 16 and long["text_inputs"][-1] == 1
  assert len(long["text_targets"]) == 8 and long["text_targets"][-1] == 1
  no_target = run({"text_inputs": "hello"})
  assert no_target["text_targets"].shape == (0,)


@pytest.mark.parametrize("target,prefix", [("image_targets", "[Image] [S]"),
                                           ("audio_targets", "[Audio] [S]")])
def test_prefix_follows_the_target_modality(target, prefix):
  value = np.zeros((8, 8, 3), np.uint8) if target == "image_targets" else tone(0.5)
  out = run({"text_inputs": "make it", target: value})
  assert out["text_inputs"][0] == V.PREFIX_TOKENS[prefix]


def test_every_example_has_every_field_absent_ones_empty():
  out = run({"text_inputs": "hello"})
  assert set(out) == set(STAGE2_FIELDS)
  for name in STAGE2_FIELDS:
    if name != "text_inputs":
      assert out[name].shape[0] == 0, name
  assert out["audio_history_patches"].shape == (0, 8, 64)


def test_image_at_size_with_mask_patchifies_like_numpy():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  mask = np.zeros((32, 32), np.float32)
  mask[:20] = 1  # rows 0..19 valid: patch rows 0, 1, 2 (rows 16..23 partly)
  out = run({"text_inputs": "", "image_inputs": image, "image_input_masks": mask})
  normalised = (image / 255.0 - np.array(image_ops.CLIP_MEAN)) / np.array(image_ops.CLIP_STD)
  np.testing.assert_allclose(out["image_patches"], numpy_patchify(normalised, 8), atol=1e-5)
  assert out["image_patch_pos_ids"].tolist() == list(range(16))
  assert out["image_patch_mask"].tolist() == [1] * 12 + [0] * 4


def test_resize_and_pad_marks_padding_patches_invalid():
  image = np.full((16, 32, 3), 200, np.uint8)  # wide: padded above and below to 32 x 32
  out = run({"text_inputs": "x", "image_inputs": image})
  rows = out["image_patch_mask"].reshape(4, 4).max(axis=1)
  assert rows.tolist() == [0, 1, 1, 0]


def test_patch_sampling_valid_first_with_positions_and_seeds():
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  mask = np.zeros((32, 32), np.float32)
  mask[:16] = 1  # the first 8 patches are valid
  example = {"text_inputs": "x", "image_inputs": image, "image_input_masks": mask}
  full = run(example)
  lengths = {**LENGTHS, "image_input_samples": 10}
  a, b, c = run(example, lengths, seed=1), run(example, lengths, seed=1), run(example, lengths, 2)
  assert a["image_patch_mask"].tolist() == [1] * 8 + [0] * 2
  assert sorted(a["image_patch_pos_ids"][:8]) == list(range(8))  # every valid patch, first
  assert len(set(a["image_patch_pos_ids"])) == 10
  np.testing.assert_array_equal(a["image_patches"], full["image_patches"][a["image_patch_pos_ids"]])
  np.testing.assert_array_equal(a["image_patch_pos_ids"], b["image_patch_pos_ids"])
  assert a["image_patch_pos_ids"].tolist() != c["image_patch_pos_ids"].tolist()


def test_audio_input_log_mel_normalised_and_masked():
  wave = tone(1.0)  # a quarter of the 4.08 s segment
  out = run({"text_inputs": "", "audio_inputs": wave})
  spec, valid = audio_ops.log_mel_spectrogram_and_mask(tf.constant(wave))
  spec = tf.image.resize(spec[..., None], (32, 16), method="bilinear")[..., 0].numpy()
  expected = (spec - audio_ops.AUDIO_VIT_MEAN) / audio_ops.AUDIO_VIT_STD
  np.testing.assert_allclose(out["audio_patches"], numpy_patchify(expected[..., None], 8),
                             rtol=1e-5, atol=1e-5)
  # 32 time rows in 4 patch rows; 1 s of 4.08 s fills the first of them (and touches the second).
  rows = out["audio_patch_mask"].reshape(4, 2).max(axis=1)
  assert rows[0] == 1 and rows[-1] == 0 and rows.sum() <= 2


def test_histories_trim_frames_and_patchify_per_frame():
  frames = np.stack([np.full((16, 16, 3), 40 * i, np.uint8) for i in range(5)])
  out = run({"text_inputs": "", "image_history": frames,
             "audio_history": np.stack([tone(4.08)] * 5)},
            {**LENGTHS, "num_frames": 2, "image_history_input_samples": 3})
  assert out["image_history_patches"].shape == (2, 3, 192)
  assert out["audio_history_patches"].shape == (2, 8, 64)
  assert out["image_history_patch_mask"].min() == 1 and out["audio_history_patch_mask"].min() == 1
  # Frame 1 is a constant 40/255 image: its patches are that value CLIP-normalised.
  expected = (40 / 255.0 - np.array(image_ops.CLIP_MEAN)) / np.array(image_ops.CLIP_STD)
  np.testing.assert_allclose(out["image_history_patches"][1].reshape(-1, 3),
                             np.broadcast_to(expected, (3 * 64, 3)), atol=1e-5)


def test_image_target_in_minus_one_one_with_token_mask():
  image = np.full((8, 16, 3), 255, np.uint8)  # padded to 16 x 16: rows 4..11 hold the image
  out = run({"text_inputs": "draw", "image_targets": image})
  assert out["image_target"].shape == (16, 16, 3)
  assert out["image_target"].max() == pytest.approx(1.0) and out["image_target"].min() == -1.0
  assert out["image_target_mask"].tolist() == [1, 1, 1, 1]  # every 8 x 8 cell touches the image
  assert out["image_target_loss_mask"].tolist() == out["image_target_mask"].tolist()
  assert out["image_target_task_mask"].tolist() == [0, 0, 0, 0]


def test_audio_target_audioset_normalised_tokens_time_major():
  wave = tone(1.0)
  out = run({"text_inputs": "say", "audio_targets": wave})
  spec, _ = audio_ops.log_mel_spectrogram_and_mask(tf.constant(wave))
  spec = tf.image.resize(spec[..., None], (32, 16), method="bilinear").numpy()
  np.testing.assert_allclose(out["audio_target"], audio_ops.normalize_spectrogram(spec),
                             rtol=1e-5, atol=1e-5)
  mask = out["audio_target_mask"].reshape(4, 2)  # (time/8, mel/8)
  assert mask[0].min() == 1 and mask[-1].max() == 0
  assert out["audio_target_task_mask"].tolist() == [0] * 8


def test_same_seed_same_examples_through_a_pipeline():
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  ds = tf.data.Dataset.from_tensor_slices({"text_inputs": ["a", "b", "c", "d"],
                                           "image_inputs": images})
  lengths = {**LENGTHS, "image_input_samples": 5}

  def pos(seed):
    with seqio.utils.map_seed_manager(seed):
      out = unified_preprocessor(ds, lengths, data_config=CFG)
    return [x["image_patch_pos_ids"].numpy().tolist() for x in out]
  assert pos(7) == pos(7)
  assert pos(7) != pos(8)


# ------------------------------------------------------------------------------------------------
# Bad input: clear errors naming the field
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("example,match", [
    ({"text_targets": "no prompt"}, "`text_inputs`.*missing"),
    ({"text_inputs": "x", "image_inputs": np.zeros((8, 8), np.uint8)}, "`image_inputs`.*rank 3"),
    ({"text_inputs": "x", "audio_inputs": np.zeros((2, 8), np.float32)}, "`audio_inputs`.*rank 1"),
    ({"text_inputs": "x", "audio_inputs": np.zeros((8,), np.int32)}, "`audio_inputs`.*float32"),
    ({"text_inputs": "x", "image_inputs": np.zeros((8, 8, 4), np.uint8)}, "`image_inputs`.*3 chan"),
    ({"text_inputs": "x", "image_input": np.zeros((8, 8, 3), np.uint8)},
     "unknown raw field `image_input`"),
    ({"text_inputs": "x", "image_input_masks": np.ones((8, 8), bool)}, "without `image_inputs`"),
])
def test_bad_raw_fields_fail_when_the_dataset_is_built(example, match):
  with pytest.raises(ValueError, match=match):
    unified_preprocessor(tf.data.Dataset.from_tensors(example), LENGTHS, data_config=CFG)


def test_empty_prompt_without_other_input_fails_naming_the_field():
  with pytest.raises(tf.errors.InvalidArgumentError, match="`text_inputs` is empty"):
    run({"text_inputs": "", "text_targets": "y"})
  # With another input, the null prompt is legal: just the prefix and EOS.
  out = run({"text_inputs": "", "image_inputs": np.zeros((8, 8, 3), np.uint8)})
  assert out["text_inputs"].tolist() == [V.PREFIX_TOKENS["[Text] [S]"], 1]
  # Image/audio generation may drop its prompt (classifier-free guidance): the prefix remains.
  out = run({"text_inputs": "", "image_targets": np.zeros((8, 8, 3), np.uint8)})
  assert out["text_inputs"].tolist() == [V.PREFIX_TOKENS["[Image] [S]"], 1]


def test_masked_canvas_is_scaled_to_the_model_and_refused_at_another_aspect():
  # A task's own square canvas (its boxes are fractions of it) is scaled to the model's 32x32,
  # the mask by nearest neighbour: the valid left half stays the left half.
  canvas = np.full((8, 8, 3), 255, np.uint8)
  mask = np.zeros((8, 8), bool)
  mask[:, :4] = True
  out = run({"text_inputs": "x", "image_inputs": canvas, "image_input_masks": mask})
  grid = CFG.grid("image")
  valid = out["image_patch_mask"].reshape(-1)
  columns = out["image_patch_pos_ids"].reshape(-1) % grid[1]
  assert set(columns[valid == 1]) == set(range(grid[1] // 2))
  with pytest.raises(ValueError, match="`image_inputs` comes with a mask.*aspect ratio.*32x32"):
    run({"text_inputs": "x", "image_inputs": np.zeros((8, 16, 3), np.uint8),
         "image_input_masks": np.ones((8, 16), bool)})


def test_lengths_above_the_grid():
  with pytest.raises(ValueError, match="`image_input_samples` = 17"):
    run({"text_inputs": "x"}, {**LENGTHS, "image_input_samples": 17})
