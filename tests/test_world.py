"""The built-in world: determinism, split separation, and answers that match what is drawn.

  cd /work/main && .venv/bin/python -m pytest -q tests/test_world.py
"""

import re

import numpy as np
import pytest

from unified_io.datasets import world
from unified_io.datasets.world import generators, language, lexicon, scenes, shapes, tones, video
from unified_io.datasets.world.config import WorldConfig, WorldConfigError, make_world_config

# Small sizes keep the tests fast; the logic does not depend on them.
SMALL = make_world_config(image_size=96, target_size=64, frame_size=48, num_frames=3,
                          audio_seconds=1.5)
HARD_SMALL = make_world_config("hard", image_size=96, target_size=64, frame_size=48,
                               num_frames=3, audio_seconds=1.5)


def _equal(a, b) -> bool:
  return set(a) == set(b) and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def _text(value) -> str:
  return np.asarray(value).item().decode()


# ---------------------------------------------------------------------------- config

def test_config_rejects_bad_values_naming_the_field():
  with pytest.raises(WorldConfigError, match="max_objects"):
    WorldConfig(min_objects=3, max_objects=2)
  with pytest.raises(WorldConfigError, match="image_size"):
    WorldConfig(image_size=8)
  with pytest.raises(WorldConfigError, match="difficulty"):
    make_world_config("impossible")
  with pytest.raises(WorldConfigError, match="colour_count"):
    make_world_config(colour_count=3)
  assert make_world_config("hard").max_objects > make_world_config("easy").max_objects


# ---------------------------------------------------------------------------- determinism, splits

@pytest.mark.parametrize("name", sorted(world.GENERATORS))
def test_examples_are_pure_functions_of_seed_split_index(name):
  generator = world.GENERATORS[name]
  first = world.generate_example(generator, SMALL, "train", 7)
  assert _equal(first, world.generate_example(generator, SMALL, "train", 7))
  specs = generator.field_specs(SMALL)
  assert set(first) == set(specs) | {"prompt_seed"}
  for field, (dtype, shape) in specs.items():
    value = np.asarray(first[field])
    assert value.ndim == len(shape), field
    assert all(s is None or s == d for s, d in zip(shape, value.shape)), (field, value.shape)
    if dtype is not np.bytes_:
      assert value.dtype == dtype, (field, value.dtype)
  # Another index, split or seed draws a different example.
  others = [world.generate_example(generator, SMALL, "train", 8),
            world.generate_example(generator, SMALL, "validation", 7),
            world.generate_example(generator, make_world_config(**{**SMALL.__dict__, "seed": 1}),
                                   "train", 7)]
  for other in others:
    assert not _equal(first, other)


def test_splits_hold_different_scenes():
  def images(split):
    return [world.generate_example(world.GENERATORS["caption"], SMALL, split, i)["image_inputs"]
            .tobytes() for i in range(20)]
  train, validation, test = (set(images(s)) for s in world.SPLITS)
  assert not (train & validation) and not (train & test) and not (validation & test)


def test_arithmetic_splits_are_disjoint_by_content():
  questions = {}
  for split in world.SPLITS:
    examples = [world.generate_example(world.GENERATORS["arithmetic"], SMALL, split, i)
                for i in range(40)]
    questions[split] = {_text(e["prompt_text"]) for e in examples}
    for e in examples:
      a, op, b = re.fullmatch(r"What is (\d+) (plus|minus|times) (\d+)\?",
                              _text(e["prompt_text"])).groups()
      expected = {"plus": int(a) + int(b), "minus": int(a) - int(b), "times": int(a) * int(b)}[op]
      assert _text(e["text_targets"]) == str(expected) and expected >= 0
  assert not (questions["train"] & questions["validation"])
  assert not (questions["train"] & questions["test"])


# ---------------------------------------------------------------------------- scenes

