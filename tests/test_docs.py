"""The docs cannot drift silently: every link resolves and every command is documented
(tests/test_suite.py checks that the README's test command is the one CI runs)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from grid.cli import build_parser

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "analysis" / "SCHEMA.md"]
LINK = re.compile(r"\[[^\]]+\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, broken


def test_every_command_is_in_the_guide() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "cmd" or getattr(a, "choices", None))
    commands = sorted(sub.choices)  # type: ignore[arg-type]
    guide = (ROOT / "docs" / "guide.md").read_text()
    assert len(commands) >= 9
    assert [c for c in commands if f"| `grid {c}" not in guide] == []


def _layout_rows() -> dict[str, str]:
    """docs/development.md's layout table: module path -> its description."""
    text = (ROOT / "docs" / "development.md").read_text()
    return {
        m.group(1): m.group(2).strip()
        for m in re.finditer(r"^\| `([\w/]+\.py)` \|(.*)\|\s*$", text, flags=re.M)
    }


def test_the_layout_table_lists_every_module_with_a_line() -> None:
    listed = _layout_rows()
    tree = sorted(
        str(p.relative_to(ROOT))
        for pkg in ("grid", "trainables", "analysis")
        for p in (ROOT / pkg).rglob("*.py")
    )
    missing = [m for m in tree if m not in listed]
    gone = sorted(m for m in listed if m not in tree)
    empty = sorted(m for m, what in listed.items() if m in tree and len(what) < 10)
    assert not missing, (
        "docs/development.md's layout table has no row for: "
        + ", ".join(missing)
        + " (add `| `module` | what it holds |` rows, one line each)"
    )
    assert not gone, f"docs/development.md's layout table lists modules that do not exist: {gone}"
    assert not empty, f"docs/development.md's layout table: rows without a description: {empty}"


def test_the_guide_lists_every_model_of_the_registry() -> None:
    from trainables.config import ModelName

    guide = (ROOT / "docs" / "guide.md").read_text()
    field = next(ln for ln in guide.splitlines() if ln.startswith("| `model` |"))
    table = guide[guide.index("### Models") :]
    names = [m.value for m in ModelName]
    assert len(names) >= 4
    assert [n for n in names if f"`{n}`" not in field] == []  # the study-file field's row
    assert [n for n in names if f"| `{n}` |" not in table] == []  # the models' table


def test_cited_files_exist() -> None:
    """A ``*.md`` the code or pyproject.toml cites is in the project (no DESIGN.md of another tree)."""
    sources = [ROOT / "pyproject.toml"] + [
        p
        for pkg in ("grid", "trainables", "analysis", "benchmarks")
        for p in (ROOT / pkg).rglob("*.py")
    ]
    cited = {
        (str(src.relative_to(ROOT)), name)
        for src in sources
        for name in re.findall(r"[\w./-]+\.md\b", src.read_text())
    }
    assert cited  # the pattern finds the citations there are
    missing = sorted(
        (src, name)
        for src, name in cited
        if not any((d / name).exists() for d in (ROOT, ROOT / "docs"))
    )
    assert missing == []


def _shape(line: str) -> str:
    """A printed line with its figures and axis values masked: what a sample must keep."""
    line = re.sub(r"=\S+", "=V", line)
    line = re.sub(r"\d[\d,.]*", "#", line).replace("#m#s", "#s")  # ETA 3m24s or 45s
    return " ".join(line.split())


def test_the_readmes_sample_is_what_grid_run_prints(
    smoke_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """Each line of the README's sample output (figures aside) is a line `grid run` printed
    for a tiny study; the front's column header word for word."""
    _, proc = smoke_run
    readme = (ROOT / "README.md").read_text()
    after = readme[readme.index("`grid run` prints a line per finished trial") :]
    block = after[after.index("```\n") + 4 : after.index("\n```", after.index("```\n") + 4)]
    sample = [ln for ln in block.splitlines() if ln.strip() and ln.strip() != "..."]
    printed = proc.stdout.splitlines()
    header = next(ln for ln in sample if ln.split()[:2] == ["bytes", "robust"])
    assert header in printed
    shapes = {_shape(ln) for ln in printed}
    assert [ln for ln in sample if _shape(ln) not in shapes] == []
    assert any(ln.startswith("front ") for ln in sample) and len(sample) >= 6
