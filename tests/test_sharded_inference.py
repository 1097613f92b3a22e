"""Sharded inference on 8 fake CPU devices (conftest.py): a run restored onto (data=4, model=2),
(data=8) and FSDP meshes generates the tokens the one-device run generates, greedy and sampled;
teacher-forced scores agree; bfloat16 parameters land on their shardings; a mesh that does not
divide the model is refused in one line before anything is read; uio2-predict on a mesh prints
what it prints on one device (two processes: test_multiprocess_inference.py).

One tiny text run (the model's own initialisation, so greedy answers differ from row to row)
serves every test; greedy on every mesh, sampling on (data=4, model=2). Tolerances: tokens and lengths exactly; sequence scores and losses to 1e-4
relative (float32 summed in another order across the model axis).
"""

import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from test_run_loader import write_run
from unified_io import decoding, partitioning
from unified_io.cli import predict
from unified_io.evaluation import run_loader
from unified_io.evaluation import sharded_inference as si
from unified_io.evaluation.run_loader import RunLoadError, load_run
from unified_io.training import checkpoints as ckpt_lib
from unified_io.training.checkpoints import TrainCheckpoints
from unified_io.training.train_state import TrainState

BATCH, L_ENC, MAX_LENGTH = 8, 12, 6
GREEDY = decoding.DecodeOptions(max_length=MAX_LENGTH)
SAMPLE = decoding.DecodeOptions(max_length=MAX_LENGTH, method="sample")
MESHES = {"data4_model2": (2, False), "data8": (1, False), "data4_model2_fsdp": (2, True)}


def write_initialised_run(path: str) -> str:
  """A MODEL_DIR whose newest step (2) holds the tiny text model's initial parameters."""
  write_run(path, steps=(1,))
  model = load_run(path).model
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(1), model.dummy_batch(1)))
  checkpoints = TrainCheckpoints(os.path.join(path, "checkpoints"), async_save=False)
  state = TrainState.create(params, optax.sgd(0.1)).replace(step=jnp.int32(2))
  checkpoints.save(2, state, {"batches_consumed": 2, "seed": 0}, force=True)
  checkpoints.wait()
  checkpoints.close()
  return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return write_initialised_run(str(tmp_path_factory.mktemp("sharded_run")))