@pytest.mark.parametrize("cfg", [SMALL, HARD_SMALL], ids=["easy", "hard"])
def test_boxes_and_masks_are_exact(cfg):
  for seed in range(15):
    scene = scenes.sample_scene(np.random.default_rng(seed), cfg)
    assert 1 <= len(scene.objects) <= cfg.max_objects
    pairs = [(o.colour, o.shape) for o in scene.objects]
    assert len(set(pairs)) == len(pairs)
    rendering = scenes.render(scene, cfg.image_size)
    masks = rendering.masks_nhw
    assert masks.any(axis=(1, 2)).all(), "every object keeps visible pixels"
    assert (masks.sum(axis=0) <= 1).all(), "visible masks are disjoint"
    for obj, mask, box in zip(scene.objects, masks, rendering.boxes_n4):
      rows, cols = np.nonzero(mask)
      np.testing.assert_array_equal(box, [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1])
      if cfg.pixel_noise == 0:
        assert (rendering.image_hw3[mask] == lexicon.COLOURS[obj.colour]).all()
      # The box is about the object's diameter (shapes touch their square on two sides).
      size = cfg.image_size * 2 * obj.radius
      if cfg.max_overlap == 0:
        assert max(box[2] - box[0], box[3] - box[1]) == pytest.approx(size, abs=3 + 0.1 * size)


@pytest.mark.parametrize("shape,fill", [("circle", np.pi / 4), ("square", 0.85 ** 2),
                                        ("triangle", 1.8 * 2 / 2 / 4), ("diamond", 0.5),
                                        ("cross", (2 * 0.34 * 1.9 * 2 - (0.68) ** 2) / 4),
                                        ("ring", np.pi * (1 - 0.25) / 4), ("star", None)])
def test_shape_rasterisers_fill_their_box_as_expected(shape, fill):
  grid = (np.arange(400) + 0.5) / 200 - 1
  mask = shapes.shape_mask(shape, grid[:, None], grid[None, :])
  if fill is not None:
    assert mask.mean() == pytest.approx(fill, abs=0.01)
  # Left-right symmetric up to float rounding on edge pixels; the star lies between its discs.
  assert (mask != mask[:, ::-1]).mean() < 1e-3
  if shape == "star":
    assert np.pi * 0.45 ** 2 / 4 < mask.mean() < np.pi / 4 * 0.6


def test_scene_grid_png(tmp_path):
  """Renders a grid (kept as a file for a look; the checks are on its pixels)."""
  from PIL import Image
  tiles = [scenes.render(scenes.sample_scene(np.random.default_rng(i), SMALL), 96).image_hw3
           for i in range(8)]
  grid = np.concatenate([np.concatenate(tiles[:4], 1), np.concatenate(tiles[4:], 1)], 0)
  Image.fromarray(grid).save(tmp_path / "scenes.png")
  assert grid.shape == (192, 384, 3) and len(np.unique(grid.reshape(-1, 3), axis=0)) > 8


# ---------------------------------------------------------------------------- vision answers

def _examples(name, n=12, cfg=SMALL):
  return [world.generate_example(world.GENERATORS[name], cfg, "train", i) for i in range(n)]


def _labels(example):
  return [label.decode() for label in example["meta/labels"]]


def test_vqa_answers_match_the_scene():
  for e in _examples("vqa_colour"):
    shape = re.fullmatch(r"What colour is the (\w+)\?", _text(e["prompt_text"])).group(1)
    matching = [label for label in _labels(e) if label.split()[1] == shape]
    assert matching == [f"{_text(e['text_targets'])} {shape}"]
  for e in _examples("vqa_shape"):
    colour = re.fullmatch(r"What shape is the (\w+) object\?", _text(e["prompt_text"])).group(1)
    matching = [label for label in _labels(e) if label.split()[0] == colour]
    assert matching == [f"{colour} {_text(e['text_targets'])}"]
  for e in _examples("vqa_count", n=20):
    question, labels = _text(e["prompt_text"]), _labels(e)
    word = re.fullmatch(r"How many (\w+)(?: objects)? are there\?", question).group(1)
    expected = (len(labels) if word == "objects" else
                sum(label.split()[0] == word or lexicon.SHAPE_PLURALS.get(label.split()[1]) == word
                    for label in labels))
    assert _text(e["text_targets"]) == str(expected), question


