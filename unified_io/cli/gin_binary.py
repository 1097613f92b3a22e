"""What `uio2-eval` and `uio2-infer` share: gin flags, task registration, one-line errors."""

import sys
from typing import Callable, Optional, Sequence

from unified_io import gin_required
from unified_io.cli import gin_flags, quiet


def _without_gin_context(exc: BaseException) -> str:
  """The message without the "In call to configurable ..." line gin appends."""
  return str(exc).split("\n  In call to configurable")[0]


def run_gin_binary(prog: str, description: str, entry: Callable[[], Callable],
                   argv: Optional[Sequence[str]] = None) -> int:
  """Parses the gin flags, registers every task, then calls the gin-configured `entry()()`.

  Exit status: 0 done, 2 a configuration or input the binary cannot use (one line on stderr).
  """
  args, bindings = gin_flags.parse(gin_flags.make_parser(description), argv)
  quiet.start(args.verbose)  # (before TensorFlow and JAX are imported)
  quiet.import_tensorflow(args.verbose)
  gin_flags.initialize_distributed(args)  # (before anything touches a JAX backend)
  import seqio  # pylint: disable=import-outside-toplevel
  if args.tfds_data_dir:
    seqio.set_tfds_data_dir_override(args.tfds_data_dir)
  import unified_io.tasks  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  from unified_io.evaluation import run_loader  # pylint: disable=import-outside-toplevel
  from unified_io.tasks import manifest  # pylint: disable=import-outside-toplevel
  try:
    gin_flags.parse_gin(args.gin_file, bindings, args.gin_search_paths)
    gin_flags.bind_tfds_data_dir(args.tfds_data_dir)  # (wins over the run's saved directory)
    manifest.register_configured_manifests()
    entry()()
  except (FileNotFoundError, gin_required.GinRequiredError, run_loader.RunLoadError) as exc:
    print(f"{prog}: {_without_gin_context(exc)}", file=sys.stderr)
    return 2
  except ValueError as exc:  # unknown task, a split the task lacks, a model without the target
    print(f"{prog}: {_without_gin_context(exc)}", file=sys.stderr)
    return 2
  return 0
