"""gin/runs/finetune.gin from the command line: start from a pretraining run's or a converted
release's parameters, with a fresh optimizer state.

The runs are `python -m unified_io.cli.train` subprocesses on the text part of the built-in world, as
in tests/test_train_binary.py (the missing-macro error, reported before anything is built, calls
the binary's `main` in this process); the converted release is the text golden file's tiny model
written as a safetensors release and converted with `unified_io.interop.convert`.
"""

import functools
import json
import os
import struct
import subprocess
import sys

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest

from processes import xla_flags
from unified_io.cli import train as train_cli
from unified_io.presets import make_config
from unified_io.interop import convert
from unified_io.model import UnifiedIOModel
from unified_io.training.checkpoints import load_params
from unified_io.training.input import TrainInput

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIXTURE, BATCH = "world_text", 8
LENGTHS = {"text_inputs": 32, "text_targets": 16}


def _flags(run_gin, model_dir, steps, *extra):
  return ["--gin_file=models/tiny.gin", f"--gin_file=runs/{run_gin}",
          f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{MIXTURE}'",
          f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", f"--gin.TRAIN_STEPS={steps}",
          f"--gin.BATCH_SIZE={BATCH}", "--gin.train.log_every=1", *extra]


def _train(run_gin, model_dir, steps, *extra):
  """Runs the binary; returns (exit status, stdout, stderr)."""
  cmd = [sys.executable, "-m", "unified_io.cli.train", *_flags(run_gin, model_dir, steps, *extra)]
  env = dict(os.environ)
  env["XLA_FLAGS"] = xla_flags()  # one CPU device, as a user's plain run
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  return result.returncode, result.stdout, result.stderr


