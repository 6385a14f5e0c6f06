"""The Pareto front from DuckDB equals a brute-force computation on the same rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analysis.pareto import headline_eps, pareto_front, trial_points
from analysis.query import connect
from grid.store import ParquetSink
from tests.helpers import brute_force_front, rows_for


def _write(tmp_path: Path, table: list[tuple[str, float, float, int]]) -> None:
    sink = ParquetSink(str(tmp_path), "t", "r")
    for key, pgd, fgsm, nbytes in table:
        sink(
            key,
            rows_for(
                key, {("pgd", 0.1): pgd, ("fgsm", 0.1): fgsm, ("pgd", 0.05): 0.99}, 0.99, nbytes
            ),
        )


def test_hand_drawn_table(tmp_path: Path) -> None:
    # key, pgd@0.1, fgsm@0.1, bytes; worst = min(pgd, fgsm)
    _write(
        tmp_path,
        [
            ("a", 0.50, 0.60, 1000),  # worst 0.50: front (smallest)
            ("b", 0.70, 0.40, 2000),  # worst 0.40: dominated by a
            ("c", 0.80, 0.75, 3000),  # worst 0.75: front
            ("d", 0.75, 0.90, 3000),  # worst 0.75, same as c: both on the front (ties)
            ("e", 0.60, 0.60, 5000),  # dominated by c
            ("f", 0.90, 0.95, 9000),  # worst 0.90: front (most robust)
        ],
    )
    con = connect(tmp_path)
    assert headline_eps(con) == 0.1
    assert list(pareto_front(con)["key"]) == ["a", "c", "d", "f"]
    assert list(pareto_front(con, attack="pgd")["key"]) == ["a", "b", "c", "f"]
    assert list(pareto_front(con, attack="pgd", eps=0.05)["key"]) == ["a"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_table_matches_brute_force(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    table = [
        (
            f"k{i:03d}",
            float(rng.integers(0, 40) / 40),
            float(rng.integers(0, 40) / 40),
            int(rng.integers(100, 400)),
        )
        for i in range(n)
    ]  # coarse values: many ties
    _write(tmp_path, table)
    con = connect(tmp_path)
    expected = brute_force_front([(k, min(p, f), b) for k, p, f, b in table])
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