def test_position_answers_match_the_boxes():
  for e in _examples("vqa_position"):
    a, b = re.fullmatch(r"Is the (\w+ \w+) left of, right of, above or below the (\w+ \w+)\?",
                        _text(e["prompt_text"])).groups()
    labels, boxes = _labels(e), e["meta/boxes"]
    ca, cb = ((boxes[labels.index(n), :2] + boxes[labels.index(n), 2:]) / 2 for n in (a, b))
    dy, dx = ca - cb
    answer = _text(e["text_targets"])
    axis_delta = {"left": -dx, "right": dx, "above": -dy, "below": dy}[answer]
    other = abs(dy) if answer in ("left", "right") else abs(dx)
    assert axis_delta > 0 and axis_delta > other, (answer, dy, dx)


def _colour_extent_in_box(image, colour, box):
  """Extent of the pixels with exactly `colour` inside `box` (y1, x1, y2, x2 pixel edges)."""
  y1, x1, y2, x2 = (int(v) for v in box)
  hit = (image == lexicon.COLOURS[colour]).all(-1)
  inside = np.zeros_like(hit)
  inside[y1:y2, x1:x2] = hit[y1:y2, x1:x2]
  rows, cols = np.nonzero(inside)
  return rows.min(), cols.min(), rows.max() + 1, cols.max() + 1, inside


def test_refexp_box_covers_exactly_the_described_object():
  for e in _examples("refexp"):
    colour, _ = _text(e["prompt_text"]).removeprefix("the ").split()
    (box,) = e["meta/boxes"]
    *extent, _ = _colour_extent_in_box(e["image_inputs"], colour, box)
    np.testing.assert_array_equal(extent, box)
    # Nothing of that colour touches the box from outside (no gap-crossing leak).
    y1, x1, y2, x2 = (int(v) for v in box)
    ring = (e["image_inputs"][max(0, y1 - 1):y2 + 1, max(0, x1 - 1):x2 + 1]
            == lexicon.COLOURS[colour]).all(-1)
    assert ring.sum() == (e["image_inputs"][y1:y2, x1:x2] == lexicon.COLOURS[colour]).all(-1).sum()


def test_detection_lists_every_object_in_reading_order():
  for e in _examples("detection"):
    labels, boxes = _labels(e), e["meta/boxes"]
    assert _text(e["meta/answer"]) == " ".join(labels)
    assert len(labels) == len(boxes) >= 1
    rows = np.minimum(2, ((boxes[:, 0] + boxes[:, 2]) / 2 / SMALL.image_size * 3).astype(int))
    assert (np.diff(rows) >= 0).all()
    for label, box in zip(labels, boxes):
      *extent, _ = _colour_extent_in_box(e["image_inputs"], label.split()[0], box)
      np.testing.assert_array_equal(extent, box)


def test_object_mask_target_matches_the_object():
  for e in _examples("object_mask"):
    target = e["image_targets"]
    assert target.shape == (SMALL.target_size, SMALL.target_size, 3)
    assert set(np.unique(target)) <= {0, 255} and (target[..., 0] == target[..., 2]).all()
    mask = target[..., 0] == 255
    rows, cols = np.nonzero(mask)
    scale = SMALL.image_size / SMALL.target_size
    target_box = np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]) * scale
    np.testing.assert_allclose(target_box, e["meta/boxes"][0], atol=2 * scale)
    colour = _text(e["prompt_text"]).split()[1]
    *_, object_pixels = _colour_extent_in_box(e["image_inputs"], colour, e["meta/boxes"][0])
    assert mask.sum() * scale ** 2 == pytest.approx(object_pixels.sum(), rel=0.2)


def test_text_to_image_draws_what_the_caption_says():
  for e in _examples("text_to_image", n=6):
    caption = _text(e["prompt_text"])
    image = e["image_targets"]
    for colour in lexicon.COLOUR_NAMES:
      present = (image == lexicon.COLOURS[colour]).all(-1).any()
      assert present == (f" {colour} " in f" {caption} "), (colour, caption)


# ---------------------------------------------------------------------------- video

