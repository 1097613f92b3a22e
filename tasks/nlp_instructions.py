"""An instruction-following text set: Alpaca-style JSON (a list) or JSONL, from a path.

Each item is {"instruction": ..., "input": ..., "output": ...} (Stanford Alpaca's
`alpaca_data.json`; FLAN-style exports with "inputs"/"targets" are accepted too). The prompt is
the instruction, followed by the input after a blank line when there is one, in a
"text_instruction" template; the target is the output. Pure text, read through the record
machinery of `unified_io.datasets.manifest`, so empty instructions or outputs are skipped and counted
like any other bad input.

Files: gin `instruction_files.paths = {"train": "/data/alpaca/alpaca_data.json", ...}`; by default
`dataset_dir("alpaca")/alpaca_data.json` for train (Alpaca has no validation split; give one by
path if you hold one out). Task: nlp_instructions.
"""

import json
import os
from typing import Dict, Iterator, Mapping, Optional

import gin
import tensorflow as tf

from unified_io.datasets import manifest
from unified_io.datasets.directories import dataset_dir, require_file

NAME = "alpaca"
SPLITS = ("train", "validation")


@gin.configurable
def instruction_files(paths: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
  """{split: JSON or JSONL file}; default: train = <dataset_dir("alpaca")>/alpaca_data.json."""
  if paths:
    return dict(paths)
  return {"train": os.path.join(dataset_dir(NAME), "alpaca_data.json")}


def read_items(path: str):
  """A JSON list or JSONL file -> its items (JSONL lines that are not JSON give None)."""
  with tf.io.gfile.GFile(path) as f:
    text = f.read()
  if text.lstrip().startswith("["):
    yield from json.loads(text)
    return
  for line in text.splitlines():
    if line.strip():
      try:
        yield json.loads(line)
      except json.JSONDecodeError:
        yield None


def prompt_and_target(item) -> Dict[str, str]:
  if not isinstance(item, dict):
    return {"text_inputs": "", "text_targets": ""}
  instruction = str(item.get("instruction", item.get("inputs", ""))).strip()
  extra = str(item.get("input", "") or "").strip()
  prompt = f"{instruction}\n\n{extra}" if instruction and extra else instruction
  return {"text_inputs": prompt, "text_targets": str(item.get("output", item.get("targets", "")))}


def check_files(split: str) -> None:
  files = instruction_files()
  if split not in files:
    raise manifest.ManifestError(
        f"nlp_instructions: no file for split {split!r}; set gin instruction_files.paths "
        f"(have {sorted(files)})")
  require_file(NAME, files[split], f"{split} instructions file")


def instruction_records(split: str) -> Iterator[manifest.Record]:
  path = instruction_files()[split]
  for number, item in enumerate(read_items(path)):
    yield {**prompt_and_target(item), "id": str(number), "source": f"{path}#{number}"}


manifest.add_records_task(
    "nlp_instructions", instruction_records, SPLITS, media=(), task_kind="text_instruction",
    check_fn=check_files)
