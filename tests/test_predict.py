"""uio2-predict: an image question, an audio file, text -> image (a real subprocess), text -> audio,
boxes back in input-image pixels, the target read from the prompt, and every bad input as one line
and exit status 2.

One tiny all-modality run (random parameters, written as uio2-train writes a
MODEL_DIR) serves every test; `main` runs in-process so the compiled decoder is shared."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from scipy.io import wavfile

from fixture_media import write_garbage, write_wav
from test_run_loader import write_run
from processes import xla_flags
from unified_io import decoding
from unified_io.cli import predict
from unified_io.data import vocab as vocab_lib
from unified_io.data.ops import boxes as box_ops
from unified_io.data.ops import image as image_ops
from unified_io.modalities import Modality

REPO = pathlib.Path(__file__).resolve().parent.parent
ALL_LENGTHS = {"text_inputs": 32, "text_targets": 8, "image_input_samples": 64,
               "audio_input_samples": 32, "image_history_input_samples": 32,
               "audio_history_input_samples": 16, "num_frames": 4}
CLIP_MEAN, CLIP_STD = np.array(image_ops.CLIP_MEAN), np.array(image_ops.CLIP_STD)


@pytest.fixture(scope="module")
def mm_dir(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("mm_run")
  write_run(str(model_dir), "models/tiny_multimodal.gin", ALL_LENGTHS, steps=(1,))
  return str(model_dir)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("text_run")
  write_run(str(model_dir), "models/tiny.gin", steps=(1,))
  return str(model_dir)


def _run_main(capsys, *argv):
  code = predict.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return code, out, err


def _expected_text(run, inputs, max_length=8):
  options = decoding.DecodeOptions(max_length=max_length)
  generated = decoding.generate(run.model, run.params, inputs, "text", options,
                                jax.random.PRNGKey(0), run.vocabulary.tokenizer.GetPieceSize())
  tokens = np.asarray(generated.tokens)[0, :int(generated.lengths[0])]
  return run.vocabulary.decode([int(t) for t in tokens])


def test_image_question_sees_the_training_preprocessing(mm_dir, tmp_path, capsys):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)  # the model size: no resize
  Image.fromarray(image).save(tmp_path / "photo.png")
  prompt = "What is in the image?"
  code, out, err = _run_main(capsys, "--checkpoint", mm_dir, "--image", tmp_path / "photo.png",
                             "--prompt", prompt, "--out", tmp_path / "drawn.png")
  assert code == 0, err

  # The inputs, built by hand: prefix + prompt + EOS; CLIP-normalised 16 px patches in grid order.
  run = predict.load(mm_dir)
  lengths = predict.example_lengths(run, len(run.vocabulary.encode(prompt)))
  batch = predict.build_batch(run, {"text_inputs": prompt, "image_inputs": image}, lengths)
  ids = [vocab_lib.PREFIX_TOKENS["[Text] [S]"]] + list(run.vocabulary.encode(prompt)) + [1]
  np.testing.assert_array_equal(batch["inputs"]["text"]["tokens"][0, :len(ids)], ids)
  assert not batch["inputs"]["text"]["tokens"][0, len(ids):].any()
  normalised = (image / 255.0 - CLIP_MEAN) / CLIP_STD
  patches = normalised.reshape(8, 16, 8, 16, 3).transpose(0, 2, 1, 3, 4).reshape(64, -1)
  np.testing.assert_allclose(batch["inputs"]["image"]["input"][0], patches, atol=1e-4)
  np.testing.assert_array_equal(batch["inputs"]["image"]["pos_ids"][0], np.arange(64))
  assert batch["inputs"]["image"]["mask"].all()
  for absent in ("audio", "image_history", "audio_history"):
    assert not batch["inputs"][absent]["mask"].any(), absent

  text = _expected_text(run, batch["inputs"])
  assert out.splitlines()[0] == text
  drawn = np.asarray(Image.open(tmp_path / "drawn.png").convert("RGB"))
  assert drawn.shape == image.shape
  assert ("box (" in out) != np.array_equal(drawn, image)  # boxes drawn iff boxes predicted


def test_audio_file(mm_dir, tmp_path, capsys):
  write_wav(tmp_path / "tone.wav", seconds=1.0, rate=22050)  # resampled to 16 kHz on the way in
  prompt = "What kind of sound is this?"
  code, out, err = _run_main(capsys, "--checkpoint", mm_dir, "--audio", tmp_path / "tone.wav",
                             "--prompt", prompt)
  assert code == 0, err
  run = predict.load(mm_dir)
  waveform = predict.read_audio(str(tmp_path / "tone.wav"))
  assert abs(len(waveform) - 16000) <= 1
  lengths = predict.example_lengths(run, len(run.vocabulary.encode(prompt)))
  batch = predict.build_batch(run, {"text_inputs": prompt, "audio_inputs": waveform}, lengths)
  # 1 s of sound in a 4.08 s window: the first time rows of the 8 x 4 patch grid hold sound, the
  # padding after it is masked.
  mask = batch["inputs"]["audio"]["mask"][0].reshape(8, 4)
  assert mask[0].all() and not mask[3:].any()
  assert not batch["inputs"]["image"]["mask"].any()
  assert out.splitlines()[0] == _expected_text(run, batch["inputs"])


def test_text_to_image_in_a_subprocess_writes_a_png(mm_dir, tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env["XLA_FLAGS"] = xla_flags()  # one CPU device, as a user's run
  out_png = tmp_path / "circle.png"
  result = subprocess.run(
      [sys.executable, "-m", "unified_io.cli.predict", "--checkpoint", mm_dir,
       "--prompt", "Generate an image of a red circle", "--out", str(out_png)],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "from 256 tokens" in result.stdout  # the tiny VQGAN's full 16 x 16 grid
  pixels = np.asarray(Image.open(out_png))
  assert pixels.shape == (128, 128, 3) and pixels.std() > 0


def test_text_to_audio_writes_a_wav_and_its_spectrogram(mm_dir, tmp_path, capsys):
  code, out, err = _run_main(capsys, "--checkpoint", mm_dir, "--prompt",
                             "Make the sound of a dog", "--out", tmp_path / "dog.wav")
  assert code == 0, err
  rate, samples = wavfile.read(tmp_path / "dog.wav")
  assert rate == 16000 and len(samples) == 255 * 256  # 4.08 s of Griffin-Lim at hop 256
  assert (tmp_path / "dog_spectrogram.png").exists()
  assert "from 128 tokens" in out  # the tiny audio VQGAN's 16 x 8 grid


def test_target_is_read_from_the_prompt():
  for prompt in ("Generate a picture of a cat", "Create an image that shows a dog",
                 "Draw: two squares", "Paint this scene: a red circle",
                 "Render an image matching the description: sky"):
    assert predict.infer_target(prompt) is Modality.IMAGE, prompt
  for prompt in ("Make the sound of a bell", "Generate audio: a low tone",
                 "Produce a recording of rain", "Synthesise this sound: a beep"):
    assert predict.infer_target(prompt) is Modality.AUDIO, prompt
  for prompt in ("What is in the image?", "Describe the sound.", "Locate the red circle.",
                 "Make a list of the shapes", ""):
    assert predict.infer_target(prompt) is Modality.TEXT, prompt


def test_boxes_come_back_in_input_image_pixels(mm_dir):
  run = predict.load(mm_dir)
  image = np.zeros((96, 160, 3), np.uint8)  # scaled by 0.8 to 76 x 128, padded 26 px on top
  box = np.array([[30.0, 40.0, 60.0, 120.0]])
  _, _, transform = image_ops.resize_and_pad(image, (128, 128))
  in_model, _ = image_ops.transform_boxes(box, transform, (128, 128))
  text = "a box: " + box_ops.bins_to_text_np(box_ops.boxes_to_bins_np(in_model.numpy(), 128))
  np.testing.assert_allclose(predict.boxes_in_image(text, run, image), box, atol=0.5)
  np.testing.assert_allclose(predict.boxes_in_image(text, run, None), in_model.numpy(), atol=0.2)
  assert predict.boxes_in_image("no boxes here", run, image).shape == (0, 4)


def _assert_one_line_error(code, err, *fragments):
  assert code == 2
  assert err.startswith("uio2-predict: ") and err.count("\n") == 1, err
  assert "Traceback" not in err
  for fragment in fragments:
    assert fragment in err, err


def test_bad_input_is_one_line_and_status_2(mm_dir, text_dir, tmp_path, capsys):
  image = tmp_path / "photo.png"
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
  cases = [
      (["--checkpoint", tmp_path / "nowhere", "--prompt", "hi"], ["no such directory"]),
      (["--checkpoint", mm_dir, "--image", write_garbage(tmp_path / "bad.png"), "--prompt", "hi"],
       ["--image", "cannot read it as an image"]),
      (["--checkpoint", mm_dir, "--image", tmp_path / "missing.png", "--prompt", "hi"],
       ["no such file"]),
      (["--checkpoint", mm_dir, "--image", image, "--prompt", "  "], ["--prompt is empty"]),
      (["--checkpoint", text_dir, "--prompt", "a red circle", "--target", "image"],
       ["--target image", "generates ['text'] only"]),
      (["--checkpoint", text_dir, "--image", image, "--prompt", "What is this?"],
       ["--image", "reads ['text'], not image"]),
      (["--checkpoint", mm_dir, "--prompt", "hi", "--gin.make_config.mlp_dim=384"],
       ["in the checkpoint but", "384"]),
      (["--checkpoint", mm_dir, "--prompt", "hi", "--temperature", "0"], ["temperature"]),
      (["--checkpoint", mm_dir, "--prompt", "hi", "--guidance_scale", "2"],
       ["guidance is for image and audio targets"]),
      (["--checkpoint", mm_dir, "--prompt", "hi", "--out", tmp_path / "x.png"], ["--out"]),
  ]
  for argv, fragments in cases:
    code, _, err = _run_main(capsys, *argv)
    _assert_one_line_error(code, err, *fragments)
