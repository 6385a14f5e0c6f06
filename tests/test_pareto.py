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
