"""``grid compare``: the two papers' tables from a hand-written results folder.

Rows are real Parquet written through the real sink (grid.store.ParquetSink)
in the real schema (tests/helpers.rows_for); every expected figure is worked
out by hand in the comments (or by a few lines of numpy / scipy here), never
by analysis.compare.  No Ray, no training.
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import analysis
from analysis import plots
from analysis.compare import (
    CompareError,
    format_paper1,
    format_paper2,
    paper1,
    paper2,
    variant_label,
)
from analysis.report import build_report
from grid.cli import main
from grid.store import ParquetSink
from tests.helpers import config_rows, rows_for
from trainables.config import TrialConfig

KIND = {"pgd": "white", "fgsm": "white", "square": "black", "transfer_pgd": "transfer"}
STQ_JR = '{"all": 0.01}'

# ---- the first paper: cifar10, two folds -----------------------------------------------------
# variant -> (model, bits, jr_layers) and per (attack, eps): the two folds' robust accuracies.
P1 = {
    "B": ("resnet8", "float", "{}", {
        ("pgd", 0.03): (0.20, 0.30), ("fgsm", 0.03): (0.40, 0.40), ("pgd", 0.3): (0.0, 0.0),
        ("square", 0.05): (0.50, 0.30), ("transfer_pgd", 0.03): (0.60, 0.40)}),
    "A": ("stq_cnn", "stochastic_ternary", STQ_JR, {
        ("pgd", 0.03): (0.30, 0.40), ("fgsm", 0.03): (0.50, 0.40), ("pgd", 0.3): (0.02, 0.0),
        ("square", 0.05): (0.60, 0.40), ("transfer_pgd", 0.03): (0.55, 0.45)}),
    # Another default-A candidate, on the reference model: the default prefers stq_cnn's.
    "D": ("resnet8", "stochastic_ternary", STQ_JR, {("pgd", 0.03): (0.25, 0.25)}),
}  # fmt: skip
CLEAN = {"B": (0.85, 0.87), "A": (0.80, 0.84), "D": (0.83, 0.83)}
BYTES = {"B": 100_000, "A": 20_000, "D": 25_000}

# ---- the second paper: digits, three folds, 100 attacked examples per fold ------------------
# (adv training, bits, sparsity, clusters) -> pgd@0.1 robust accuracy per fold; fgsm@0.1 is 0.1 higher.
P2 = {
    ("none", "float", 0.0, 0): (0.60, 0.50, 0.55),
    ("none", "4", 0.0, 0): (0.50, 0.50, 0.45),
    ("none", "float", 0.5, 0): (0.40, 0.45, 0.50),
    ("none", "4", 0.5, 0): (0.20, 0.24, 0.31),
    ("none", "4", 0.0, 16): (0.50, 0.40, 0.45),  # no clustering-alone config at 16: untested
    ("pgd", "float", 0.0, 0): (0.70, 0.60, 0.65),
    ("pgd", "4", 0.0, 0): (0.60, 0.62, 0.64),
    ("pgd", "float", 0.5, 0): (0.66, 0.58, 0.60),
    ("pgd", "4", 0.5, 0): (0.62, 0.60, 0.66),
}


def _kinds(rows: list[dict]) -> list[dict]:
    for r in rows:
        r["attack_kind"] = KIND[r["attack"]]
    return rows


def _results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    sink = ParquetSink(str(root / "p1"), "p1", "r")
    for name, (model, bits, jr, cells) in P1.items():
        for fold in (0, 1):
            key = f"{name}{fold}"
            robust = {cell: accs[fold] for cell, accs in cells.items()}
            rows = rows_for(
                key, robust, CLEAN[name][fold], BYTES[name], fold=fold, folds=2, bits=bits,
                model=model, jr_layers=jr, dataset="cifar10", study="p1",
                tflite_bytes=BYTES[name] // 2,
            )  # fmt: skip
            # D's rows carry no attack_kind (as rows written before it): the name gives it.
            sink(key, rows if name == "D" else _kinds(rows))
    # A stale trial of A (another results revision): left out, or A's pgd mean would change.
    sink("stale", _kinds(rows_for(
        "stale", {("pgd", 0.03): 1.0}, 0.9, 20_000, fold=0, folds=2, bits="stochastic_ternary",
        model="stq_cnn", jr_layers=STQ_JR, dataset="cifar10", study="p1", revision=0,
    )))  # fmt: skip
    sink2 = ParquetSink(str(root / "p2"), "p2", "r")
    for (adv, bits, sp, cl), accs in P2.items():
        for fold, acc in enumerate(accs):
            key = f"{adv}-{bits}-{sp}-{cl}-{fold}"
            robust = {("pgd", 0.1): acc, ("fgsm", 0.1): round(acc + 0.1, 2)}
            masks = {c: [i < round(100 * a) for i in range(100)] for c, a in robust.items()}
            sink2(key, _kinds(rows_for(
                key, robust, 0.9, 4000 if bits == "float" else 1000, fold=fold, folds=3,
                bits=bits, sparsity=sp, clusters=cl, adv_training=adv, masks=masks,
                subset="s", study="p2", test_samples=300,
            )))  # fmt: skip
    return root


def _connect(path: Path) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stale trial's warning
        return analysis.connect(path)


def test_golden_keys_stay() -> None:
    assert TrialConfig().key == "a6f03792212f1beb"
    cfg = TrialConfig(model="resnet8", dataset="cifar10", bits="stochastic_ternary",
                      layer_bits={"conv1": "8"}, jr_layers={"all": 0.01})  # fmt: skip
    assert cfg.key == "712a50faa22a49b2"


def test_variant_labels() -> None:
    assert variant_label("resnet8", "float") == "resnet8 float"
    assert (
        variant_label("stq_cnn", "stochastic_ternary", jr_layers=STQ_JR, jr_weight=0.1,
                      adv_training="pgd", adv_eps=0.03, layer_bits='{"conv1": "8"}')
        == "stq_cnn stochastic_ternary bits{conv1:8} +JR(all=0.01) +ioJR(0.1) +adv(pgd 0.03)"
    )  # fmt: skip


def test_paper1_variants_and_the_averaged_relative_gain(tmp_path: Path) -> None:
    con = _connect(_results(tmp_path))
    with pytest.warns(UserWarning, match="stale trial"):
        analysis.connect(tmp_path / "results")
    p = paper1(con)
    a, b = "stq_cnn stochastic_ternary +JR(all=0.01)", "resnet8 float"
    v = p.variants[p.variants.dataset == "cifar10"].set_index(["variant", "cell"])
    pgd = v.loc[(a, "pgd@0.03")]
    # The stale trial (pgd 1.0) is left out: (0.30 + 0.40) / 2, sd |0.30 - 0.40| / sqrt(2).
    assert (pgd.n, pgd.robust_mean) == (2, pytest.approx(0.35))
    assert pgd.robust_sd == pytest.approx(0.1 / math.sqrt(2))
    assert (pgd.kind, pgd.role, pgd.reference) == ("white", "A", False)
    assert pgd.clean_mean == pytest.approx(0.82) and pgd.bytes == 20_000
    assert pgd.tflite_bytes == 10_000
    ref = v.loc[(b, "square@0.05")]
    assert (ref.kind, ref.role, ref.reference) == ("black", "B", True)
    assert ref.robust_mean == pytest.approx(0.40)
    assert v.loc[(b, "transfer_pgd@0.03")].kind == "transfer"
    assert v.loc[("resnet8 stochastic_ternary +JR(all=0.01)", "pgd@0.03")].kind == "white"

    g = p.gain.set_index("kind")
    assert list(g.index) == ["white", "black", "transfer"]
    assert set(g.variant) == {a} and set(g.versus) == {b}
    # White: three shared cells. fgsm@0.03: (0.45 - 0.40) / 0.40 = 0.125; pgd@0.03:
    # (0.35 - 0.25) / 0.25 = 0.40; pgd@0.3: B is 0, no ratio (skipped).  Gain (0.125 + 0.40) / 2
    # = 0.2625; absolute difference (0.05 + 0.10 + 0.01) / 3 = 0.053333.
    w = g.loc["white"]
    assert (w.cells, w.skipped) == (3, 1)
    assert w.gain == pytest.approx(0.2625)
    assert w.abs_diff == pytest.approx(0.16 / 3)
    assert w.acc_a == pytest.approx((0.45 + 0.35 + 0.01) / 3)
    assert w.acc_b == pytest.approx((0.40 + 0.25 + 0.0) / 3)
    # Black: square (0.50 - 0.40) / 0.40 = 0.25, +0.10.  Transfer: (0.50 - 0.50) / 0.50 = 0.
    assert (g.loc["black"].gain, g.loc["black"].abs_diff) == pytest.approx((0.25, 0.10))
    assert (g.loc["transfer"].gain, g.loc["transfer"].cells) == (pytest.approx(0.0), 1)
    # The other candidate for A is named; digits has no stochastic_ternary + JR variant.
    assert any("resnet8 stochastic_ternary +JR(all=0.01)" in n for n in p.notes)
    assert any(n.startswith("digits: no gain: no stochastic_ternary") for n in p.notes)

    # Kinds: per fold the mean over the white cells, then mean and sd over the folds.
    k = p.kinds.set_index(["dataset", "variant", "kind"]).loc[("cifar10", a, "white")]
    folds = np.array([(0.50 + 0.30 + 0.02) / 3, (0.40 + 0.40 + 0.0) / 3])
    assert (k.cells, k.n) == (3, 2)
    assert k.robust_mean == pytest.approx(folds.mean())
    assert k.robust_sd == pytest.approx(folds.std(ddof=1))

    # Chosen by label: D over B, by a unique part of D's label.
    p = paper1(con, variant="resnet8 stochastic", versus="resnet8 float")
    g = p.gain.set_index("kind")
    assert list(g.index) == ["white"] and g.loc["white"].cells == 1  # D has pgd@0.03 only
    assert g.loc["white"].gain == pytest.approx((0.25 - 0.25) / 0.25)
    with pytest.raises(
        CompareError, match=r"--variant: no variant 'bogus'; known variants: .*'resnet8 float'"
    ):
        paper1(con, variant="bogus")
    with pytest.raises(CompareError, match="--versus: 'stochastic_ternary' matches 2 variants"):
        paper1(con, versus="stochastic_ternary")
    text = format_paper1(paper1(con))
    assert "0.350±0.071" in text and "+26.2%" in text and "+5.3" in text


def test_paper2_reductions_against_uncompressed_and_worst_single(tmp_path: Path) -> None:
    con = _connect(_results(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cifar10's compressed configs have no baseline
        df = paper2(con)
    pgd = df[(df.cell == "pgd@0.1")]
    assert set(df.cell) == {"pgd@0.1", "fgsm@0.1"}
    none = pgd[pgd.adv_training == "none"].set_index(["bits", "sparsity", "clusters"])
    assert list(none.reductions) == [
        "quantization", "pruning", "quantization+pruning", "quantization+clustering"
    ]  # fmt: skip

    # Quantization alone vs uncompressed: deltas -0.10, 0, -0.10; mean -1/15; s^2 = 1/300;
    # 3-fold corrected variance (1/3 + 1/2) s^2 = 1/360; t = -(1/15) / sqrt(1/360), 2 df.
    q = none.loc[("4", 0.0, 0)]
    t = -(1 / 15) / math.sqrt(1 / 360)
    assert q.delta == pytest.approx(-1 / 15) and q.uncompressed_robust == pytest.approx(0.55)
    assert q.p_value == pytest.approx(2 * stats.t.sf(abs(t), 2))
    assert q.robust_sd == pytest.approx(np.std([0.50, 0.50, 0.45], ddof=1))
    assert q.verdict == "" and q.worst_single == ""

    # Quantization + pruning: singles quantization (mean 0.48333) and pruning (0.45): the worst
    # is pruning.  Deltas 0.20-0.40, 0.24-0.45, 0.31-0.50 = -0.20, -0.21, -0.19: mean -0.20,
    # s = 0.01, t = -0.20 / (0.01 sqrt(1/3 + 1/2)) = -21.909, 2 df: p = 0.00208.
    qp = none.loc[("4", 0.5, 0)]
    assert qp.worst_single == "pruning" and qp.worst_single_robust == pytest.approx(0.45)
    assert qp.delta_vs_worst == pytest.approx(-0.20)
    t = -0.20 / (0.01 * math.sqrt(1 / 3 + 1 / 2))
    p_hand = 2 * stats.t.sf(abs(t), 2)
    assert qp.p_vs_worst == pytest.approx(p_hand)
    # Holm over the cell's tested combinations: this one and adversarial training pgd's (below),
    # m = 2; this p is the smaller: 2 p.
    assert qp.p_vs_worst_adjusted == pytest.approx(2 * p_hand)
    assert bool(qp.below_worst_single) and qp.verdict == "worse"
    # McNemar on first-k masks: robust under the combination but not pruning alone: 0; the
    # reverse 20 + 21 + 19 = 60; exact p = 2 * 0.5^60.
    assert (qp.mcnemar_b_vs_worst, qp.mcnemar_c_vs_worst) == (0, 60)
    assert qp.p_mcnemar_vs_worst == pytest.approx(2 * 0.5**60)
    qk = none.loc[("4", 0.0, 16)]
    assert qk.verdict == "untested: no clustering-alone config"

    adv = pgd[pgd.adv_training == "pgd"].set_index("reductions").loc["quantization+pruning"]
    # Singles: quantization 0.62, pruning 0.61333: worst pruning; deltas -0.04, 0.02, 0.06.
    d = np.array([-0.04, 0.02, 0.06])
    t = d.mean() / math.sqrt((1 / 3 + 1 / 2) * d.var(ddof=1))
    assert adv.worst_single == "pruning" and adv.delta_vs_worst == pytest.approx(d.mean())
    p_adv = 2 * stats.t.sf(abs(t), 2)
    assert adv.p_vs_worst == pytest.approx(p_adv)
    assert adv.p_vs_worst_adjusted == pytest.approx(max(2 * p_hand, p_adv))
    assert adv.verdict == "no significant difference" and not bool(adv.below_worst_single)
    assert adv.uncompressed_robust == pytest.approx(0.65)  # its own adversarial training's

    text = format_paper2(df)
    assert "attack pgd@0.1 (white-box)" in text and "worse" in text


def test_cli_prints_both_tables_and_writes_csvs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _results(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["compare", str(root), "--csv", str(tmp_path / "csv")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "Paper 1" in out and "Paper 2" in out and "+26.2%" in out
    names = sorted(p.name for p in (tmp_path / "csv").iterdir())
    assert names == ["paper1_gain.csv", "paper1_kinds.csv", "paper1_variants.csv", "paper2.csv"]
    with open(tmp_path / "csv" / "paper1_gain.csv") as f:
        white = next(r for r in csv.DictReader(f) if r["kind"] == "white")
    assert float(white["gain"]) == pytest.approx(0.2625) and white["skipped"] == "1"
    p2 = pd.read_csv(tmp_path / "csv" / "paper2.csv")
    assert (p2.verdict == "worse").sum() == 2  # quantization+pruning, both cells

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["compare", str(root), "--variant", "bogus"])
    err = capsys.readouterr().err
    assert rc == 2 and "--variant: no variant 'bogus'; known variants:" in err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["compare", str(root), "--where", "nonsense ="])
    err = capsys.readouterr().err
    assert rc == 2 and "grid compare: error: where: 'nonsense =' is not a predicate" in err
    assert len(err.strip().splitlines()) == 1
    # Only the first paper's rows: paper 2 cannot be made, and says why; asked for alone, an error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["compare", str(root / "p1"), "--where", "cfg_bits = 'float'"])
        out = capsys.readouterr().out
        assert rc == 0 and "Paper 2: no table: paper 2:" in out
        assert "no stochastic_ternary variant with per-layer JR" in out
        rc = main(["compare", str(root / "p1"), "--paper", "2", "--where", "cfg_bits = 'float'"])
    assert rc == 2 and "paper 2: no compressed config" in capsys.readouterr().err


def test_report_has_the_paper_comparisons(tmp_path: Path) -> None:
    con = _connect(_results(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = build_report(con, "t", "pgd", 0.1)
    section = text[text.index("<h2>Paper comparisons</h2>") :]
    assert 'alt="paper 1: robust accuracy per variant and attack kind"' in section
    assert 'alt="paper 2: combinations against their worst single reduction"' in section
    assert "+26.2%" in section


def test_figures_draw_the_tables(tmp_path: Path) -> None:
    con = _connect(_results(tmp_path))
    p = paper1(con)
    fig = plots.variant_bars(p.kinds, path=tmp_path / "bars.png")
    assert len(fig.axes) == 2  # cifar10 and digits
    heights = sorted(round(b.get_height(), 6) for b in fig.axes[0].patches)
    a_white = ((0.50 + 0.30 + 0.02) / 3 + (0.40 + 0.40 + 0.0) / 3) / 2
    assert round(a_white, 6) in heights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = paper2(con)
    fig = plots.combination_vs_worst(df, path=tmp_path / "combo.png")
    xy = np.concatenate([c.get_offsets() for c in fig.axes[0].collections])
    assert any(np.allclose(r, (0.45, 0.25)) for r in xy)  # q+p (none, pgd): (0.45, 0.25)
    for name in ("bars.png", "combo.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _probe_widths(html_text: str, tmp_path: Path) -> tuple[int, int]:
    """(page scroll width, widest table) of the HTML rendered by headless Chromium at 1200 px."""
    import re
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine (.ci/run installs it)")
    probe = (
        "<script>window.addEventListener('load', () => document.body.setAttribute('data-w', "
        "document.documentElement.scrollWidth + ',' + Math.max(0, ...Array.from("
        "document.querySelectorAll('table'), t => t.scrollWidth))));</script></body>"
    )
    page = tmp_path / "probe.html"
    page.write_text(html_text.replace("</body>", probe))
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900",
         "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    found = re.search(r'data-w="(\d+),(\d+)"', dom)
    assert found, dom[:500]
    return int(found.group(1)), int(found.group(2))


def test_report_wide_tables_fit_a_1200px_page(tmp_path: Path) -> None:
    con = _connect(_results(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = build_report(con, "t", "pgd", 0.1)
    page, widest = _probe_widths(text, tmp_path)
    assert widest > 1200  # the paper tables are wider than the page ...
    assert page <= 1200  # ... and scroll inside it instead of pushing the page wider


# ---- JR on against off at equal compression: three folds, hand-computed ------------------------
# (bits, jr_layers, jr_weight) -> pgd@0.1 robust accuracy per fold; clean 0.9 + fold / 100.
JR = [
    ("4", {}, 0.0, (0.50, 0.40, 0.60)),
    ("4", {"all": 0.01}, 0.0, (0.60, 0.50, 0.55)),  # deltas +0.10, +0.10, -0.05
    ("4", {}, 0.05, (0.53, 0.42, 0.63)),  # io JR: deltas +0.03, +0.02, +0.03
    ("float", {"all": 0.01}, 0.0, (0.30, 0.30, 0.30)),  # no JR-off float partner: left out
    ("ternary", {}, 0.0, (0.20, 0.20, 0.20)),  # JR off only: nothing to pair
]


def test_jr_on_off_pairs_equal_compression_fold_by_fold(tmp_path: Path) -> None:
    from analysis.effects import jr_effects

    sink = ParquetSink(str(tmp_path / "jr"), "jr", "r")
    for bits, layers, w, accs in JR:
        for fold, acc in enumerate(accs):
            cfg = TrialConfig(bits=bits, jr_layers=layers, jr_weight=w, folds=3, fold=fold)
            rows = config_rows(cfg, acc, 1000 if bits != "float" else 4000)
            rows[0]["metric_clean_acc"] = 0.9 + (0.01 * fold if layers else 0.0)
            sink(cfg.key, rows)
    con = analysis.connect(tmp_path / "jr")
    with pytest.warns(UserWarning, match="1 JR config"):
        df = jr_effects(con, "pgd", 0.1)
    assert len(df) == 2 and set(df.bits) == {"4"}
    layer = df[df.jr_layers != "{}"].iloc[0]
    deltas = np.array([0.10, 0.10, -0.05])
    # corrected resampled t (Nadeau-Bengio), k = 3: var factor 1/3 + 1/(3-1)
    t = deltas.mean() / math.sqrt((1 / 3 + 1 / 2) * deltas.var(ddof=1))
    p = 2 * stats.t.sf(abs(t), df=2)
    assert layer.robust_off == pytest.approx(0.50) and layer.robust_acc == pytest.approx(0.55)
    assert layer.delta == pytest.approx(0.05) and layer.t == pytest.approx(t)
    assert layer.p_value == pytest.approx(p)
    assert layer.clean_delta == pytest.approx(0.01)  # (0.00 + 0.01 + 0.02) / 3
    io = df[df.jr_layers == "{}"].iloc[0]
    d_io = np.array([0.03, 0.02, 0.03])
    t_io = d_io.mean() / math.sqrt((1 / 3 + 1 / 2) * d_io.var(ddof=1))
    p_io = 2 * stats.t.sf(abs(t_io), df=2)
    assert io.jr_weight == 0.05 and io.p_value == pytest.approx(p_io)
    # Holm over the two tests: the smaller p doubled, the larger kept (never below the first)
    lo, hi = sorted([p, p_io])
    assert sorted(df.p_adjusted) == pytest.approx([min(1, 2 * lo), max(min(1, 2 * lo), hi)])
    fig = plots.jr_on_off(df, path=tmp_path / "jr.png")
    ax = fig.axes[0]
    from matplotlib.collections import PathCollection

    hollow = next(c for c in ax.collections if isinstance(c, PathCollection))
    assert sorted(np.asarray(hollow.get_offsets())[:, 0]) == pytest.approx([0.50, 0.50])  # JR off
    filled = sorted(float(x) for x in ax.containers[0][0].get_xdata())  # the errorbar's dots
    assert filled == pytest.approx(sorted([0.55, 1.58 / 3]))  # JR on: per layer, io
