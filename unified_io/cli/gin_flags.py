"""Command-line gin for our binaries, the way t5x users write it.

  --gin_file=runs/pretrain.gin        repeatable; found in --gin_search_paths, the package's gin/
                                      folder (always searched) or as a path
  --gin.MODEL_DIR="'/tmp/run'"        one binding; the value is a gin literal (strings quoted)
  --gin_bindings="TRAIN_STEPS=100"    repeatable, same effect
  --gin_search_paths=dir1,dir2
  --tfds_data_dir=DIR                 where TFDS datasets live (nothing is downloaded)
  --verbose                           show TensorFlow / XLA / orbax start-up logs (kept off the
                                      console by default: `unified_io.cli.quiet`)
A binding that nothing reads (a typo'd configurable, parameter or macro) or a value gin cannot
parse is a `GinFlagError`: one line naming it and, where one is close, what it may have meant.
Multi-host (see `initialize_distributed`):
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
  --cpu_collectives=gloo               collectives for CPU processes (tests, two-process runs)
"""

import argparse
import difflib
import logging
import os
import re
import sys
from typing import List, Optional, Sequence, Tuple

import gin

from unified_io.cli.gin_paths import gin_dir


def make_parser(description: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
  parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="one gin binding NAME=VALUE (repeatable)")
  parser.add_argument("--gin_search_paths", default="",
                      help="comma-separated folders to find --gin_file in")
  parser.add_argument("--tfds_data_dir", default=None, help="TFDS data directory (no downloads)")
  add_verbose_flag(parser)
  add_distributed_flags(parser)
  return parser


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--verbose", action="store_true",
                      help="show TensorFlow / XLA / orbax start-up logs and warnings")


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
  """The multi-host flags (`initialize_distributed` reads them; `parse` checks them)."""
  parser.add_argument("--coordinator_address", default=None,
                      help="multi-host: address of process 0, HOST:PORT")
  parser.add_argument("--num_processes", type=int, default=None, help="multi-host: processes")
  parser.add_argument("--process_id", type=int, default=None, help="multi-host: this process")
  parser.add_argument("--cpu_collectives", default=None, choices=("gloo", "mpi"),
                      help="collectives implementation for CPU devices across processes")


def split_gin_dot_flags(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
  """Pulls `--gin.NAME=VALUE` out of argv: (other args, bindings)."""
  rest, bindings = [], []
  for arg in argv:
    match = re.fullmatch(r"--gin\.([^=]+)=(.*)", arg, flags=re.S)
    if match:
      bindings.append(f"{match.group(1)}={match.group(2)}")
    else:
      rest.append(arg)
  return rest, bindings


def parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None):
  """argv -> (args, bindings); every --gin.X=V and --gin_bindings value is in `bindings`."""
  rest, bindings = split_gin_dot_flags(sys.argv[1:] if argv is None else argv)
  args = parser.parse_args(rest)
  check_distributed_flags(parser, args)
  return args, list(args.gin_bindings) + bindings


def check_distributed_flags(parser: argparse.ArgumentParser, args) -> None:
  """The three multi-host flags come together (exits with status 2 naming what is missing)."""
  given = {"--coordinator_address": getattr(args, "coordinator_address", None),
           "--num_processes": getattr(args, "num_processes", None),
           "--process_id": getattr(args, "process_id", None)}
  if all(v is None for v in given.values()):
    return
  missing = [name for name, value in given.items() if value is None]
  if missing:
    parser.error(f"multi-host flags: {', '.join(missing)} missing; give --coordinator_address, "
                 "--num_processes and --process_id together")
  if not 0 <= args.process_id < args.num_processes:
    parser.error(f"--process_id={args.process_id} is not in [0, {args.num_processes})")


def resolve_gin_file(name: str, search_paths: Sequence[str]) -> str:
  """The first of <search path>/name, or name itself, that exists."""
  for folder in search_paths:
    candidate = os.path.join(folder, name)
    if os.path.isfile(candidate):
      return candidate
  if os.path.isfile(name):
    return name
  raise FileNotFoundError(f"--gin_file={name}: not found in {', '.join(search_paths)} nor as a "
                          "path; add its folder with --gin_search_paths")


class GinFlagError(ValueError):
  """A gin file or binding the binary cannot use; the message is one line."""


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str], search_paths: str = ""
              ) -> List[str]:
  """Parses files and bindings with the package's gin/ folder always searchable; returns the
  modules their `import` lines import (included files' too), in order, each once.

  Raises GinFlagError for an unknown configurable or parameter, a value gin cannot parse, or a
  macro bound in `bindings` that no file or binding reads (gin would ignore it silently)."""
  folders = [p for p in search_paths.split(",") if p] + [gin_dir()]
  for folder in folders:  # for `include` lines inside the files
    gin.add_config_file_search_path(folder)
  files = [resolve_gin_file(name, folders) for name in gin_files]
  # gin first tries an `include` as a Python package path and logs "ERROR ... Path not found" when
  # it is not one, before finding the file on the search path: a false alarm, kept off the console.
  root = logging.getLogger()
  root.addFilter(_drop_gin_package_probe)
  try:
    try:
      parsed = gin.parse_config_files_and_bindings(files, [], finalize_config=False)
    except (ValueError, SyntaxError) as exc:
      raise GinFlagError(_reworded(exc, "--gin_file")) from exc
    binding_imports = []
    for binding in bindings:  # one at a time, to name the one at fault
      try:
        binding_imports += gin.parse_config(binding)[1]
      except (ValueError, SyntaxError) as exc:
        raise GinFlagError(_reworded(exc, f"--gin.{binding.strip()}")) from exc
  finally:
    root.removeFilter(_drop_gin_package_probe)
  check_macros_are_read(bindings)
  imports = [m for parsed_file in parsed for m in _imports_of(parsed_file)]
  return list(dict.fromkeys(imports + list(binding_imports)))


