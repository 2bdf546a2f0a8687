"""data_gen's import graph: no cycle among its modules, and the library never
imports a step (data_gen/steps/). Read from the source with ast, so lazy
imports inside functions count too. (mim_jax never importing data_gen is a
layer rule of tests/test_imports.py.)"""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
STEPS = "data_gen.steps"


def module_name(path: Path, root: Path) -> str:
  parts = list(path.relative_to(root).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def imported_modules(tree: ast.AST, package: str) -> set[str]:
  """Every module an import statement names, `from a import b` counting as
  a.b when that is a module of ours (the caller filters to known modules)."""
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
      names.add(base)
      names.update(f"{base}.{alias.name}" for alias in node.names)
  return names


def import_graph(root: Path, top: str) -> dict[str, set[str]]:
  """Module → the modules of `top` it imports, for every .py file under root/top."""
  files = {module_name(path, root): path for path in sorted((root / top).rglob("*.py"))}
  graph = {}
  for name, path in files.items():
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    graph[name] = {m for m in imported_modules(ast.parse(path.read_text(encoding="utf-8")), package)
                   if m in files and m != name}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as [a, b, …, a], or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for target in sorted(graph[node]):
      if state.get(target) == "open":
        return stack[stack.index(target):] + [target]
      if target not in state and (cycle := visit(target)):
        return cycle
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def library_imports_of_steps(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
  is_step = lambda name: name == STEPS or name.startswith(STEPS + ".")
  # __main__ is the entry point: it runs the command line, it is no library.
  return sorted((source, target) for source, targets in graph.items() for target in targets
                if not is_step(source) and source != "data_gen.__main__" and is_step(target))


def check_layout(root: Path) -> None:
  graph = import_graph(root, "data_gen")
  cycle = find_cycle(graph)
  assert cycle is None, f"data_gen has an import cycle: {' → '.join(cycle)}; move what both need into a module " \
                        "both import"
  bad = library_imports_of_steps(graph)
  assert not bad, f"library modules import step modules: {bad}; move what they share out of data_gen/steps/"


def test_data_gen_has_no_cycle_and_the_library_imports_no_step():
  check_layout(REPO)
  assert {"data_gen.sources.open_source", "data_gen.steps.cli", "data_gen.llm.template"} <= set(
      import_graph(REPO, "data_gen"))


def _copy_data_gen(tmp_path: Path) -> Path:
  for path in (REPO / "data_gen").rglob("*.py"):
    target = tmp_path / path.relative_to(REPO)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
  return tmp_path


def _plant(root: Path, relative: str, line: str) -> None:
  path = root / relative
  path.write_text(path.read_text(encoding="utf-8") + f"\n\ndef _planted():\n  {line}\n", encoding="utf-8")


def test_a_planted_back_edge_fails_the_check(tmp_path):
  root = _copy_data_gen(tmp_path)
  # generated.py imports shards.py, so this closes a loop.
  _plant(root, "data_gen/shards.py", "from data_gen.generated import read_generated")
  with pytest.raises(AssertionError, match="import cycle: .*data_gen.shards"):
    check_layout(root)


def test_a_library_module_importing_a_step_fails_the_check(tmp_path):
  root = _copy_data_gen(tmp_path)
  _plant(root, "data_gen/clean.py", "from data_gen.steps import sample")
  with pytest.raises(AssertionError, match=r"\('data_gen.clean', 'data_gen.steps.sample'\)"):
    check_layout(root)
