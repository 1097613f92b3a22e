"""Putting a trained tokenizer into a model (`training.tokenizer_graft`, gin `train.tokenizers`).

A tokenizer folder is made as `uio2-train-tokenizer` writes one (`TokenizerState` in an orbax
checkpoint, tokenizer.json beside it) for the tiny image VQGAN, with parameters moved away from
any init. Grafting must change exactly the model's `target_embedders_image/vqgan`; an Adafactor
step afterwards must leave those parameters bit-identical (the tokenizer is frozen) while the rest
of the model trains; each mistake is one line, and `uio2-train` refuses one before MODEL_DIR exists.
"""

import dataclasses
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from test_user_errors import TEXT_LENGTHS, _one_line
from unified_io import partitioning
from unified_io.cli import train as train_cli
from unified_io.model import UnifiedIOModel
from unified_io.network.vq.vqgan import ImageVQGAN
from unified_io.presets import make_config, tiny_components
from unified_io.tokenizer_training import state
from unified_io.training.tokenizer_graft import (TokenizerGraftError, check_tokenizers,
                                                 graft_tokenizers, read_tokenizer)
from unified_io.training.checkpoints import TrainCheckpoints
from unified_io.training.optim import adafactor, learning_rate_schedule
from unified_io.training.train_setup import build_train_setup

from tiny_models import random_tokens

CFG = make_config("tiny", input_modalities=("text",), target_modalities=("text", "image"),
                  text_vocab_size=256)
VQ = CFG.image_vqgan
STEP = 5
SUBTREE = ("target_embedders_image", "vqgan")


def _flat(tree):
  return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _under(path: str, keys=SUBTREE) -> bool:
  return path.startswith("".join(f"['{k}']" for k in keys))


def write_tokenizer(directory, params):
  """A tokenizer folder as the tokenizer trainer leaves it."""
  codebook = params["quantize"]["embedding"]["embedding"]
  checkpoints = TrainCheckpoints(os.path.join(directory, "checkpoints"), async_save=False)
  checkpoints.save(STEP, state.TokenizerState.create(params, optax.sgd(0.1), codebook), {},
                   force=True)
  checkpoints.wait()
  checkpoints.close()
  state.write_record(str(directory), "image", VQ)
  return str(directory)


def copy_with_record(source, directory, kind="image", config=VQ):
  """`source`'s checkpoints under another record."""
  shutil.copytree(os.path.join(source, "checkpoints"), os.path.join(directory, "checkpoints"))
  state.write_record(str(directory), kind, config)
  return str(directory)


def record_only(directory):
  """A tokenizer folder with its record but no checkpoint yet."""
  state.write_record(str(directory), "image", VQ)
  return str(directory)


@pytest.fixture(scope="module")
def model_and_batch():
  model = UnifiedIOModel(CFG)
  batch = random_tokens(model.dummy_batch(2, {"text_inputs": 8, "text_targets": 4}))
  rng = np.random.default_rng(0)
  batch["targets"]["image"]["image"] = rng.uniform(
      -1, 1, batch["targets"]["image"]["image"].shape).astype(np.float32)
  return model, batch


@pytest.fixture(scope="module")
def trained_params():
  """The image VQGAN's own tree (`jax.eval_shape` of its init: nothing compiled) holding random
  values, as unlike any init as a trained tokenizer's."""
  images = jax.ShapeDtypeStruct((1,) + tuple(VQ.default_input_size) + (VQ.in_channels,),
                                jnp.float32)
  shapes = nn.unbox(jax.eval_shape(ImageVQGAN(VQ).init, jax.random.PRNGKey(7), images)["params"])
  rng = np.random.default_rng(8)
  return jax.tree_util.tree_map(lambda s: rng.normal(0, 0.1, s.shape).astype(s.dtype), shapes)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, trained_params):
  return write_tokenizer(tmp_path_factory.mktemp("tokenizer"), trained_params)


