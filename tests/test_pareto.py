"""The Pareto front from DuckDB equals a brute-force computation on the same rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analysis.pareto import headline_eps, pareto_front, trial_points
from analysis.query import connect
from grid.store import ParquetSink
from tests.helpers import brute_force_front, rows_for


def _write(tmp_path: Path, table: list[tuple[str, float, float, float, int]]) -> None:
    sink = ParquetSink(str(tmp_path), "t", "r")
    for key, pgd, fgsm, worst, nbytes in table:
        robust = {("pgd", 0.1): pgd, ("fgsm", 0.1): fgsm, ("pgd", 0.05): 0.99}
        robust |= {("worst", 0.1): worst, ("worst", 0.05): 0.99}
        sink(key, rows_for(key, robust, 0.99, nbytes))


def test_hand_drawn_table(tmp_path: Path) -> None:
    # key, pgd@0.1, fgsm@0.1, worst@0.1 (the stored per-example worst row: at most the
    # smaller of the two, below it where they broke different examples), bytes
    _write(
        tmp_path,
        [
            ("a", 0.50, 0.60, 0.45, 1000),  # worst 0.45: front (smallest)
            ("b", 0.70, 0.40, 0.40, 2000),  # worst 0.40: dominated by a
            ("c", 0.80, 0.75, 0.70, 3000),  # worst 0.70: front
            ("d", 0.75, 0.90, 0.70, 3000),  # worst 0.70, same as c: both on the front (ties)
            ("e", 0.60, 0.60, 0.55, 5000),  # dominated by c
            ("f", 0.90, 0.95, 0.85, 9000),  # worst 0.85: front (most robust)
            # g: the min 0.95 would put it on the front; its worst row 0.80 does not
            ("g", 0.95, 0.95, 0.80, 9500),
        ],
    )
    con = connect(tmp_path)
    assert headline_eps(con) == 0.1
    assert list(pareto_front(con)["key"]) == ["a", "c", "d", "f"]
    assert list(pareto_front(con, attack="pgd")["key"]) == ["a", "b", "c", "f", "g"]
    assert list(pareto_front(con, attack="pgd", eps=0.05)["key"]) == ["a"]
    pts = trial_points(con).set_index("key")
    assert pts.loc["g", "robust_acc"] == 0.80 and pts.loc["g", "attacks"] == "fgsm,pgd"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_table_matches_brute_force(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    table = []
    for i in range(n):  # coarse values: many ties
        pgd, fgsm = int(rng.integers(0, 40)), int(rng.integers(0, 40))
        worst = int(rng.integers(0, min(pgd, fgsm) + 1))  # the AND is never above either
        table.append((f"k{i:03d}", pgd / 40, fgsm / 40, worst / 40, int(rng.integers(100, 400))))
    _write(tmp_path, table)
    con = connect(tmp_path)
    expected = brute_force_front([(k, w, b) for k, _, _, w, b in table])
    got = pareto_front(con)
    assert set(got["key"]) == expected
    assert len(trial_points(con)) == n
    assert list(got["bytes"]) == sorted(got["bytes"])


def test_missing_results_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such folder"):
        connect(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no robustgrid rows"):
        connect(tmp_path / "empty")


# ---- three objectives (objective.clean): the sweep against a brute force --------------------


def _brute_force_nondominated(values: list[list[float]], maximize: list[bool]) -> list[bool]:
    """Dominance as defined, pair by pair in plain Python: q dominates p when q is no worse in
    every objective and better in one; any comparison with a NaN is false."""

    def no_worse(a: float, b: float, up: bool) -> bool:
        return a >= b if up else a <= b

    def better(a: float, b: float, up: bool) -> bool:
        return a > b if up else a < b

    keep = []
    for p in values:
        keep.append(
            not any(
                all(no_worse(a, b, up) for a, b, up in zip(q, p, maximize, strict=True))
                and any(better(a, b, up) for a, b, up in zip(q, p, maximize, strict=True))
                for q in values
            )
        )
    return keep


@pytest.mark.parametrize("seed", range(8))
def test_three_objective_front_matches_brute_force(seed: int) -> None:
    from analysis.pareto import nondominated

    rng = np.random.default_rng(seed)
    for n in (0, 1, 2, 7, 60, 400):
        levels = int(rng.integers(2, 12))  # coarse values: many ties and repeated points
        values = rng.integers(0, levels, size=(n, 3)).astype(float)
        if n > 3:
            values[rng.integers(0, n, 2)] = values[0]  # exact duplicates of one point
        if seed % 3 == 0 and n > 5:
            values[rng.integers(0, n), rng.integers(0, 3)] = np.nan
        maximize = [bool(b) for b in rng.integers(0, 2, 3)]
        want = _brute_force_nondominated(values.tolist(), maximize)
        got = nondominated(values, maximize)
        assert got.dtype == bool and got.tolist() == want, (seed, n, maximize)


def test_three_objective_pareto_front_matches_brute_force(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    sink = ParquetSink(str(tmp_path), "t", "r")
    table = []
    for i in range(120):
        key, worst = f"k{i:03d}", int(rng.integers(0, 10)) / 10
        clean, nbytes = int(rng.integers(5, 10)) / 10, int(rng.integers(1, 15)) * 100
        robust = {("pgd", 0.1): worst, ("worst", 0.1): worst}
        sink(key, rows_for(key, robust, clean, nbytes))
        table.append((key, worst, clean, nbytes))
    con = connect(tmp_path)
    objectives = {"robust_acc": "max", "bytes": "min", "clean_acc": "max"}
    got = pareto_front(con, objectives=objectives)
    keep = _brute_force_nondominated([[w, b, c] for _, w, c, b in table], [True, False, True])
    assert set(got["key"]) == {k for (k, *_), m in zip(table, keep, strict=True) if m}
    assert list(got["bytes"]) == sorted(got["bytes"])  # the points' order, as for two
