"""Tokenizer measures (PSNR, SSIM, spectrogram L1, codebook usage) against hand-computed values,
and the tokenizer report's files."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from unified_io.tokenizer_training import measures as M
from unified_io.tokenizer_training import report as R


def _constant(value, size=11, channels=3, batch=1):
  return np.full([batch, size, size, channels], value, np.float64)


# ---------------------------------------------------------------- PSNR

def test_psnr_of_a_known_error():
  # A constant error of 0.2 on a [-1, 1] image: MSE 0.04, peak 2 -> 10 log10(4 / 0.04) = 20 dB.
  assert M.psnr(_constant(0.0), _constant(0.2)) == pytest.approx([20.0])
  # The peak is the range's width: an error of 2.55 on [0, 255] -> 10 log10(255^2 / 2.55^2) = 40.
  assert M.psnr(_constant(100.0), _constant(102.55), (0.0, 255.0)) == pytest.approx([40.0])
  # Per example: the second example's error is 0.02 -> 10 log10(4 / 0.0004) = 40 dB.
  reference = np.zeros([2, 3, 3, 3])
  reconstruction = np.stack([np.full([3, 3, 3], 0.2), np.full([3, 3, 3], -0.02)])
  assert M.psnr(reference, reconstruction) == pytest.approx([20.0, 40.0])


def test_psnr_clips_the_reconstruction_to_the_range():
  # 5.0 is shown as 1.0: against 0.8 the error is 0.2 (20 dB), not 4.2.
  assert M.psnr(_constant(0.8), _constant(5.0)) == pytest.approx([20.0])
  assert M.psnr(_constant(1.0), _constant(5.0)) == [math.inf]


def test_identical_images_give_inf_and_the_mean_caps_it():
  psnr_b = M.psnr(np.zeros([2, 4, 4, 3]), np.stack([np.zeros([4, 4, 3]), np.full([4, 4, 3], 0.2)]))
  assert psnr_b[0] == math.inf and psnr_b[1] == pytest.approx(20.0)
  assert M.mean_psnr(psnr_b) == pytest.approx((M.PSNR_CAP_DB + 20.0) / 2)
  assert M.PSNR_CAP_DB == 100.0


def test_psnr_rejects_mismatched_shapes_and_an_empty_range():
  with pytest.raises(ValueError, match="shape"):
    M.psnr(np.zeros([1, 4, 4, 3]), np.zeros([1, 4, 5, 3]))
  with pytest.raises(ValueError, match="value_range"):
    M.psnr(np.zeros([1, 4, 4, 3]), np.zeros([1, 4, 4, 3]), (1.0, 1.0))


# ---------------------------------------------------------------- SSIM

def test_ssim_of_identical_images_is_one():
  image = np.random.default_rng(0).uniform(-1, 1, [2, 16, 16, 3])
  assert M.ssim(image, image) == pytest.approx([1.0, 1.0])


def test_ssim_of_constant_images_is_the_luminance_term():
  # Both constant: variances and covariance are 0, so the contrast-structure term is C2 / C2 = 1
  # and SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1), C1 = (0.01 * 2)^2 on [-1, 1].
  c1 = (0.01 * 2.0) ** 2
  expected = (2 * 0.2 * 0.5 + c1) / (0.2 ** 2 + 0.5 ** 2 + c1)  # 0.2004 / 0.2904
  assert M.ssim(_constant(0.2, size=16), _constant(0.5, size=16)) == pytest.approx([expected])
  # On [0, 255] C1 = (0.01 * 255)^2.
  c1 = (0.01 * 255) ** 2
  expected = (2 * 100 * 120 + c1) / (100 ** 2 + 120 ** 2 + c1)
  assert M.ssim(_constant(100.0), _constant(120.0), (0.0, 255.0)) == pytest.approx([expected])


def test_ssim_is_symmetric_and_falls_with_noise():
  rng = np.random.default_rng(1)
  image = rng.uniform(-0.5, 0.5, [1, 24, 24, 3])
  noise = rng.normal(size=image.shape)
  # Kept in range: the reconstruction (second argument) is clipped, the reference is not.
  slightly, very = image + 0.05 * noise, np.clip(image + 0.3 * noise, -1, 1)
  assert M.ssim(image, very) == pytest.approx(M.ssim(very, image), abs=1e-12)
  slight_ssim, very_ssim = M.ssim(image, slightly)[0], M.ssim(image, very)[0]
  assert 0.0 < very_ssim < slight_ssim < 1.0


def test_ssim_map_has_the_valid_positions_of_an_11x11_window():
  # A 12x12 image has 2x2 positions where the whole window fits.
  assert M.ssim_map(np.zeros([3, 12, 12, 2]), np.zeros([3, 12, 12, 2])).shape == (3, 2, 2, 2)
  with pytest.raises(ValueError, match="at least 11x11"):
    M.ssim(np.zeros([1, 10, 12, 3]), np.zeros([1, 10, 12, 3]))


def _slow_ssim_map(x_hw, y_hw, width):
  """Wang et al. 2004 written out: a normalised 11x11 Gaussian (sigma 1.5) at every position."""
  offsets = np.arange(11) - 5
  window = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5 ** 2))
  window /= window.sum()
  c1, c2 = (0.01 * width) ** 2, (0.03 * width) ** 2
  out = np.zeros([x_hw.shape[0] - 10, x_hw.shape[1] - 10])
  for i in range(out.shape[0]):
    for j in range(out.shape[1]):
      x, y = x_hw[i:i + 11, j:j + 11], y_hw[i:i + 11, j:j + 11]
      mu_x, mu_y = np.sum(window * x), np.sum(window * y)
      var_x = np.sum(window * (x - mu_x) ** 2)
      var_y = np.sum(window * (y - mu_y) ** 2)
      cov = np.sum(window * (x - mu_x) * (y - mu_y))
      out[i, j] = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
          (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
  return out


def test_ssim_matches_a_direct_double_loop():
  rng = np.random.default_rng(2)
  x = rng.uniform(-1, 1, [1, 13, 13, 1])
  y = np.clip(x + 0.3 * rng.normal(size=x.shape), -1, 1)
  expected = _slow_ssim_map(x[0, ..., 0], y[0, ..., 0], 2.0)
  np.testing.assert_allclose(M.ssim_map(x, y)[0, ..., 0], expected, rtol=1e-10)
  assert M.ssim(x, y) == pytest.approx([expected.mean()])
  # Channels are measured separately and averaged.
  x3, y3 = np.concatenate([x, -x], -1), np.concatenate([y, -x], -1)
  assert M.ssim(x3, y3) == pytest.approx([(expected.mean() + 1.0) / 2])


# ---------------------------------------------------------------- spectrograms

def test_spectrogram_l1_per_example():
  reference = np.array([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])[..., None]
  reconstruction = np.array([[[1.0, 0.0], [3.0, 5.0]], [[1.0, -1.0], [1.0, 1.0]]])[..., None]
  # |0| + |2| + |0| + |1| = 3 over 4 bins; then 4 ones over 4 bins.
  assert M.spectrogram_l1(reference, reconstruction) == pytest.approx([0.75, 1.0])


# ---------------------------------------------------------------- codebook usage

def test_codebook_usage_hand_computed():
  usage = M.codebook_usage(np.array([0, 0, 1, 1]), 4)
  assert usage.fraction_used == 0.5 and usage.codes_used == 2
  assert usage.perplexity == pytest.approx(2.0, abs=1e-12)  # two codes, equally often
  one_code = M.codebook_usage(np.full([2, 3], 5), 8)
  assert one_code.perplexity == 1.0 and one_code.fraction_used == 1 / 8
  assert M.codebook_usage(np.arange(16).reshape(4, 4), 16).perplexity == pytest.approx(16.0)
  # 3/4 and 1/4: exp(-(3/4 ln 3/4 + 1/4 ln 1/4)) = 4 / 3^(3/4).
  assert M.codebook_usage([[2, 2], [2, 7]], 8).perplexity == pytest.approx(4 / 3 ** 0.75)


@pytest.mark.parametrize("ids, bad", [([0, 4], "id 4"), ([-1, 2], "id -1")])
def test_codebook_usage_rejects_ids_outside_the_book(ids, bad):
  with pytest.raises(ValueError, match=bad):
    M.codebook_usage(np.array(ids), 4)


def test_codebook_usage_rejects_non_integer_ids():
  with pytest.raises(ValueError, match="integers"):
    M.codebook_usage(np.array([0.0, 1.0]), 4)


# ---------------------------------------------------------------- summary

def test_image_summary():
  ids = np.array([[0, 0, 1, 1], [0, 1, 0, 1]])  # 2 examples of 4 tokens
  out = M.summary("image", _constant(0.0, batch=2), _constant(0.2, batch=2), ids, 8)
  c1 = (0.01 * 2.0) ** 2
  assert out == pytest.approx({"psnr": 20.0, "ssim": c1 / (0.2 ** 2 + c1),
                               "codebook_usage": 2 / 8, "perplexity": 2.0,
                               "tokens_per_example": 4.0})


def test_audio_summary_takes_the_psnr_range_from_the_reference():
  reference = np.array([[[-3.0, 1.0], [0.0, 0.0]]])[..., None]  # range (-3, 1): peak 4
  reconstruction = np.array([[[-3.0, 9.0], [0.4, -0.4]]])[..., None]
  out = M.summary(M.TokenizerKind.AUDIO, reference, reconstruction, np.array([[3, 3, 3]]), 4)
  # L1 sees the 9.0 (|8| + 0.4 + 0.4 over 4 bins); PSNR clips it to 1.0: MSE 0.32 / 4 = 0.08.
  assert out == pytest.approx({"spectrogram_l1": 2.2, "psnr": 10 * math.log10(16 / 0.08),
                               "codebook_usage": 0.25, "perplexity": 1.0,
                               "tokens_per_example": 3.0})
  constant = M.summary("audio", np.zeros([1, 2, 2, 1]), np.ones([1, 2, 2, 1]), [[0]], 4)
  assert math.isnan(constant["psnr"]) and constant["spectrogram_l1"] == 1.0


def test_summary_rejects_an_unknown_kind():
  with pytest.raises(ValueError, match="unknown tokenizer kind 'video'"):
    M.summary("video", np.zeros([1, 2, 2, 1]), np.zeros([1, 2, 2, 1]), [[0]], 4)


# ---------------------------------------------------------------- report

def _write_curves(path):
  rows = [{"step": 100, "eval/psnr": 18.2, "eval/codebook_usage": 0.8, "loss": 1.0},
          {"step": 50, "loss": 2.0},  # a training row: no eval metric
          {"step": 200, "eval/psnr": 21.5, "eval/codebook_usage": 0.9}]
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  return str(path)


def test_upscale_factor():
  assert R.upscale_factor(128, 128) == 2  # the VQGAN's images: 256 px tiles
  assert R.upscale_factor(300, 200) == 2  # never less than 2
  assert R.upscale_factor(8, 8) == 32  # tiny images reach MIN_TILE_PX


def test_image_report(tmp_path):
  inputs = np.full([2, 8, 8, 3], -1.0)
  inputs[..., 0] = 1.0  # red inputs
  reconstructions = np.full([2, 8, 8, 3], -1.0)
  reconstructions[..., 2] = 5.0  # blue reconstructions (5.0 is shown as 1.0)
  measures = {"psnr": 12.5, "ssim": 0.25, "codebook_usage": 0.5}
  title = "step <100> & more"
  path = R.write_tokenizer_report(str(tmp_path / "out"), "image", inputs, reconstructions,
                                  measures, _write_curves(tmp_path / "eval.jsonl"), title=title)
  assert path == str(tmp_path / "out" / "index.html")
  page = open(path, encoding="utf-8").read()
  for name in measures:
    assert f"<td>{name}</td>" in page
  assert "reconstructions.png" in page and "curves.png" in page
  assert "step &lt;100&gt; &amp; more" in page and title not in page
  grid = Image.open(tmp_path / "out" / "reconstructions.png")
  tile = 8 * 32  # upscaled to MIN_TILE_PX
  assert grid.size == (2 * (tile + R.GAP_PX) + R.GAP_PX,
                       2 * (R.LABEL_PX + tile + R.GAP_PX) + R.GAP_PX)
  # Example 1's input tile sits above its reconstruction's.
  left = R.GAP_PX + (tile + R.GAP_PX) + tile // 2
  input_top = R.GAP_PX + R.LABEL_PX
  reconstruction_top = input_top + tile + R.GAP_PX + R.LABEL_PX
  assert grid.getpixel((left, input_top + tile // 2)) == (255, 0, 0)
  assert grid.getpixel((left, reconstruction_top + tile // 2)) == (0, 0, 255)
  curves = Image.open(tmp_path / "out" / "curves.png")  # two eval metrics, side by side
  assert curves.size == (2 * R.CURVE_PANEL_PX[0], R.CURVE_PANEL_PX[1])


def test_image_report_shows_at_most_16_examples_four_across(tmp_path):
  batch = np.zeros([20, 8, 8, 3])
  R.write_tokenizer_report(str(tmp_path), "image", batch, batch, {"psnr": 1.0})
  tile = 8 * 32
  assert Image.open(tmp_path / "reconstructions.png").size == (
      4 * (tile + R.GAP_PX) + R.GAP_PX, 4 * 2 * (R.LABEL_PX + tile + R.GAP_PX) + R.GAP_PX)
  assert not (tmp_path / "curves.png").exists()  # no jsonl given


def test_audio_report(tmp_path):
  rng = np.random.default_rng(3)
  inputs = rng.normal(size=[2, 20, 16, 1])
  path = R.write_tokenizer_report(str(tmp_path), "audio", inputs, inputs + 0.1,
                                  {"spectrogram_l1": 0.1, "perplexity": 3.0},
                                  eval_curve_jsonl=str(tmp_path / "missing.jsonl"))
  page = open(path, encoding="utf-8").read()
  assert "<td>spectrogram_l1</td>" in page and "<td>perplexity</td>" in page
  for i in range(2):
    assert f"spectrograms_{i:03d}.png" in page
    assert Image.open(tmp_path / f"spectrograms_{i:03d}.png").size == R.SPECTROGRAM_PAIR_PX
  assert not (tmp_path / "reconstructions.png").exists()
  assert not (tmp_path / "curves.png").exists() and "curves.png" not in page


def test_report_rejects_a_batch_of_the_wrong_kind(tmp_path):
  with pytest.raises(ValueError, match=r"audio inputs must be \[B, time, mel, 1\]"):
    R.write_tokenizer_report(str(tmp_path), "audio", np.zeros([2, 8, 8, 3]),
                             np.zeros([2, 8, 8, 3]), {})


def test_eval_curves_read_only_eval_metrics(tmp_path):
  curves = R.read_eval_curves(_write_curves(tmp_path / "eval.jsonl"))
  assert curves == {"eval/psnr": [(100.0, 18.2), (200.0, 21.5)],
                    "eval/codebook_usage": [(100.0, 0.8), (200.0, 0.9)]}
