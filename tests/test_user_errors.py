"""Every user mistake is one line on stderr and exit status 2, before anything expensive; a
successful run prints no warnings.

The binaries' `main` runs in this process (the mistakes are found before a model is built or a
checkpoint loaded), then gin is cleared. One real `uio2-predict` subprocess checks that a
successful prediction leaves stderr empty (no TF / XLA / orbax start-up lines).
"""

import os
import pathlib
import subprocess
import sys

import gin
import pytest

from conftest import REPO_ROOT
from fixture_media import write_garbage, write_image, write_wav
from test_run_loader import write_run
from unified_io.cli import eval as eval_cli
from unified_io.cli import predict as predict_cli
from unified_io.cli import train as train_cli

TEXT_LENGTHS = "{'text_inputs': 32, 'text_targets': 16}"


def _train_flags(model_dir, *extra, drop=()):
  flags = {"MODEL_DIR": f"'{model_dir}'", "MIXTURE_OR_TASK_NAME": "'world_text'",
           "TASK_FEATURE_LENGTHS": TEXT_LENGTHS, "TRAIN_STEPS": "5", "BATCH_SIZE": "8"}
  return (["--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin"]
          + [f"--gin.{k}={v}" for k, v in flags.items() if k not in drop] + list(extra))


def _one_line(main, argv, capsys, prog):
  """The single stderr line of `main(argv)`, which must exit 2 (gin is left clear)."""
  try:
    status = main([str(a) for a in argv])
  finally:
    gin.clear_config()
  err = capsys.readouterr().err
  assert status == 2, err
  assert err.count("\n") == 1 and err.startswith(f"{prog}: "), err
  assert "Traceback" not in err
  return err.strip()


def _unwritable(tmp_path) -> pathlib.Path:
  """A MODEL_DIR this process cannot create (root ignores permissions: /proc takes no folders)."""
  if os.geteuid() == 0:
    return pathlib.Path("/proc/uio2-test-run/run")
  locked = tmp_path / "locked"
  locked.mkdir(mode=0o500)
  return locked / "run"


TRAIN_MISTAKES = {  # name: (flags after the model dir, words the line must have)
    "unknown mixture": (["--gin.MIXTURE_OR_TASK_NAME='world_txt'"],
                        ["'world_txt'", "did you mean world_text"]),
    "missing length": (["--gin.TASK_FEATURE_LENGTHS={'text_inputs': 32}"],
                       ["`text_targets` is missing", "need text_inputs, text_targets"]),
    "unknown length": (["--gin.TASK_FEATURE_LENGTHS={'text_inputs': 32, 'text_target': 16}"],
                       ["`text_target` is unknown", "did you mean `text_targets`"]),
    "macro typo": (["--gin.TRAIN_STEP=5"], ["TRAIN_STEP", "ignored", "did you mean TRAIN_STEPS"]),
    "parameter typo": (["--gin.train.log_evry=1"],
                       ["train.log_evry", "no parameter `log_evry`", "did you mean log_every"]),
    "configurable typo": (["--gin.trian.log_every=1"],
                          ["no configurable named `trian`", "did you mean train"]),
    "unquoted string": (["--gin.train.initial_checkpoint_path=/tmp/x"],
                        ["initial_checkpoint_path", "strings quoted"]),
    "bad policy": (["--gin.train.nonfinite_policy='stopp'"], ["'skip' or 'stop'", "'stopp'"]),
    "bad remat policy": (["--gin.make_config.remat_policy='nope'"],
                         ["remat_policy", "'nope'", "'dots_no_batch'"]),
    "bad optimizer state dtype": (["--gin.adafactor.state_dtype='bf16'"],
                                  ["adafactor.state_dtype", "'bf16'", "bfloat16"]),
    "attention kernel not on this backend": (["--gin.make_config.attention_impl='cudnn'"],
                                             ["attention_impl", "'cudnn'", "'xla'"]),
}
_DROPS = {"unknown mixture": ("MIXTURE_OR_TASK_NAME",), "missing length": ("TASK_FEATURE_LENGTHS",),
          "unknown length": ("TASK_FEATURE_LENGTHS",), "macro typo": ("TRAIN_STEPS",)}


