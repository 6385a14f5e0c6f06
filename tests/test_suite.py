"""Rules of the test suite itself: shared code lives in tests/helpers.py, not in test modules."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def _imported_modules(tree: ast.AST) -> set[str]:
    """Every module an ``import`` or ``from ... import`` names, at any depth (function bodies too)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            out.add(base)
            out |= {f"{base}.{alias.name}".replace("..", ".") for alias in node.names}
    return out


def _test_module_imports(source: str) -> list[str]:
    """The imports of ``source`` that reach a test module or conftest.py (absolute or relative)."""
    bad = []
    for name in sorted(_imported_modules(ast.parse(source))):
        last = name.rsplit(".", 1)[-1]
        if (name.startswith("tests.") or name.startswith(".")) and (
            last.startswith("test_") or last == "conftest"
        ):
            bad.append(name)
    return bad


def test_the_check_sees_every_form_of_import() -> None:
    source = (
        "import tests.test_a\n"
        "from tests.test_b import f\n"
        "from tests import test_c\n"
        "from .test_d import g\n"
        "from tests.conftest import S3\n"
        "def h():\n"
        "    from tests.test_e import x\n"
        "from tests.helpers import rows_for\n"
        "import test_things_elsewhere\n"
    )
    assert _test_module_imports(source) == [
        ".test_d",
        "tests.conftest",
        "tests.test_a",
        "tests.test_b",
        "tests.test_c",
        "tests.test_e",
    ]


def test_no_test_module_imports_another_test_module() -> None:
    files = sorted(TESTS.glob("*.py"))
    assert TESTS / "helpers.py" in files and TESTS / "conftest.py" in files
    found = {path.name: bad for path in files if (bad := _test_module_imports(path.read_text()))}
    assert found == {}, f"move what these share into tests/helpers.py: {found}"


def test_ci_runs_the_readmes_full_test_command() -> None:
    """`.ci/run` calls the README's test command verbatim, and that command runs every tier."""
    ci = (TESTS.parent / ".ci" / "run").read_text()
    readme = (TESTS.parent / "README.md").read_text()
    commands = [line for line in ci.splitlines() if "-m pytest" in line]
    assert len(commands) == 1, commands
    assert commands[0] in readme.splitlines()
    # A later -m replaces the fast tier's `-m "not slow and not cluster"` from addopts.
    assert '-m "slow or not slow"' in commands[0] and "--durations=" in commands[0]
