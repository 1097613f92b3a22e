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

import contextlib
import importlib
import logging
import os
import re
import sys
import tempfile


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


# C++ log lines of absl (TF, XLA: "I0000 00:00:17.. 123 file.cc:45] ..."), its notice before
# InitializeLog, TF's CPU-feature advice, SentencePiece's own LOG(INFO).
_NOISE = re.compile(r"^([IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] |WARNING: All log messages "
                    r"before absl::InitializeLog|To enable the following instructions|"
                    r"\w+\.cc\(\d+\) LOG\(INFO\) )")
# SentencePiece's INFO line ("precompiled_charsmap is empty") says nothing about a failure either:
# dropped even when the block raised (the tokenizer is made while a pipeline is built).
_INFO_NOISE = re.compile(r"^\w+\.cc\(\d+\) LOG\(INFO\) ")


@contextlib.contextmanager
def held_stderr(verbose: bool):
  """File descriptor 2 goes to a temporary file inside the block (unless `verbose`); then what
  was written there is replayed on stderr, without the known start-up noise (`_NOISE`) when the
  block succeeded, all of it but SentencePiece's INFO line when it raised."""
  if verbose:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    failed = False
    try:
      yield
    except BaseException:
      failed = True
      raise
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      lines = held.read().decode(errors="replace").splitlines(keepends=True)
      sys.stderr.write("".join(l for l in lines if not _INFO_NOISE.match(l)
                               and (failed or not _NOISE.match(l))))
      sys.stderr.flush()
