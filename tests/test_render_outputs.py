"""Rendering outputs: boxes/points/masks drawn, PNG, spectrogram plots, WAV, vocoder, gallery."""

import html.parser
import os

import numpy as np
import pytest
from PIL import Image
from scipy.io import wavfile

from unified_io.data.ops import audio as audio_ops
from unified_io.evaluation import render as R

RED = (255, 0, 0)


def _read_png(path) -> np.ndarray:
  with Image.open(path) as image:
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def test_draw_boxes_outlines_y1_x1_y2_x2_and_leaves_the_input_alone(tmp_path):
  image = np.zeros([64, 96, 3], np.uint8)
  drawn = np.asarray(R.draw_boxes(image, [[10, 20, 40, 60]], colours=[RED], width=1))
  assert drawn.shape == image.shape and not image.any()
  assert tuple(drawn[10, 30]) == RED  # top edge: y = 10, x in 20..60
  assert tuple(drawn[25, 60]) == RED  # right edge: x = 60
  assert tuple(drawn[25, 40]) == (0, 0, 0)  # inside
  assert tuple(drawn[30, 10]) == (0, 0, 0)  # where a swapped (x, y) box would put its left edge
  # A label is written inside the top-left corner on a box-coloured background.
  labelled = np.asarray(R.draw_boxes(image, [[10, 20, 40, 60]], ["cat"], [RED]))
  assert (labelled[12:20, 22:35] != drawn[12:20, 22:35]).any()
  path = R.save_png(labelled, str(tmp_path / "sub" / "boxes.png"))
  np.testing.assert_array_equal(_read_png(path), labelled)


def test_draw_boxes_accepts_float_images_no_boxes_and_checks_labels():
  image = np.full([8, 8, 3], 0.5)
  out = np.asarray(R.draw_boxes(image, np.zeros([0, 4])))
  assert out.dtype == np.uint8 and (out == 128).all()
  with pytest.raises(ValueError, match="2 labels for 1 items"):
    R.draw_boxes(image, [[0, 0, 4, 4]], ["a", "b"])


def test_draw_points_and_overlay_mask():
  image = np.zeros([20, 30, 3], np.uint8)
  dots = np.asarray(R.draw_points(image, [[5, 25]], colours=[RED], radius=2))
  assert tuple(dots[5, 25]) == RED and tuple(dots[5, 5]) == (0, 0, 0)  # (y, x) order
  mask = np.zeros([20, 30], bool)
  mask[:10] = True
  over = np.asarray(R.overlay_mask(image + 100, mask, colour=RED, alpha=0.5))
  assert tuple(over[0, 0]) == (178, 50, 50)  # 100 * 0.5 + (255, 0, 0) * 0.5, rounded
  assert tuple(over[15, 0]) == (100, 100, 100)
  with pytest.raises(ValueError, match="mask shape"):
    R.overlay_mask(image, mask[:5])


def test_to_uint8_maps_value_ranges():
  np.testing.assert_array_equal(R.to_uint8(np.array([-1.0, 0.0, 1.0, 3.0]), (-1, 1)),
                                [0, 128, 255, 255])
  with pytest.raises(ValueError, match="high > low"):
    R.to_uint8(np.zeros(2), (1, 1))


def test_spectrogram_png_puts_low_mel_bins_at_the_bottom(tmp_path):
  spec = np.zeros([50, 128])
  spec[:, 64:] = 1.0  # energy in the upper half of the mel bins only
  path = R.spectrogram_png(spec, str(tmp_path / "spec.png"), title="upper half", figsize=(4, 3),
                           dpi=80)
  pixels = _read_png(path).astype(int)
  assert pixels.shape == (240, 320, 3)
  column = pixels[:, 180].sum(-1)  # a column through the plot area
  assert column[70] > column[170] + 200  # upper part bright (high mel), lower part dark
  with pytest.raises(ValueError, match=r"\[time, mel\]"):
    R.spectrogram_png(np.zeros([2, 3, 4]), str(tmp_path / "bad.png"))


def test_write_wav_round_trip(tmp_path):
  t = np.arange(8000) / audio_ops.SAMPLE_RATE
  wave = 0.5 * np.sin(2 * np.pi * 440 * t)
  wave[10] = 3.0  # clipped to 1
  path = R.write_wav(wave, str(tmp_path / "a" / "tone.wav"))
  rate, data = wavfile.read(path)
  assert rate == 16000 and data.dtype == np.int16 and data.shape == (8000,)
  assert data[10] == 32767
  np.testing.assert_allclose(data[100:200] / 32767, wave[100:200], atol=1 / 32767)
  rate, loud = wavfile.read(R.write_wav(wave, str(tmp_path / "n.wav"), 8000, peak_normalize=True))
  assert rate == 8000 and np.abs(loud).max() == round(0.9 * 32767)
  for bad, message in [(np.zeros(0), "non-empty"), (np.zeros([2, 5]), "mono"),
                       (np.array([0.0, np.nan]), "NaN")]:
    with pytest.raises(ValueError, match=message):
      R.write_wav(bad, str(tmp_path / "bad.wav"))


