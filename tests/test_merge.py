"""`uio2-merge`: weight-space interpolation of training checkpoints, read back by `load_params`."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unified_io.cli.merge import MergeError, main, parse_weights, run
from unified_io.training.checkpoints import TrainCheckpoints, load_params
from unified_io.training.optim import adafactor, learning_rate_schedule
from unified_io.training.train_state import TrainState


def _params(seed, wi_shape=(256, 160)):
  rng = np.random.default_rng(seed)
  return {"encoder": {"layers_0": {"wi": rng.normal(size=wi_shape).astype(np.float32),
                                   "scale": rng.normal(size=(160,)).astype(np.float32)}},
          "head": {"kernel": rng.normal(size=(160, 12)).astype(np.float32)}}


def _save_run(model_dir, params, step=5):
  """A MODEL_DIR with one training checkpoint (TrainState with Adafactor state) at `step`."""
  state = TrainState.create(jax.tree_util.tree_map(jnp.asarray, params),
                            adafactor(learning_rate_schedule("constant", 0.1)))
  ckpts = TrainCheckpoints(str(model_dir / "checkpoints"), save_every=1)
  ckpts.save(step, state.replace(step=jnp.int32(step)), {"batches_consumed": step, "seed": 0})
  ckpts.wait()
  ckpts.close()
  return model_dir


def _load(out, like):
  return jax.tree_util.tree_map(np.asarray, load_params(str(out), like))


def _assert_trees_equal(got, want):
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for x, y in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)


def test_merging_a_checkpoint_with_itself_gives_it_back(tmp_path):
  params = _params(0)
  run_dir = _save_run(tmp_path / "run", params)
  run([str(run_dir), str(run_dir / "checkpoints" / "5")], str(tmp_path / "out"), "0.5,0.5",
      say=lambda _: None)
  _assert_trees_equal(_load(tmp_path / "out", params), params)


def test_quarter_three_quarters_is_the_exact_interpolation(tmp_path, capsys):
  a, b = _params(1), _params(2)
  run_a = _save_run(tmp_path / "a", a, step=3)
  run_b = _save_run(tmp_path / "b", b, step=7)
  # Weights 1,3 are normalised to 0.25,0.75; the MODEL_DIR and the checkpoints/ folder both
  # resolve to the newest step.
  assert main(["--checkpoint", str(run_a), "--checkpoint", str(run_b / "checkpoints"),
               "--weights", "1,3", "--out", str(tmp_path / "out")]) == 0
  out = capsys.readouterr().out
  assert "normalised to 0.25,0.75" in out and "step 3" in out and "step 7" in out
  want = jax.tree_util.tree_map(
      lambda x, y: (0.25 * x.astype(np.float64) + 0.75 * y.astype(np.float64)).astype(np.float32),
      a, b)
  got = _load(tmp_path / "out", a)
  _assert_trees_equal(got, want)
  assert not np.array_equal(got["head"]["kernel"], a["head"]["kernel"])
  record = json.loads((tmp_path / "out" / "merge.json").read_text())
  assert record["weights"] == [0.25, 0.75]
  assert [s["step"] for s in record["sources"]] == [3, 7]


def test_small_read_groups_and_three_checkpoints(tmp_path):
  trees = [_params(seed, wi_shape=(1024, 320)) for seed in (3, 4, 5)]
  dirs = [str(_save_run(tmp_path / f"r{i}", t)) for i, t in enumerate(trees)]
  said = []
  # group_mib=1 < the 1.25 MiB of wi: it is read alone, between the other parameters' groups.
  run(dirs, str(tmp_path / "out"), "0.2,0.3,0.5", dtype="bfloat16", group_mib=1,
      say=said.append)
  assert any(line.startswith("  group 3/3:") for line in said), said
  want = jax.tree_util.tree_map(
      lambda x, y, z: (0.2 * x.astype(np.float64) + 0.3 * y.astype(np.float64)
                       + 0.5 * z.astype(np.float64)).astype(jnp.bfloat16), *trees)
  like = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), trees[0])
  _assert_trees_equal(_load(tmp_path / "out", like), want)


def test_the_merge_of_a_merge_is_a_source_too(tmp_path):
  a, b = _params(6), _params(7)
  run([str(_save_run(tmp_path / "a", a)), str(_save_run(tmp_path / "b", b))],
      str(tmp_path / "ab"), say=lambda _: None)  # equal weights by default
  run([str(tmp_path / "ab"), str(tmp_path / "ab")], str(tmp_path / "abab"), "0.5,0.5",
      say=lambda _: None)
  _assert_trees_equal(_load(tmp_path / "abab", a), _load(tmp_path / "ab", a))


def _fails(capsys, argv, *fragments):
  assert main(argv) == 2
  err = capsys.readouterr().err
  for fragment in fragments:
    assert fragment in err, err


def test_mismatching_checkpoints_name_the_parameter(tmp_path, capsys):
  good = _save_run(tmp_path / "good", _params(0))
  wide = _save_run(tmp_path / "wide", _params(1, wi_shape=(256, 96)))
  fewer = _params(2)
  del fewer["head"]
  fewer_dir = _save_run(tmp_path / "fewer", fewer)
  out = str(tmp_path / "out")
  _fails(capsys, ["--checkpoint", str(good), "--checkpoint", str(wide), "--out", out],
         "parameter encoder/layers_0/wi has shape (256, 160) in checkpoint 1",
         "(256, 96) in checkpoint 2")
  _fails(capsys, ["--checkpoint", str(good), "--checkpoint", str(fewer_dir), "--out", out],
         "parameter head/kernel of checkpoint 1", "missing from checkpoint 2")
  _fails(capsys, ["--checkpoint", str(fewer_dir), "--checkpoint", str(good), "--out", out],
         "parameter head/kernel of checkpoint 2", "not in checkpoint 1")
  _fails(capsys, ["--checkpoint", str(good), "--checkpoint", str(tmp_path / "nope"), "--out", out],
         "nope: no such directory")
  (tmp_path / "empty").mkdir()
  _fails(capsys, ["--checkpoint", str(good), "--checkpoint", str(tmp_path / "empty"), "--out",
                  out], "no checkpoint found")
  _fails(capsys, ["--checkpoint", str(good), "--out", out], "at least two --checkpoint")
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("weights, fragment", [
    ("0.5", "1 weights for 2 checkpoints"), ("0.5,x", "not a comma-separated list"),
    ("1.5,-0.5", "must be a finite number >= 0"), ("0,0", "sum to 0"),
    ("nan,1", "must be a finite number >= 0")])
def test_bad_weights_are_refused(weights, fragment):
  with pytest.raises(MergeError, match=fragment):
    parse_weights(weights, 2, say=lambda _: None)


def test_weights_summing_to_one_are_kept_as_given():
  said = []
  assert parse_weights("0.25,0.75", 2, said.append) == [0.25, 0.75] and not said
  assert parse_weights(None, 4) == [0.25] * 4


def test_existing_output_needs_overwrite(tmp_path, capsys):
  src = str(_save_run(tmp_path / "a", _params(0)))
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "something").write_text("x")
  _fails(capsys, ["--checkpoint", src, "--checkpoint", src, "--out", str(tmp_path / "out")],
         "not empty")
  assert main(["--checkpoint", src, "--checkpoint", src, "--out", str(tmp_path / "out"),
               "--overwrite"]) == 0