@pytest.mark.parametrize("case", sorted(TRAIN_MISTAKES))
def test_train_mistake_is_one_line(case, tmp_path, capsys):
  extra, words = TRAIN_MISTAKES[case]
  model_dir = tmp_path / "run"
  line = _one_line(train_cli.main, _train_flags(model_dir, *extra, drop=_DROPS.get(case, ())),
                   capsys, "uio2-train")
  for word in words:
    assert word in line, line
  assert not model_dir.exists()


def test_model_dir_a_file_or_unwritable_is_one_line(tmp_path, capsys):
  a_file = tmp_path / "a_file"
  a_file.write_text("not a folder")
  line = _one_line(train_cli.main, _train_flags(a_file), capsys, "uio2-train")
  assert "is a file, not a folder" in line and a_file.read_text() == "not a folder"
  model_dir = _unwritable(tmp_path)
  line = _one_line(train_cli.main, _train_flags(model_dir), capsys, "uio2-train")
  assert f"MODEL_DIR {model_dir}: cannot write in" in line
  assert not model_dir.exists()


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("text_run")
  write_run(str(model_dir), "models/tiny.gin", steps=(1,))
  return model_dir


def test_eval_mistakes_are_one_line(text_run, tmp_path, capsys):
  flags = ["--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{text_run}'",
           f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'"]
  line = _one_line(eval_cli.main, flags + ["--gin.MIXTURE_OR_TASK_NAME='world_arithmetc'"],
                   capsys, "uio2-eval")
  assert "'world_arithmetc'" in line and "did you mean world_arithmetic" in line
  line = _one_line(eval_cli.main, flags + ["--gin.MIXTURE_OR_TASK_NAME='world_text'",
                                           "--gin.evaluate.max_exampels=5"], capsys, "uio2-eval")
  assert "no parameter `max_exampels`" in line and "did you mean max_examples" in line
  # one process has one slice: a multi-slice mesh is refused before anything is loaded
  line = _one_line(eval_cli.main, flags + ["--gin.MIXTURE_OR_TASK_NAME='world_text'",
                                           "--gin.inference_mesh.dcn_data=2"], capsys, "uio2-eval")
  assert "dcn_data=2" in line and "use dcn_data=1" in line, line
  assert not (tmp_path / "eval").exists()


def test_predict_file_of_the_wrong_modality_fails_before_loading(text_run, tmp_path, capsys,
                                                                 monkeypatch):
  def no_load(*args, **kwargs):
    raise AssertionError("the checkpoint was loaded before the inputs were checked")
  monkeypatch.setattr(predict_cli, "load", no_load)
  wav, png = write_wav(tmp_path / "clip.wav"), write_image(tmp_path / "photo.png")
  base = ["--checkpoint", text_run, "--prompt", "What is this?"]
  cases = [(["--image", wav], f"--image {wav}: this is an audio file; give it with --audio"),
           (["--audio", png], "this is an image file; give it with --image"),
           (["--video", wav], "this is an audio file; give it with --audio"),
           (["--video", write_garbage(tmp_path / "broken.mp4")], "--video"),
           (["--image", png, "--dcn_data", "2"], "--dcn_data: mesh: dcn_data=2")]
  for flags, words in cases:
    line = _one_line(predict_cli.main, base + flags, capsys, "uio2-predict")
    assert words in line, line


def test_successful_predict_prints_no_warnings(text_run, tmp_path):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                  os.environ.get("PYTHONPATH")])))
  for name in ("XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL", "JAX_PLATFORMS"):  # as a user's shell
    env.pop(name, None)
  result = subprocess.run([sys.executable, "-m", "unified_io.cli.predict", "--checkpoint",
                           str(text_run), "--prompt", "What is two plus two?"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip()  # the answer
  assert result.stderr == "", result.stderr[-3000:]
