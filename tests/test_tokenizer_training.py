"""Training the VQ tokenizers: the step learns, dead codes come back, resuming is exact, bad input
is named. Small tokenizer configs (16 px images, a 16-code book) keep each compile to seconds."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unified_io.tasks  # noqa: F401  (registers the world tasks)
from unified_io.config import AudioVQGANConfig, ConfigError, ImageVQGANConfig
from unified_io.presets import make_config
from unified_io.tokenizer_training import codebook as codebook_lib
from unified_io.tokenizer_training import objectives
from unified_io.tokenizer_training import trainer as tokenizer_trainer
from unified_io.tokenizer_training.data import TokenizerDataError
from unified_io.tokenizer_training.state import TokenizerState
from unified_io.tasks.world import world_palette

SMALL_IMAGE = ImageVQGANConfig(embed_dim=4, n_embed=16, z_channels=4, resolution=16, ch=32,
                               ch_mult=(1, 1), num_res_blocks=0, attn_resolutions=(),
                               default_input_size=(16, 16), patch_size=(2, 2))
SMALL_AUDIO = AudioVQGANConfig(
    vocab_size=16, proj_dim=8, encoder_hidden_size=32, encoder_num_layers=1, encoder_mlp_dim=64,
    encoder_num_heads=2, encoder_head_dim=16, decoder_hidden_size=32, decoder_num_layers=1,
    decoder_mlp_dim=64, decoder_num_heads=2, decoder_head_dim=16, default_input_size=(16, 32),
    patch_size=(8, 8))


def _model_config(image=SMALL_IMAGE, audio=SMALL_AUDIO):
  cfg = make_config("tiny", input_modalities=("text",), target_modalities=("text", "image", "audio"))
  return dataclasses.replace(cfg, image_vqgan=image, audio_vqgan=audio)


def _train_kwargs(tmp_path, **overrides):
  kwargs = dict(model_dir=str(tmp_path / "tok"), mixture_or_task_name="world_text_to_image",
                kind="image", model_config=_model_config(), train_steps=4, batch_size=2,
                checkpoint_every=2, log_every=2, eval_every=0, eval_examples=2,
                warmup_steps=1, image_crop=8)
  kwargs.update(overrides)
  return kwargs


# ------------------------------------------------------------------------------ the codebook
def test_moving_average_update_by_hand():
  counts, sums = jnp.array([2.0, 2.0]), jnp.array([[2.0, 0.0], [0.0, 2.0]])
  z = jnp.array([[3.0, 0.0], [5.0, 0.0]])
  ids = jnp.array([0, 0])
  out = codebook_lib.update(counts, sums, z, ids, jnp.ones(2), jax.random.key(0), decay=0.5,
                            restart_below=0.0)
  # counts: 0.5 * 2 + 0.5 * (2, 0); sums: 0.5 * sums + 0.5 * (8, 0 | 0, 0)
  np.testing.assert_allclose(out.counts, [2.0, 1.0])
  np.testing.assert_allclose(out.codebook, [[(1 + 4) / 2.0, 0.0], [0.0, 1.0 / 1.0]])
  assert int(out.used) == 1 and int(out.restarted) == 0


def test_dead_codes_are_restarted_on_batch_latents():
  counts = jnp.array([4.0, 0.0, 0.001])  # codes 1 and 2 have (almost) never been picked
  sums = jnp.array([[4.0, 0.0], [0.0, 0.0], [9.0, 9.0]])
  z = jnp.array([[1.0, 0.0], [0.0, 7.0], [0.5, 3.0]])
  ids = jnp.array([0, 0, 0])
  out = codebook_lib.update(counts, sums, z, ids, jnp.ones(3), jax.random.key(3), decay=0.9,
                            restart_below=0.5)
  assert int(out.restarted) == 2
  even_share = 3 / 3
  for code in (1, 2):  # each restarted on one of the batch's latents, with an even share's count
    assert any(np.allclose(out.codebook[code], row) for row in np.asarray(z))
    assert float(out.counts[code]) == even_share
  # the living code only moved by its moving average
  np.testing.assert_allclose(out.counts[0], 0.9 * 4 + 0.1 * 3)
  # and the next nearest search can pick them
  picked = codebook_lib.nearest(z, out.codebook)
  assert len(set(np.asarray(picked).tolist())) >= 2


def test_restarts_draw_the_latents_the_codebook_serves_worst():
  counts = jnp.array([4.0, 0.0, 0.0])
  sums = jnp.array([[4.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
  z = jnp.array([[1.0, 0.0], [1.0, 0.1], [0.0, 7.0]])
  ids = jnp.array([0, 0, 0])
  error = jnp.sum(jnp.square(z - sums[0] / counts[0]), -1)  # 0, 0.01, 50
  error = error.at[:2].set(0.0)  # only the far latent is badly served
  out = codebook_lib.update(counts, sums, z, ids, error, jax.random.key(5), decay=0.9,
                            restart_below=0.5)
  for code in (1, 2):
    np.testing.assert_allclose(out.codebook[code], z[2])


def _make_step(kind):
  obj = objectives.objective(kind, SMALL_IMAGE if kind == "image" else SMALL_AUDIO)
  optimizer, schedule = tokenizer_trainer.make_optimizer(3e-3, 1, 100, obj.init(jax.random.key(1)))
  step = tokenizer_trainer.make_step(obj, optimizer, schedule, commitment=0.25,
                                     codebook_decay=0.9, restart_below=0.03, seed=0)
  return obj, optimizer, step


@pytest.fixture(scope="module")
def image_step():
  """One compiled image step the step tests share (each starts its own state)."""
  return _make_step("image")


def test_training_revives_an_unused_codebook(image_step):
  """Codes all start on one point (far from every latent): without restarts one code would take
  every latent; with them most of the book is in use after a few steps."""
  obj, optimizer, step = image_step
  params = obj.init(jax.random.key(0))
  params = obj.with_codebook(params, jnp.full((16, 4), 50.0))
  state = TokenizerState.create(params, optimizer, obj.codebook(params))
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  used = []
  for _ in range(3):
    state, metrics = step(state, x)
    used.append(float(metrics["codebook/batch_usage"]))
  assert used[0] == 1 / 16  # every latent on the one nearest code at first
  assert used[-1] >= 0.5, used


# ------------------------------------------------------------------------------- the step
@pytest.mark.parametrize("kind", ["image", "audio"])
def test_a_training_step_lowers_the_loss_on_a_fixed_batch(kind, image_step):
  obj, optimizer, step = image_step if kind == "image" else _make_step("audio")
  params = obj.init(jax.random.key(1))
  state = TokenizerState.create(params, optimizer, obj.codebook(params))
  rng = np.random.default_rng(2)
  x = jnp.asarray(np.clip(rng.normal(0, 0.5, (2, *obj.example_shape)), -1, 1), jnp.float32)
  losses = []
  for _ in range(12):
    state, metrics = step(state, x)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.8 * losses[0], losses
  assert int(state.step) == 12 and int(state.nonfinite_steps) == 0
  # the codebook follows the moving averages: the optimizer never moves it
  assert "quantize" in state.params


def test_a_non_finite_step_changes_nothing_but_the_counters(image_step):
  obj, optimizer, step = image_step
  params = obj.init(jax.random.key(1))
  state = TokenizerState.create(params, optimizer, obj.codebook(params))
  before = jax.tree_util.tree_map(np.asarray, state.params)
  x = jnp.full((2, 16, 16, 3), jnp.nan)
  state, metrics = step(state, x)
  assert int(state.step) == 1 and int(state.nonfinite_steps) == 1
  assert float(metrics["nonfinite"]) == 1.0
  for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(state.params)):
    np.testing.assert_array_equal(a, np.asarray(b))


def test_random_crops_are_windows_of_each_example():
  x = jnp.arange(2 * 6 * 5 * 1, dtype=jnp.float32).reshape(2, 6, 5, 1)
  crops = tokenizer_trainer.random_crops(x, 3, jax.random.key(0))
  assert crops.shape == (2, 3, 3, 1)
  for example, crop in zip(np.asarray(x), np.asarray(crops)):
    top, left = np.argwhere(example[..., 0] == crop[0, 0, 0])[0]
    np.testing.assert_array_equal(example[top:top + 3, left:left + 3], crop)


def test_crops_among_candidates_take_the_most_varied_window():
  x = np.zeros((2, 12, 12, 3), np.float32)
  x[0, 8:, 8:] = np.indices((4, 4)).sum(0)[..., None] % 2  # one busy corner, flat elsewhere
  x[1, :4, :4] = 1.0
  crops = np.asarray(tokenizer_trainer.random_crops(jnp.asarray(x), 4, jax.random.key(3), 40))
  assert crops.shape == (2, 4, 4, 3)
  assert crops[0].var() > 0 and crops[1].var() > 0  # each holds part of its example's object
  # One candidate is the uniform draw it always was.
  np.testing.assert_array_equal(
      tokenizer_trainer.random_crops(jnp.asarray(x), 4, jax.random.key(3), 1),
      tokenizer_trainer.random_crops(jnp.asarray(x), 4, jax.random.key(3)))


# ------------------------------------------------------------------------ runs and resuming
def _params_of(model_dir, step):
  from unified_io.training import checkpoints as ckpt_lib
  obj = objectives.objective("image", SMALL_IMAGE)
  target = obj.init(jax.random.key(0))
  return ckpt_lib.load_params(os.path.join(model_dir, "checkpoints", str(step)), target)


def test_resuming_is_exact_and_the_run_writes_its_record_measures_and_report(tmp_path, capsys):
  # (crops chosen among candidates and the objects measure ride along: resuming stays exact)
  extra = dict(crop_candidates=3, object_palette=world_palette())
  whole = _train_kwargs(tmp_path / "whole", **extra)
  measures = tokenizer_trainer.train_tokenizer(**whole)
  for name in ("eval/psnr", "eval/ssim", "eval/codebook_usage", "eval/perplexity"):
    assert np.isfinite(measures[name]), name
  assert 0 <= measures["eval/objects_kept"] <= 1 and 0 <= measures["eval/object_iou"] <= 1
  record = json.load(open(os.path.join(whole["model_dir"], "tokenizer.json")))
  assert record["kind"] == "image" and record["config"]["n_embed"] == 16
  assert os.path.exists(os.path.join(whole["model_dir"], "report", "index.html"))
  assert os.path.exists(os.path.join(whole["model_dir"], "report", "reconstructions.png"))
  # A run stopped after step 2: a MODEL_DIR holding only the uninterrupted run's step 2 (its
  # parameters, optimizer, codebook averages and input state), resumed to step 4.
  split = _train_kwargs(tmp_path / "split", **extra)
  shutil.copytree(os.path.join(whole["model_dir"], "checkpoints", "2"),
                  os.path.join(split["model_dir"], "checkpoints", "2"))
  tokenizer_trainer.train_tokenizer(**split)
  assert "resumed from step 2" in capsys.readouterr().out
  a, b = _params_of(whole["model_dir"], 4), _params_of(split["model_dir"], 4)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --------------------------------------------------------------------------------- bad input
def test_refusals_name_the_problem_before_anything_is_written(tmp_path):
  model_dir = tmp_path / "tok"
  with pytest.raises(ConfigError, match="'depth' is not a tokenizer"):
    tokenizer_trainer.train_tokenizer(**_train_kwargs(tmp_path, kind="depth"))
  no_image = make_config("tiny", input_modalities=("text",), target_modalities=("text",))
  with pytest.raises(ConfigError, match="no image tokenizer"):
    tokenizer_trainer.train_tokenizer(**_train_kwargs(tmp_path, model_config=no_image))
  with pytest.raises(ConfigError, match="image_crop`: 32 is not a multiple"):
    tokenizer_trainer.train_tokenizer(**_train_kwargs(tmp_path, image_crop=32))
  with pytest.raises(ConfigError, match="crop_candidates`: 0 is not"):
    tokenizer_trainer.train_tokenizer(**_train_kwargs(tmp_path, crop_candidates=0))
  with pytest.raises(ConfigError, match="object_palette`: objects are measured on pictures"):
    tokenizer_trainer.train_tokenizer(**_train_kwargs(tmp_path, kind="audio",
                                                      object_palette=world_palette()))
  with pytest.raises(TokenizerDataError, match="no task with image_targets or image_inputs"):
    tokenizer_trainer.train_tokenizer(**_train_kwargs(tmp_path, mixture_or_task_name="world_text"))
  assert not model_dir.exists()


def test_a_tokenizer_dir_of_another_config_is_refused(tmp_path):
  from unified_io.tokenizer_training.state import write_record
  os.makedirs(tmp_path / "tok")
  write_record(str(tmp_path / "tok"), "image", SMALL_IMAGE)  # as a run of SMALL_IMAGE leaves it
  other = _model_config(image=dataclasses.replace(SMALL_IMAGE, n_embed=32))
  with pytest.raises(tokenizer_trainer.TokenizerTrainingError, match="another configuration"):
    tokenizer_trainer.train_tokenizer(**_train_kwargs(tmp_path, model_config=other))


def test_a_batch_of_another_size_and_a_flat_batch(capsys):
  import tensorflow as tf
  wrong = tf.data.Dataset.from_tensors(tf.zeros([8, 8, 3])).repeat()
  with pytest.raises(tokenizer_trainer.TokenizerTrainingError, match=r"\(8, 8, 3\) per example"):
    next(tokenizer_trainer._Batches(wrong, 2, (16, 16, 3)))
  assert tokenizer_trainer._flat_batches(np.zeros((2, 4, 4, 3))) == 2
  assert tokenizer_trainer._flat_batches(np.stack([np.zeros((4, 4, 3)),
                                                   np.eye(4)[..., None].repeat(3, -1)])) == 1