@pytest.fixture(scope="module")
def setup(model_and_batch, tokenizer_dir):
  """The trainer's setup of a fresh run with `tokenizers` (one device), and its first
  parameters on the host (the first step donates the state)."""
  model, batch = model_and_batch
  schedule = learning_rate_schedule("constant", base_learning_rate=0.01)
  built = build_train_setup(model, adafactor(schedule), schedule, batch,
                            mesh=partitioning.make_mesh(devices=jax.devices()[:1]),
                            use_dropout=False, tokenizers={"image": tokenizer_dir})
  return built, jax.device_get(built.state.params)


def test_the_model_holds_the_tokenizer_tree_at_its_target_embedder(trained_params,
                                                                    model_and_batch):
  model, _ = model_and_batch
  subtree = nn.unbox(model.abstract_params())[SUBTREE[0]][SUBTREE[1]]
  assert ({p: (x.shape, x.dtype) for p, x in _flat(subtree).items()}
          == {p: (x.shape, x.dtype) for p, x in _flat(trained_params).items()})


def test_read_tokenizer_gives_the_saved_parameters(tokenizer_dir, trained_params):
  for path in (tokenizer_dir, os.path.join(tokenizer_dir, "checkpoints", str(STEP))):
    trained = read_tokenizer(path)
    assert (trained.kind, trained.config, trained.step) == ("image", VQ, STEP)
    assert trained.path == os.path.abspath(tokenizer_dir)
    saved, read = _flat(trained_params), _flat(trained.params)
    assert saved.keys() == read.keys()
    for name, value in saved.items():
      assert isinstance(read[name], np.ndarray)
      np.testing.assert_array_equal(read[name], value, err_msg=name)


def test_a_fresh_run_starts_from_the_trained_tokenizer(setup, trained_params):
  _, params = setup
  trained = _flat({SUBTREE[0]: {SUBTREE[1]: trained_params}})
  assert trained
  for path, value in _flat(params).items():
    if _under(path):
      np.testing.assert_array_equal(value, trained[path], err_msg=path)


def test_graft_replaces_exactly_the_tokenizer_in_the_model_dtype(setup, trained_params, tmp_path):
  """Another tokenizer, saved in bfloat16, over the run's parameters: only the tokenizer's leaves
  change, to its values in the model's float32; every other leaf is the same object."""
  _, params = setup
  halved = jax.tree_util.tree_map(lambda x: (x / 2).astype(jnp.bfloat16), trained_params)
  grafted = graft_tokenizers(params, {"image": write_tokenizer(tmp_path / "other", halved)}, CFG)
  before, after = _flat(params), _flat(grafted)
  assert before.keys() == after.keys()
  expected = _flat({SUBTREE[0]: {SUBTREE[1]: halved}})
  assert set(expected) == {p for p in before if _under(p)}
  for path, value in before.items():
    if _under(path):
      assert after[path].dtype == value.dtype == np.float32 and after[path].shape == value.shape
      np.testing.assert_array_equal(after[path], expected[path].astype(np.float32), err_msg=path)
    else:
      assert after[path] is value, path


def test_the_grafted_tokenizer_stays_frozen_under_adafactor(setup, model_and_batch):
  """One train step: the loss reaches every parameter but the tokenizer's (stop_gradient on the
  codes, the decoder outside the loss), so Adafactor leaves those bit-identical."""
  built, before_params = setup
  _, batch = model_and_batch
  with built.activated():
    new_state, metrics = built.step(built.state, batch, jax.random.PRNGKey(1))
  assert np.isfinite(float(metrics["loss/image"])) and float(metrics["loss/image"]) > 0
  before, after = _flat(before_params), _flat(jax.device_get(new_state.params))
  frozen = [p for p in before if _under(p)]
  assert frozen
  for path in frozen:
    assert after[path].tobytes() == before[path].tobytes(), path
  moved = [p for p in before if not _under(p) and not np.array_equal(after[p], before[p])]
  # Everything the image loss flows through trains: the trunk, the image token table, the
  # image target's modality vector.
  for prefix in (("decoder",), ("encoder",), ("token_embedders_image",),
                 ("target_embedders_image", "modality_embedding")):
    assert any(_under(p, prefix) for p in moved), prefix


