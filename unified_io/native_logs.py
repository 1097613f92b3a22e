"""Native (C++) log lines written straight to file descriptor 2, held back around a block.

TensorFlow prints start-up lines while it is imported, and tf_text's SentencePiece writes
"normalizer.cc LOG(INFO) precompiled_charsmap is empty" whenever it loads a model: neither goes
through Python's logging. `held_stderr` points descriptor 2 at a temporary file for a block and
replays what was written without those lines (all the rest, and everything but SentencePiece's
INFO line if the block raised). The binaries use it through `unified_io.cli.quiet`; the data
layer around the tokenizer's model load (`unified_io.data.vocab`).
"""

import contextlib
import os
import re
import sys
import tempfile

# SentencePiece's own LOG(INFO) ("precompiled_charsmap is empty"): says nothing about a failure
# either, so it is dropped even when the block raised (the tokenizer is made while a pipeline is
# built).
_INFO_NOISE = re.compile(r"^\w+\.cc\(\d+\) LOG\(INFO\) ")
# C++ log lines of absl (TF, XLA: "I0000 00:00:17.. 123 file.cc:45] ..."), its notice before
# InitializeLog, TF's CPU-feature advice, and SentencePiece's INFO line.
_NOISE = re.compile(r"^([IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] |WARNING: All log messages "
                    r"before absl::InitializeLog|To enable the following instructions)|"
                    + _INFO_NOISE.pattern)


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
