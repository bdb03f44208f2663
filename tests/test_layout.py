"""The layout's rules, read from the code itself: every import parsed with ast.

The top level holds what a user runs (the scripts) and the design card (config.py, dataset.py,
model_architecture.py); everything else is the `cxr` package, in stage subpackages. Every import
goes down the LAYERS below (lazy imports inside functions count too): no script imports another
script, the design card imports only the library, and the library imports none of the layers
above it. The one exception is an annotation: a module may name `config.Config` in its type
hints under `if TYPE_CHECKING:`, which Python never runs. The package has no `__main__`, and no
import cycle exists anywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

SCRIPTS = ("preprocess.py", "make_splits.py", "cache.py", "train.py", "evaluate.py",
           "predict.py", "score.py", "export.py", "ablate.py", "app.py", "make_demo_data.py",
           "localize.py")
DESIGN_CARD = ("config.py", "dataset.py", "model_architecture.py")
PACKAGE = "cxr"
# Top to bottom: a module imports modules of its own layer or of the layers below it. A layer
# holds modules and packages (a package: every module under it). docs/architecture.md draws it.
LAYERS: tuple[tuple[str, ...], ...] = (
    tuple(name.removesuffix(".py") for name in SCRIPTS),  # what a user runs
    tuple(name.removesuffix(".py") for name in DESIGN_CARD),  # what a user edits
    ("cxr.reporting",),  # tables, figures and documents of every report
    ("cxr.scoring",),  # score.py: predictions CSVs against a reference standard, readers
    ("cxr.inference",),  # a checkpoint on new films: files, studies, Grad-CAM
    ("cxr.evaluation",),  # predictions of a split, metrics, intervals, calibration, thresholds
    ("cxr.training",),  # runtime, checkpoint format, resume, schedule, EMA, run records
    ("cxr.data",),  # labels, dataset layouts, splits, images, augmentation, image cache
    ("cxr.cli", "cxr.atomic", "cxr.errors", "cxr"),  # the command line, atomic writes, errors
)
TYPE_ONLY = {"config"}  # may be imported under `if TYPE_CHECKING:` anywhere (annotations)


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    files = [*ROOT.glob("*.py"), *(ROOT / PACKAGE).rglob("*.py")]
    return {module_name(path): path for path in files}


def type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` blocks (never run)."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside |= {id(child) for child in ast.walk(node)} - {id(node.test)}
    return inside


def imported_names(path: Path, type_checking: bool = False) -> set[str]:
    """Every module an `import` or `from ... import` anywhere in the file names (a `from
    package import module` counts as the module when it is one); with type_checking, only those
    under `if TYPE_CHECKING:`, else only the others."""
    names = set()
    tree = ast.parse(path.read_text(), str(path))
    hidden = type_checking_nodes(tree)
    for node in ast.walk(tree):
        if (id(node) in hidden) != type_checking:
            continue
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


def layer_of(module: str) -> int:
    """The index in LAYERS of a module's layer (the deepest package that names it)."""
    found = [(len(entry), index) for index, layer in enumerate(LAYERS) for entry in layer
             if module == entry or module.startswith(entry + ".")]
    assert found, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return max(found)[1]


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((module, other) for module, imports in graph.items() for other in imports
                  if layer_of(other) < layer_of(module))


def test_every_module_has_a_layer():
    for module in project_modules():
        layer_of(module)


def test_every_import_goes_down_the_layers():
    assert upward_imports(import_graph()) == []


def test_type_only_imports_name_only_the_config():
    modules = project_modules()
    for module, path in modules.items():
        hidden = {name for name in imported_names(path, type_checking=True) if name in modules}
        assert hidden <= TYPE_ONLY, f"{module} imports {hidden - TYPE_ONLY} for type hints"


def test_the_layer_check_finds_an_upward_import():
    assert upward_imports({"cxr.data.labels": {"cxr.evaluation.metrics"}}) == \
        [("cxr.data.labels", "cxr.evaluation.metrics")]
    assert upward_imports({"cxr.training.runtime": {"config"}}) == \
        [("cxr.training.runtime", "config")]
    assert upward_imports({"cxr.evaluation.metrics": {"cxr.data.labels", "cxr.errors"}}) == []


def test_there_is_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
