"""The Parquet store: atomic, one row set per key, readers never see partial files."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from grid.store import SCHEMA, ParquetSink, completed_keys
from tests.helpers import rows_for


def test_write_read_and_replace(tmp_path: Path) -> None:
    sink = ParquetSink(str(tmp_path), "s", "abc123")
    path = sink(
        "k1", rows_for("k1", {("pgd", 0.1): 0.4, ("fgsm", 0.1): 0.5}, 0.9, 100, status="failed")
    )
    assert completed_keys(tmp_path) == set()  # failed rows do not count as done
    sink("k1", rows_for("k1", {("pgd", 0.1): 0.4, ("fgsm", 0.1): 0.5}, 0.9, 100))
    t = pq.read_table(path)
    assert t.schema.equals(SCHEMA)
    assert t.num_rows == 2  # replaced, not appended
    assert set(t.column("meta_study").to_pylist()) == {"s"}
    assert set(t.column("meta_git_rev").to_pylist()) == {"abc123"}
    assert completed_keys(tmp_path) == {"k1"}
    assert [p.name for p in (tmp_path / "rows").iterdir()] == ["k1.parquet"]  # no temp files left


def test_truncated_file_is_not_complete_and_is_overwritten(tmp_path: Path) -> None:
    sink = ParquetSink(str(tmp_path), "s", "r")
    path = Path(sink("k2", rows_for("k2", {("pgd", 0.1): 0.4}, 0.9, 100)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a crash mid-copy by some other tool
    assert completed_keys(tmp_path) == set()
    sink("k2", rows_for("k2", {("pgd", 0.1): 0.4}, 0.9, 100))
    assert completed_keys(tmp_path) == {"k2"}


def test_rows_must_carry_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="carries key 'other'"):
        ParquetSink(str(tmp_path), "s", "r")("k3", rows_for("other", {("pgd", 0.1): 0.4}, 0.9, 1))
    with pytest.raises(ValueError, match="no rows"):
        ParquetSink(str(tmp_path), "s", "r")("k3", [])