def test_spectrogram_to_wav_recovers_a_tone(tmp_path):
  t = np.arange(audio_ops.SEGMENT_SAMPLES) / audio_ops.SAMPLE_RATE
  log_mel = np.asarray(audio_ops.log_mel_spectrogram(0.3 * np.sin(2 * np.pi * 1000 * t)))
  normalized = audio_ops.normalize_spectrogram(log_mel)[..., None]  # the VQGAN's [T, M, 1]
  path = R.spectrogram_to_wav(normalized, str(tmp_path / "tone.wav"), num_iters=16)
  rate, data = wavfile.read(path)
  assert rate == 16000 and len(data) == (audio_ops.NUM_FRAMES - 1) * audio_ops.HOP_LENGTH
  spectrum = np.abs(np.fft.rfft(data.astype(np.float64)))
  peak_hz = np.argmax(spectrum) * rate / len(data)
  assert abs(peak_hz - 1000) < 60  # a mel bin near 1 kHz is ~30 Hz wide
  with pytest.raises(ValueError, match="transpose"):
    R.spectrogram_to_waveform(np.zeros([128, 256]))


def test_vocoder_hook_by_path(tmp_path, monkeypatch):
  (tmp_path / "my_vocoder.py").write_text(
      "import numpy as np\n"
      "SEEN = []\n"
      "def to_wave(log_mel):\n"
      "  SEEN.append(log_mel)\n"
      "  return np.linspace(-0.5, 0.5, 1000), 22050\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  normalized = np.zeros([256, 128])
  path = R.spectrogram_to_wav(normalized, str(tmp_path / "v.wav"), vocoder="my_vocoder:to_wave")
  rate, data = wavfile.read(path)
  assert rate == 22050 and len(data) == 1000 and data[-1] == round(0.9 * 32767)
  import my_vocoder  # pylint: disable=import-outside-toplevel,import-error
  # The vocoder got the un-normalised log-mel: 0 * std + mean.
  np.testing.assert_allclose(my_vocoder.SEEN[-1], audio_ops.AUDIOSET_MEAN)
  for spec, message in [("my_vocoder", "module:function"), ("no_such_mod_xyz:f", "cannot import"),
                        ("my_vocoder:absent", "no callable 'absent'")]:
    with pytest.raises(ValueError, match=message):
      R.load_vocoder(spec)


class _Sources(html.parser.HTMLParser):

  def __init__(self):
    super().__init__()
    self.sources, self.tags = [], []

  def handle_starttag(self, tag, attrs):
    self.tags.append(tag)
    self.sources += [v for k, v in attrs if k == "src"]


def test_gallery_html_writes_media_and_escapes_text(tmp_path):
  image = np.zeros([16, 16, 3], np.uint8)
  R.save_png(image, str(tmp_path / "given.png"))
  items = [
      {"title": "vqa <1>", "image": R.draw_boxes(image, [[2, 2, 8, 8]]),
       "prompt": "What is <b>this</b>?", "prediction": "a \"red\" & blue",
       "reference": ["red", "b"],
       "metrics": {"exact_match": 0.0}},
      {"image": "given.png", "spectrogram": np.zeros([32, 128]), "audio": np.zeros(1600)},
  ]
  path = R.gallery_html(items, str(tmp_path), title="run <x>")
  page = open(path, encoding="utf-8").read()
  assert "<b>this</b>" not in page and "What is &lt;b&gt;this&lt;/b&gt;?" in page
  assert "a &quot;red&quot; &amp; blue" in page and "red | b" in page and "run &lt;x&gt;" in page
  parser = _Sources()
  parser.feed(page)
  assert parser.tags.count("img") == 3 and parser.tags.count("audio") == 1
  for src in parser.sources:
    assert os.path.isfile(tmp_path / src), src
  assert "given.png" in parser.sources
  assert _read_png(tmp_path / parser.sources[0]).shape == (16, 16, 3)
  rate, data = wavfile.read(tmp_path / parser.sources[-1])
  assert rate == 16000 and len(data) == 1600
  with pytest.raises(ValueError, match="unknown keys \\['caption'\\]"):
    R.gallery_html([{"caption": "x"}], str(tmp_path))
