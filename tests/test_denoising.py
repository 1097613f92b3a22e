"""Mixture of denoisers: span corruption, patch masking, and the per-example mode choice."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from unified_io.data import denoising
from unified_io.data import vocab as vocab_lib
from unified_io.contract import DataConfig

SENTINELS = {vocab_lib.sentinel_id(i): i for i in range(vocab_lib.NUM_SENTINELS)}
PREFIX = vocab_lib.PREFIX_TOKENS
EOS = 1


def _reconstruct(inputs, targets):
  """Put every span of `targets` back in place of its sentinel in `inputs`."""
  spans, current = {}, None
  for t in targets:
    if t in SENTINELS:
      current = SENTINELS[t]
      spans[current] = []
    else:
      spans[current].append(t)
  out = []
  for t in inputs:
    out.extend(spans[SENTINELS[t]] if t in SENTINELS else [t])
  return out


def _seed(i):
  return tf.constant([i, 7], tf.int32)


# ------------------------------------------------------------------------------------------------
# Pure ops
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length,density,span", [(100, 0.15, 3.0), (37, 0.5, 32.0), (2, 0.15, 3.0),
                                                 (500, 0.15, 3.0)])
def test_span_corruption_reconstructs(length, density, span):
  doc = np.arange(100, 100 + length, dtype=np.int32)
  for i in range(20):
    noise = denoising.span_noise_mask(length, density, span, _seed(i)).numpy()
    assert not noise[0]  # the document starts clean, as T5's
    inputs, targets = (t.numpy().tolist() for t in denoising.corrupt_spans(doc, noise))
    assert _reconstruct(inputs, targets) == doc.tolist()
    expected_noise, expected_spans = (int(x) for x in denoising.span_counts(length, density, span))
    assert noise.sum() == expected_noise
    assert sum(t in SENTINELS for t in inputs) == expected_spans
    assert sum(t in SENTINELS for t in targets) == expected_spans


def test_span_rates_on_average():
  lengths, spans = [], 0
  for i in range(100):
    noise = denoising.span_noise_mask(300, 0.15, 3.0, _seed(i)).numpy()
    assert noise.sum() == 45  # round(300 * 0.15) noised tokens, every time
    starts = noise & ~np.concatenate([[False], noise[:-1]])
    spans += starts.sum()
    lengths.append(noise.sum())
  assert abs(sum(lengths) / spans - 3.0) < 0.05  # mean span length


def test_span_mask_is_deterministic_and_seed_dependent():
  a = denoising.span_noise_mask(80, 0.15, 3.0, _seed(1)).numpy()
  np.testing.assert_array_equal(a, denoising.span_noise_mask(80, 0.15, 3.0, _seed(1)).numpy())
  assert not np.array_equal(a, denoising.span_noise_mask(80, 0.15, 3.0, _seed(2)).numpy())


def test_longest_fitting_document():
  n = int(denoising.longest_fitting_document(400, 0.15, 3.0, 64, 24))
  noise, spans = (int(x) for x in denoising.span_counts(n, 0.15, 3.0))
  assert n - noise + spans + 2 <= 64 and noise + spans + 1 <= 24
  noise1, spans1 = (int(x) for x in denoising.span_counts(n + 1, 0.15, 3.0))
  assert n + 1 - noise1 + spans1 + 2 > 64 or noise1 + spans1 + 1 > 24  # n is the longest


def test_patch_masking_matches_task_mask():
  grid, target_grid = (6, 6), (8, 8)
  rng = np.random.default_rng(0)
  pos_ids = rng.permutation(36)[:24].astype(np.int32)  # a sample of the grid
  patch_mask = (np.arange(24) < 20).astype(np.int32)  # the last 4 samples are padding
  target_mask = np.ones(64, np.int32)
  new_mask, task = (t.numpy() for t in denoising.mask_patches(
      patch_mask, pos_ids, target_mask, grid, target_grid, 0.5, _seed(3)))
  dropped = (patch_mask == 1) & (new_mask == 0)
  assert dropped.sum() == 10  # half of the 20 valid cells
  assert np.all(new_mask <= patch_mask)
  # Every target token's input cell, by its centre: task_mask 1 exactly over dropped cells.
  rows = (np.arange(8) + 0.5) * 6 / 8
  cell = (np.floor(rows)[:, None] * 6 + np.floor(rows)[None, :]).astype(int).reshape(-1)
  np.testing.assert_array_equal(task.astype(bool), np.isin(cell, pos_ids[dropped]))
  assert task.sum() > 0


def test_patch_rate_on_average():
  fractions = []
  for i in range(30):
    new_mask, _ = denoising.mask_patches(np.ones(576, np.int32), np.arange(576, dtype=np.int32),
                                         np.ones(1024, np.int32), (24, 24), (32, 32), 0.75,
                                         _seed(i))
    fractions.append(1 - new_mask.numpy().mean())
  assert abs(np.mean(fractions) - 0.75) < 0.01


# ------------------------------------------------------------------------------------------------
# The preprocessor on stage-2 examples
# ------------------------------------------------------------------------------------------------
DATA = DataConfig()


def _stage2(kind: str, i: int):
  """A stage-2 example: a text task, or an image / audio denoising task (input = target)."""
  rng = np.random.default_rng(i)
  empty_patches = {f"{m}_{k}": np.zeros([0] + ([DATA.patch_dim(m)] if k == "patches" else []),
                                        np.float32 if k == "patches" else np.int32)
                   for m in ("image", "audio") for k in ("patches", "patch_mask", "patch_pos_ids")}
  ex = {"text_inputs": np.array([PREFIX["[Text] [S]"]] + list(rng.integers(5, 30000, 20)) + [EOS],
                                np.int32),
        "text_targets": np.array(list(rng.integers(5, 30000, 30)) + [EOS], np.int32),
        **empty_patches}
  for m in ("image", "audio"):
    ex[f"{m}_target_mask"] = np.zeros([0], np.int32)
    ex[f"{m}_target_task_mask"] = np.zeros([0], np.int32)
  if kind in ("image", "audio"):
    n = DATA.num_patches(kind)
    ex["text_inputs"][0] = PREFIX[f"[{kind.capitalize()}] [S]"]
    ex["text_targets"] = np.array([EOS], np.int32)
    ex[f"{kind}_patches"] = rng.normal(size=(n, DATA.patch_dim(kind))).astype(np.float32)
    ex[f"{kind}_patch_mask"] = np.ones(n, np.int32)
    ex[f"{kind}_patch_pos_ids"] = np.arange(n, dtype=np.int32)
    tokens = DATA.num_target_tokens(kind)
    ex[f"{kind}_target_mask"] = np.ones(tokens, np.int32)
    ex[f"{kind}_target_task_mask"] = np.zeros(tokens, np.int32)
  return ex


def _run(examples, seed=0, **kwargs):
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={k: tf.TensorSpec([None] * v.ndim, tf.as_dtype(v.dtype))
                        for k, v in examples[0].items()})
  with seqio.utils.map_seed_manager(seed):
    out = denoising.denoise(ds, data_config=DATA, **kwargs)
  return list(out.as_numpy_iterator())


def test_text_modes_and_rates():
  examples = [_stage2("text", i) for i in range(300)]
  config = denoising.DenoisingConfig(text_rates=(0.2, 0.5, 0.3))
  outs = _run(examples, config=config)
  modes = np.array([o["meta/denoising_mode"] for o in outs])
  for mode, rate in enumerate((0.2, 0.5, 0.3)):
    assert abs(np.mean(modes == mode) - rate) < 0.08
  names = {0: "[Text] [S]", 1: "[Text] [R]", 2: "[Text] [X]"}
  for ex, out, mode in zip(examples, outs, modes):
    assert out["text_inputs"][0] == PREFIX[names[mode]]
    if mode == 0:  # [S] leaves the example unchanged
      for k, v in ex.items():
        np.testing.assert_array_equal(out[k], v, err_msg=k)
      continue
    document = ex["text_inputs"][1:-1].tolist() + ex["text_targets"][:-1].tolist()
    assert out["text_inputs"][-1] == EOS and out["text_targets"][-1] == EOS
    assert _reconstruct(out["text_inputs"][1:-1].tolist(),
                        out["text_targets"][:-1].tolist()) == document


def test_text_fits_the_lengths_and_is_deterministic():
  examples = [_stage2("text", i) for i in range(16)]
  config = denoising.DenoisingConfig(text_rates=(0.0, 0.5, 0.5))
  outs = _run(examples, config=config, sequence_length={"text_inputs": 24, "text_targets": 12})
  for o in outs:
    assert len(o["text_inputs"]) <= 24 and len(o["text_targets"]) <= 12
  again = _run(examples, config=config, sequence_length={"text_inputs": 24, "text_targets": 12})
  other = _run(examples, seed=1, config=config,
               sequence_length={"text_inputs": 24, "text_targets": 12})
  assert all(np.array_equal(a["text_inputs"], b["text_inputs"]) for a, b in zip(outs, again))
  assert not all(np.array_equal(a["text_inputs"], b["text_inputs"]) for a, b in zip(outs, other))


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_patch_denoising(kind):
  examples = [_stage2(kind, i) for i in range(40)]
  config = denoising.DenoisingConfig(**{f"{kind}_rates": (0.5, 0.5)}, patch_rate=0.6)
  outs = _run(examples, config=config)
  modes = np.array([o["meta/denoising_mode"] for o in outs])
  assert 0 < modes.sum() < len(modes) and set(modes) <= {0, 1}
  cells = denoising.target_cells(DATA.grid(kind), denoising._target_grid(DATA, kind)).numpy()
  for ex, out, mode in zip(examples, outs, modes):
    if mode == 0:
      for k, v in ex.items():
        np.testing.assert_array_equal(out[k], v, err_msg=k)
      continue
    assert out["text_inputs"][0] == PREFIX[f"[{kind.capitalize()}] [R]"]
    dropped = out[f"{kind}_patch_mask"] == 0
    assert abs(dropped.mean() - 0.6) < 0.01
    assert np.all(out[f"{kind}_patches"][dropped] == 0)
    np.testing.assert_array_equal(out[f"{kind}_patches"][~dropped],
                                  ex[f"{kind}_patches"][~dropped])
    dropped_cells = ex[f"{kind}_patch_pos_ids"][dropped]
    np.testing.assert_array_equal(out[f"{kind}_target_task_mask"].astype(bool),
                                  np.isin(cells, dropped_cells))


def test_bad_rates_are_refused():
  with pytest.raises(ValueError, match="image_rates"):
    denoising.DenoisingConfig(image_rates=(0.5, 0.3, 0.2))
  with pytest.raises(ValueError, match="patch_rate"):
    denoising.DenoisingConfig(patch_rate=1.0)
  with pytest.raises(ValueError, match="must sum to 1"):
    denoising.DenoisingConfig(text_rates=(0.5, 0.5, 0.5))


# ------------------------------------------------------------------------------------------------
# Denoising mixtures: registered tasks (the world's and a user's own) take the objective
# ------------------------------------------------------------------------------------------------
SMALL = DataConfig(image_input_size=(64, 64), image_history_size=(32, 32),
                   image_target_size=(32, 32), image_history_max_frames=2,
                   audio_history_max_frames=2)
LENGTHS = {"text_inputs": 32, "text_targets": 32}
_PREFIX_NAMES = {v: k for k, v in PREFIX.items()}


def _mixture_examples(name, n, seed=0):
  from unified_io.data import pipeline
  import unified_io.tasks  # noqa: F401  (registers the world tasks and mixtures)
  ds = pipeline.mixed_examples(name, SMALL, LENGTHS, split="train", shuffle=True, seed=seed,
                               num_epochs=None)
  return list(ds.take(n).as_numpy_iterator())


def test_world_pretraining_mixture_takes_every_mode():
  examples = _mixture_examples("world_pretrain_mod", 120)
  modes = {_PREFIX_NAMES[int(ex["text_inputs"][0])] for ex in examples}
  assert modes == {"[Text] [S]", "[Text] [R]", "[Text] [X]", "[Image] [S]", "[Image] [R]",
                   "[Audio] [S]", "[Audio] [R]"}
  for ex in examples:
    mode = _PREFIX_NAMES[int(ex["text_inputs"][0])]
    if mode in ("[Text] [R]", "[Text] [X]"):
      assert any(t in SENTINELS for t in ex["text_inputs"]), mode
      assert ex["text_targets"][0] in SENTINELS
    for m in ("image", "audio"):
      if mode == f"[{m.capitalize()}] [R]":  # masked input cells <-> noised target tokens
        assert 0 < ex[f"{m}_patch_mask"].mean() < 1
        assert 0 < ex[f"{m}_target_task_mask"].mean() < 1
      elif ex[f"{m}_target_task_mask"].size:
        assert not ex[f"{m}_target_task_mask"].any()


def test_a_users_own_seqio_task_takes_the_objective_in_a_denoising_mixture():
  from unified_io.data import registry
  documents = [f"document number {i} says the sky over the hill is {c}"
               for i, c in enumerate(["blue", "grey", "red", "green"] * 8)]
  seqio.TaskRegistry.add(
      "my_documents", source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
              {"text_inputs": ["Continue the text."] * len(documents),
               "text_targets": documents}),
          splits=["train"]),
      preprocessors=[], output_features=registry.raw_output_features())
  try:
    registry.add_mixture("my_documents_mod", [("my_documents", 1.0)], denoising=True)
    examples = _mixture_examples("my_documents_mod", 40)
  finally:
    seqio.MixtureRegistry.remove("my_documents_mod")
    seqio.TaskRegistry.remove("my_documents")
  modes = [_PREFIX_NAMES[int(ex["text_inputs"][0])] for ex in examples]
  assert {"[Text] [R]", "[Text] [X]", "[Text] [S]"} == set(modes)


def test_a_mode_no_task_can_take_is_refused_in_one_line():
  from unified_io.data import registry
  registry.add_mixture("captions_and_drawings_mod", [("world_caption", 1.0), ("world_text_to_image", 1.0)],
                       denoising=True, replace=True)
  try:
    with pytest.raises(ValueError, match=r"\[R\].*world_image_denoise") as error:
      _mixture_examples("captions_and_drawings_mod", 1)
    assert "\n" not in str(error.value)
  finally:
    seqio.MixtureRegistry.remove("captions_and_drawings_mod")


def test_the_world_curriculum_follows_gin():
  import gin
  from unified_io.data import registry
  import unified_io.tasks  # noqa: F401
  with gin.unlock_config():
    gin.parse_config("world_pretrain_curriculum.modality_starts = "
                     "{'text': 0, 'image': 7, 'audio': 9, 'image_history': 9, 'audio_history': 9}")
  try:
    curriculum = registry.mixture_curriculum("world_pretrain_mod_curriculum")
  finally:
    gin.clear_config()
  assert [s.start_step for s in curriculum.stages] == [0, 7, 9]
  assert "world_image_denoise" in dict(curriculum.stages[1].rates)
  assert "world_audio_denoise" not in dict(curriculum.stages[1].rates)


def test_task_masks_without_dynamic_masking_are_refused():
  from unified_io.model import UnifiedIOModel
  from unified_io.presets import make_config
  with pytest.raises(ValueError, match="dynamic_masking is off"):
    UnifiedIOModel(make_config("tiny")).feature_converter(task_masks=True)
  assert UnifiedIOModel(make_config("tiny", dynamic_masking=True)).feature_converter(
      task_masks=True).task_masks


@pytest.mark.parametrize("mixture", ["world_pretrain_mod", "world_pretrain_mod_curriculum"])
def test_pretrain_mod_gin_turns_the_objective_on(mixture):
  """runs/pretrain_mod.gin as uio2-train reads it: the model masks dynamically and packs, the
  converter hands over task masks, and every stage's pipeline builds (nothing is read)."""
  import gin
  from unified_io.cli import gin_flags
  from unified_io.model import UnifiedIOModel
  from unified_io.training import input as input_lib
  import unified_io.tasks  # noqa: F401
  gin_flags.parse_gin(["models/tiny_multimodal.gin", "runs/pretrain_mod.gin"],
                      ["MODEL_DIR = '/unused'", "TRAIN_STEPS = 1", "BATCH_SIZE = 2",
                       f"MIXTURE_OR_TASK_NAME = '{mixture}'"])
  try:
    model = UnifiedIOModel(gin.query_parameter("train.model_config").scoped_configurable_fn())
    lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
    assert model.cfg.dynamic_masking and model.cfg.pack_pairs
    assert model.feature_converter().task_masks
    assert denoising.DenoisingConfig().image_rates == (0.25, 0.75)
    input_lib.check_input(mixture, lengths, model.feature_converter)
  finally:
    gin.clear_config()
