"""DESIGN.md's layer rules, checked on the import graph.

Every .py module under mim_jax/, data_gen/, configs/, launch/ and bench/ is
parsed with `ast` (nothing is imported, so a heavy or broken module cannot hide
an edge); imports inside functions count, relative imports are resolved, and
a bare `import helpers` of a tests/ module (sys.path tricks) counts as tests. A
failure lists each offending edge as `file:line module -> imported`.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mim_jax", "data_gen", "configs", "launch", "bench")
OURS = PACKAGES + ("tests",)
HEAVY_THIRD_PARTY = ("torch", "transformers", "diffusers")


class Edge(NamedTuple):
  file: str  # relative to the root
  line: int
  module: str
  imported: str


def _within(name: str, prefix: str) -> bool:
  return name == prefix or name.startswith(prefix + ".")


def _module_name(path: Path, root: Path) -> tuple[str, str]:
  """(module, the package its relative imports start from)."""
  parts = list(path.relative_to(root).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
    return ".".join(parts), ".".join(parts)
  return ".".join(parts), ".".join(parts[:-1])


def _resolve(node: ast.ImportFrom, package: str) -> str:
  if not node.level:
    return node.module or ""
  parts = package.split(".") if package else []
  base = parts[:len(parts) - (node.level - 1)] if node.level > 1 else parts
  return ".".join(base + ([node.module] if node.module else []))


def _is_module(root: Path, name: str) -> bool:
  path = root.joinpath(*name.split("."))
  return path.is_dir() or path.with_suffix(".py").is_file()


def edges(root: Path, packages: tuple[str, ...] = PACKAGES) -> Iterator[Edge]:
  # A script that puts tests/ on sys.path imports its helpers by their bare names.
  test_modules = {path.stem for path in (root / "tests").glob("*.py")}
  for top in packages:
    for path in sorted((root / top).rglob("*.py")):
      module, package = _module_name(path, root)
      for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
          names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
          base = _resolve(node, package)
          # `from mim_jax import train` imports the module mim_jax.train, `from mim_jax.train import loop` a name.
          names = list(dict.fromkeys(
              f"{base}.{alias.name}" if _is_module(root, f"{base}.{alias.name}") else base for alias in node.names))
        else:
          continue
        for name in names:
          if name.split(".")[0] in test_modules:
            name = f"tests.{name}"
          yield Edge(str(path.relative_to(root)), node.lineno, module, name)


def _broken_rule(edge: Edge) -> str | None:
  """The DESIGN.md rule `edge` breaks, or None."""
  module, imported = edge.module, edge.imported
  ours = any(_within(imported, top) for top in OURS)
  if _within(module, "mim_jax.nn") and ours and not _within(imported, "mim_jax.nn"):
    return "mim_jax.nn imports nothing else of ours"
  if _within(module, "mim_jax.models") and ours and not (
      _within(imported, "mim_jax.nn") or _within(imported, "mim_jax.models")):
    return "mim_jax.models imports only mim_jax.nn (never convert/train/infer/data)"
  if (_within(module, "mim_jax.models") or _within(module, "mim_jax.nn")) and any(
      _within(imported, heavy) for heavy in HEAVY_THIRD_PARTY):
    return "mim_jax.models and mim_jax.nn are pure Flax/NumPy (no torch/transformers/diffusers)"
  if _within(module, "mim_jax") and _within(imported, "data_gen"):
    return "mim_jax never imports data_gen"
  if _within(imported, "tests"):
    return "nothing imports tests"
  return None


def find_violations(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[str]:
  """`file:line module -> imported  (rule)` for every edge that breaks a rule."""
  found = []
  for edge in edges(root, packages):
    rule = _broken_rule(edge)
    if rule:
      found.append(f"{edge.file}:{edge.line} {edge.module} -> {edge.imported}  ({rule})")
  return found


def test_the_tree_keeps_its_layers():
  violations = find_violations(ROOT)
  assert not violations, "imports that break DESIGN.md's layer rules:\n" + "\n".join(violations)


def test_the_walk_sees_the_tree():
  modules = {edge.module for edge in edges(ROOT)}
  assert {"mim_jax.nn.attention", "mim_jax.models.llama", "data_gen.steps.embed", "launch.aot_compile"} <= modules


def _write(root: Path, relative: str, text: str) -> None:
  path = root / relative
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)


def test_a_planted_back_edge_is_reported(tmp_path):
  _write(tmp_path, "mim_jax/__init__.py", "")
  _write(tmp_path, "mim_jax/nn/__init__.py", "")
  _write(tmp_path, "mim_jax/nn/attention.py", "import numpy as np\nfrom . import rope\nfrom ..models import llama\n")
  _write(tmp_path, "mim_jax/models/llama.py",
         "from mim_jax.nn import attention\n\n\ndef load():\n  from mim_jax.train import loop\n  import torch\n")
  _write(tmp_path, "mim_jax/models/diffusion/__init__.py", "from ... import convert\n")
  _write(tmp_path, "mim_jax/convert/__init__.py", "")
  _write(tmp_path, "mim_jax/infer/chat.py", "from data_gen.embed import data_mesh\nimport tests.helpers\n")
  _write(tmp_path, "data_gen/embed.py", "from mim_jax.models import clip\n")
  _write(tmp_path, "tests/helpers.py", "")
  _write(tmp_path, "bench/bench.py", "import sys\n\nsys.path.insert(0, 'tests')\nfrom helpers import tiny\n")
  violations = find_violations(tmp_path, ("mim_jax", "data_gen", "bench"))
  assert [v.split("  (")[0] for v in violations] == [
      "mim_jax/infer/chat.py:1 mim_jax.infer.chat -> data_gen.embed",
      "mim_jax/infer/chat.py:2 mim_jax.infer.chat -> tests.helpers",
      "mim_jax/models/diffusion/__init__.py:1 mim_jax.models.diffusion -> mim_jax.convert",
      "mim_jax/models/llama.py:5 mim_jax.models.llama -> mim_jax.train",
      "mim_jax/models/llama.py:6 mim_jax.models.llama -> torch",
      "mim_jax/nn/attention.py:3 mim_jax.nn.attention -> mim_jax.models.llama",
      "bench/bench.py:4 bench.bench -> tests.helpers",
  ]
