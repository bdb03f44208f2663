"""The layout's rules, read from the code itself: every import parsed with ast.

The top level holds what a user runs (the scripts) and the design card (config.py, dataset.py,
model_architecture.py); everything else is the `cxr` package. No script imports another script,
the package imports no script and has no `__main__`, and no import cycle exists anywhere (lazy
imports inside functions count too).
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

SCRIPTS = ("preprocess.py", "make_splits.py", "cache.py", "train.py", "evaluate.py",
           "predict.py", "score.py", "export.py", "ablate.py", "app.py", "make_demo_data.py")
DESIGN_CARD = ("config.py", "dataset.py", "model_architecture.py")
PACKAGE = "cxr"


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    files = [*ROOT.glob("*.py"), *(ROOT / PACKAGE).rglob("*.py")]
    return {module_name(path): path for path in files}


def imported_names(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` anywhere in the file names (a `from
    package import module` counts as the module when it is one)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: {other for other in imported_names(path) if other in modules} - {name}
            for name, path in modules.items()}


def has_main_guard(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) \
                and node.left.id == "__name__":
            return True
    return False


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for other in sorted(graph[node]):
            if state.get(other) == "open":
                return stack[stack.index(other):] + [other]
            if other not in state:
                cycle = visit(other)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_top_level_holds_only_scripts_and_the_design_card():
    top = sorted(path.name for path in ROOT.glob("*.py"))
    assert top == sorted(SCRIPTS + DESIGN_CARD)
    assert all(has_main_guard(ROOT / name) for name in SCRIPTS)
    assert not any(has_main_guard(ROOT / name) for name in DESIGN_CARD)


def test_the_package_has_no_main():
    mains = [str(path.relative_to(ROOT)) for path in (ROOT / PACKAGE).rglob("*.py")
             if has_main_guard(path)]
    assert mains == []


def test_no_script_is_imported_by_any_module():
    scripts = {name.removesuffix(".py") for name in SCRIPTS}
    importers = {(module, script) for module, imports in import_graph().items()
                 for script in imports & scripts}
    assert importers == set(), "a script is imported (move what it shares into cxr/)"


def test_the_package_imports_only_itself_the_design_card_and_libraries():
    card = {name.removesuffix(".py") for name in DESIGN_CARD}
    for module, imports in import_graph().items():
        if module.startswith(PACKAGE):
            assert all(name.startswith(PACKAGE) or name in card for name in imports), module


def test_there_is_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