def test_clip_objects_move_the_stated_way():
  cfg = make_world_config(frame_size=64, num_frames=4, max_objects=4)
  for seed in range(10):
    clip = video.sample_clip(np.random.default_rng(seed), cfg)
    first, last = (scenes.render(video.frame_scene(clip, f, cfg.num_frames), 64)
                   for f in (0, cfg.num_frames - 1))
    dy, dx = lexicon.DIRECTION_YX[clip.direction]
    for moving, box0, box1 in zip(clip.moving, first.boxes_n4, last.boxes_n4):
      shift = (box1[:2] + box1[2:] - box0[:2] - box0[2:]) / 2
      if moving:
        np.testing.assert_allclose(shift, np.array([dy, dx]) * clip.travel * 64, atol=1.5)
      else:
        np.testing.assert_array_equal(box0, box1)


def test_video_examples_answer_direction_and_count_with_their_sound():
  for e in _examples("video_direction", n=4) + _examples("video_count", n=4):
    frames, audio = e["image_history"], e["audio_history"]
    assert frames.shape == (SMALL.num_frames, SMALL.frame_size, SMALL.frame_size, 3)
    assert audio.shape == (SMALL.num_frames, SMALL.audio_samples) and audio.dtype == np.float32
    assert np.abs(audio).max() <= 1.0 and not np.array_equal(frames[0], frames[-1])
  for seed in range(6):
    clip = video.sample_clip(np.random.default_rng(seed), SMALL)
    clip = video.Clip(**{**clip.__dict__, "timbre": "sine"})
    spectrum = np.abs(np.fft.rfft(video.render_soundtrack(clip, SMALL)[0]))
    freqs = np.fft.rfftfreq(SMALL.audio_samples, 1 / SMALL.sample_rate)
    peaks = freqs[spectrum > 0.25 * spectrum.max()]
    heard = {f for f in lexicon.OBJECT_TONES_HZ if np.abs(peaks - f).min(initial=1e9) < 3}
    assert heard == set(clip.tones_hz) and len(heard) == clip.num_moving


# ---------------------------------------------------------------------------- audio

@pytest.mark.parametrize("timbre", lexicon.TIMBRE_NAMES)
def test_tone_frequency_is_the_spectrum_peak(timbre):
  rng = np.random.default_rng(3)
  for _ in range(4):
    beeps = tones.sample_beeps(rng, SMALL)
    beeps = tones.Beeps(**{**beeps.__dict__, "timbre": timbre})
    waveform = tones.synthesise_beeps(beeps, SMALL)
    spectrum = np.abs(np.fft.rfft(waveform))
    freqs = np.fft.rfftfreq(waveform.size, 1 / SMALL.sample_rate)
    assert abs(freqs[spectrum.argmax()] - beeps.frequency_hz) < 4.0
    low, high = lexicon.PITCH_BANDS_HZ[beeps.pitch]
    assert low <= beeps.frequency_hz <= high


