"""Per-example worst cases (trainables/worst.py) against hand-built masks, and their readers.

The oracle in each test is written out here: per position, robust only if every attack
that ran at that (norm, eps) left it robust, over the positions all of them attacked.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import analysis
from grid.store import ParquetSink, scan
from tests.helpers import mask_hex, rows_for
from trainables.headline import Headline
from trainables.worst import WorstCase, worst_cases


@dataclass(frozen=True)
class R:
    """An attack's result as ``trainables.attacks.AttackResult`` carries it (the fields used)."""

    attack: str
    norm: str
    eps: float
    positions: np.ndarray
    clean: np.ndarray
    robust: np.ndarray


def _r(attack: str, norm: str, eps: float, positions: list[int], clean: str, robust: str) -> R:
    """Masks as strings of 0/1, one character per position."""
    assert len(positions) == len(clean) == len(robust)
    return R(attack, norm, eps, np.array(positions, np.int64),
             np.array([c == "1" for c in clean]), np.array([c == "1" for c in robust]))  # fmt: skip


def _digest(pos: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(pos, "<i8").tobytes()).hexdigest()[:16]


# One seeded order of a 10-example test split; attacks take prefixes of it.
ORDER = [7, 2, 9, 0, 4, 1, 8, 3, 6, 5]


def test_worst_is_the_and_over_the_shortest_prefix() -> None:
    results = [
        # pgd on 10, square on 6 (the common prefix), fgsm on 8; deepfool (minimal, L2) at 2 eps.
        _r("pgd", "inf", 0.1, ORDER, "1111111110", "1101101100"),
        _r("square", "inf", 0.1, ORDER[:6], "111111", "1110110"[:6]),
        _r("fgsm", "inf", 0.1, ORDER[:8], "11111111", "11111011"),
        _r("pgd", "inf", 0.05, ORDER, "1111111110", "1111111100"),  # one attack at 0.05
        _r("deepfool", "2", 0.1, ORDER[:6], "111111", "011111"),
        _r("deepfool", "2", 0.5, ORDER[:6], "111111", "010000"),
    ]
    got = {(w.norm, w.eps): w for w in worst_cases(results, _digest)}
    assert set(got) == {("inf", 0.1), ("inf", 0.05), ("2", 0.1), ("2", 0.5)}  # norms never mixed

    # The oracle: per position of the shortest subset, robust under all three L-inf attacks at 0.1.
    by_pos = [
        {int(p): bool(m) for p, m in zip(r.positions, r.robust, strict=True)} for r in results[:3]
    ]
    expected = [all(d[p] for d in by_pos) for p in ORDER[:6]]
    w = got[("inf", 0.1)]
    assert list(w.positions) == ORDER[:6]  # the shortest prefix, in its order
    assert list(w.robust) == expected == [True, True, False, False, True, False]
    assert w.samples == 6 and w.robust_correct == 3 and w.robust_acc == 0.5
    # The minimum of the three accuracies (pgd 6/10, square 5/6, fgsm 7/8) is 0.6: above the AND.
    assert min(r.robust.mean() for r in results[:3]) == 0.6 > w.robust_acc
    assert w.clean_acc == 1.0 and w.subset_hash == _digest(np.array(ORDER[:6]))
    assert w.robust_mask == mask_hex(expected)
    assert w.attacks == ("fgsm", "pgd", "square") and (w.attack, w.kind) == ("worst", "worst")
    # A (norm, eps) with a single attack: equal to it, on its whole subset.
    single = got[("inf", 0.05)]
    assert list(single.robust) == list(results[3].robust) and single.samples == 10
    assert single.clean_acc == 0.9  # the last example was misclassified clean
    # Minimal-perturbation attacks' per-eps results count at each eps.
    assert list(got[("2", 0.5)].robust) == [False, True, False, False, False, False]


def test_robust_needs_clean_and_positions_need_not_be_nested() -> None:
    """Different attack seeds: the intersection, in the shortest attack's order."""
    a = _r("pgd", "inf", 0.1, [3, 1, 4, 5, 9], "11011", "11011")
    b = _r("square", "inf", 0.1, [9, 4, 1, 0], "1011", "1011")  # shortest: its order
    (w,) = worst_cases([a, b], _digest)
    assert list(w.positions) == [9, 4, 1]
    # 9: robust in both; 4: misclassified clean (by a; b agrees: the same model); 1: robust in both
    assert list(w.clean) == [True, False, True] and list(w.robust) == [True, False, True]
    assert worst_cases([a, _r("fgsm", "inf", 0.1, [0, 2], "11", "11")], _digest) == []


def test_worst_rows_carry_the_masks_and_intervals() -> None:
    """The rows the trial writes from a worst case (trainables.rows.complete_rows, TF-free)."""
    res = [
        _r("pgd", "inf", 0.1, ORDER, "1111111111", "1101101101"),
        _r("square", "inf", 0.1, ORDER[:4], "1111", "1011"),
    ]
    worst = worst_cases(res, _digest)
    rows = _rows_of(res, worst)
    assert [r["attack"] for r in rows] == ["pgd", "square", "worst"]
    w = rows[-1]
    assert (w["attack"], w["attack_kind"], w["attack_norm"], w["eps"]) == (
        "worst",
        "worst",
        "inf",
        0.1,
    )
    assert w["metric_samples"] == 4 and w["metric_robust_acc"] == 0.5  # 1 0 0 1 by hand
    assert w["metric_robust_mask"] == "90"  # 1001 0000
    assert w["meta_attack_subset"] == _digest(np.array(ORDER[:4]))
    lo, hi = analysis.wilson(2, 4)
    assert (w["metric_robust_acc_lo"], w["metric_robust_acc_hi"]) == pytest.approx((lo, hi))
    assert w["metric_attack_clean_acc"] == 1.0 and w["meta_attack_s"] == 0.0