def text_batch(vocab: int, seed: int = 0):
  """A model batch of BATCH prompts of ragged length, and 3 answer options per prompt."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(4, L_ENC + 1, BATCH)
  mask = (np.arange(L_ENC)[None] < lengths[:, None]).astype(np.int32)
  inputs = {"text": {"tokens": rng.integers(2, vocab, (BATCH, L_ENC)).astype(np.int32) * mask,
                     "mask": mask,
                     "pos_ids": np.broadcast_to(np.arange(L_ENC, dtype=np.int32),
                                                (BATCH, L_ENC)).copy()}}
  targets = rng.integers(2, vocab, (BATCH, MAX_LENGTH)).astype(np.int32)
  targets[:, -1] = decoding.EOS_ID
  dec_inputs = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  ones = np.ones_like(targets)
  batch = {"inputs": inputs, "targets": {"text": {"inputs": dec_inputs, "targets": targets,
                                                  "mask": ones, "loss_mask": ones}}}
  options = rng.integers(2, vocab, (BATCH, 3, 4)).astype(np.int32)
  options[..., -1] = decoding.EOS_ID
  return batch, options


@pytest.fixture(scope="module")
def reference(model_dir):
  """The one-device run and what it computes on the batch."""
  run = load_run(model_dir)
  batch, options = text_batch(run.model.cfg.trunk.text_vocab_size)
  rng = jax.random.PRNGKey(5)
  out = {name: jax.device_get(decoding.generate(run.model, run.params, batch["inputs"], "text",
                                                opts, rng))
         for name, opts in (("greedy", GREEDY), ("sample", SAMPLE))}
  assert len({tuple(t) for t in out["greedy"].tokens}) > 1  # answers that depend on the prompt
  out["losses"] = np.asarray(jax.jit(decoding.example_losses, static_argnums=0)(
      run.model, run.params, batch))
  out["options"] = np.asarray(decoding.score_options(run.model, run.params, batch["inputs"],
                                                     options))
  return run, batch, options, rng, out


def _expected_specs(run, mesh: si.InferenceMesh):
  boxed = run_loader.abstract_boxed_params(run.model)
  return jax.tree_util.tree_leaves(partitioning.mesh_specs(boxed, mesh.rules),
                                   is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


@pytest.mark.parametrize("name", sorted(MESHES))
def test_sharded_generate_equals_one_device(model_dir, reference, name):
  run_1, batch, _, rng, want = reference
  mesh = si.inference_mesh(*MESHES[name])
  run = mesh.load_run(model_dir)
  leaves = jax.tree_util.tree_leaves(run.params)
  assert [x.sharding.spec for x in leaves] == _expected_specs(run_1, mesh)
  split = any(x.addressable_shards[0].data.shape != x.shape for x in leaves)
  assert split == (mesh.mesh.shape["model"] > 1 or mesh.fsdp)
  # Sampling once (a compile each): its random bits do not depend on the sharding either.
  methods = (("greedy", GREEDY),) + ((("sample", SAMPLE),) if name == "data4_model2" else ())
  for method, opts in methods:
    got = si.generate_global(mesh, run.model, run.params, mesh.local_rows(batch["inputs"]),
                             "text", opts, rng, gather=True)
    np.testing.assert_array_equal(got.tokens, want[method].tokens, err_msg=method)
    np.testing.assert_array_equal(got.lengths, want[method].lengths, err_msg=method)
    np.testing.assert_allclose(got.scores, want[method].scores, rtol=1e-4, err_msg=method)
  # One process holds every row: its own rows are the gathered ones.
  assert mesh.process_rows(BATCH) == range(BATCH)
  own = si.generate_global(mesh, run.model, run.params, batch["inputs"], "text", GREEDY, rng)
  np.testing.assert_array_equal(own.tokens, want["greedy"].tokens)


def test_teacher_forced_scores_equal_one_device(model_dir, reference):
  _, batch, options, _, want = reference
  mesh = si.inference_mesh(model_parallel=2)
  run = mesh.load_run(model_dir)
  losses = si.example_losses_global(mesh, run.model, run.params, mesh.local_rows(batch),
                                    gather=True)
  np.testing.assert_allclose(losses, want["losses"], rtol=1e-4)
  scores = si.score_options_global(mesh, run.model, run.params, batch["inputs"], options)
  assert scores.shape == (BATCH, 3)
  np.testing.assert_allclose(scores, want["options"], rtol=1e-4)


def test_bfloat16_parameters_land_on_their_shardings(model_dir, reference):
  run_1 = reference[0]
  mesh = si.inference_mesh(model_parallel=2, fsdp=True)
  run = mesh.load_run(model_dir, dtype="bfloat16")
  specs = _expected_specs(run_1, mesh)
  pairs = zip(jax.tree_util.tree_leaves(run.params), jax.tree_util.tree_leaves(run_1.params),
              specs)
  for got, whole, spec in pairs:
    assert got.dtype == jnp.bfloat16 and got.sharding.spec == spec
    ways = [int(np.prod([mesh.mesh.shape[a] for a in _axes(s)]))
            for s in tuple(spec) + (None,) * (whole.ndim - len(spec))]
    for shard in got.addressable_shards:  # each device holds its part only, in bfloat16
      assert shard.data.dtype == jnp.bfloat16
      assert shard.data.shape == tuple(n // w for n, w in zip(whole.shape, ways))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(whole.astype(jnp.bfloat16)))
  assert any({a for s in spec for a in _axes(s)} == {"data", "model"} for spec in specs)
  # The split parameters are half or less of the whole on each device.
  device = jax.devices()[0]
  per_device = sum(s.data.nbytes for x in jax.tree_util.tree_leaves(run.params)
                   for s in x.addressable_shards if s.device == device)
  whole_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(run.params))
  assert per_device < whole_bytes / 2


def _axes(entry):
  """The mesh axes of one PartitionSpec entry."""
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def test_a_mesh_that_does_not_divide_the_model_is_one_line_before_loading(model_dir,
                                                                          monkeypatch):
  def never(*_):
    raise AssertionError("read the checkpoint before checking the mesh")
  monkeypatch.setattr(run_loader, "_stored_shapes", never)
  monkeypatch.setattr(ckpt_lib, "restore_params_sharded", never)
  six = jax.devices()[:6]
  with pytest.raises(RunLoadError) as caught:
    load_run(model_dir, mesh=partitioning.make_mesh(data=2, model=3, devices=six))
  message = str(caught.value)
  assert "\n" not in message
  assert message.startswith("mesh {'data': 2, 'model': 3}: parameter ")
  assert re.search(r"parameter \S+/kernel dim 'heads' of size 4 is not divisible by model=3; ",
                   message), message
  assert "choose model_parallel dividing every such dimension (1, 2, 4)" in message, message
  with pytest.raises(RunLoadError, match=r"mesh \{'data': 3, 'model': 2\}: parameter \S+ dim "
                     r"'embed' of size 128 is not divisible by data=3; .*turn fsdp off"):
    load_run(model_dir, mesh=partitioning.make_mesh(data=3, model=2, devices=six), fsdp=True)


def test_a_batch_must_split_over_data(model_dir, reference):
  _, batch, _, _, _ = reference
  mesh = si.inference_mesh()
  six = jax.tree_util.tree_map(lambda x: x[:6], batch["inputs"])
  with pytest.raises(ValueError, match="a batch of 6 rows does not split over data=8; make the "
                     "batch size a multiple of 8"):
    si.generate_global(mesh, reference[0].model, reference[0].params, six, "text", GREEDY)
  padded, rows = si.pad_rows(six, mesh.data_size)
  assert rows == 6
  tokens = padded["text"]["tokens"]
  assert tokens.shape == (8, L_ENC) and (tokens[6:] == tokens[5]).all()


# ------------------------------------------------------------------------------------------------
# uio2-predict on a mesh (two processes: test_multiprocess_inference.py).
# ------------------------------------------------------------------------------------------------
PROMPT = ["--prompt", "What is the capital of France?", "--max_length", "6"]


def test_predict_on_a_mesh_prints_what_one_device_prints(model_dir, capsys):
  assert predict.main(["--checkpoint", model_dir, *PROMPT]) == 0
  one_device = capsys.readouterr().out
  assert predict.main(["--checkpoint", model_dir, *PROMPT, "--model_parallel", "2"]) == 0
  assert capsys.readouterr().out == one_device
  assert predict.main(["--checkpoint", model_dir, *PROMPT, "--model_parallel", "3"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("uio2-predict: --model_parallel: mesh: model=3 does not divide the 8 "
                        "devices") and err.count("\n") == 1, err
