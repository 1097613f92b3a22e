"""VQAv2 from the official question/annotation JSON files and COCO images in a folder.

TFDS has no maintained VQAv2 builder, so this reads the files as released (visualqa.org), through
the same record machinery as JSONL manifests (`unified_io.datasets.manifest`): python reads the JSON,
media are decoded in tf.data, bad records are skipped and counted (or raise in strict mode).

Layout of `dataset_dir("vqav2")` (gin `dataset_dir.root`, see `unified_io.datasets.directories`):
  v2_OpenEnded_mscoco_train2014_questions.json   {"questions": [{"image_id", "question",
  v2_OpenEnded_mscoco_val2014_questions.json                      "question_id"}, ...]}
  v2_mscoco_train2014_annotations.json           {"annotations": [{"question_id",
  v2_mscoco_val2014_annotations.json               "multiple_choice_answer", "answers":
                                                    [{"answer": ...} x 10], ...}, ...]}
  train2014/COCO_train2014_000000000009.jpg      COCO images, named as COCO names them
  val2014/COCO_val2014_000000000042.jpg

Task vqa_v2 (train / validation): image + question -> the most common answer
(`multiple_choice_answer`, the usual training target); meta/answers holds the ten human answers for
the VQA accuracy metric (the official evaluation's), meta/question_id the id. test2015 has no
public answers, so no test split.
"""

import json
import os
from typing import Iterator

import seqio
import tensorflow as tf

from unified_io.data import bad_input
from unified_io.datasets import manifest
from unified_io.data import prompts
from unified_io.datasets.directories import dataset_dir, require_file
from unified_io.evaluation import metric_fns
from unified_io.evaluation import postprocessors

NAME = "vqav2"
SPLITS = {"train": "train2014", "validation": "val2014"}


def questions_path(root: str, coco_split: str) -> str:
  return os.path.join(root, f"v2_OpenEnded_mscoco_{coco_split}_questions.json")


def annotations_path(root: str, coco_split: str) -> str:
  return os.path.join(root, f"v2_mscoco_{coco_split}_annotations.json")


def image_path(root: str, coco_split: str, image_id: int) -> str:
  return os.path.join(root, coco_split, f"COCO_{coco_split}_{int(image_id):012d}.jpg")


def _load_json(path: str):
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def check_files(split: str) -> None:
  root, coco_split = dataset_dir(NAME), SPLITS[split]
  require_file(NAME, questions_path(root, coco_split), "questions JSON")
  require_file(NAME, annotations_path(root, coco_split), "annotations JSON")
  require_file(NAME, os.path.join(root, coco_split), "COCO image folder")


def vqa_records(split: str) -> Iterator[manifest.Record]:
  """One record per question: image path, question, answer, the ten answers."""
  root, coco_split = dataset_dir(NAME), SPLITS[split]
  questions = _load_json(questions_path(root, coco_split))
  annotations = _load_json(annotations_path(root, coco_split))
  by_question = {a["question_id"]: a for a in annotations["annotations"]}
  for q in questions["questions"]:
    annotation = by_question.get(q["question_id"], {})
    yield {
        "text_inputs": q.get("question", ""),
        "text_targets": annotation.get("multiple_choice_answer", ""),
        "image": image_path(root, coco_split, q["image_id"]),
        "id": str(q["question_id"]),
        "source": f"{questions_path(root, coco_split)}#question_id={q['question_id']}",
        "meta/answers": [a["answer"] for a in annotation.get("answers", [])],
        "meta/question_id": str(q["question_id"]),
    }


@seqio.map_over_dataset(num_seeds=1)
def question_prompt(ex, seed):
  """The question goes into a VQA prompt template (kept verbatim in meta/question)."""
  question = ex["text_inputs"]
  problem = bad_input.first_problem(ex[bad_input.PROBLEM_KEY], bad_input.problem_if(
      bad_input.nonempty_text(question), bad_input.EMPTY_TEXT, "question", ex["meta/source"]))
  return {**ex, "meta/question": question, bad_input.PROBLEM_KEY: problem,
          "text_inputs": prompts.sample_prompt("vqa", seed, question)}


manifest.add_records_task(
    "vqa_v2", vqa_records, SPLITS, media=("image",),
    meta_fields={"answers": 1, "question_id": 0}, preprocessors=[question_prompt],
    check_fn=check_files, postprocess_fn=postprocessors.vqa_answers,
    metric_fns=[metric_fns.vqa_accuracy])
