"""The `%gin.REQUIRED` check of the library's gin-configured entry points (train, evaluate, infer).

gin hands a `%gin.REQUIRED` macro's sentinel to the function instead of failing, so each entry
point checks its arguments; the run gins name each macro after its argument in upper case.
"""

import gin


class GinRequiredError(ValueError):
  """A %gin.REQUIRED macro or argument was not given."""


def check_required(configurable: str, **values) -> None:
  """Raises `GinRequiredError` naming every argument still bound to gin.REQUIRED."""
  missing = [name for name, value in values.items() if value is gin.REQUIRED]
  if missing:
    macros = ", ".join(name.upper() for name in missing)
    example = missing[0].upper()
    raise GinRequiredError(
        f"required gin values missing for `{configurable}`: {macros} "
        f"({', '.join(f'{configurable}.{m}' for m in missing)}). Bind them on the command line, "
        f"e.g. --gin.{example}=..., or in a --gin_file (the run gins list their %gin.REQUIRED "
        "macros in their header).")
