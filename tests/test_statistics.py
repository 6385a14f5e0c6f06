"""Honest statistics in the analysis: every figure checked against a hand computation.

Tables are hand-made Parquet rows in the real schema (tests/helpers.rows_for);
the oracles are numbers worked out by hand (in the comments) or closed forms
written here independently of analysis.inference.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

import analysis
from analysis import plots
from analysis.pareto import format_front
from analysis.report import build_report
from grid.store import ParquetSink
from tests.helpers import config_rows, mask_hex, rows_for
from trainables.config import RESULTS_REVISION, TrialConfig
from trainables.rows import COLUMNS

ROOT = Path(__file__).parent.parent
Z = 1.959963984540054


def _wilson_hand(k: int, n: int) -> tuple[float, float]:
    """The Wilson interval in its count form: (k + z^2/2 -+ z sqrt(k(n-k)/n + z^2/4)) / (n + z^2)."""
    root = Z * math.sqrt(k * (n - k) / n + Z * Z / 4)
    return (k + Z * Z / 2 - root) / (n + Z * Z), (k + Z * Z / 2 + root) / (n + Z * Z)


# ---- Wilson -----------------------------------------------------------------------------


def test_wilson_against_hand_values() -> None:
    assert analysis.wilson(50, 100) == pytest.approx((0.4038, 0.5962), abs=5e-5)
    # 0/10: lo 0, hi z^2 / (n + z^2) = 3.8415 / 13.8415 = 0.27753
    assert analysis.wilson(0, 10) == pytest.approx((0.0, 3.841459 / 13.841459), abs=1e-6)
    assert analysis.wilson(10, 10) == pytest.approx((10 / 13.841459, 1.0), abs=1e-6)
    assert all(math.isnan(v) for v in analysis.wilson(0, 0))
    for k, n in [(1, 7), (30, 100), (123, 400), (999, 1000)]:
        assert analysis.wilson(k, n) == pytest.approx(_wilson_hand(k, n), abs=1e-12)


def _cv_table(tmp_path: Path) -> None:
    """Two folds; fold 0 attacks 100 examples, fold 1 attacks 200 (unequal on purpose)."""
    sink = ParquetSink(str(tmp_path), "t", "r")
    # key, bits, fold, robust, samples, clean, test samples
    for key, bits, fold, robust, n, clean, nt in [
        ("a0", "4", 0, 0.30, 100, 0.90, 300),
        ("a1", "4", 1, 0.20, 200, 0.80, 300),
        ("f0", "float", 0, 0.50, 100, 0.95, 300),
        ("f1", "float", 1, 0.40, 200, 0.90, 300),
    ]:
        sink(
            key,
            rows_for(
                key, {("pgd", 0.1): robust}, clean, 1000 if bits == "float" else 300,
                fold=fold, bits=bits, folds=2, samples=n, test_samples=nt,
            ),
        )  # fmt: skip


def test_points_carry_wilson_intervals_of_pooled_counts(tmp_path: Path) -> None:
    _cv_table(tmp_path)
    con = analysis.connect(tmp_path)
    trial = analysis.trial_points(con, "pgd", 0.1).set_index("key")
    assert (trial.loc["a0", "robust_lo"], trial.loc["a0", "robust_hi"]) == pytest.approx(
        _wilson_hand(30, 100)
    )
    assert (trial.loc["a1", "clean_lo"], trial.loc["a1", "clean_hi"]) == pytest.approx(
        _wilson_hand(240, 300)
    )
    cfg = analysis.trial_points(con, "pgd", 0.1, per="config").set_index("bits")
    q = cfg.loc["4"]
    assert q.robust_acc == pytest.approx(0.25)  # the mean of the folds' accuracies
    # The interval of the pooled count: (30 + 40) / (100 + 200), not of 0.25 or of n = 100.
    assert (q.robust_k, q.samples) == (70, 300)
    assert (q.robust_lo, q.robust_hi) == pytest.approx(_wilson_hand(70, 300))
    assert (q.clean_lo, q.clean_hi) == pytest.approx(_wilson_hand(270 + 240, 600))
    front = analysis.pareto_front(con, "pgd", 0.1, per="config")
    assert {"robust_lo", "robust_hi"} <= set(front.columns)
    curve = analysis.robustness_curve(con, attack="pgd", by=["cfg_bits"])
    c = curve[(curve.cfg_bits == "4") & (curve.eps == 0.1)].iloc[0]
    assert (c.lo, c.hi) == pytest.approx(_wilson_hand(70, 300))
    # Two configs in one group share examples: no interval.
    pooled = analysis.robustness_curve(con, attack="pgd", by=[])
    assert pooled.lo.isna().all()
    # The same config's folds in a second study attack the same examples again: no interval.
    other = ParquetSink(str(tmp_path / "s2"), "s2", "r")
    for key, fold, robust, n in [("b0", 0, 0.25, 100), ("b1", 1, 0.3, 200)]:
        other(key, rows_for(key, {("pgd", 0.1): robust}, 0.9, 300, fold=fold, bits="4", folds=2,
                            samples=n, test_samples=300, study="s2"))  # fmt: skip
    both = analysis.connect(tmp_path / "**" / "*.parquet")
    again = analysis.robustness_curve(both, attack="pgd", by=["cfg_bits"])
    assert again[(again.cfg_bits == "4") & (again.eps == 0.1)].lo.isna().all()


def test_plots_draw_the_intervals(tmp_path: Path) -> None:
    _cv_table(tmp_path)
    con = analysis.connect(tmp_path)
    pts = analysis.trial_points(con, "pgd", 0.1, per="config")
    fig = plots.pareto_scatter(pts, analysis.pareto_front(con, "pgd", 0.1, per="config"))
    bars = [c for c in fig.axes[0].containers if type(c).__name__ == "ErrorbarContainer"]
    assert bars  # error bars drawn
    segs = np.concatenate([np.asarray(s) for b in bars for s in b.lines[2][0].get_segments()])
    lo, hi = _wilson_hand(70, 300)
    assert np.isclose(segs[:, 1], lo).any() and np.isclose(segs[:, 1], hi).any()
    assert "smallest encoding" in fig.axes[0].get_xlabel()
    curve = analysis.robustness_curve(con, attack="pgd", by=["cfg_bits"])
    fig = plots.robustness_curves(curve)
    assert fig.axes[0].get_title() == "pgd (L-inf)"
    bands = fig.axes[0].collections
    ys = np.concatenate([p.vertices[:, 1] for b in bands for p in b.get_paths()])
    assert np.isclose(ys, lo).any() and np.isclose(ys, hi).any()


# ---- McNemar ----------------------------------------------------------------------------


def _mask_table(tmp_path: Path) -> None:
    """20 attacked examples; A robust on 0..9, B on 0..8, C on 0..2 and 10..15, D on 0 and 11..15."""
    sink = ParquetSink(str(tmp_path), "t", "r")
    a = [i < 10 for i in range(20)]
    b = [i < 9 for i in range(20)]
    c = [i < 3 or 10 <= i < 16 for i in range(20)]
    d = [i == 0 or 11 <= i < 16 for i in range(20)]
    for key, m, subset in [("A", a, "s1"), ("B", b, "s1"), ("C", c, "s1"), ("D", d, "s1"),
                           ("E", a, "s2")]:  # fmt: skip
        acc = float(np.mean(m))
        sink(
            key,
            rows_for(  # the worst row: the AND of two equal masks, the same mask
                key, {("pgd", 0.1): acc, ("fgsm", 0.1): acc, ("worst", 0.1): acc}, 0.9, 100,
                masks={("pgd", 0.1): m, ("fgsm", 0.1): m, ("worst", 0.1): m}, subset=subset,
            ),
        )  # fmt: skip


def test_mcnemar_exact_against_hand_binomials(tmp_path: Path) -> None:
    _mask_table(tmp_path)
    con = analysis.connect(tmp_path)
    # A vs B: b = 1 (example 9), c = 0: p = 2 P(X <= 0), X ~ Bin(1, 1/2) = 2 * 1/2 = 1.
    assert analysis.mcnemar(con, "A", "B", "pgd", 0.1) == (1, 0, 1.0)
    # A vs C: b = 7 (3..9), c = 6 (10..15): n = 13, min 6: P(X <= 6) = 1/2 exactly: p = 1.
    assert analysis.mcnemar(con, "A", "C", "pgd", 0.1) == (7, 6, 1.0)
    # A vs D: A only 1..9 (9), D only 11..15 (5): n = 14,
    # P(X <= 5) = (1 + 14 + 91 + 364 + 1001 + 2002) / 2^14 = 3473 / 16384; p = 6946 / 16384.
    r = analysis.mcnemar(con, "A", "D", "pgd", 0.1)
    assert (r.b, r.c) == (9, 5)
    assert r.p_value == pytest.approx(6946 / 16384, abs=1e-12)
    # b = 1, c = 6 by hand: 2 (1 + 7) / 128 = 0.125
    assert analysis.mcnemar_exact(1, 6) == pytest.approx(0.125)
    assert analysis.mcnemar_exact(0, 0) == 1.0
    # 'worst': the stored worst rows (the AND of the attacks' masks, the same mask here).
    assert analysis.mcnemar(con, "A", "D", "worst", 0.1) == r
    with pytest.raises(ValueError, match=r"trials 'A' and 'E' attacked different examples.*s1.*s2"):
        analysis.mcnemar(con, "A", "E", "pgd", 0.1)


def test_mask_encoding_is_packbits_hex() -> None:
    from analysis.inference import unpack_mask

    m = [True, False, True, True, False, False, False, False, True, True]
    assert mask_hex(m) == "b0c0"  # 1011 0000 | 1100 0000, by hand
    assert list(unpack_mask("b0c0", 10)) == m
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_mask("b0", 10)


# ---- corrected t, Holm, pairing ---------------------------------------------------------


def test_corrected_t_against_hand_computation() -> None:
    d = [0.02, 0.05, -0.01, 0.04, 0.03]
    # mean 0.026; squared deviations 36+576+1296+196+16 = 2120 (x 1e-8): s^2 = 0.00053;
    # 5-fold CV: variance (1/5 + 1/4) s^2 = 0.0002385; t = 0.026 / 0.015443 = 1.68357.
    r = analysis.corrected_t(d, 5)
    assert r.t == pytest.approx(0.026 / math.sqrt(0.0002385), rel=1e-9)
    assert r.t == pytest.approx(1.68357, abs=1e-5)
    assert r.p_value == pytest.approx(2 * stats.t.sf(0.026 / math.sqrt(0.0002385), 4))
    assert r.half_ci95 == pytest.approx(stats.t.ppf(0.975, 4) * math.sqrt(0.0002385))
    # The uncorrected t would be 0.026 / sqrt(0.00053 / 5) = 2.525: smaller p, overconfident.
    assert r.t < 0.026 / math.sqrt(0.00053 / 5)
    assert math.isnan(analysis.corrected_t([0.1], 1).p_value)  # one holdout pair


def test_corrected_t_repeated_cv_bouckaert_frank() -> None:
    # 2 seeds x 3 folds: r = 2, k = 3, k r = 6 units.  mean 0.06 / 6 = 0.01; squared
    # deviations 0 + 4 + 4 + 1 + 1 + 0 = 10 (x 1e-4): s^2 = 0.001 / 5 = 0.0002;
    # variance (1/6 + 1/2) s^2 = 0.0002 * 2/3; t = 0.01 / 0.0115470 = sqrt(3)/2, 5 df.
    d = [0.01, 0.03, -0.01, 0.02, 0.00, 0.01]
    r = analysis.corrected_t(d, 3, repetitions=2)
    assert r.t == pytest.approx(math.sqrt(3) / 2, rel=1e-9)
    assert r.p_value == pytest.approx(2 * stats.t.sf(math.sqrt(3) / 2, 5), rel=1e-9)
    assert r.half_ci95 == pytest.approx(stats.t.ppf(0.975, 5) * math.sqrt(0.0002 * 2 / 3))
    assert "2 x 3-fold" in r.test
    # r = 1 (the default) is Nadeau and Bengio's: same formula with k r = k.
    assert analysis.corrected_t(d[:3], 3) == analysis.corrected_t(d[:3], 3, repetitions=1)
    with pytest.raises(ValueError, match=r"6 deltas.*3-fold"):  # more deltas than units
        analysis.corrected_t(d, 3)


def test_corrected_t_seeded_holdouts_are_random_subsampling() -> None:
    # 4 seeded holdouts of test fraction 0.2: n_test/n_train = 0.25.  d: mean 0.025; squared
    # deviations 25 + 625 + 1225 + 225 = 2100 (x 1e-6): s^2 = 0.0007; variance
    # (1/4 + 0.25) s^2 = 0.00035; t = 0.025 / 0.0187083 = 1.336306, 3 df.
    d = [0.02, 0.05, -0.01, 0.04]
    r = analysis.corrected_t(d, 1, repetitions=4, test_train=0.25)
    assert r.t == pytest.approx(1.336306, abs=1e-6)
    assert r.p_value == pytest.approx(2 * stats.t.sf(0.025 / math.sqrt(0.00035), 3), rel=1e-9)
    assert r.half_ci95 == pytest.approx(stats.t.ppf(0.975, 3) * math.sqrt(0.00035))
    assert "random subsampling" in r.test
    # A fixed test split: the plain paired t, 0.025 / sqrt(0.0007 / 4) = 1.889822, said conditional.
    fixed = analysis.corrected_t(d, 1, repetitions=4)
    assert fixed.t == pytest.approx(1.889822, abs=1e-6) and "conditional" in fixed.test
    with pytest.raises(ValueError, match="test_train"):
        analysis.corrected_t(d, 1, repetitions=4, test_train=0.0)


@pytest.mark.parametrize("fixed", [False, True])
def test_holdouts_over_seeds_corrected_or_conditional(tmp_path: Path, fixed: bool) -> None:
    """reduction_effects(summary=True) over 4 seeds' holdouts (test fraction 0.2): each seed
    attacked its own examples (a seeded split) or all the same ones (an official split)."""
    sink = ParquetSink(str(tmp_path), "t", "r")
    deltas = [0.02, 0.05, -0.01, 0.04]
    for seed, d in enumerate(deltas):
        subset = "official" if fixed else f"split{seed}"
        for bits, acc in (("float", 0.5), ("4", 0.5 + d)):
            key = f"{bits}-{seed}"
            sink(key, rows_for(
                key, {("pgd", 0.1): acc, ("worst", 0.1): acc}, 0.9, 100, bits=bits, seed=seed,
                folds=1, subset=subset, extra={"cfg_test_fraction": 0.2},
            ))  # fmt: skip
    con = analysis.connect(tmp_path)
    row = analysis.reduction_effects(con, summary=True).iloc[0]
    assert (row.seeds, row.units, row.folds) == (4, 4, 1)
    if fixed:  # by hand, as above: the plain paired t, conditional on the split
        assert row.t == pytest.approx(1.889822, abs=1e-6) and "conditional" in row.test
    else:
        assert row.t == pytest.approx(1.336306, abs=1e-6) and "random subsampling" in row.test


def test_corrected_t_zero_spread_up_to_rounding() -> None:
    # Accuracies are counts / 300: k1/300 - k0/300 is 1/300 in every fold up to rounding
    # (s^2 ~ 1e-33, not 0): no spread, so t is undefined, not ~1e14.
    d = [a / 300 - b / 300 for a, b in [(91, 90), (121, 120), (31, 30), (250, 249)]]
    assert np.var(d, ddof=1) > 0  # the float spread the old exact test missed
    r = analysis.corrected_t(d, 4)
    assert math.isnan(r.t) and math.isnan(r.p_value)
    # Compression changed nothing in any fold: mean 0, no spread: t = 0, p = 1 (stays in
    # Holm's family), not NaN.
    same = [a / 300 - a / 300 for a in (90, 120, 30, 249)]
    z = analysis.corrected_t(same, 4)
    assert z.t == 0.0 and z.p_value == 1.0
    # A real spread is untouched (the hand case above): 0.026, s^2 = 0.00053.
    r5 = analysis.corrected_t([0.02, 0.05, -0.01, 0.04, 0.03], 5)
    assert r5.t == pytest.approx(0.026 / math.sqrt(0.0002385), rel=1e-9)


def test_holm_against_hand_computation() -> None:
    # sorted 0.01, 0.03, 0.04 (m = 3): 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, 1 x 0.04 -> max 0.06
    got = analysis.holm([0.01, 0.04, 0.03, math.nan])
    assert got[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(got[3])
    assert analysis.holm([0.2, 0.01]) == pytest.approx([0.2, 0.02])
    assert analysis.holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])


FOLDS = 5
BASE = [0.50, 0.40, 0.45, 0.55, 0.50]
Q4 = [0.52, 0.45, 0.44, 0.59, 0.53]  # deltas 0.02, 0.05, -0.01, 0.04, 0.03
Q2 = [0.40, 0.35, 0.40, 0.45, 0.44]  # deltas -0.10, -0.05, -0.05, -0.10, -0.06
JR_BASE = [0.70, 0.60, 0.65, 0.75, 0.70]  # the JR baseline: much better; Q4 is not paired with it
P5 = [0.50, 0.41, 0.45, 0.55, 0.49]  # pruning: deltas 0, 0.01, 0, 0, -0.01


def _effects_table(tmp_path: Path) -> None:
    sink = ParquetSink(str(tmp_path), "t", "r")
    configs = [
        ("float", 0.0, "{}", BASE),
        ("4", 0.0, "{}", Q4),
        ("2", 0.0, "{}", Q2),
        ("float", 0.5, "{}", P5),
        ("float", 0.0, '{"conv1": 0.1}', JR_BASE),  # another baseline: per-layer JR
        ("4", 0.0, '{"conv1": 0.1}', [v + 0.01 for v in JR_BASE]),
    ]
    for bits, sp, jr_layers, accs in configs:
        for fold, acc in enumerate(accs):
            key = f"{bits}-{sp}-{len(jr_layers)}-{fold}"
            sink(key, rows_for(
                key, {("pgd", 0.1): acc}, 0.9, 100 if bits == "float" else 30, fold=fold,
                bits=bits, sparsity=sp, jr_layers=jr_layers, folds=FOLDS, samples=100,
            ))  # fmt: skip


def test_reduction_effects_corrected_t_holm_and_own_baselines(tmp_path: Path) -> None:
    _effects_table(tmp_path)
    con = analysis.connect(tmp_path)
    eff = analysis.reduction_effects(con, "pgd", 0.1)
    assert len(eff) == 4  # 4 bits, 2 bits, pruning, 4 bits with per-layer JR
    q4 = eff[(eff.bits == "4") & (eff.jr_layers == "{}")].iloc[0]
    assert q4.delta == pytest.approx(0.026)
    assert q4.t == pytest.approx(0.026 / math.sqrt(0.0002385), rel=1e-9)  # as the hand case
    assert q4.test.startswith("corrected t") and q4.folds == 5 and q4.pairs == 5
    # The per-layer-JR config pairs only with the per-layer-JR baseline: delta +0.01 every
    # fold (no spread: t undefined), never with the plain baseline (delta ~ +0.2).
    jr = eff[eff.jr_layers == '{"conv1": 0.1}'].iloc[0]
    assert jr.delta == pytest.approx(0.01) and jr.baseline_robust_acc == pytest.approx(0.68)
    # Q2 by hand: deltas -0.10, -0.05, -0.05, -0.10, -0.06: mean -0.072,
    # squared deviations 784+484+484+784+144 = 2680 (1e-8): s^2 = 0.00067.
    q2 = eff[eff.bits == "2"].iloc[0]
    t2 = -0.072 / math.sqrt(0.45 * 0.00067)
    assert q2.t == pytest.approx(t2, rel=1e-9)
    # Pruning: deltas 0, 0.01, 0, 0, -0.01: mean 0, s^2 = 0.0002/4 = 0.00005: t = 0, p = 1.
    pr = eff[eff.reductions == "pruning"].iloc[0]
    assert pr.t == pytest.approx(0.0, abs=1e-12) and pr.p_value == pytest.approx(1.0)
    # Holm over the three finite p-values of this call, by hand.
    p = {"q4": q4.p_value, "q2": q2.p_value, "pr": pr.p_value}
    assert math.isnan(jr.p_value) and math.isnan(jr.p_adjusted)
    order = sorted(p, key=p.__getitem__)
    want = {}
    running = 0.0
    for i, name in enumerate(order):
        running = max(running, min(1.0, (3 - i) * p[name]))
        want[name] = running
    assert q4.p_adjusted == pytest.approx(want["q4"])
    assert q2.p_adjusted == pytest.approx(want["q2"])
    assert pr.p_adjusted == pytest.approx(want["pr"])


def test_summary_averages_per_fold_before_testing(tmp_path: Path) -> None:
    _effects_table(tmp_path)
    con = analysis.connect(tmp_path)
    s = analysis.reduction_effects(con, "pgd", 0.1, summary=True).set_index("reductions")
    q = s.loc["quantization"]
    # Three quantized configs per fold (4, 2, 4 + per-layer JR): per-fold means of the
    # deltas (0.02 - 0.10 + 0.01) / 3, (0.05 - 0.05 + 0.01) / 3, ...: five numbers, not 15.
    per_fold = np.array(
        [(a - b + c) / 3 for a, b, c in zip(
            [0.02, 0.05, -0.01, 0.04, 0.03], [0.10, 0.05, 0.05, 0.10, 0.06], [0.01] * 5,
            strict=True,
        )]
    )  # fmt: skip
    assert q.configs == 3 and q.pairs == 15
    assert q.delta == pytest.approx(per_fold.mean())
    mean, s2 = per_fold.mean(), per_fold.var(ddof=1)
    assert q.t == pytest.approx(mean / math.sqrt((1 / 5 + 1 / 4) * s2), rel=1e-9)
    assert q.p_value == pytest.approx(2 * stats.t.sf(abs(q.t), 4))


def test_summary_unit_is_seed_and_fold_per_dataset_and_model(tmp_path: Path) -> None:
    sink = ParquetSink(str(tmp_path), "t", "r")
    # digits_cnn, 2 seeds x 3 folds, two quantized configs (4 and 2 bits).  Deltas:
    # seed 0: 4 bits 0.04, 0.06, 0.02; 2 bits -0.02, 0.00, -0.04 -> unit means 0.01, 0.03, -0.01
    # seed 1: 4 bits 0.05, 0.03, 0.04; 2 bits -0.01, -0.03, -0.02 -> unit means 0.02, 0.00, 0.01
    # Six (seed, fold) units: the hand case of test_corrected_t_repeated_cv_bouckaert_frank
    # (t = sqrt(3)/2, 5 df).  Fold i of seed 0 and of seed 1 are different partitions: never
    # averaged together (that would give fold means 0.015, 0.015, 0 over 3 units).
    base = {0: [0.50, 0.40, 0.45], 1: [0.60, 0.50, 0.55]}
    deltas = {
        ("4", 0): [0.04, 0.06, 0.02], ("2", 0): [-0.02, 0.00, -0.04],
        ("4", 1): [0.05, 0.03, 0.04], ("2", 1): [-0.01, -0.03, -0.02],
    }  # fmt: skip
    accs = {("float", s): b for s, b in base.items()}
    accs.update({(bits, s): [b + d for b, d in zip(base[s], ds, strict=True)]
                 for (bits, s), ds in deltas.items()})  # fmt: skip
    for (bits, seed), acc in accs.items():
        for fold, a in enumerate(acc):
            key = f"cnn-{bits}-{seed}-{fold}"
            sink(key, rows_for(key, {("pgd", 0.1): a}, 0.9, 100, fold=fold, bits=bits,
                               seed=seed, folds=3, samples=100))  # fmt: skip
    # Another model of the same dataset, one seed, 4 bits: deltas 0.10, 0.20, 0.30:
    # mean 0.2, s^2 = 0.01, variance (1/3 + 1/2) 0.01 = 0.025/3: t = sqrt(4.8), 2 df.
    for bits, acc in [("float", [0.3, 0.3, 0.3]), ("4", [0.4, 0.5, 0.6])]:
        for fold, a in enumerate(acc):
            key = f"mlp-{bits}-{fold}"
            sink(key, rows_for(key, {("pgd", 0.1): a}, 0.9, 100, fold=fold, bits=bits,
                               model="mlp", folds=3, samples=100))  # fmt: skip
    con = analysis.connect(tmp_path)
    s = analysis.reduction_effects(con, "pgd", 0.1, summary=True).set_index("model")
    assert list(s.reductions) == ["quantization", "quantization"]
    assert set(s.dataset) == {"digits"}
    cnn, mlp = s.loc["digits_cnn"], s.loc["mlp"]
    assert (cnn.configs, cnn.pairs, cnn.seeds, cnn.units, cnn.folds) == (
        4,
        12,
        2,
        6,
        3,
    )  # 2 x 2 seeds
    assert cnn.delta == pytest.approx(0.01)
    assert cnn.t == pytest.approx(math.sqrt(3) / 2, rel=1e-9)
    assert cnn.p_value == pytest.approx(2 * stats.t.sf(math.sqrt(3) / 2, 5), rel=1e-9)
    assert (mlp.configs, mlp.pairs, mlp.seeds, mlp.units) == (1, 3, 1, 3)
    assert mlp.delta == pytest.approx(0.2)
    assert mlp.t == pytest.approx(math.sqrt(4.8), rel=1e-9)
    assert mlp.p_value == pytest.approx(2 * stats.t.sf(math.sqrt(4.8), 2), rel=1e-9)


def test_reduction_effects_pairs_production_configs(tmp_path: Path) -> None:
    """Rows written by trainables.rows.base_row (the production meta_config_json path)."""
    sink = ParquetSink(str(tmp_path), "t", "r")
    base = [0.50, 0.40, 0.45]
    configs = {  # name: (config fields, robust accuracy per fold); deltas by hand
        "float": ({}, base),
        "q4": ({"bits": "4"}, [0.48, 0.41, 0.40]),  # -0.02, +0.01, -0.05: mean -0.02
        "q4_layer": ({"bits": "4", "layer_bits": {"conv1": 8}}, [0.52, 0.43, 0.47]),  # 0.07/3
        "q4_act8": ({"bits": "4", "activation_bits": 8}, [0.47, 0.36, 0.44]),  # -0.08/3
        "prune": ({"sparsity": 0.5}, [0.49, 0.40, 0.42]),  # -0.01, 0, -0.03: mean -0.04/3
        # No seed-1 baseline: cannot be paired, and must be reported, not dropped silently.
        "orphan": ({"bits": "4", "seed": 1}, [0.3, 0.3, 0.3]),
    }
    for name, (fields, accs) in configs.items():
        for fold, acc in enumerate(accs):
            cfg = TrialConfig(folds=3, fold=fold, **fields)
            sink(cfg.key, config_rows(cfg, acc, 1000 if name == "float" else 300))
    con = analysis.connect(tmp_path)
    with pytest.warns(UserWarning, match=r"1 compressed config\(s\) have no baseline.*seed.: 1"):
        eff = analysis.reduction_effects(con, "pgd", 0.1)
    assert len(eff) == 4 and (eff.pairs == 3).all() and (eff.folds == 3).all()
    act = [None if pd.isna(a) else int(a) for a in eff.activation_bits]  # 4 bits: 4 by default
    got = {
        (r.bits, r.layer_bits, a, r.sparsity): r.delta
        for r, a in zip(eff.itertuples(), act, strict=True)
    }
    assert got == {
        ("4", "{}", 4, 0.0): pytest.approx(-0.02),
        ("4", '{"conv1": "8"}', 4, 0.0): pytest.approx(0.07 / 3),
        ("4", "{}", 8, 0.0): pytest.approx(-0.08 / 3),
        ("float", "{}", None, 0.5): pytest.approx(-0.04 / 3),
    }
    assert list(eff.baseline_robust_acc) == pytest.approx([0.45] * 4)


def test_reduction_effects_mcnemar_sums_discordant_pairs_over_folds(tmp_path: Path) -> None:
    sink = ParquetSink(str(tmp_path), "t", "r")
    # 2 folds x 10 examples.  fold 0: baseline robust on 0..5, quantized on 0..3 and 8
    # (b = quantized only = {8} = 1, c = baseline only = {4, 5} = 2); fold 1: baseline on
    # 0..4, quantized on 0..4 (b = c = 0).  Summed: b = 1, c = 2: p = 2 (1 + 3) / 8 = 1.
    masks = {
        ("float", 0): [i < 6 for i in range(10)],
        ("4", 0): [i < 4 or i == 8 for i in range(10)],
        ("float", 1): [i < 5 for i in range(10)],
        ("4", 1): [i < 5 for i in range(10)],
    }
    for (bits, fold), m in masks.items():
        key = f"{bits}-{fold}"
        sink(key, rows_for(
            key, {("pgd", 0.1): float(np.mean(m))}, 0.9, 10, fold=fold, bits=bits,
            sparsity=0.0, folds=2, masks={("pgd", 0.1): m}, subset=f"fold{fold}",
        ))  # fmt: skip
    con = analysis.connect(tmp_path)
    row = analysis.reduction_effects(con, "pgd", 0.1).iloc[0]
    assert (row.mcnemar_b, row.mcnemar_c) == (1, 2)
    assert row.p_mcnemar == pytest.approx(1.0)


# ---- norms, size, stale rows, baseline -------------------------------------------------


def _norm_table(tmp_path: Path) -> None:
    sink = ParquetSink(str(tmp_path), "t", "r")
    # pgd (L-inf) at 0.1; cw_l2 (L2) at 0.1 and 0.5.  Worst L-inf at 0.1 must not see cw_l2.
    for key, pgd, cw1, cw5, nbytes, tfl in [
        ("a", 0.60, 0.10, 0.05, 100, 400),
        ("b", 0.50, 0.30, 0.20, 200, 300),
    ]:
        # The worst rows, one per (norm, eps): each of these has a single attack, so equals it.
        rows = rows_for(
            key,
            {("pgd", 0.1): pgd, ("cw_l2", 0.1): cw1, ("cw_l2", 0.5): cw5, ("worst", 0.1): pgd},
            0.9,
            nbytes,
            tflite_bytes=tfl,
            samples=100,
        )
        rows += rows_for(
            key,
            {("worst", 0.1): cw1, ("worst", 0.5): cw5},
            0.9,
            nbytes,
            tflite_bytes=tfl,
            samples=100,
            norms={"worst": "2"},
        )
        sink(key, rows)  # fmt: skip


def test_worst_never_mixes_norms(tmp_path: Path) -> None:
    _norm_table(tmp_path)
    con = analysis.connect(tmp_path)
    pts = analysis.trial_points(con, "worst", 0.1).set_index("key")
    assert pts.robust_acc.to_dict() == {"a": 0.60, "b": 0.50}  # pgd only, not min with cw_l2
    assert pts.attrs["norm"] == "inf"
    l2 = analysis.trial_points(con, "worst", 0.1, norm="2").set_index("key")
    assert l2.robust_acc.to_dict() == {"a": 0.10, "b": 0.30}
    with pytest.raises(ValueError, match=r"eps: 0.5 exists only under L2.*pass norm='2'"):
        analysis.trial_points(con, "worst", 0.5)
    assert analysis.pareto.headline_eps(con) == 0.1  # largest L-inf eps
    assert analysis.pareto.headline_eps(con, norm="2") == 0.5
    assert analysis.pareto.headline_eps(con, "cw_l2") == 0.5  # the attack's own norm
    front = analysis.pareto_front(con, "worst", 0.5, norm="2")
    assert "worst case over the attacks (L2) at eps 0.5" in format_front(front, "worst", 0.5)
    curve = analysis.robustness_curve(con, by=[])
    assert set(zip(curve.attack, curve.norm, strict=True)) == {
        ("pgd", "inf"), ("cw_l2", "2"), ("worst", "inf"), ("worst", "2")
    }  # fmt: skip
    with pytest.raises(ValueError, match="norm: '1' must be"):
        analysis.trial_points(con, norm="1")


def test_size_objective_picks_the_bytes(tmp_path: Path) -> None:
    _norm_table(tmp_path)
    con = analysis.connect(tmp_path)
    enc = analysis.pareto_front(con, "pgd", 0.1)
    assert list(enc.key) == ["a"]  # a: smaller (100 < 200) and more robust
    tfl = analysis.pareto_front(con, "pgd", 0.1, size="tflite")
    assert list(tfl.key) == ["b", "a"]  # b: 300 B < a's 400 B as flatbuffers
    assert list(tfl.bytes) == [300, 400] and tfl.attrs["size"] == "tflite"
    assert "tflite bytes down" in format_front(tfl, "pgd", 0.1)
    sink = ParquetSink(str(tmp_path), "t", "r")
    sink("c", rows_for("c", {("pgd", 0.1): 0.4}, 0.9, 50))  # no TFLite size
    con = analysis.connect(tmp_path)
    with pytest.raises(ValueError, match=r"size: 'tflite': 1 of 3 point\(s\) have no"):
        analysis.pareto_front(con, "pgd", 0.1, size="tflite")
    with pytest.raises(ValueError, match="size: 'zip' must be"):
        analysis.trial_points(con, "pgd", 0.1, size="zip")


def test_stale_rows_are_left_out_unless_asked(tmp_path: Path) -> None:
    sink = ParquetSink(str(tmp_path), "t", "r")
    sink("new", rows_for("new", {("pgd", 0.1): 0.5, ("worst", 0.1): 0.5}, 0.9, 100))
    # before revision 3 a trial had no worst rows (its 'worst' was a min, computed by readers)
    sink("old", rows_for("old", {("pgd", 0.1): 0.9}, 0.9, 50, revision=RESULTS_REVISION - 1))
    # A file from before the revision column existed: revision 0.
    legacy = rows_for("legacy", {("pgd", 0.1): 0.95}, 0.9, 40)
    cols = ["key", "fold", "attack", "eps", "status", "metric_robust_acc", "metric_clean_acc",
            "metric_bytes", "cfg_bits", "cfg_sparsity", "cfg_clusters"]  # fmt: skip
    pq.write_table(
        pa.Table.from_pylist([{c: r[c] for c in cols} for r in legacy]),
        tmp_path / "rows" / "legacy.parquet",
    )
    stale_note = rf"left out 2 stale trial\(s\) of revision\(s\) \[0, {RESULTS_REVISION - 1}\]"
    with pytest.warns(UserWarning, match=stale_note):
        con = analysis.connect(tmp_path)
    assert list(analysis.trial_points(con, "pgd", 0.1).key) == ["new"]
    assert con.execute("SELECT list(key) FROM trials").fetchone() == (["new"],)
    stale = analysis.stale_keys(con)
    assert dict(zip(stale.key, stale.revision, strict=True)) == {
        "legacy": 0, "old": RESULTS_REVISION - 1,
    }  # fmt: skip
    every = analysis.connect(tmp_path, stale=True)
    assert set(analysis.trial_points(every, "pgd", 0.1).key) == {"new", "old", "legacy"}
    # read on purpose, the stale trials still give no 'worst' point: no worst rows, never a min
    assert list(analysis.trial_points(every, "worst", 0.1).key) == ["new"]


def test_undefended_baseline_must_be_truly_float(tmp_path: Path) -> None:
    sink = ParquetSink(str(tmp_path), "t", "r")
    # Float, uncompressed, but with per-layer JR: not the undefended baseline.
    sink("jr", rows_for("jr", {("pgd", 0.1): 0.6}, 0.9, 4000, bits="float",
                        jr_layers='{"conv1": 0.1}'))  # fmt: skip
    sink("q", rows_for("q", {("pgd", 0.1): 0.5}, 0.9, 1000, bits="4"))
    con = analysis.connect(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"no undefended baseline.*1 config\(s\) miss only: without per-layer JR",
    ):
        analysis.compare_to_baseline(con, "pgd", 0.1)
    html = build_report(con, "t", "pgd", 0.1)
    assert "No undefended baseline to compare with" in html
    # Adversarial training or per-layer bits disqualify as well.
    sink("adv", rows_for("adv", {("pgd", 0.1): 0.7}, 0.9, 4000, bits="float",
                         adv_training="pgd"))  # fmt: skip
    sink("lb", rows_for("lb", {("pgd", 0.1): 0.7}, 0.9, 4000, bits="float",
                        layer_bits='{"conv1": "4"}'))  # fmt: skip
    con = analysis.connect(tmp_path)
    with pytest.raises(ValueError, match="no undefended baseline"):
        analysis.compare_to_baseline(con, "pgd", 0.1)
    sink("ref", rows_for("ref", {("pgd", 0.1): 0.4}, 0.9, 4000, bits="float", samples=100))
    con = analysis.connect(tmp_path)
    cmp = analysis.compare_to_baseline(con, "pgd", 0.1).set_index("role")
    assert cmp.loc["baseline", "key"] == "ref"
    assert cmp.loc["best", "robust_acc"] == pytest.approx(0.7)  # adv / lb at the same size
    assert (cmp.loc["baseline", "robust_lo"], cmp.loc["baseline", "robust_hi"]) == (
        pytest.approx(_wilson_hand(40, 100))
    )


def test_report_shows_intervals_and_the_selection(tmp_path: Path) -> None:
    _cv_table(tmp_path)
    con = analysis.connect(tmp_path)
    html = build_report(con, "t", "pgd", 0.1)
    lo, hi = _wilson_hand(70, 300)
    assert f"[{lo:.3f}, {hi:.3f}]" in html and "robust 95% CI" in html
    assert "pgd (L-inf) at eps 0.1" in html and "smallest encoding" in html
    assert "Nadeau and Bengio" in html and "Holm" in html


def test_schema_document_lists_every_column_of_the_code() -> None:
    text = (ROOT / "analysis" / "SCHEMA.md").read_text()
    long = text[text.index("## `rows` (long)") : text.index("## `trials`")]
    doc = dict(re.findall(r"^\| `(\w+)` \| (\w+) \|", long, flags=re.M))
    assert doc == COLUMNS and list(doc) == list(COLUMNS)
    meaning = dict(re.findall(r"^\| `(\w+)` \| \w+ \|[^|]*\| (.*) \|$", long, flags=re.M))
    assert all(
        meaning[c].strip() for c in COLUMNS if c.startswith(("metric_", "meta_attack", "rev"))
    )


def test_report_lists_trials_whose_masking_checks_fired(tmp_path: Path) -> None:
    _cv_table(tmp_path)
    assert "Gradient masking suspected" not in build_report(
        analysis.connect(tmp_path), "t", "pgd", 0.1
    )
    sink = ParquetSink(str(tmp_path), "t", "r")
    sink(
        "m0",
        rows_for(
            "m0", {("pgd", 0.1): 0.9}, 0.95, 200, fold=0, bits="ternary", folds=2, samples=100,
            test_samples=300,
            extra={"metric_masking_flags": "pgd_large_eps,zero_gradients", "metric_masking_pgd_acc": 0.8},
        ),
    )  # fmt: skip
    html = build_report(analysis.connect(tmp_path), "t", "pgd", 0.1)
    assert "Gradient masking suspected" in html
    start = html.index("Gradient masking suspected")
    section = html[start : html.index("<h2>", start)]
    assert "m0" in section and "pgd_large_eps,zero_gradients" in section and "a0" not in section


def test_worst_warns_when_points_had_different_attack_sets(tmp_path: Path) -> None:
    sink = ParquetSink(str(tmp_path), "t", "r")
    both = {("pgd", 0.1): 0.3, ("fgsm", 0.1): 0.5, ("worst", 0.1): 0.25}
    sink("both", rows_for("both", both, 0.9, 300))
    sink("fgsm", rows_for("fgsm", {("fgsm", 0.1): 0.6, ("worst", 0.1): 0.6}, 0.9, 400))
    con = analysis.connect(tmp_path)
    with pytest.warns(
        UserWarning, match=r"different attack sets: \[fgsm,pgd\] 1 point\(s\); \[fgsm\] 1"
    ):
        pts = analysis.trial_points(con, "worst", 0.1).set_index("key")
    assert pts.loc["both", "attacks"] == "fgsm,pgd" and pts.loc["both", "robust_acc"] == 0.25
    assert pts.loc["fgsm", "attacks"] == "fgsm"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        analysis.trial_points(con, "fgsm", 0.1)  # one named attack: nothing to warn about
