"""Start-up noise kept off the console: a successful run prints only what the binary says.

TensorFlow (seqio's data), XLA and orbax log on their own: TF's C++ writes "All log messages
before absl::InitializeLog()", oneDNN and CUDA-probe lines straight to file descriptor 2 while it
is imported, later C++ logs of TF and XLA go through TF_CPP_MIN_LOG_LEVEL (read when jaxlib and TF
are imported), orbax warns through absl's Python logger on every restore of a checkpoint written
without its metadata file, and tf_text's SentencePiece writes "normalizer.cc LOG(INFO)" to file
descriptor 2 whenever it builds a tokenizer. Unless `--verbose` is given, each binary calls
`start` before anything imports JAX, `import_tensorflow` once its arguments are parsed, and holds
file descriptor 2 (`held_stderr`) around synchronous pipeline work: what is held is replayed
without those lines, and all of it when the block raises.
"""

import importlib
import logging
import os

from unified_io import native_logs

# (the holding itself lives below the binaries, where the data layer can use it too)
held_stderr = native_logs.held_stderr


def start(verbose: bool) -> None:
  """Quiet logging unless `verbose` (then TF, XLA and absl log as they do by default)."""
  if verbose:
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's and XLA's C++ logs
  logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's and TF's Python warnings


def import_tensorflow(verbose: bool) -> None:
  """Imports TensorFlow with its start-up lines held back (`held_stderr`) unless `verbose`."""
  with held_stderr(verbose):
    importlib.import_module("tensorflow")
