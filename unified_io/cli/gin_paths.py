"""Where the shipped gin files are, so `--gin_file=models/tiny.gin` works from any directory."""

import os

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # unified_io/


def gin_dir() -> str:
  """unified_io/gin in an installed wheel; <checkout>/gin for a source tree or editable install."""
  for candidate in (os.path.join(_PACKAGE, "gin"), os.path.join(os.path.dirname(_PACKAGE), "gin")):
    if os.path.isdir(os.path.join(candidate, "models")):
      return candidate
  raise FileNotFoundError(f"no gin/ folder next to {_PACKAGE}; reinstall the package")
