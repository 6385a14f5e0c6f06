"""The docs cannot drift silently: every link resolves and every command is documented
(tests/test_suite.py checks that the README's test command is the one CI runs)."""

from __future__ import annotations

import re
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
