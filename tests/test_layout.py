"""The package's layering, read from the source: no import cycle, and each part imports only what
the README's "What is here" table allows (the library never imports a binary or an experiment).

Imports are found with `ast` (module level and inside functions alike), so this runs in a second.
"""

import ast
import os
from typing import Dict, Set

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "unified_io")

# Part of the package -> the parts it may import (besides itself). A part is a top-level module
# or folder of unified_io/; `tasks` is the top-level tasks/ folder (installed as unified_io.tasks).
MODEL = {"config", "modalities", "contract"}
ALLOWED = {
    "modalities": set(),
    "config": {"modalities"},
    "contract": {"config", "modalities"},
    "gin_required": set(),
    "native_logs": set(),
    "presets": {"config", "modalities", "interop"},  # interop: the release's own component config
    "network": {"config", "modalities"},
    "model": MODEL | {"network", "data"},  # data: only the converter the model makes
    "decoding": MODEL | {"network", "model"},
    "partitioning": MODEL,
    "data": MODEL | {"native_logs"},  # native_logs: the tokenizer's C++ log line held back
    "datasets": MODEL | {"data"},
    # datasets: a run records its world and dataset folders (run-config.json's data section)
    # adapters: LoRA and int8 as transforms of a model's parameter tree
    "adapters": MODEL | {"network", "model"},
    "training": MODEL | {"network", "model", "data", "datasets", "partitioning", "gin_required",
                         "adapters"},
    "evaluation": MODEL | {"network", "model", "decoding", "data", "datasets", "partitioning",
                           "training", "gin_required", "adapters"},
    "interop": MODEL | {"network", "model", "training"},
    "memory_plan": MODEL | {"model", "decoding", "partitioning", "presets", "interop"},
    "tasks": MODEL | {"data", "datasets", "evaluation"},  # evaluation: how each task is scored
    # the tokenizer trainer: its own checkpoints and progress (training), rendering and the
    # drawn-objects measure (evaluation)
    "tokenizer_training": MODEL | {"network", "data", "datasets", "training", "evaluation",
                                   "gin_required"},
    # The binaries and experiments sit on top: they may import anything.
}
TOP = {"cli", "experiments"}


def _modules() -> Dict[str, str]:
  """Dotted module name -> file, for unified_io/ and tasks/ (as unified_io.tasks)."""
  found = {}
  for root, name in ((PACKAGE, "unified_io"), (os.path.join(REPO, "tasks"), "unified_io.tasks")):
    for folder, _, files in os.walk(root):
      rel = os.path.relpath(folder, root)
      prefix = name if rel == "." else name + "." + rel.replace(os.sep, ".")
      for f in files:
        if f.endswith(".py"):
          module = prefix if f == "__init__.py" else f"{prefix}.{f[:-3]}"
          found[module] = os.path.join(folder, f)
  return found


def _imports(path: str, module: str, modules: Set[str]) -> Set[str]:
  """The unified_io modules `path` imports (a `from X import y` of a submodule counts as X.y)."""
  tree = ast.parse(open(path).read())
  package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] +
                        ([base] if base else []))
      for alias in node.names:
        out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
  return {m for m in out if m in modules}


def _part(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else parts[0]


@pytest.fixture(scope="module")
def graph():
  modules = _modules()
  return {m: _imports(path, m, set(modules)) - {m} for m, path in modules.items()}


def test_every_part_is_in_the_layering_table(graph):
  unknown = {_part(m) for m in graph} - set(ALLOWED) - TOP - {"unified_io", "__init__"}
  assert not unknown, f"add {sorted(unknown)} to ALLOWED (and to the README's table)"


def test_each_part_imports_only_what_it_may(graph):
  wrong = []
  for module, imported in sorted(graph.items()):
    part = _part(module)
    if part not in ALLOWED:
      continue
    for target in sorted(imported):
      other = _part(target)
      if other != part and other != "unified_io" and other not in ALLOWED[part]:
        wrong.append(f"{module} imports {target}")
  assert not wrong, "\n".join(wrong)


def test_no_import_cycle(graph):
  """Tarjan's strongly connected components over the module import graph."""
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      # A package importing its own submodules (re-exports in __init__) is not a cycle.
      real = [m for m in component if not any(o.startswith(m + ".") for o in component)]
      if len(real) > 1:
        cycles.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  assert not cycles, cycles
