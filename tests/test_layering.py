"""The house's floors (DESIGN.md): no module imports one on a higher floor, and no import
circle; the npe2 modules import only the public API and the formats; nothing below the
widgets imports Qt or napari.

Every ``import`` / ``from … import`` statement of ``src/napari_deepblur`` counts, at module
level or inside a function (a lazy import still ties the modules together).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "napari_deepblur"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE

#: Floors, lowest first: a module may import its own floor and those below.
FLOORS = [
    # 0: physics, networks and the helpers everything shares
    ("optics", "nets", "devices", "notices", "intensity"),
    # 1: model files
    ("models", "model_files"),
    # 2: the public API, by stage
    ("pipeline",),
    # 3: what builds on it: the space-varying feature, formats, files in and out
    ("field", "formats", "io", "outputs", "batch", "_dask_worker", "omezarr", "chunked"),
    # 4: training, benchmarks, samples, the demo
    ("training", "evaluation", "samples", "demo"),
    # 5: the command line and the widgets' headless logic
    ("cli", "_napari"),
    # 6: Qt
    ("_qt",),
]
#: npe2 contributions: they import only these (the public API and the formats).
NPE2 = ("_sample_data", "_reader", "_writer")
PUBLIC = ("", "pipeline", "formats", "samples")
#: Modules of floors below the widgets, which must not import a GUI toolkit.
GUI = ("napari", "magicgui", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_package(name: str) -> bool:
    return (SOURCE.joinpath(*name.split(".")) / "__init__.py").is_file() if name else True


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The modules of ``napari_deepblur`` (relative names, "" for the root) that a
    ``from … import …`` of ``module`` names."""
    if node.level:
        base = module.split(".") if _is_package(module) else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1] if node.level > 1 else base
        target = ".".join([*base, *(node.module.split(".") if node.module else [])])
    elif node.module == PACKAGE or (node.module or "").startswith(PACKAGE + "."):
        target = node.module[len(PACKAGE) + 1 :]
    else:
        return []
    names = []
    for alias in node.names:  # `from . import io` names the submodule io
        sub = f"{target}.{alias.name}" if target else alias.name
        exists = SOURCE.joinpath(*sub.split(".")).with_suffix(".py").is_file() or _is_package(sub)
        names.append(sub if exists and alias.name != "*" else target)
    return names


def _imports() -> dict[str, set[str]]:
    """Module → the modules of the package it imports (relative names)."""
    graph: dict[str, set[str]] = {}
    for path in SOURCE.rglob("*.py"):
        module = _module_name(path)
        targets = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                targets.update(_resolve(module, node))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                        targets.add(alias.name[len(PACKAGE) + 1 :])
        targets.discard(module)
    return graph


def _external(path: Path) -> set[str]:
    """Top-level names of the packages a file imports from outside."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def floor(module: str) -> int | None:
    """The floor of a module (None: the root package, or an npe2 module)."""
    top = module.split(".")[0]
    for level, names in enumerate(FLOORS):
        if top in names:
            return level
    return None


GRAPH = _imports()


def test_every_module_has_a_floor():
    unplaced = [m for m in GRAPH if m and floor(m) is None and m.split(".")[0] not in NPE2]
    assert not unplaced, f"modules on no floor of FLOORS: {unplaced}"


def test_no_import_goes_up():
    upward = sorted(
        f"{m} (floor {floor(m)}) imports {t} (floor {floor(t)})"
        for m, targets in GRAPH.items()
        for t in targets
        if t and floor(m) is not None and floor(t) is not None and floor(t) > floor(m)
    )
    assert not upward, "imports from a lower floor to a higher one:\n" + "\n".join(upward)


def test_npe2_modules_import_only_the_public_api():
    wrong = sorted(
        f"{m} imports {t}"
        for m, targets in GRAPH.items()
        if m.split(".")[0] in NPE2
        for t in targets
        if t not in PUBLIC
    )
    assert not wrong, "npe2 modules import internals:\n" + "\n".join(wrong)


def test_no_import_cycle():
    """No circle of imports between modules (lazy imports included)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH.get(node, ()):
            if target not in GRAPH:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert cycles == [], f"import cycles: {cycles}"


@pytest.mark.parametrize("path", sorted(SOURCE.rglob("*.py")), ids=lambda p: p.name)
def test_core_without_qt(path):
    module = _module_name(path)
    if module.split(".")[0] == "_qt":
        return
    assert not (_external(path) & set(GUI)), f"{module} imports a GUI toolkit"


def test_no_source_file_over_700_lines():
    long = {
        _module_name(p): n
        for p in SOURCE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 700
    }
    assert not long, f"files over 700 lines: {long}"
