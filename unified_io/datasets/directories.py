"""Where real datasets live, and reading them without ever downloading.

Two kinds of directory, both set by the user (gin, flags or environment), never fetched:
  * TFDS datasets (COCO, RefCOCO): prepared TFDS data under one `data_dir`:
      gin `tfds_data_dir.path = "/data/tfds"`, or seqio's override (what a `--tfds_data_dir` flag
      sets through `seqio.set_tfds_data_dir_override`), else TFDS's default (~/tensorflow_datasets).
  * Datasets shipped as JSON/CSV plus media files (VQAv2, Clotho, MSR-VTT, Alpaca): one folder
    each, `<root>/<name>` with gin `dataset_dir.root = "/data/raw"` (or $UIO2_DATA_DIR), or
    per dataset `dataset_dir.overrides = {"vqav2": "/elsewhere/vqa"}`.
Missing data raises `DatasetMissingError` naming the dataset and the directory searched, and
how to provide it, when the task's dataset is first read (registration never touches disk).
"""

import os
from typing import Mapping, Optional

import gin
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

DATA_DIR_ENV = "UIO2_DATA_DIR"


class DatasetMissingError(FileNotFoundError):
  """A dataset that is not where the configuration says it is (nothing is downloaded)."""


@gin.configurable
def tfds_data_dir(path: Optional[str] = None) -> Optional[str]:
  """The TFDS data_dir from gin; None: seqio's override (--tfds_data_dir), else TFDS's default."""
  return path


@gin.configurable
def dataset_dir(name: str, root: Optional[str] = None,
                overrides: Optional[Mapping[str, str]] = None) -> str:
  """The folder of a non-TFDS dataset: `overrides[name]`, else `<root or $UIO2_DATA_DIR>/<name>`."""
  if overrides and name in overrides:
    return overrides[name]
  root = root or os.environ.get(DATA_DIR_ENV)
  if not root:
    raise DatasetMissingError(
        f"dataset {name!r}: no data directory configured; set gin `dataset_dir.root` (the folder "
        f"holding {name}/), or `dataset_dir.overrides = {{{name!r}: '/path'}}`, or ${DATA_DIR_ENV}")
  return os.path.join(root, name)


def require_file(dataset: str, path: str, what: str) -> str:
  """`path` if it exists, else a DatasetMissingError saying which dataset needs it and why."""
  if not tf.io.gfile.exists(path):
    raise DatasetMissingError(
        f"dataset {dataset!r}: {what} not found at {path!r}. Nothing is downloaded: put the "
        f"dataset's files there (see the task module's docstring for the expected layout) or "
        f"point gin `dataset_dir.root` / `dataset_dir.overrides` at them")
  return path


class TfdsSource(seqio.TfdsDataSource):
  """A read-only TFDS source: never downloads; missing data is a clear `DatasetMissingError`.

  The data_dir is resolved when the data is read (so gin and flags set after import count).
  """

  def __init__(self, tfds_name: str, splits: Mapping[str, str], decoders=None):
    super().__init__(tfds_name=tfds_name, splits=splits, decoders=decoders, read_only=True)

  def num_input_examples(self, split: str) -> Optional[int]:
    # Unknown (None) when the split sizes are not recorded, e.g. under tfds.testing.mock_data.
    if tfds_data_dir() is not None:  # as get_dataset does: read the directory in effect now
      self.tfds_dataset.override_data_dir(tfds_data_dir())
    try:
      return super().num_input_examples(split)
    except KeyError:
      return None

  def get_dataset(self, split: str = tfds.Split.TRAIN, shuffle: bool = True,
                  seed: Optional[int] = None, shard_info=None, **kwargs) -> tf.data.Dataset:
    if tfds_data_dir() is not None:
      self.tfds_dataset.override_data_dir(tfds_data_dir())
    data_dir = self.tfds_dataset.data_dir
    try:
      return super().get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info,
                                 **kwargs)
    except (AssertionError, FileNotFoundError, tfds.core.DatasetNotFoundError,
            tf.errors.NotFoundError) as e:
      where = data_dir or "TFDS's default data_dir (~/tensorflow_datasets)"
      raise DatasetMissingError(
          f"TFDS dataset {self.tfds_dataset.name!r} (split {split!r}) is not prepared in {where}. "
          f"Nothing is downloaded here: prepare it there first (e.g. `tfds build "
          f"{self.tfds_dataset.name} --data_dir=...` with the raw files in place) and set gin "
          f"`tfds_data_dir.path` (or --tfds_data_dir) to that folder. TFDS said: {e}") from e
