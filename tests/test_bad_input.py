"""Bad input: skipped and counted by default, a clear error naming file and field in strict mode.

  python -m pytest -q tests/test_bad_input.py
"""

import re

import gin
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from fixture_media import write_garbage, write_image, write_jsonl, write_video, write_wav
from test_manifest import fresh_name, small_sizes, stage1  # noqa: F401  (fixture)
from test_real_datasets import hand_made, picture
from unified_io.data import bad_input
from unified_io.datasets import manifest
import unified_io.tasks  # noqa: F401  (registers coco_detection)


def _good_files(root):
  write_image(root / "good.png")
  write_wav(root / "good.wav", seconds=0.2)
  write_video(root / "good.mp4", num_frames=3)


# case -> (media of the task, the bad line, reason, field, file name in the message)
CASES = {
    "corrupt_image": (("image",), {"image": "broken.png", "target": "t"}, "image", "broken.png"),
    "unreadable_audio": (("audio",), {"audio": "broken.wav", "target": "t"}, "audio", "broken.wav"),
    "empty_video": (("video",), {"video": "empty.mp4", "target": "t"}, "video", "empty.mp4"),
    "empty_text": (("image",), {"image": "good.png", "target": "  "}, "text_targets", "m.jsonl:2"),
    "missing_file": (("image",), {"image": "gone.png", "target": "t"}, "image", "gone.png"),
    "missing_field": (("audio",), {"target": "t"}, "audio", "m.jsonl:2"),
    "bad_manifest_line": (("image",), "{not json", "line", "m.jsonl:2"),
}
GOOD = {"image": "good.png", "audio": "good.wav", "video": "good.mp4"}


def manifest_task(tmp_path, case: str) -> str:
  media, bad_line, _, _ = CASES[case]
  _good_files(tmp_path)
  write_garbage(tmp_path / "broken.png", b"\x89PNG\r\n\x1a\n truncated")
  write_garbage(tmp_path / "broken.wav", b"RIFF\x00\x00 not really a wave file")
  write_video(tmp_path / "empty.mp4", num_frames=0)
  good_line = {**{k: GOOD[k] for k in media}, "target": "fine"}
  path = write_jsonl(tmp_path / "m.jsonl", [good_line, {}])
  lines = path.read_text().splitlines()
  lines[1] = bad_line if isinstance(bad_line, str) else __import__("json").dumps(bad_line)
  path.write_text("\n".join(lines) + "\n")
  name = fresh_name(f"test_bad_{case}")
  manifest.add_manifest_task(name, {"train": str(path)}, media=media, num_video_frames=2)
  return name


@pytest.mark.parametrize("case", sorted(CASES))
def test_manifest_bad_input_is_skipped_and_counted(tmp_path, case):
  name = manifest_task(tmp_path, case)
  examples = stage1(name)
  assert [e["text_targets"] for e in examples] == [b"fine"]
  assert bad_input.counts() == {f"{name}/{case}": 1}


@pytest.mark.parametrize("case", sorted(CASES))
def test_manifest_bad_input_raises_in_strict_mode(tmp_path, case):
  name = manifest_task(tmp_path, case)
  _, _, field, file = CASES[case]
  with bad_input.strict_mode(), pytest.raises(tf.errors.OpError) as error:
    stage1(name)
  message = str(error.value)
  assert "BadInputError" in message and case in message and name in message
  assert re.search(rf"field '{re.escape(field)}[^']*'.*{re.escape(file)}", message), message
  assert bad_input.counts() == {}


def _detection_examples():
  good = {"image": picture(20, 20), "image/filename": tf.constant("ok.jpg"),
          "image/id": tf.constant(1, tf.int64),
          "objects": {"bbox": tf.constant([[0.1, 0.1, 0.4, 0.4]]),
                      "label": tf.constant([3], tf.int64), "area": tf.constant([1], tf.int64),
                      "id": tf.constant([1], tf.int64), "is_crowd": tf.constant([False])}}
  outside = {**good, "image/filename": tf.constant("outside.jpg"),
             "objects": {**good["objects"], "bbox": tf.constant([[0.5, -0.4, 0.9, 0.3]])}}
  return [good, outside]


def test_boxes_outside_the_image(tmp_path):
  with tfds.testing.mock_data(as_dataset_fn=hand_made(_detection_examples())):
    assert len(stage1("coco_detection")) == 1
    assert bad_input.counts() == {"coco_detection/boxes_outside_image": 1}
    with gin.unlock_config():  # the gin route to strict mode
      gin.bind_parameter("bad_input.strict", True)
    try:
      with pytest.raises(tf.errors.OpError, match=r"field 'objects/bbox' in file 'outside.jpg'"):
        stage1("coco_detection")
    finally:
      with gin.unlock_config():
        gin.bind_parameter("bad_input.strict", False)


def test_graph_checks():
  assert bool(bad_input.nonempty_text(tf.constant(" a ")))
  assert not bool(bad_input.nonempty_text(tf.constant(" \n")))
  inside = tf.constant([[0.0, 0.0, 10.0, 20.0]])
  assert bool(bad_input.boxes_inside(inside, 10, 20))
  assert not bool(bad_input.boxes_inside(inside, 10, 19))  # x2 beyond the width
  assert not bool(bad_input.boxes_inside(tf.constant([[5.0, 0, 4, 1]]), 10, 10))  # y2 < y1
  assert not bool(bad_input.boxes_inside(tf.constant([[float("nan"), 0, 4, 1]]), 10, 10))
  assert bool(bad_input.boxes_inside(tf.zeros([0, 4]), 10, 10))  # no boxes: nothing wrong
  problem = bad_input.first_problem("", bad_input.problem_if(False, "r1", "f1", "x"),
                                    bad_input.problem_if(False, "r2", "f2"))
  assert problem.numpy().decode().split(bad_input.SEPARATOR) == ["r1", "f1", "x"]


def test_examples_without_a_problem_field_pass_through():
  ds = tf.data.Dataset.from_tensor_slices({"text_inputs": ["a", "b"]})
  assert len(list(bad_input.skip_bad_examples(ds, "t"))) == 2
