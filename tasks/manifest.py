"""User datasets as JSONL manifests, registered without writing code.

Either name them in a JSON spec file and point $UIO2_MANIFEST_TASKS at it before the tasks are
imported:

  {"my_sounds": {"splits": {"train": "/data/sounds/train.jsonl",
                            "validation": "/data/sounds/val.jsonl"},
                 "task_kind": "audio_caption"}}

or bind them in gin and call `register_configured_manifests()` after gin is parsed (the binaries
do; from python, `unified_io.datasets.manifest.add_manifest_task` is the direct route):

  register_configured_manifests.tasks = {"my_sounds": {"splits": {"train": "/data/train.jsonl"}}}

Per task: "splits" ({split: path or [paths]}), optional "media" (list of image / audio / video /
target_image / target_audio / target_depth / target_normals / target_segmentation; default: those
of the first line), "meta_fields" ({name: 0 or 1}), "task_kind", "num_video_frames",
"video_audio", and for dense targets "depth_scale" (integer depth: metres = value / scale),
"max_depth", "num_classes". The line format is in `unified_io.datasets.manifest`'s docstring.
"""

import json
import os
from typing import Any, Dict, List, Mapping, Optional

import gin

from unified_io.datasets import manifest

SPEC_ENV = "UIO2_MANIFEST_TASKS"
# (register_manifests lives with the manifests, so a run config can register them too)
register_manifests = manifest.register_manifests


def read_spec(path: str) -> Dict[str, Mapping[str, Any]]:
  if not os.path.exists(path):
    raise manifest.ManifestError(f"${SPEC_ENV} names {path!r}, which does not exist")
  with open(path) as f:
    return json.load(f)


@gin.configurable
def register_configured_manifests(tasks: Optional[Mapping[str, Mapping[str, Any]]] = None
                                  ) -> List[str]:
  """Registers the manifests bound in gin (`register_configured_manifests.tasks`)."""
  return register_manifests(tasks or {})


if os.environ.get(SPEC_ENV):
  register_manifests(read_spec(os.environ[SPEC_ENV]))
