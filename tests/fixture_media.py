"""Tiny media files for data tests: images (PIL), WAVs (scipy), MP4s (PyAV), JSONL manifests."""

import json
import pathlib
from typing import Iterable, Mapping, Sequence, Tuple

import numpy as np


def write_image(path: pathlib.Path, size_hw: Tuple[int, int] = (24, 32), color=(200, 30, 30)
                ) -> pathlib.Path:
  from PIL import Image
  path.parent.mkdir(parents=True, exist_ok=True)
  array = np.zeros(size_hw + (3,), np.uint8)
  array[...] = color
  array[: size_hw[0] // 2, : size_hw[1] // 2] = 255 - np.asarray(color, np.uint8)
  Image.fromarray(array).save(path)
  return path


def write_wav(path: pathlib.Path, seconds: float = 0.5, rate: int = 22050, hz: float = 440.0
              ) -> pathlib.Path:
  from scipy.io import wavfile
  path.parent.mkdir(parents=True, exist_ok=True)
  t = np.arange(int(seconds * rate)) / rate
  wavfile.write(path, rate, (0.3 * np.sin(2 * np.pi * hz * t) * 32767).astype(np.int16))
  return path


def write_video(path: pathlib.Path, num_frames: int = 6, size_hw: Tuple[int, int] = (32, 48),
                fps: int = 6) -> pathlib.Path:
  """A silent MPEG-4 clip; num_frames=0 writes just the container header (a zero-frame video)."""
  import av
  path.parent.mkdir(parents=True, exist_ok=True)
  with av.open(str(path), "w") as container:
    stream = container.add_stream("mpeg4", rate=fps)
    stream.height, stream.width = size_hw
    stream.pix_fmt = "yuv420p"
    container.start_encoding()  # writes the header even when no frame follows
    for i in range(num_frames):
      array = np.full(size_hw + (3,), (40 * i) % 256, np.uint8)
      frame = av.VideoFrame.from_ndarray(array, format="rgb24")
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode(None):
      container.mux(packet)
  return path


def write_garbage(path: pathlib.Path, data: bytes = b"this is not a media file") -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  return path


def write_jsonl(path: pathlib.Path, lines: Iterable[Mapping]) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(line) + "\n" for line in lines))
  return path


def write_vqa_v2(root: pathlib.Path, answers_by_image: Mapping[int, Sequence[str]],
                 size_hw: Tuple[int, int] = (20, 20)) -> pathlib.Path:
  """VQAv2's validation files in their release layout under `root` (the vqav2 folder): one
  question per image id (question id 10 x the image id) with its human answers, the first of them
  the multiple-choice answer, and a JPEG per image."""
  for image_id in answers_by_image:
    write_image(root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg", size_hw)
  (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({"questions": [
      {"image_id": i, "question": f"What is {i}?", "question_id": 10 * i}
      for i in answers_by_image]}))
  (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": [
      {"question_id": 10 * i, "image_id": i, "multiple_choice_answer": answers[0],
       "answers": [{"answer": a, "answer_id": j} for j, a in enumerate(answers)]}
      for i, answers in answers_by_image.items()]}))
  return root