def test_a_config_mismatch_names_the_field(tokenizer_dir, tmp_path):
  other = copy_with_record(tokenizer_dir, tmp_path / "other",
                           config=dataclasses.replace(VQ, n_embed=512))
  with pytest.raises(TokenizerGraftError) as exc:
    check_tokenizers({"image": other}, CFG)
  message = str(exc.value)
  assert "\n" not in message
  assert "n_embed 512 (tokenizer) vs 256 (model)" in message and other in message


def test_parameters_of_other_shapes_are_refused(trained_params, setup, tmp_path):
  _, params = setup
  smaller = jax.tree_util.tree_map(lambda x: x, trained_params)  # (new dicts: the fixture stays)
  smaller["quantize"]["embedding"]["embedding"] = np.zeros((128, VQ.embed_dim), np.float32)
  directory = write_tokenizer(tmp_path / "smaller", smaller)
  with pytest.raises(TokenizerGraftError) as exc:
    graft_tokenizers(params, {"image": directory}, CFG)
  message = str(exc.value)
  assert "\n" not in message
  assert "quantize/embedding/embedding" in message and "(128, 4)" in message, message


@pytest.mark.parametrize("case", ["no target", "unknown kind", "other kind", "no record",
                                  "no checkpoint", "missing step"])
def test_mistakes_are_one_line(case, tokenizer_dir, tmp_path):
  tokenizers, words = {
      "no target": ({"audio": tokenizer_dir}, ["no audio target", "its targets: text, image"]),
      "unknown kind": ({"video": tokenizer_dir}, ["unknown kind 'video'", "'image', 'audio'"]),
      "other kind": ({"image": copy_with_record(tokenizer_dir, tmp_path / "audio", "audio",
                                                tiny_components()["audio_vqgan"])},
                     ["is an audio tokenizer, not an image one"]),
      "no record": ({"image": str(tmp_path)}, ["no tokenizer.json"]),
      "no checkpoint": ({"image": record_only(tmp_path / "empty")}, ["no checkpoint in"]),
      "missing step": ({"image": os.path.join(tokenizer_dir, "checkpoints", "7")},
                       ["no checkpoint step 7; there are [5]"]),
  }[case]
  with pytest.raises(TokenizerGraftError) as exc:
    check_tokenizers(tokenizers, CFG)
  message = str(exc.value)
  assert "\n" not in message
  for word in words:
    assert word in message, message


def test_read_tokenizer_of_a_step_it_lacks_lists_the_steps(tokenizer_dir):
  with pytest.raises(TokenizerGraftError, match=r"no checkpoint step 9; there are \[5\]"):
    read_tokenizer(tokenizer_dir, step=9)


def test_uio2_train_refuses_a_bad_tokenizer_before_model_dir(tokenizer_dir, tmp_path, capsys):
  other = copy_with_record(tokenizer_dir, tmp_path / "other",
                           config=dataclasses.replace(VQ, n_embed=512))
  model_dir = tmp_path / "run"
  flags = ["--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin",
           f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='world_text'",
           f"--gin.TASK_FEATURE_LENGTHS={TEXT_LENGTHS}", "--gin.TRAIN_STEPS=5",
           "--gin.BATCH_SIZE=8", "--gin.make_config.target_modalities=('text', 'image')",
           f"--gin.train.tokenizers={json.dumps({'image': other})}"]
  line = _one_line(train_cli.main, flags, capsys, "uio2-train")
  assert "n_embed 512 (tokenizer) vs 256 (model)" in line, line
  assert not model_dir.exists()
