"""Clotho (v2) audio captioning from its caption CSVs and audio files in a folder.

Clotho ships as CSV + WAV/FLAC (zenodo.org/record/4783391), no TFDS builder, so it is read through
the record machinery of `unified_io.datasets.manifest`: audio decoded with PyAV to 16 kHz mono, bad
files skipped and counted (or raised on in strict mode). Nothing is downloaded.

Layout of `dataset_dir("clotho")` (gin `dataset_dir.root`, see `unified_io.datasets.directories`):
  clotho_captions_development.csv   header: file_name,caption_1,caption_2,...,caption_5
  clotho_captions_validation.csv
  clotho_captions_evaluation.csv
  development/<file_name>            the audio files the CSV names
  validation/<file_name>
  evaluation/<file_name>

Task clotho_captions (train = development, validation, test = evaluation): audio -> one of its
five captions, drawn per example; meta/captions holds all five, meta/file_name the clip. Scored
by BLEU-4 and CIDEr-D against all five (SPICE / SPIDEr need Java and are not provided).
"""

import csv
import os
from typing import Iterator

import seqio
import tensorflow as tf

from unified_io.datasets import manifest
from unified_io.data import prompts
from unified_io.datasets.directories import dataset_dir, require_file
from unified_io.evaluation import metric_fns
from unified_io.evaluation import postprocessors

NAME = "clotho"
SPLITS = {"train": "development", "validation": "validation", "test": "evaluation"}


def captions_csv(root: str, clotho_split: str) -> str:
  return os.path.join(root, f"clotho_captions_{clotho_split}.csv")


def check_files(split: str) -> None:
  root, clotho_split = dataset_dir(NAME), SPLITS[split]
  require_file(NAME, captions_csv(root, clotho_split), "captions CSV")
  require_file(NAME, os.path.join(root, clotho_split), "audio folder")


def clotho_records(split: str) -> Iterator[manifest.Record]:
  root, clotho_split = dataset_dir(NAME), SPLITS[split]
  path = captions_csv(root, clotho_split)
  with tf.io.gfile.GFile(path) as f:
    for number, row in enumerate(csv.DictReader(f), start=2):
      captions = [row[k] for k in sorted(row) if k and k.startswith("caption") and row[k]]
      file_name = row.get("file_name") or ""
      yield {
          "audio": os.path.join(root, clotho_split, file_name) if file_name else "",
          "id": file_name,
          "source": f"{path}:{number}",
          "meta/captions": captions,
          "meta/file_name": file_name,
      }


@seqio.map_over_dataset(num_seeds=1)
def pick_caption(ex, seed):
  """Prompt from the dictionary; target: one of the captions (empty if none: flagged later)."""
  captions = ex["meta/captions"]
  seeds = tf.random.experimental.stateless_split(seed, 2)
  index = tf.random.stateless_uniform([], seeds[0], 0, tf.maximum(tf.size(captions), 1), tf.int32)
  target = tf.cond(tf.size(captions) > 0, lambda: captions[index], lambda: tf.constant(""))
  return {**ex, "text_inputs": prompts.sample_prompt("audio_caption", seeds[1]),
          "text_targets": target}


manifest.add_records_task(
    "clotho_captions", clotho_records, SPLITS, media=("audio",),
    meta_fields={"captions": 1, "file_name": 0}, preprocessors=[pick_caption],
    check_fn=check_files, postprocess_fn=postprocessors.captions,
    metric_fns=metric_fns.CAPTIONING)
