"""The Parquet store: atomic, one row set per key, readers never see partial files."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grid.store import (
    SCHEMA,
    ParquetSink,
    compact,
    completed_keys,
    key_status,
    read_rows,
    scan,
)
from tests.helpers import rows_for
from trainables.config import RESULTS_REVISION
from trainables.headline import Headline
from trainables.rows import summarize


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


# ---------------------------------------------------------------------------
# The bulk reader (grid.store.scan) against the per-key code it replaces

OBJECTIVES = [
    Headline.of("worst", None, None, "encoded"),
    Headline.of("worst", 0.05, None, "encoded"),
    Headline.of("pgd", 0.1, None, "tflite"),
    Headline.of("worst", None, "2", "encoded"),
    Headline.of("square", 0.05, "inf", "encoded"),
    Headline.of("square", None, "2", "tflite"),
]


def _fill(folder: Path) -> set[str]:
    """A store with every kind of key the readers tell apart; returns the keys of readable files."""
    sink = ParquetSink(str(folder), "s", "r")
    # 'worst': the stored per-example worst rows, which can sit below every attack's own figure
    pgd = {("none", 0.0): 0.9, ("pgd", 0.05): 0.6, ("pgd", 0.1): 0.4, ("fgsm", 0.1): 0.5,
           ("worst", 0.05): 0.6, ("worst", 0.1): 0.35}  # fmt: skip
    sink("c0", rows_for("c0", pgd, 0.9, 100, tflite_bytes=80))
    sink("c1", rows_for("c1", pgd, 0.8, 90, fold=0, extra={"metric_masking_flags": "zero_grad"}))
    sink("f1", rows_for("f1", {("pgd", 0.1): 0.4}, 0.8, 90, status="failed", fold=1))
    mixed = rows_for("mx", {("pgd", 0.1): 0.3, ("worst", 0.1): 0.3}, 0.7, 50) + rows_for(
        "mx", {("fgsm", 0.1): 0.2}, 0.7, 50, status="failed"
    )
    sink("mx", mixed)
    sink("st", rows_for("st", pgd, 0.9, 100, revision=1))
    sink("na", rows_for("na", {("none", 0.0): 0.95}, 0.95, 70))
    inf = {"square": "inf", "worst": "inf"}
    two = rows_for("tn", {("square", 0.05): 0.5, ("worst", 0.05): 0.5}, 0.9, 60, norms=inf)
    l2 = {("square", 0.5): 0.3, ("square", 1.0): 0.1, ("worst", 0.5): 0.3, ("worst", 1.0): 0.1}
    two += rows_for("tn", l2, 0.9, 60, norms={"square": "2", "worst": "2"})
    sink("tn", two)
    # no pgd rows, and no worst rows (as a trial of an older revision): no 'worst' objective
    sink("fg", rows_for("fg", {("fgsm", 0.1): 0.5}, 0.9, 40, tflite_bytes=30))
    # A file from before results revisions: no `revision` column at all.
    old = pa.Table.from_pylist(rows_for("ol", pgd, 0.9, 100), schema=SCHEMA).drop_columns(
        ["revision"]
    )
    pq.write_table(old, folder / "rows" / "ol.parquet")
    # A row without attack_norm (written before it existed): the attack's own norm.
    sink("nn", rows_for("nn", {("square", 0.05): 0.45}, 0.9, 60, extra={"attack_norm": None}))
    bad = folder / "rows" / "tr.parquet"  # truncated: left out, its trial runs again
    sink("tr", rows_for("tr", pgd, 0.9, 100))
    bad.write_bytes(bad.read_bytes()[:300])
    return {"c0", "c1", "f1", "mx", "st", "na", "tn", "fg", "ol", "nn"}


def _brute_status(folder: Path) -> dict[str, str]:
    """key_status by hand: every file read with pyarrow, per-key files winning over compacted rows."""
    per_key: dict[str, list[dict[str, object]]] = {}
    merged: dict[str, list[dict[str, object]]] = {}
    for f in sorted((folder / "rows").glob("*.parquet")):
        try:
            rows = pq.read_table(f).to_pylist()
        except Exception:
            continue
        if f.name.startswith("compacted-"):
            for r in rows:
                merged.setdefault(str(r["key"]), []).append(r)
        elif rows:
            per_key[f.stem] = rows
    keys_with_file = {f.stem for f in (folder / "rows").glob("*.parquet")}
    found = per_key | {k: v for k, v in merged.items() if k not in keys_with_file}
    out = {}
    for key, rows in found.items():
        if {r.get("revision") for r in rows} != {RESULTS_REVISION}:
            out[key] = "stale"
        else:
            out[key] = "complete" if {r["status"] for r in rows} == {"complete"} else "failed"
    return out


def _check_against_per_key_code(folder: Path, keys: set[str]) -> None:
    assert key_status(folder) == _brute_status(folder)
    assert set(key_status(folder)) == keys
    for objective in OBJECTIVES:
        got = scan(folder, objective)
        assert set(got.summaries) == keys
        for key in keys:
            rows = read_rows(folder, key)
            assert rows is not None
            assert got.summaries[key] == summarize(rows, objective), (key, objective)
            assert got.reasons[key] == (rows[0]["reason"] or "")
    stale = scan(folder).stale
    assert stale == {"st": 1, "ol": 0}


def test_scan_equals_the_per_key_code(tmp_path: Path) -> None:
    keys = _fill(tmp_path)
    _check_against_per_key_code(tmp_path, keys)
    assert key_status(tmp_path)["fg"] == "complete"  # the store's rule; summarize says failed
    assert scan(tmp_path, OBJECTIVES[2]).summaries["fg"]["status"] == "failed"


def test_scan_reads_the_stored_worst_rows(tmp_path: Path) -> None:
    """'worst' is the trial's worst row (0.35 here), not the minimum of its attacks' (0.4)."""
    _fill(tmp_path)
    got = scan(tmp_path, OBJECTIVES[0]).summaries
    assert got["c0"]["robust_acc"] == 0.35 and got["c0"]["status"] == "complete"
    assert scan(tmp_path, OBJECTIVES[1]).summaries["c0"]["robust_acc"] == 0.6
    assert scan(tmp_path, OBJECTIVES[3]).summaries["tn"]["robust_acc"] == 0.1  # L2, largest eps
    assert got["tn"]["robust_acc"] == 0.5  # L-inf by default: never the L2 rows
    fg = got["fg"]  # attacks but no worst rows: no objective value, and the reason says so
    assert fg["status"] == "failed" and "no rows for the objective's attack worst" in fg["reason"]


def test_scan_and_read_rows_after_compaction(tmp_path: Path) -> None:
    keys = _fill(tmp_path)
    before = {k: read_rows(tmp_path, k) for k in keys}
    report = compact(tmp_path, max_keys=3)
    assert report.keys == 8  # complete and stale; f1 and mx (failed) stay, tr is unreadable
    assert report.kept == 3 and report.deleted == 8
    assert len(report.written) == 4  # files read 3 at a time in name order: 2 + 2 + 3 + 1 merged
    names = sorted(p.name for p in (tmp_path / "rows").iterdir())
    assert [n for n in names if not n.startswith("compacted-")] == [
        "f1.parquet",
        "mx.parquet",
        "tr.parquet",
    ]
    # Same rows in the same order; a column an old file lacked now reads as null (as readers take it).
    assert {k: _filled(read_rows(tmp_path, k)) for k in keys} == {
        k: _filled(v) for k, v in before.items()
    }
    _check_against_per_key_code(tmp_path, keys)
    # A crash between the steps leaves a key in both: its per-key file wins, here a newer one.
    sink = ParquetSink(str(tmp_path), "s", "r")
    sink("c0", rows_for("c0", {("pgd", 0.1): 0.11, ("worst", 0.1): 0.11}, 0.5, 7))
    _check_against_per_key_code(tmp_path, keys)
    assert scan(tmp_path, OBJECTIVES[0]).summaries["c0"]["robust_acc"] == 0.11
    # The next compaction finishes the interrupted one: the key ends in one compacted file.
    again = compact(tmp_path)
    assert again.finished == 1 and again.keys == 0
    assert _filled(read_rows(tmp_path, "c0")) == _filled(before["c0"])


def _filled(rows: list[dict[str, object]] | None) -> list[dict[str, object]]:
    assert rows is not None
    return [dict.fromkeys(SCHEMA.names) | r for r in rows]