def test_beep_count_and_description():
  for e in _examples("audio_caption", n=15):
    waveform = e["audio_inputs"]
    # tone amplitude 0.5, plus the -80 dB noise floor (tones.NOISE_FLOOR)
    assert waveform.shape == (SMALL.audio_samples,) and np.abs(waveform).max() <= 0.5 + 1e-3
    loud = np.abs(waveform) > 1e-3
    # Count silent -> sound transitions over 2 ms blocks (oscillators cross zero within a beep).
    blocks = loud[:loud.size // 32 * 32].reshape(-1, 32).any(axis=1)
    onsets = int(blocks[0]) + int(np.sum(blocks[1:] & ~blocks[:-1]))
    words = _text(e["text_targets"]).split()
    assert lexicon.NUMBER_WORDS.index(words[0]) == onsets
    band = lexicon.PITCH_BANDS_HZ[words[1]]
    assert band[0] <= float(e["meta/frequency_hz"]) <= band[1]
  for e in _examples("audio_qa", n=10):
    assert _text(e["text_targets"]) in (set(lexicon.PITCH_NAMES) | set(lexicon.TIMBRE_NAMES)
                                        | {str(k) for k in range(1, tones.MAX_BEEPS + 1)})


def test_text_scene_qa_is_answerable_from_the_text():
  for e in _examples("text_scene_qa", n=20):
    text, answer = _text(e["prompt_text"]), _text(e["text_targets"])
    description, question = text.split(". ", 1)
    if question.startswith("What colour is the "):
      shape = question.removeprefix("What colour is the ").rstrip("?")
      assert re.search(rf"\b{answer} {shape}\b", description)
    elif question.startswith("How many objects"):
      assert int(answer) == len(re.findall(r"\b(?:at the|in the centre)", description))


# ---------------------------------------------------------------------------- tf.data source

def test_data_source_yields_declared_fields_deterministically_and_shards():
  source = world.WorldDataSource("vqa_count", SMALL)
  ds = source.get_dataset("validation", shuffle=False)
  first = [ex for ex, _ in zip(ds.as_numpy_iterator(), range(4))]
  again = [ex for ex, _ in zip(ds.as_numpy_iterator(), range(4))]
  assert all(_equal(a, b) for a, b in zip(first, again))
  direct = world.generate_example(world.GENERATORS["vqa_count"], SMALL, "validation", 2)
  assert _equal({k: v for k, v in first[2].items()},
                {k: (v.item() if np.asarray(v).dtype == object and np.asarray(v).ndim == 0 else v)
                 for k, v in direct.items()})
  import seqio
  shard = source.get_dataset("validation", shuffle=False, shard_info=seqio.ShardInfo(1, 2))
  second = next(shard.as_numpy_iterator())
  assert _equal(second, first[1])
  with pytest.raises(ValueError, match="unknown split"):
    source.get_dataset("dev")


# ---------------------------------------------------------------------------- registered tasks

@pytest.fixture(scope="module")
def small_data_config():
  """Small model sizes keep stage 2 fast (the world draws at its own 128 px and is resized)."""
  from unified_io import contract
  import unified_io.tasks.world  # noqa: F401  (registers world_*)
  return contract.DataConfig(image_input_size=(64, 64), image_history_size=(32, 32),
                             image_target_size=(32, 32), image_history_max_frames=4,
                             audio_history_max_frames=4)


def _world_tasks():
  from unified_io.tasks import world as world_tasks
  return world_tasks


def _raw(task_name: str, n: int, split: str = "validation"):
  """Stage-1 output (raw fields) of a registered world task, before stage 2."""
  world_tasks = _world_tasks()
  task = world_tasks.TASKS[task_name]
  ds = world.WorldDataSource(task.generator, world.make_world_config).get_dataset(split,
                                                                                  shuffle=False)
  return list(world_tasks.stage1(task)(ds).take(n).as_numpy_iterator())


@pytest.mark.parametrize("name", sorted(world.GENERATORS))
def test_every_world_task_yields_stage2_examples(name, small_data_config):
  import seqio
  from unified_io.data import pipeline
  task = seqio.get_mixture_or_task(f"world_{name}")
  ex = next(pipeline.task_examples(task, small_data_config, {}, split="validation", shuffle=False)
            .as_numpy_iterator())
  assert ex["text_inputs"].dtype == np.int32 and ex["text_inputs"].size >= 2
  modalities = _world_tasks().TASKS[name].modalities
  # (text -> picture tasks have no input image; segmentation -> picture has one)
  reads_image = "image" in modalities and name not in ("text_to_image",)
  expect = {"image_patches": reads_image,
            "audio_patches": "audio" in modalities and "to_audio" not in name,
            "image_history_patches": "image_history" in modalities,
            "audio_history_patches": "audio_history" in modalities,
            "sensor_patches": "sensor" in modalities}
  for field, present in expect.items():
    assert (ex[field].shape[0] > 0) == present, (field, ex[field].shape)
  if name in ("text_to_image", "object_mask"):
    assert ex["image_target"].shape == (32, 32, 3)
  if name == "text_to_audio":
    assert ex["audio_target"].size > 0 and ex["text_targets"].size == 0
  if "image" in modalities and name != "text_to_image":
    drawn = world.make_world_config().image_size  # the world's own size; stage 2 resized it
    np.testing.assert_array_equal(ex["meta/image_size"], [drawn, drawn])
    assert ex["image_patches"].shape[0] <= small_data_config.num_patches("image")


def test_location_targets_decode_to_the_drawn_boxes(small_data_config):
  from unified_io.data.ops import boxes as box_ops
  del small_data_config
  size = world.make_world_config().image_size  # stage 1: boxes in the drawn image's pixels
  for ex in _raw("refexp", 6):
    decoded = box_ops.text_to_boxes_np(ex["text_targets"], size)
    np.testing.assert_allclose(decoded, ex["meta/boxes"], atol=size / 999)
    assert ex["text_inputs"] and b"the " in ex["text_inputs"]
  for ex in _raw("detection", 6):
    pairs = re.findall(r"((?:<extra_id_\d+> ?){4}) ?(\w+ \w+)", ex["text_targets"].decode())
    assert [label for _, label in pairs] == [label.decode() for label in ex["meta/labels"]]
    decoded = np.concatenate([box_ops.text_to_boxes_np(box, size) for box, _ in pairs])
    np.testing.assert_allclose(decoded, ex["meta/boxes"], atol=size / 999)


def test_generation_tasks_drop_about_a_tenth_of_prompts(small_data_config):
  prompts_ = [ex["text_inputs"] for ex in _raw("text_to_audio", 300, split="train")]
  null_rate = sum(p == b"" for p in prompts_) / len(prompts_)
  assert 0.04 <= null_rate <= 0.18, null_rate
  assert len(set(prompts_)) > 100  # the wording is sampled per example


def test_mixtures_cover_the_tasks_and_are_deterministic(small_data_config):
  from unified_io.data import pipeline, registry
  world_tasks = _world_tasks()
  # (sensor tasks need a model reading sensor: their own mixture, world_sensor)
  assert set(registry.rates("world_default")) == {
      f"world_{n}" for n in world_tasks.TASKS
      if n not in world_tasks.DENOISING + world_tasks.SENSOR + world_tasks.DENSE}
  assert set(registry.rates("world_dense")) == {f"world_{n}" for n in world_tasks.DENSE}
  assert set(registry.rates("world_sensor")) == {f"world_{n}" for n in world_tasks.SENSOR}
  for mixture in ("world_vision", "world_video", "world_audio", "world_text"):
    assert set(registry.rates(mixture)) < set(registry.rates("world_default"))

  def take():
    ds = pipeline.mixed_examples("world_text", small_data_config, {}, split="train",
                                 shuffle=True, seed=5, num_epochs=None)
    return [ex["text_inputs"].tolist() for ex in ds.take(10).as_numpy_iterator()]
  first = take()
  assert first == take() and len({tuple(t) for t in first}) == 10


def test_gin_bindings_apply_when_the_dataset_is_built():
  import gin
  source = world.WorldDataSource("caption", world.make_world_config)
  assert source.config.image_size == 128  # the default
  with gin.unlock_config():
    gin.parse_config("make_world_config.difficulty = 'hard'\nmake_world_config.image_size = 48")
  try:
    assert source.config.image_size == 48 and source.config.max_objects == 8
    ex = next(source.get_dataset("test", shuffle=False).as_numpy_iterator())
    assert ex["image_inputs"].shape == (48, 48, 3)
  finally:
    gin.clear_config()


def test_exit_guard_refuses_calls_once_draining_and_waits_for_running_ones():
  import threading
  import time
  from unified_io.datasets.world.source import _ExitGuard
  guard = _ExitGuard(drain_seconds=5.0)
  assert guard.enter()
  finished = []
  drainer = threading.Thread(target=lambda: (guard.drain(), finished.append(time.monotonic())))
  drainer.start()
  time.sleep(0.2)
  assert not finished, "drain must wait for the running call"
  assert not guard.enter(), "no new calls once the interpreter is exiting"
  left = time.monotonic()
  guard.leave()
  drainer.join(5.0)
  assert finished and finished[0] >= left