def _losses(model_dir):
  with open(os.path.join(model_dir, "train", "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f)}


@functools.lru_cache(maxsize=None)  # (two tests ask for the same checkpoint's)
def _loss_on_first_batch(params_dir):
  """The loss of the tiny model with `params_dir`'s parameters on a fresh run's first batch."""
  import unified_io.tasks  # noqa: F401  (registers world_text)
  cfg = make_config("tiny")
  model = UnifiedIOModel(cfg)
  batch = next(TrainInput(MIXTURE, LENGTHS, BATCH, model.feature_converter(), seed=0))
  target = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch))
  loss, _ = jax.jit(model.loss_fn)(load_params(params_dir, target), batch)
  return float(loss)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A 12-step pretraining run (its MODEL_DIR), the base of the fine-tuning tests."""
  pre = tmp_path_factory.mktemp("pretrained") / "pre"
  status, _, err = _train("pretrain.gin", pre, 12, "--gin.learning_rate_schedule.warmup_steps=50")
  assert status == 0, err[-3000:]
  return pre


def test_finetune_starts_from_the_pretrained_parameters(tmp_path, pretrained):
  pre, fine = pretrained, tmp_path / "fine"
  status, out, err = _train("finetune.gin", fine, 2,
                            f"--gin.INITIAL_CHECKPOINT_PATH='{pre / 'checkpoints' / '12'}'")
  assert status == 0, err[-3000:]
  assert f"initial parameters from {pre / 'checkpoints' / '12'}" in out
  pretrained, finetuned = _losses(pre), _losses(fine)
  assert sorted(finetuned) == [1, 2]
  # Both runs' first batch is the same (same mixture and seed): the fresh model's loss there is
  # the pretraining run's step 1, the pretrained model's is the fine-tuning run's step 1.
  assert finetuned[1] < 0.5 * pretrained[1], (finetuned, pretrained)
  assert finetuned[1] == pytest.approx(_loss_on_first_batch(str(pre / "checkpoints" / "12")),
                                       rel=1e-4)
  with open(fine / "train" / "metrics.jsonl") as f:
    first = json.loads(f.readline())
  assert first["learning_rate"] == pytest.approx(1e-3)  # finetune.gin's constant rate


def test_finetune_without_initial_checkpoint_names_the_macro(tmp_path, capsys):
  """`main` in this process: the error comes before anything is built."""
  try:
    status = train_cli.main(_flags("finetune.gin", tmp_path / "run", 2))
  finally:
    gin.clear_config()
  err = capsys.readouterr().err
  assert status == 2, err[-3000:]
  assert "required gin values missing" in err and "INITIAL_CHECKPOINT_PATH" in err, err[-3000:]


def _write_release(directory, golden_path):
  """The golden file's model as a release directory: config.json + model.safetensors (float32)."""
  with np.load(golden_path) as golden:
    config = str(golden["meta/config_json"])
    tensors = {k[len("param/"):]: golden[k] for k in golden.files if k.startswith("param/")}
  os.makedirs(directory)
  with open(os.path.join(directory, "config.json"), "w") as f:
    f.write(config)
  header, blobs, offset = {}, [], 0
  for name, value in tensors.items():
    raw = np.ascontiguousarray(value, "<f4").tobytes()
    header[name] = {"dtype": "F32", "shape": list(value.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    blobs.append(raw)
    offset += len(raw)
  text = json.dumps(header).encode()
  with open(os.path.join(directory, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_finetune_from_a_converted_release_with_an_assignment_map(tmp_path, text_golden_path):
  release, converted, fine = tmp_path / "release", tmp_path / "converted", tmp_path / "fine"
  _write_release(str(release), text_golden_path)
  assert convert.main(["--src", str(release), "--out", str(converted)]) == 0
  _, released = convert.load_converted(str(converted))
  # The golden model's trunk (emb 256, 4 x 64 heads, mlp 512, image/audio vocabularies 384) with
  # our 33280-token text vocabulary: its 1024-row text table is left out by the assignment map.
  # TRAIN_STEPS=0 checkpoints the initial state as it is, before any update.
  trunk = ["--gin.make_config.emb_dim=256", "--gin.make_config.head_dim=64",
           "--gin.make_config.mlp_dim=512", "--gin.make_config.image_vocab_size=384",
           "--gin.make_config.audio_vocab_size=384"]
  status, out, err = _train("finetune.gin", fine, 0, *trunk,
                            f"--gin.INITIAL_CHECKPOINT_PATH='{converted}'",
                            "--gin.ASSIGNMENT_MAP=[('^token_embedders_text/', None)]")
  assert status == 0, err[-3000:]
  assert f"initial parameters from {converted}" in out
  text_table = released["token_embedders_text"]["embedding"]
  assert text_table.shape == (1024, 256)
  target = dict(released, token_embedders_text={
      "embedding": jax.ShapeDtypeStruct((33280, 256), np.float32)})
  started = load_params(str(fine / "checkpoints" / "0"), target)
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(started),
                               jax.tree_util.tree_leaves(target)):
    if "token_embedders_text" in jax.tree_util.keystr(path):
      assert got.shape == (33280, 256) and float(np.std(np.asarray(got))) > 0  # freshly initialised
    else:
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want),
                                    err_msg=jax.tree_util.keystr(path))


def test_lora_finetune_trains_adapters_on_an_int8_base_then_eval_and_merge_agree(
    tmp_path, pretrained, capsys):
  """runs/finetune_lora.gin: the checkpoint holds only the adapters, lora.json names the base;
  the first step's loss is the int8 base's (B = 0); uio2-eval's loader and uio2-merge-lora give
  the same parameters, the base changed exactly at the adapted kernels; another base is refused."""
  from unified_io.cli import merge_lora
  from unified_io.evaluation import run_loader
  base_dir = pretrained / "checkpoints" / "12"
  fine = tmp_path / "lora"
  status, out, err = _train("finetune_lora.gin", fine, 3, f"--gin.INITIAL_CHECKPOINT_PATH='{base_dir}'")
  assert status == 0, err[-3000:]
  assert "lora: 32,768 trained parameters" in out, out[-2000:]
  with open(fine / "lora.json") as f:
    record = json.load(f)
  assert record["base"] == str(base_dir) and record["int8_base"] is True
  # Only adapters (and their optimizer state) are checkpointed: far smaller than the base.
  size = lambda d: sum(p.stat().st_size for p in d.rglob("*") if p.is_file())  # noqa: E731
  assert size(fine / "checkpoints" / "3") < 0.1 * size(base_dir)
  # Step 1 runs before any update: adapters are zero, so its loss is the (int8) base's own.
  assert _losses(fine)[1] == pytest.approx(_loss_on_first_batch(str(base_dir)), rel=2e-2)

  run = run_loader.load_run(str(fine))
  base = run_loader.load_run(str(pretrained))
  changed = {jax.tree_util.keystr(p) for (p, x), y in zip(
      jax.tree_util.tree_leaves_with_path(run.params), jax.tree_util.tree_leaves(base.params))
             if not np.array_equal(np.asarray(x), np.asarray(y))}
  assert len(changed) == 16 and all("attention" in p for p in changed), sorted(changed)
  merged_dir = tmp_path / "merged"
  assert merge_lora.main(["--adapters_dir", str(fine), "--output_dir", str(merged_dir)]) == 0
  merged = run_loader.load_run(str(merged_dir))
  for x, y in zip(jax.tree_util.tree_leaves(merged.params), jax.tree_util.tree_leaves(run.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6)

  # Resuming the adapters on another base is refused in one line before anything is written
  # (`main` in this process: the refusal comes before any compile).
  try:
    status = train_cli.main(_flags("finetune_lora.gin", fine, 4,
                                   f"--gin.INITIAL_CHECKPOINT_PATH='{merged_dir}'"))
  finally:
    gin.clear_config()
  err = capsys.readouterr().err
  assert status == 2, err[-3000:]
  assert "uio2-train: lora: " in err and "base" in err, err[-2000:]
  assert not (fine / "checkpoints" / "4").exists()