def _configured() -> List[str]:
  """The configurables the parsed gin binds (from gin's public config_str)."""
  return re.findall(r"^# Parameters for (?:[\w./]*/)?([\w.]+):$", gin.config_str(), re.M)


def _did_you_mean(name: str, candidates: Sequence[str]) -> str:
  close = difflib.get_close_matches(name, sorted(set(candidates)), n=3, cutoff=0.6)
  return f" (did you mean {' or '.join(close)}?)" if close else ""


def _parameters(configurable: str) -> List[str]:
  import inspect  # pylint: disable=import-outside-toplevel
  try:
    fn = gin.get_configurable(configurable)
    return list(inspect.signature(fn).parameters)
  except (ValueError, TypeError):
    return []


def _reworded(exc: BaseException, where: str) -> str:
  """gin's parse error as one line: the flag (or file), the name nothing reads, a close name."""
  first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
  location = re.search(r"In file \"?([^\",]+)\"?, line (\d+)", str(exc))
  if location:
    where = f"{where} {location.group(1)}:{location.group(2)}"
  unknown_param = re.fullmatch(r"Configurable '(.+)' doesn't have a parameter named '(.+)'\.",
                               first)
  if unknown_param:
    configurable, param = unknown_param.groups()
    return (f"{where}: `{configurable}` has no parameter `{param}`"
            f"{_did_you_mean(param, _parameters(configurable))}; nothing was bound")
  unknown = re.fullmatch(r"No configurable matching '(.+)'\.", first)
  if unknown:
    name = unknown.group(1)
    hint = _did_you_mean(name, _configured())
    param = name.split(".")[-1]
    owners = [c for c in _configured() if param in _parameters(c)] if not hint else []
    if owners:
      hint = f" (`{param}` is a parameter of {', '.join(owners)})"
    return (f"{where}: no configurable named `{name}`{hint}; nothing was bound (a user's "
            "configurable needs its module imported: an `import` line in a --gin_file)")
  if isinstance(exc, SyntaxError):
    if where == "--gin_file" and exc.filename:
      where = f"{where} {exc.filename}:{exc.lineno}"
    return (f"{where}: gin cannot parse it ({exc.msg or first}); values are gin literals, "
            "strings quoted, e.g. --gin.MODEL_DIR=\"'/tmp/run'\"")
  return f"{where}: {first}"


def check_macros_are_read(bindings: Sequence[str]) -> None:
  """Raises GinFlagError for a macro a binding sets that nothing reads as `%NAME` (a typo such as
  TRAIN_STEP for TRAIN_STEPS, which gin would ignore), naming the close macros."""
  config = gin.config_str()
  read = set(re.findall(r"%([A-Za-z_][\w.]*)", config))
  defined = re.findall(r"^([A-Za-z_]\w*) = ", config, re.M)
  for binding in bindings:
    match = re.match(r"\s*([A-Za-z_]\w*)\s*=", binding)  # NAME=value: a macro (no dot, no scope)
    if match and match.group(1) not in read:
      name = match.group(1)
      raise GinFlagError(
          f"--gin.{name}: no gin file reads the macro {name}, so it would be ignored"
          f"{_did_you_mean(name, [m for m in defined + sorted(read) if m != name])}")


def _imports_of(parsed_file) -> List[str]:
  """The modules a parsed gin file and the files it includes import."""
  return list(parsed_file.imports) + [m for included in parsed_file.includes
                                      for m in _imports_of(included)]


def bind_tfds_data_dir(path: Optional[str]) -> None:
  """`--tfds_data_dir` as gin `tfds_data_dir.path` too, unless the gin binds that itself (which
  wins, as it does when the data is read): a training run records it in run-config.json, and in
  an evaluating process it is that process's own setting, which wins over the run's."""
  if not path:
    return
  from unified_io.datasets import directories  # pylint: disable=import-outside-toplevel
  if "path" not in gin.get_bindings(directories.tfds_data_dir, resolve_references=False):
    gin.bind_parameter("unified_io.datasets.directories.tfds_data_dir.path", path)


def model_config(gin_files: Sequence[str], bindings: Sequence[str] = ()):
  """The model config that size gin files (+ bindings) describe: gin is cleared, they are parsed,
  and `make_config()` is evaluated (for binaries that take a model gin beside a checkpoint)."""
  from unified_io.presets import make_config  # pylint: disable=import-outside-toplevel
  gin.clear_config()
  parse_gin(gin_files, bindings)
  return make_config()


def _drop_gin_package_probe(record: logging.LogRecord) -> bool:
  return record.msg != "Path not found: %s"


def initialize_distributed(args) -> None:
  """jax.distributed from flags, or from the TPU environment when several TPU hosts run.

  Must run before anything touches a JAX backend (the collectives setting is read when the CPU
  client is created).
  """
  import jax
  if args.cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", args.cpu_collectives)
  if args.coordinator_address:
    jax.distributed.initialize(coordinator_address=args.coordinator_address,
                               num_processes=args.num_processes, process_id=args.process_id)
  elif os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1:
    jax.distributed.initialize()  # a multi-host TPU slice: everything comes from the environment
