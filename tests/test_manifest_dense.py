"""Dense targets from manifest files: depth, normals and segmentation drawn as image_targets.

  python -m pytest -q tests/test_manifest_dense.py
"""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fixture_media import write_image, write_jsonl
from test_manifest import fresh_name, small_sizes, stage1  # noqa: F401  (fixture)
from unified_io.data import bad_input, dense_labels
from unified_io.datasets import dense_files, manifest
from unified_io.tasks import manifest as manifest_tasks

H, W = 16, 16
RNG = np.random.default_rng(0)
DEPTH_MM = RNG.integers(0, 12000, (H, W)).astype(np.uint16)  # 0 = no depth; beyond max_depth too
DEPTH_M = RNG.uniform(0.5, 9.0, (H, W)).astype(np.float32)
DEPTH_M[0, :4] = np.nan
NORMALS = RNG.normal(size=(H, W, 3)).astype(np.float32)
NORMALS[1, :3] = 0.0
CLASSES = RNG.integers(0, 5, (H, W)).astype(np.uint8)
CLASSES[2, :5] = dense_labels.IGNORE_CLASS


def _png(path, array, mode: str):
  if mode == "P":  # a palette PNG: the pixels are the class ids, the palette only shows them
    image = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
    image.putpalette(dense_labels.PALETTE.reshape(-1).tolist())
  else:
    image = Image.fromarray(array)
  image.save(path)
  assert Image.open(path).mode == mode