def _rows_of(res: list[R], worst: list[WorstCase]) -> list[dict[str, object]]:
    """The trial's rows for hand-built results (stand-ins with the fields a row takes)."""
    from trainables.config import TrialConfig
    from trainables.footprint import ModelFootprint
    from trainables.rows import complete_rows

    fp = ModelFootprint((), params=1, nonzero=1, bytes=1, bytes_dense=1, bytes_sparse=1,
                        bytes_clustered=1)  # fmt: skip
    full = [_Full(r) for r in res]
    return complete_rows(
        TrialConfig(), "t", clean_correct=9, n_test=10, footprint=fp, jacobian_fro2=0.0,
        results=[*full, *worst], train_s=0.0, total_s=0.0, layer_bits={},
    )  # fmt: skip


class _Full:
    """An R with the rest of AttackResult's row fields."""

    def __init__(self, r: R) -> None:
        self.__dict__.update(r.__dict__)
        self.kind, self.samples, self.seconds = "white", len(r.positions), 1.0
        self.clean_acc, self.robust_acc = float(r.clean.mean()), float(r.robust.mean())
        self.clean_correct, self.robust_correct = int(r.clean.sum()), int(r.robust.sum())
        self.median_norm = self.steps = self.restarts = None
        self.robust_mask, self.subset_hash = mask_hex(r.robust), _digest(r.positions)


# ---- McNemar on 'worst' with attacks of different sample counts -------------------------


def test_mcnemar_on_worst_pairs_the_common_prefix(tmp_path: Path) -> None:
    """As in the paper studies: Square on fewer examples (4) than PGD (10); the two configs'
    worst rows pair on the same 4 examples, and McNemar runs there."""
    sink = ParquetSink(str(tmp_path), "t", "r")
    masks = {  # per config: (pgd on 10, square on the first 4)
        "A": ("1111011101", "1011"),
        "B": ("1010111111", "1110"),
    }
    for key, (pgd, square) in masks.items():
        res = [
            _r("pgd", "inf", 0.1, ORDER, "1" * 10, pgd),
            _r("square", "inf", 0.1, ORDER[:4], "1" * 4, square),
        ]
        (w,) = worst_cases(res, _digest)
        robust = {("pgd", 0.1): res[0].robust.mean(), ("square", 0.1): res[1].robust.mean(),
                  ("worst", 0.1): w.robust_acc}  # fmt: skip
        rows = rows_for(
            key, robust, 1.0, 100,
            masks={("pgd", 0.1): res[0].robust, ("square", 0.1): res[1].robust, ("worst", 0.1): w.robust},
        )  # fmt: skip
        subsets = {
            "pgd": _digest(np.array(ORDER)),
            "square": _digest(np.array(ORDER[:4])),
            "worst": w.subset_hash,
        }
        for r in rows:
            r["meta_attack_subset"] = subsets[str(r["attack"])]
        sink(key, rows)
    con = analysis.connect(tmp_path)
    # By hand, on the first 4 examples: A = 1111 AND 1011 = 1011, B = 1010 AND 1110 = 1010:
    # b (A only) = 1 (the 4th), c (B only) = 0; p = 1.
    assert analysis.mcnemar(con, "A", "B", "worst", 0.1) == (1, 0, 1.0)
    # ... and the front and the driver's scan read the same worst rows (0.75 and 0.5).
    pts = analysis.trial_points(con).set_index("key")
    assert pts.robust_acc.to_dict() == {"A": 0.75, "B": 0.5}
    assert pts.samples.to_dict() == {"A": 4, "B": 4}
    got = scan(tmp_path, Headline()).summaries
    assert (got["A"]["robust_acc"], got["B"]["robust_acc"]) == (0.75, 0.5)


STUDY = """
name: worstcli
dataset: digits
model: digits_cnn
train: {epochs: 1}
axes:
  bits: [float, 4]
attacks:
  - {name: fgsm, eps: [0.1], samples: 60}
  - {name: pgd, eps: [0.1], samples: 30}
artifacts: false
"""


def test_grid_status_and_pareto_show_the_worst_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both trials' worst rows sit below the minimum of their attacks (0.40 and 0.30): the
    commands print the worst rows' figures, which the minimum could not give."""
    from grid.cli import main
    from grid.spec import load_study

    path = tmp_path / "worstcli.yaml"
    path.write_text(STUDY)
    study = load_study(path)
    folder = study.results_dir(str(tmp_path / "r"))
    sink = ParquetSink(str(folder), study.name, "r")
    figures = {"float": (0.50, 0.40, 0.35, 4000), "4": (0.45, 0.30, 0.25, 1000)}
    for t in study.trials():
        fgsm, pgd, worst, nbytes = figures[t.bits]
        rows = rows_for(
            t.key, {("fgsm", 0.1): fgsm, ("pgd", 0.1): pgd, ("worst", 0.1): worst}, 0.9, nbytes,
            bits=t.bits, study=study.name,
        )  # fmt: skip
        sink(t.key, rows)
    assert main(["status", str(path), "--results", str(tmp_path / "r")]) == 0
    status = capsys.readouterr().out
    assert "2 done" in status
    assert "0.350" in status and "0.250" in status  # the worst rows, both on the front
    assert "0.300" not in status and "0.400" not in status  # never the minimum
    assert main(["pareto", str(folder)]) == 0
    front = capsys.readouterr().out
    assert "worst case over the attacks (L-inf) at eps 0.1" in front
    assert "0.350" in front and "0.250" in front and "0.300" not in front
