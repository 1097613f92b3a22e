"""MSR-VTT video captioning and MSRVTT-QA from their JSON files and the MP4s in a folder.

No TFDS builder exists for either; they are read through the record machinery of
`unified_io.datasets.manifest`: PyAV decodes evenly spaced frames (image_history) and the matching
audio segments (audio_history; silence for a silent clip), bad videos are skipped and counted (or
raised on in strict mode). Nothing is downloaded.

Layout of `dataset_dir("msrvtt")` (gin `dataset_dir.root`, see `unified_io.datasets.directories`):
  videos/video0.mp4 ... videos/video9999.mp4
  train_val_videodatainfo.json   {"videos": [{"video_id": "video0", "split": "train"}, ...],
                                  "sentences": [{"video_id": "video0", "caption": ...}, ...]}
                                 (the MSR-VTT release; test_videodatainfo.json likewise for test)
  train_qa.json, val_qa.json, test_qa.json
                                 MSRVTT-QA: [{"video_id": 0, "question": ..., "answer": ...,
                                 "id": ...}, ...]

Tasks:
  msrvtt_captions (train / validation / test): video -> one of its captions (drawn per example);
                  meta/captions holds them all (20 per video); scored by BLEU-4 and CIDEr-D
                  against all of them.
  msrvtt_qa       (train / validation / test): video + question -> answer; meta/answer; scored
                  by accuracy (exact match after lowercasing and collapsing whitespace).
"""

import json
import os
from typing import Iterator, Mapping

import seqio
import tensorflow as tf

from unified_io.data import bad_input
from unified_io.datasets import manifest
from unified_io.data import prompts
from unified_io.datasets.directories import dataset_dir, require_file
from unified_io.evaluation import metric_fns
from unified_io.evaluation import postprocessors

NAME = "msrvtt"
NUM_FRAMES = 8  # the release's history length
CAPTION_FILES = {"train": "train_val_videodatainfo.json",
                 "validation": "train_val_videodatainfo.json", "test": "test_videodatainfo.json"}
CAPTION_SPLITS = {"train": "train", "validation": "validate", "test": "test"}
QA_FILES = {"train": "train_qa.json", "validation": "val_qa.json", "test": "test_qa.json"}
MEDIA = ("video",)


def video_path(root: str, video_id) -> str:
  name = str(video_id)  # "video7" in MSR-VTT's info files, 7 in MSRVTT-QA's
  name = name if name.startswith("video") else f"video{name}"
  return os.path.join(root, "videos", f"{name}.mp4")


def _load_json(path: str):
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def _checker(files: Mapping[str, str], what: str):
  def check(split: str) -> None:
    root = dataset_dir(NAME)
    require_file(NAME, os.path.join(root, files[split]), what)
    require_file(NAME, os.path.join(root, "videos"), "video folder")
  return check


def caption_records(split: str) -> Iterator[manifest.Record]:
  """One record per video of the split, with all of its captions."""
  root = dataset_dir(NAME)
  path = os.path.join(root, CAPTION_FILES[split])
  info = _load_json(path)
  captions = {}
  for sentence in info.get("sentences", []):
    captions.setdefault(sentence["video_id"], []).append(sentence["caption"])
  for video in info.get("videos", []):
    if video.get("split") != CAPTION_SPLITS[split]:
      continue
    video_id = video["video_id"]
    yield {"video": video_path(root, video_id), "id": video_id,
           "source": f"{path}#{video_id}", "meta/captions": captions.get(video_id, [])}


def qa_records(split: str) -> Iterator[manifest.Record]:
  root = dataset_dir(NAME)
  path = os.path.join(root, QA_FILES[split])
  for number, qa in enumerate(_load_json(path)):
    yield {"video": video_path(root, qa.get("video_id", "")), "id": str(qa.get("id", number)),
           "text_inputs": qa.get("question", ""), "text_targets": qa.get("answer", ""),
           "source": f"{path}#{number}", "meta/answer": qa.get("answer", "")}


@seqio.map_over_dataset(num_seeds=1)
def pick_caption(ex, seed):
  captions = ex["meta/captions"]
  seeds = tf.random.experimental.stateless_split(seed, 2)
  index = tf.random.stateless_uniform([], seeds[0], 0, tf.maximum(tf.size(captions), 1), tf.int32)
  target = tf.cond(tf.size(captions) > 0, lambda: captions[index], lambda: tf.constant(""))
  return {**ex, "text_inputs": prompts.sample_prompt("video_caption", seeds[1]),
          "text_targets": target}


@seqio.map_over_dataset(num_seeds=1)
def question_prompt(ex, seed):
  question = ex["text_inputs"]
  problem = bad_input.first_problem(ex[bad_input.PROBLEM_KEY], bad_input.problem_if(
      bad_input.nonempty_text(question), bad_input.EMPTY_TEXT, "question", ex["meta/source"]))
  return {**ex, "meta/question": question, bad_input.PROBLEM_KEY: problem,
          "text_inputs": prompts.sample_prompt("video_qa", seed, question)}


manifest.add_records_task(
    "msrvtt_captions", caption_records, CAPTION_SPLITS, media=MEDIA, meta_fields={"captions": 1},
    num_video_frames=NUM_FRAMES, preprocessors=[pick_caption],
    check_fn=_checker(CAPTION_FILES, "video/caption info JSON"),
    postprocess_fn=postprocessors.captions, metric_fns=metric_fns.CAPTIONING)

manifest.add_records_task(
    "msrvtt_qa", qa_records, QA_FILES, media=MEDIA, meta_fields={"answer": 0},
    num_video_frames=NUM_FRAMES, preprocessors=[question_prompt],
    check_fn=_checker(QA_FILES, "MSRVTT-QA JSON"),
    postprocess_fn=postprocessors.answer, metric_fns=[metric_fns.exact_match])