@pytest.fixture
def files(tmp_path):
  write_image(tmp_path / "rgb.png", (H, W))
  _png(tmp_path / "depth.png", DEPTH_MM, "I;16")
  _png(tmp_path / "depth_small.png", DEPTH_MM[: H // 2], "I;16")  # 8x16
  _png(tmp_path / "depth8.png", (DEPTH_MM // 100).astype(np.uint8), "L")
  np.save(tmp_path / "depth.npy", DEPTH_M)
  np.save(tmp_path / "normals.npy", NORMALS)
  np.save(tmp_path / "normals_2ch.npy", NORMALS[..., :2])
  _png(tmp_path / "normals.png", dense_labels.encode_normals(NORMALS), "RGB")
  _png(tmp_path / "seg.png", CLASSES, "P")
  np.save(tmp_path / "seg.npy", CLASSES.astype(np.int16))
  bad = CLASSES.copy()
  bad[5, 5] = 7
  _png(tmp_path / "seg_bad.png", bad, "L")  # id 7 >= num_classes 5
  return tmp_path


def _task(tmp_path, lines, **options) -> str:
  path = write_jsonl(tmp_path / f"{fresh_name('m')}.jsonl",
                     [{"image": "rgb.png", "target": "", **line} for line in lines])
  name = fresh_name("test_manifest_dense")
  manifest.add_manifest_task(name, {"train": str(path)}, **options)
  return name


def test_dense_targets_are_drawn_with_dense_labels(files):
  # depth through the gin / $UIO2_MANIFEST_TASKS spec: integer PNGs scaled (a line's own scale
  # wins), float .npy in metres
  depth = write_jsonl(files / "depth.jsonl", [
      {"image": "rgb.png", "target_depth": "depth.png"},
      {"image": "rgb.png", "target_depth": "depth.png", "depth_scale": 500},
      {"image": "rgb.png", "target_depth": "depth.npy"}])
  depth_task = fresh_name("test_manifest_dense_depth")
  spec = {depth_task: {"splits": {"train": str(depth)}, "depth_scale": 1000, "max_depth": 5.0}}
  assert manifest_tasks.register_manifests(spec) == [depth_task]
  got = [e["image_targets"] for e in stage1(depth_task)]
  want = [dense_labels.encode_depth(DEPTH_MM / 1000, 5.0),
          dense_labels.encode_depth(DEPTH_MM / 500, 5.0), dense_labels.encode_depth(DEPTH_M, 5.0)]
  assert len(got) == 3 and all(np.array_equal(g, w) for g, w in zip(got, want))

  normals = _task(files, [{"target_normals": "normals.npy"}, {"target_normals": "normals.png"}])
  got = [e["image_targets"] for e in stage1(normals)]
  png = np.asarray(Image.open(files / "normals.png"))
  assert np.array_equal(got[0], dense_labels.encode_normals(NORMALS))
  assert np.array_equal(got[1], dense_labels.encode_normals(dense_labels.decode_normals(png)))

  seg = _task(files, [{"target_segmentation": "seg.png"}, {"target_segmentation": "seg.npy"}],
              num_classes=5)
  examples = stage1(seg)
  assert len(examples) == 2
  for example in examples:
    assert example["image_targets"].dtype == np.uint8
    assert np.array_equal(example["image_targets"], dense_labels.encode_segmentation(CLASSES, 5))
    assert example["image_inputs"].shape == (H, W, 3)
  assert bad_input.counts() == {}


# case -> (task options, the bad line, reason, what the problem's field says)
CASES = {
    "size_mismatch": ({"depth_scale": 1000}, {"target_depth": "depth_small.png"},
                      dense_files.DENSE_SIZE_MISMATCH, "target_depth (is 8x16 but image is 16x16)"),
    "depth16_unscaled": ({}, {"target_depth": "depth.png"}, dense_files.DEPTH_NEEDS_SCALE,
                         "target_depth (16-bit depth needs depth_scale)"),
    "depth8_unscaled": ({}, {"target_depth": "depth8.png"}, dense_files.DEPTH_NEEDS_SCALE,
                        "target_depth (8-bit depth needs depth_scale)"),
    "unknown_class": ({"num_classes": 5}, {"target_segmentation": "seg_bad.png"},
                      dense_files.UNKNOWN_CLASS, "target_segmentation (class id 7:"),
    "normals_shape": ({}, {"target_normals": "normals_2ch.npy"}, dense_files.BAD_DENSE_LABEL,
                      "target_normals (normals must be [H, W, 3], got shape (16, 16, 2))"),
    "two_targets": ({}, {"target_depth": "depth.npy", "target_image": "rgb.png"},
                    bad_input.BAD_MANIFEST_LINE, "target_depth (a line has one target image"),
}
GOOD = {"target_depth": "depth.npy", "target_normals": "normals.npy",
        "target_segmentation": "seg.npy"}


def _case_task(files, case: str) -> str:
  options, bad_line, _, _ = CASES[case]
  key = next(k for k in GOOD if k in bad_line)
  return _task(files, [{key: GOOD[key]}, bad_line], media=("image", key), **options)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_dense_labels_are_skipped_and_counted(files, case):
  name = _case_task(files, case)
  (example,) = stage1(name)
  assert example["image_targets"].shape == (H, W, 3)
  assert bad_input.counts() == {f"{name}/{CASES[case][2]}": 1}


@pytest.mark.parametrize("case", ["size_mismatch", "depth16_unscaled", "unknown_class"])
def test_bad_dense_labels_are_named_in_strict_mode(files, case):
  name = _case_task(files, case)
  _, bad_line, reason, field = CASES[case]
  with bad_input.strict_mode(), pytest.raises(tf.errors.OpError) as error:
    stage1(name)
  message = str(error.value)
  assert f"{reason} (field '{field}" in message and name in message, message
  assert f"{next(iter(bad_line.values()))}'" in message, message  # the file, quoted


def test_dense_options_are_checked_when_registering(files):
  with pytest.raises(manifest.ManifestError, match="one target image"):
    _task(files, [{"target_image": "rgb.png", "target_depth": "depth.npy"}])
  with pytest.raises(manifest.ManifestError, match="num_classes"):
    _task(files, [{"target_segmentation": "seg.npy"}], num_classes=300)
  with pytest.raises(manifest.ManifestError, match="depth_scale"):
    _task(files, [{"target_depth": "depth.png"}], depth_scale=0)
  with pytest.raises(manifest.ManifestError, match="max_depth"):
    manifest_tasks.register_manifests({fresh_name("x"): {
        "splits": {"train": "unused.jsonl"}, "media": ["target_depth"], "max_depth": -1}})
