"""The packages' one-way flow, read from the source (ast): grid -> trainables, grid -> analysis.

No import circle inside ``grid``, ``trainables`` or ``analysis`` (function-level
imports count: they are only deferred, not gone), and neither ``trainables`` nor ``analysis`` imports
``grid``.  Imports under ``if TYPE_CHECKING:`` never run and do not count as
edges of the circle check.
"""

from __future__ import annotations

import ast
import graphlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(path: Path, package: str, type_checking: bool) -> set[str]:
    """Every module ``path`` imports, at any depth (functions, methods, try blocks).

    ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module
    of the package on disk (``from grid import space``), else of ``pkg``; relative
    imports are resolved within ``package`` (one level: the packages are flat).  Imports
    under ``if TYPE_CHECKING:`` are left out unless ``type_checking``.
    """
    root = path.parent
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not type_checking:
            for stmt in node.orelse:
                visit(stmt)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from .x import y
                module = f"{package}.{node.module}" if node.module else package
            else:
                module = node.module or ""
            for alias in node.names:
                sub = root.parent / Path(*module.split("."), f"{alias.name}.py")
                found.add(f"{module}.{alias.name}" if sub.is_file() else module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports."""
    package = package_dir.name
    modules = {
        f"{package}.{p.stem}" if p.stem != "__init__" else package: p
        for p in sorted(package_dir.glob("*.py"))
    }
    return {
        name: {m for m in imported_modules(path, package, type_checking=False) if m in modules}
        - {name}
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (its modules in order, the first repeated last), or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        return list(err.args[1])
    return None


# A module of each package that imports others of it: an empty graph would pass vacuously.
_IMPORTER = {"grid": "grid.launch", "trainables": "trainables.trial", "analysis": "analysis.report"}


@pytest.mark.parametrize("package", sorted(_IMPORTER))
def test_no_import_circle(package: str) -> None:
    graph = import_graph(ROOT / package)
    assert graph.get(_IMPORTER[package]), f"the graph reads no {package} imports"
    cycle = find_cycle(graph)
    assert cycle is None, f"import circle in {package}: " + " -> ".join(reversed(cycle or []))


def test_the_circle_check_sees_the_circles_this_repository_had(tmp_path: Path) -> None:
    """The check can fail on a real package: trainables with a circle planted back (the ones
    it had: byom -> models at module level, models -> byom in build_model) is refused."""
    import shutil

    pkg = tmp_path / "trainables"
    shutil.copytree(ROOT / "trainables", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    assert find_cycle(import_graph(pkg)) is None
    byom = pkg / "byom.py"
    byom.write_text(
        byom.read_text() + "\n\ndef _planted():\n    from trainables.models import build_model\n"
    )
    cycle = find_cycle(import_graph(pkg))
    assert cycle is not None and {"trainables.byom", "trainables.models"} <= set(cycle)


@pytest.mark.parametrize("package", ["trainables", "analysis"])
def test_trainables_and_analysis_never_import_grid(package: str) -> None:
    back = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for module in imported_modules(path, package, type_checking=True)
        if module == "grid" or module.startswith("grid.")
    }
    assert not back, f"{package} imports grid (the flow is grid -> {package}): {sorted(back)}"


def test_trainables_never_imports_analysis() -> None:
    back = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((ROOT / "trainables").rglob("*.py"))
        for module in imported_modules(path, "trainables", type_checking=True)
        if module == "analysis" or module.startswith("analysis.")
    }
    assert not back, f"trainables imports analysis: {sorted(back)}"


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    for name, text in files.items():
        (pkg / name).write_text(text)
    return pkg


def test_the_circle_check_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    """The checks above can fail: a circle closed inside a function body is found."""
    pkg = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg import b\n",
            "b.py": "from .c import thing\n",
            "c.py": "def f():\n    if True:\n        from pkg.a import x\n    return x\n",
        },
    )
    graph = import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"}}
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"pkg.a", "pkg.b", "pkg.c"}


def test_a_type_checking_import_closes_no_circle(tmp_path: Path) -> None:
    pkg = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg import b\n",
            "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n",
        },
    )
    assert find_cycle(import_graph(pkg)) is None
    assert "pkg.a" in imported_modules(pkg / "b.py", "pkg", type_checking=True)


# Environment variables a user sets.  Any other ROBUSTGRID_* name in the packages is a test or
# benchmark switch: those wrap the injected trial function, trainable, sink or location
# instead (tests/injected.py).  A new real user setting goes here.
USER_SETTINGS = {"ROBUSTGRID_CACHE", "ROBUSTGRID_TF_LOGS"}  # a user's, documented


def test_no_environment_switch_in_production_code() -> None:
    found = {
        f"{path.relative_to(ROOT)}: {name}"
        for package in ("grid", "trainables", "analysis")
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in re.findall(r"ROBUSTGRID_[A-Z0-9_]+", path.read_text())
        if name not in USER_SETTINGS
    }
    assert not found, f"test switches in production code (inject instead): {sorted(found)}"


def test_analysis_loads_neither_tensorflow_nor_ray() -> None:
    """Every analysis module imported in a fresh interpreter: no TensorFlow, Keras or Ray
    arrives, directly or through what analysis imports (trainables.config, trainables.rows)."""
    modules = sorted(f"analysis.{p.stem}" for p in (ROOT / "analysis").glob("*.py"))
    heavy = ("tensorflow", "tf_keras", "keras", "qkeras", "ray")
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n    importlib.import_module(m)\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", f"analysis loads {proc.stdout.strip()}"


# A module over MAX_LINES is split by concern, unless it is one concept (said here, and why).
MAX_LINES = 450
ONE_CONCEPT = {
    "trainables/apgd.py": "APGD-CE and APGD-T of the standard AutoAttack: one attack, two losses",
    "trainables/config.py": "one trial's config: its fields, the axis registry, attack specs, its key",
    "grid/layerspace.py": "the per-layer search space (search.layers): choices, points, draws",
    "trainables/attacks.py": "running a study's attacks through ART, example by example",
    "trainables/deployed.py": "the routes that attack the int8 flatbuffer and their rows",
    "trainables/rows.py": "the row: its schema, how a trial's rows are built, a trial's summary",
}


def test_no_module_over_max_lines_unless_one_concept() -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines())
        for package in ("grid", "trainables", "analysis")
        for p in (ROOT / package).glob("*.py")
    }
    over = {m: n for m, n in sizes.items() if n > MAX_LINES and m not in ONE_CONCEPT}
    assert not over, f"modules over {MAX_LINES} lines: split them by concern: {over}"
    stale = [m for m in ONE_CONCEPT if sizes.get(m, 0) <= MAX_LINES]
    assert not stale, f"ONE_CONCEPT lists modules no longer over {MAX_LINES} lines: {stale}"
