"""The headline robust accuracy has one definition (trainables/headline.py): its Python rule
and the SQL generated from it agree on hand-built rows, and a change to the rule in that one
place reaches every reader (the worker's summary, the store's scan, the analysis)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

import analysis
from analysis.pareto import trial_points
from grid.store import SCHEMA, ParquetSink, scan
from tests.helpers import rows_for
from trainables import config
from trainables.headline import Headline
from trainables.rows import summarize

Rows = list[dict[str, Any]]


def _legacy(rows: Rows, *attacks: str) -> Rows:
    """Rows of ``attacks`` as written before ``attack_norm`` existed (the column empty)."""
    return [{**r, "attack_norm": None} if r["attack"] in attacks else r for r in rows]


def _trials() -> dict[str, Rows]:
    k1 = rows_for(
        "k1",
        {
            ("pgd", 0.05): 0.7, ("pgd", 0.1): 0.5, ("worst", 0.05): 0.65, ("worst", 0.1): 0.4,
            ("cw_l2", 0.5): 0.3, ("fgsm", 0.1): 0.6,
        },
        0.9, 1000, norms={"cw_l2": "2"},
    )  # fmt: skip
    k1 += rows_for("k1", {("worst", 0.5): 0.3}, 0.9, 1000, norms={"worst": "2"})
    k2 = rows_for(
        "k2", {("fgsm", 0.1): 0.55, ("fgsm", 0.2): 0.35, ("pgd", 0.1): 0.45, ("worst", 0.1): 0.45},
        0.8, 500,
    )  # fmt: skip
    return {"k1": _legacy(k1, "cw_l2", "fgsm"), "k2": _legacy(k2, "fgsm")}


# (headline, expected value per key), by hand from the rows above
CASES: list[tuple[Headline, dict[str, float | None]]] = [
    (Headline(), {"k1": 0.4, "k2": 0.45}),  # worst, L-inf, each trial's largest eps
    (Headline("worst", 0.05), {"k1": 0.65, "k2": None}),
    (Headline("worst", None, "2"), {"k1": 0.3, "k2": None}),  # never the L-inf rows
    (Headline("pgd", 0.1, "inf", "tflite"), {"k1": 0.5, "k2": 0.45}),
    (Headline("cw_l2", None, "2"), {"k1": 0.3, "k2": None}),  # no attack_norm: cw_l2 is L2
    (Headline("cw_l2", None, "inf"), {"k1": None, "k2": None}),
    (Headline("fgsm", None, "inf"), {"k1": 0.6, "k2": 0.35}),  # no attack_norm: fgsm is L-inf
    (Headline("fgsm", None, "2"), {"k1": None, "k2": None}),
]


def _sql(h: Headline, trials: dict[str, Rows]) -> dict[str, float | None]:
    con = duckdb.connect()
    con.register("t", pa.Table.from_pylist([r for rs in trials.values() for r in rs], SCHEMA))
    got = dict(con.execute(f"SELECT key, robust FROM ({h.sql('t')})").fetchall())
    return {k: got.get(k) for k in trials}


def _stored(tmp_path: Path, trials: dict[str, Rows]) -> Path:
    sink = ParquetSink(str(tmp_path), "t", "rev")
    for key, rows in trials.items():
        sink(key, [dict(r) for r in rows])
    return tmp_path


@pytest.mark.parametrize(("headline", "want"), CASES)
def test_python_and_sql_agree_on_hand_built_rows(
    headline: Headline, want: dict[str, float | None], tmp_path: Path
) -> None:
    trials = _trials()
    assert {k: headline.pick(rows) for k, rows in trials.items()} == want
    assert _sql(headline, trials) == want
    stored = scan(_stored(tmp_path, trials), headline).summaries
    for key, rows in trials.items():
        assert stored[key] == summarize(rows, headline)
        assert stored[key]["robust_acc"] == want[key]
        assert stored[key]["bytes"] == rows[0][headline.size_column]


def test_changing_the_rule_in_one_place_reaches_every_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Declare FGSM an L2 attack by default (trainables.config.DEFAULT_NORM, which the
    headline's rule reads): rows without attack_norm move to L2 in the worker's summary,
    the store's scan and the analysis alike."""
    trials = _trials()
    folder = _stored(tmp_path, trials)
    linf, l2 = Headline("fgsm", None, "inf"), Headline("fgsm", None, "2")
    assert scan(folder, linf).summaries["k2"]["robust_acc"] == 0.35

    monkeypatch.setitem(config.DEFAULT_NORM, config.AttackName.fgsm, "2")
    want = {"k1": 0.6, "k2": 0.35}
    assert {k: l2.pick(rows) for k, rows in trials.items()} == want
    assert {k: linf.pick(rows) for k, rows in trials.items()} == {"k1": None, "k2": None}
    assert _sql(l2, trials) == want
    assert {k: s["robust_acc"] for k, s in scan(folder, l2).summaries.items()} == want
    assert all(s["robust_acc"] is None for s in scan(folder, linf).summaries.values())
    con = analysis.connect(folder)
    norms = con.execute("SELECT DISTINCT attack_norm FROM rows WHERE attack = 'fgsm'").fetchall()
    assert norms == [("2",)]
    pts = trial_points(con, "fgsm", 0.1, norm="2")
    assert dict(zip(pts.key, pts.robust_acc, strict=True)) == {"k1": 0.6, "k2": 0.55}


def test_the_analysis_reads_the_same_headline(tmp_path: Path) -> None:
    """The fronts' per-trial point (analysis.pareto) at a named eps is :meth:`Headline.pick`'s."""
    trials = _trials()
    con = analysis.connect(_stored(tmp_path, trials))
    for h in (Headline("worst", 0.1), Headline("pgd", 0.05), Headline("cw_l2", 0.5, "2")):
        assert h.eps is not None
        pts = trial_points(con, h.attack, h.eps, norm=h.norm)
        got = dict(zip(pts.key, pts.robust_acc, strict=True))
        want = {k: h.pick(rows) for k, rows in trials.items()}
        assert got == {k: v for k, v in want.items() if v is not None}, h


def test_a_headline_names_a_known_norm_and_size() -> None:
    with pytest.raises(ValueError, match="norm"):
        Headline("pgd", 0.1, "1")
    with pytest.raises(ValueError, match="size"):
        Headline("pgd", 0.1, "inf", "flash")
    assert Headline.of("cw_l2").norm == "2" and Headline.of("worst").norm == "inf"
