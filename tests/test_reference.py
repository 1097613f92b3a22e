"""The model against the official UIO2 release's golden numbers, and the checker's failure modes.

`uio2_text_golden.npz` holds the release's weights, a batch, its logits, loss and gradients. The
checker (`unified_io.interop.check_reference`) must pass on it, and must fail loudly (exit 1) on a
numerical mismatch and cleanly (exit 2, naming the culprit) on unusable input.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from unified_io.interop.check_reference import GRAD_RTOL, LOGIT_RTOL, LOSS_RTOL, main, run_check

PERTURBED = "param/decoder.layers_1.mlp.wo.weight"
REMOVED = "param/encoder.layers_0.attention.key.weight"
MISSHAPEN = "param/decoder.layers_0.mlp.wi_0.weight"
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def golden(text_golden_path):
  """Every array of the golden file, read once for the whole module."""
  with np.load(text_golden_path) as data:
    return {k: data[k] for k in data.files}


def _write_copy(tmp_path, golden, drop=(), replace=None, name="copy.npz"):
  """The golden file written to tmp_path, without the keys in `drop`, with `replace` {key: array}."""
  arrays = {k: v for k, v in golden.items() if k not in drop}
  for key, value in (replace or {}).items():
    assert key in golden, f"test bug: {key} is not in the golden file"
    arrays[key] = value
  path = tmp_path / name
  np.savez(path, **arrays)
  return str(path)


def _with_config(golden, edit):
  config = json.loads(str(golden["meta/config_json"]))
  edit(config)
  return np.array(json.dumps(config))


# ------------------------------------------------------------------------------------------------
# the model matches the release
# ------------------------------------------------------------------------------------------------
def test_run_check_matches_release(text_golden_path, golden):
  results = run_check(str(text_golden_path), check_grads=True, verbose=False)
  by_label = {r.label: r for r in results}
  failed = [r.line() for r in results if not r.ok]
  assert not failed, "\n".join(failed)

  assert by_label["text logits"].rel <= LOGIT_RTOL == 1e-4
  assert by_label["loss/text"].rel <= LOSS_RTOL == 1e-5
  assert by_label["loss/total"].rel <= LOSS_RTOL

  # The gradient summary is present and covers every `grad/*` tensor of the file.
  n_grads = sum(k.startswith("grad/") for k in golden)
  assert n_grads > 0
  summaries = [r for r in results if r.label.startswith("grads:")]
  assert len(summaries) == 1, f"no (or several) gradient summaries in {list(by_label)}"
  assert summaries[0].label.startswith(f"grads: {n_grads} tensors"), summaries[0].label
  assert summaries[0].rel <= GRAD_RTOL == 1e-4


def test_cli_passes_on_golden(text_golden_path, capsys):
  assert main([str(text_golden_path)]) == 0
  out = capsys.readouterr().out
  assert "ALL OK" in out
  assert "grads:" in out


# ------------------------------------------------------------------------------------------------
# the checker catches a numerical mismatch
# ------------------------------------------------------------------------------------------------
def test_cli_fails_on_perturbed_weight(tmp_path, golden, capsys):
  path = _write_copy(tmp_path, golden, replace={PERTURBED: golden[PERTURBED] + 0.05})
  assert main([path]) == 1
  out = capsys.readouterr().out
  assert "FAILED" in out
  assert "[FAIL] text logits" in out


# ------------------------------------------------------------------------------------------------
# unusable input: exit 2, and the message names what is wrong
# ------------------------------------------------------------------------------------------------
def test_cli_missing_tensor_is_named(tmp_path, golden, capsys):
  path = _write_copy(tmp_path, golden, drop=(REMOVED,))
  assert main([path]) == 2
  err = capsys.readouterr().err
  assert REMOVED[len("param/"):] in err, err


def test_cli_misshapen_tensor_names_it_and_both_shapes(tmp_path, golden, capsys):
  good = golden[MISSHAPEN]
  assert good.shape == (512, 256)  # [mlp, emb] in torch layout, from the file's config
  bad = good[:500]
  path = _write_copy(tmp_path, golden, replace={MISSHAPEN: bad})
  assert main([path]) == 2
  err = capsys.readouterr().err
  assert MISSHAPEN[len("param/"):] in err, err
  assert str((500, 256)) in err, err
  assert str((512, 256)) in err, err


def test_cli_rejects_unsupported_activation(tmp_path, golden, capsys):
  config = _with_config(golden, lambda c: c["t5_config"].update(mlp_activations=["gelu"]))
  path = _write_copy(tmp_path, golden, replace={"meta/config_json": config})
  assert main([path]) == 2
  err = capsys.readouterr().err
  assert "t5_config.mlp_activations" in err, err


def test_cli_nonexistent_file(tmp_path, capsys):
  missing = tmp_path / "no_such_golden.npz"
  assert main([str(missing)]) == 2
  assert str(missing) in capsys.readouterr().err


def test_cli_file_without_config(tmp_path, golden, capsys):
  path = tmp_path / "no_config.npz"
  np.savez(path, **{k: v for k, v in golden.items() if k.startswith("input/")})
  assert main([str(path)]) == 2
  assert "meta/config_json" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["empty", "truncated"])
def test_cli_unreadable_file_is_bad_input(tmp_path, text_golden_path, capsys, content):
  # Unusable input must exit 2 with a one-line error; exit 1 would claim the model is out of
  # tolerance. (np.load raises EOFError on an empty file and zipfile.BadZipFile on a cut one.)
  path = tmp_path / f"{content}.npz"
  path.write_bytes(b"" if content == "empty" else text_golden_path.read_bytes()[:100_000])
  assert main([str(path)]) == 2
  assert str(path) in capsys.readouterr().err


def test_python_m_entry_point_exit_status(tmp_path):
  # The documented command line, as a process: exit status 2 and a message on stderr.
  missing = tmp_path / "no_such_golden.npz"
  proc = subprocess.run([sys.executable, "-m", "unified_io.interop.check_reference", str(missing)],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2, proc.stderr
  assert str(missing) in proc.stderr


def test_full_golden_every_modality_matches(reference_dir, capsys):
  """All five inputs and three targets; the VQ ids are reported and equal (no near-tie flips)."""
  results = run_check(str(reference_dir / "uio2_full_golden.npz"), check_grads=False)
  out = capsys.readouterr().out
  assert all(r.ok for r in results), [r.line() for r in results if not r.ok]
  labels = {r.label for r in results}
  for modality in ("text", "image", "audio"):
    assert f"{modality} logits" in labels and f"loss/{modality}" in labels
  assert "image VQ token ids: 512/512" in out and "audio VQ token ids: 256/256" in out
