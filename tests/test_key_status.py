"""Which keys count (grid.planning.key_class / tally): one rule for the run's plan, the
count of trials an interrupted run left, and ``grid status``, checked on hand-built rows."""

from __future__ import annotations

from pathlib import Path

from grid.planning import KeyTally, key_class, tally
from grid.store import ParquetSink, key_status
from tests.helpers import rows_for


def _store(tmp_path: Path) -> dict[str, str]:
    sink = ParquetSink(str(tmp_path), "t", "rev")
    sink("done", rows_for("done", {("pgd", 0.1): 0.5}, 0.9, 100))
    sink("half", [  # one row failed: the key failed
        *rows_for("half", {("pgd", 0.1): 0.5}, 0.9, 100),
        *rows_for("half", {("fgsm", 0.1): 0.5}, 0.9, 100, status="failed"),
    ])  # fmt: skip
    sink("old", rows_for("old", {("pgd", 0.1): 0.5}, 0.9, 100, revision=1))  # stale
    sink("older", rows_for("older", {("pgd", 0.1): 0.5}, 0.9, 100, revision=None))  # stale
    sink("oldfail", rows_for("oldfail", {("pgd", 0.1): 0.5}, 0.9, 100, "failed", revision=1))
    (tmp_path / "rows" / "broken.parquet").write_bytes(b"not parquet")  # unreadable: to run
    return key_status(tmp_path)


def test_stored_states(tmp_path: Path) -> None:
    assert _store(tmp_path) == {
        "done": "complete", "half": "failed", "old": "stale", "older": "stale", "oldfail": "stale",
    }  # fmt: skip


def test_which_keys_count(tmp_path: Path) -> None:
    status = _store(tmp_path)
    keys = ["done", "half", "old", "older", "oldfail", "broken", "new", "busy", "done"]
    assert tally(keys, status) == KeyTally(complete=1, failed=1, stale=3, running=0, todo=3)
    # a running key counts as running unless the store already says complete or failed
    got = tally(keys, status, running={"busy", "done", "half", "old"})
    assert got == KeyTally(complete=1, failed=1, stale=2, running=2, todo=2)
    assert got.total == 8  # each key once
    assert [key_class(status.get(k)) for k in ("done", "half", "old", "new")] == [
        "complete", "failed", "stale", "todo",
    ]  # fmt: skip
