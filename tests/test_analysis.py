"""Analysis: the schema document, the DuckDB query library, plots, notebooks and the HTML report."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import numpy as np
import pyarrow.parquet as pq
import pytest
from nbclient import NotebookClient
from scipy import stats

import analysis
from analysis import plots
from analysis.pareto import pareto_front, trial_points
from grid.store import SCHEMA, ParquetSink
from tests.helpers import grid_cli, rows_for
from trainables.rows import COLUMNS, SCHEMA_VERSION

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "analysis" / "notebooks").glob("*.ipynb"))


def _documented() -> dict[str, str]:
    text = (ROOT / "analysis" / "SCHEMA.md").read_text()
    long = text[text.index("## `rows` (long)") : text.index("## `trials`")]
    return dict(re.findall(r"^\| `(\w+)` \| (\w+) \|", long, flags=re.M))


def test_schema_document_matches_the_code() -> None:
    doc = _documented()
    assert doc == COLUMNS  # every column, in the code's type names
    assert list(doc) == list(COLUMNS)  # and in the files' order


def test_schema_document_matches_the_files_a_study_writes(
    smoke_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    doc = _documented()
    arrow = {"string": "string", "int64": "int64", "double": "float64", "bool": "bool"}
    folder, _ = smoke_run
    for path in sorted((folder / "rows").glob("*.parquet"))[:3]:
        schema = pq.read_schema(path)
        assert {f.name: arrow[str(f.type)] for f in schema} == doc
        assert schema.equals(SCHEMA, check_metadata=False)
    con = analysis.connect(folder)
    assert con.execute("SELECT DISTINCT schema_version FROM rows").fetchall() == [(SCHEMA_VERSION,)]
    wide = analysis.query.columns(con, "trials")
    assert {
        "config_id",
        "bits",
        "bytes",
        "robust_fgsm@0.05",
        "robust_fgsm@0.1",
        "robust_pgd@0.1",
    } <= set(wide)


def _table(tmp_path: Path) -> analysis.query.duckdb.DuckDBPyConnection:
    """Hand-drawn: 4 configs x 2 folds; pgd at 0.05 and 0.1, fgsm at 0.1, and the stored
    worst rows (worst@0.05 = pgd@0.05, its only attack; worst@0.1 at most min(pgd, fgsm))."""
    sink = ParquetSink(str(tmp_path), "t", "r")
    # (bits, sparsity, clusters, bytes, [(fold, pgd@0.05, pgd@0.1, fgsm@0.1, worst@0.1, clean)])
    configs = [
        ("float", 0.0, 0, 4000, [(0, 0.80, 0.50, 0.60, 0.50, 0.95), (1, 0.70, 0.40, 0.50, 0.38, 0.90)]),
        ("4", 0.0, 0, 900, [(0, 0.75, 0.45, 0.40, 0.40, 0.93), (1, 0.72, 0.38, 0.45, 0.36, 0.92)]),
        ("4", 0.5, 4, 500, [(0, 0.60, 0.30, 0.35, 0.28, 0.85), (1, 0.62, 0.20, 0.25, 0.18, 0.80)]),
        ("float", 0.0, 8, 5000, [(0, 0.9, 0.9, 0.9, 0.9, 0.99), (1, 0.9, 0.9, 0.9, 0.9, 0.99)]),
    ]  # fmt: skip
    for bits, sp, cl, nbytes, folds in configs:
        for fold, p5, p10, f10, w10, clean in folds:
            key = f"{bits}-{sp}-{cl}-{fold}"
            robust = {("pgd", 0.05): p5, ("pgd", 0.1): p10, ("fgsm", 0.1): f10}
            robust |= {("worst", 0.05): p5, ("worst", 0.1): w10}
            rows = rows_for(
                key, robust, clean, nbytes,
                fold=fold, bits=bits, sparsity=sp, clusters=cl, folds=2, samples=100,
                test_samples=200,
            )  # fmt: skip
            sink(key, rows)
    return analysis.connect(tmp_path)


def test_points_per_config_average_the_worst_attack_per_fold(tmp_path: Path) -> None:
    con = _table(tmp_path)
    pts = trial_points(con, "worst", 0.1, per="config").set_index("bits")
    q = pts[(pts.sparsity == 0.5)].iloc[0]
    # the stored worst row per fold (0.28, 0.18: below min(pgd, fgsm) 0.30, 0.20), then the mean
    assert q.robust_acc == pytest.approx((0.28 + 0.18) / 2)
    assert q.robust_std == pytest.approx(np.std([0.28, 0.18], ddof=1))
    assert q.folds == 2
    per_trial = trial_points(con, "pgd", 0.1)
    assert len(per_trial) == 8


def test_pareto_front_objectives_and_filters_equal_brute_force(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    sink = ParquetSink(str(tmp_path), "t", "r")
    vals = []
    for i in range(60):
        robust, clean = float(rng.integers(0, 10)) / 10, float(rng.integers(5, 10)) / 10
        nbytes, adv = int(rng.integers(1, 15)) * 100, ["none", "fgsm"][i % 2]
        sink(
            f"k{i:02d}",
            # one attack: its worst row equals it
            rows_for(
                f"k{i:02d}",
                {("pgd", 0.1): robust, ("worst", 0.1): robust},
                clean,
                nbytes,
                adv_training=adv,
            ),
        )
        vals.append((f"k{i:02d}", robust, -nbytes, clean, adv))
    con = analysis.connect(tmp_path)

    def brute(dims: list[int], pool: list[tuple]) -> set[str]:  # type: ignore[type-arg]
        v = np.array([[p[d] for d in dims] for p in pool])  # every column "more is better"
        return {
            pool[i][0]
            for i in range(len(pool))
            if not any((v[j] >= v[i]).all() and (v[j] > v[i]).any() for j in range(len(pool)))
        }

    assert set(pareto_front(con)["key"]) == brute([1, 2], vals)
    three = {"robust_acc": "max", "bytes": "min", "clean_acc": "max"}
    assert set(pareto_front(con, objectives=three)["key"]) == brute([1, 2, 3], vals)
    none = [v for v in vals if v[4] == "none"]
    assert set(pareto_front(con, where="cfg_adv_training = 'none'")["key"]) == brute([1, 2], none)
    with pytest.raises(ValueError, match="objectives: unknown objective 'latency'"):
        pareto_front(con, objectives={"latency": "min"})
    with pytest.raises(ValueError, match=r"objectives\.bytes: direction 'down'"):
        pareto_front(con, objectives={"bytes": "down"})


def test_robustness_curve_mean_and_spread_over_folds(tmp_path: Path) -> None:
    con = _table(tmp_path)
    curve = analysis.robustness_curve(con, attack="pgd", by=["cfg_bits", "cfg_sparsity"])
    q = curve[(curve.cfg_bits == "4") & (curve.cfg_sparsity == 0.5)].set_index("eps")
    assert list(q.index) == [0.0, 0.05, 0.1]  # eps 0 is the clean accuracy
    assert q.loc[0.0, "mean"] == pytest.approx(0.825)
    assert q.loc[0.1, "mean"] == pytest.approx(0.25)
    assert q.loc[0.1, "std"] == pytest.approx(np.std([0.3, 0.2], ddof=1))
    assert (q.loc[0.1, "min"], q.loc[0.1, "max"], q.loc[0.1, "trials"]) == (0.2, 0.3, 2)
    with pytest.raises(
        ValueError, match="by: no column 'cfg_bit' in the rows; did you mean 'cfg_bits'"
    ):
        analysis.robustness_curve(con, by=["cfg_bit"])


def test_reduction_effects_pair_folds_with_the_baseline(tmp_path: Path) -> None:
    con = _table(tmp_path)
    eff = analysis.reduction_effects(con, "pgd", 0.1).set_index("reductions")
    assert list(eff.index) == ["quantization", "clustering", "quantization+pruning+clustering"]
    base, quant = np.array([0.50, 0.40]), np.array([0.45, 0.38])
    row = eff.loc["quantization"]
    assert row.pairs == 2 and row.folds == 2
    assert row.delta == pytest.approx(np.mean(quant - base))
    # Hand: deltas -0.05, -0.02: mean -0.035, s^2 = 0.00045; 2-fold CV, so the
    # variance is s^2 (1/2 + 1/(2-1)) = 0.000675; t = -0.035 / 0.025981 = -1.3472, 1 df.
    assert row.t == pytest.approx(-0.035 / math.sqrt(0.000675), rel=1e-9)
    assert row.p_value == pytest.approx(2 * stats.t.sf(0.035 / math.sqrt(0.000675), 1))
    assert row.bytes_ratio == pytest.approx(900 / 4000)
    summary = analysis.reduction_effects(con, "pgd", 0.1, summary=True)
    assert list(summary.reductions) == list(eff.index)
    assert math.isnan(analysis.reduction_effects(con, "pgd", 0.1, where="fold = 0").p_value[0])


def test_compare_to_baseline_best_point_at_equal_or_smaller_size(tmp_path: Path) -> None:
    con = _table(tmp_path)
    cmp = analysis.compare_to_baseline(con, "fgsm", 0.1).set_index("role")
    assert cmp.loc["baseline", "bits"] == "float" and cmp.loc["baseline", "bytes"] == 4000
    # float+8 clusters is more robust but bigger (5000 B): not a candidate.
    # The baseline itself wins here: 4-bit (900 B) has (0.40 + 0.45) / 2 = 0.425.
    assert cmp.loc["best", "robust_acc"] == pytest.approx(0.55)
    assert (cmp.loc["best", "bits"], cmp.loc["best", "bytes"]) == ("float", 4000)
    cmp = analysis.compare_to_baseline(con, "pgd", 0.05).set_index("role")
    assert cmp.loc["best", "robust_acc"] == pytest.approx(0.75)
    assert cmp.loc["best", "robust_gain"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="baseline: no complete trials match"):
        analysis.compare_to_baseline(con, baseline="cfg_bits = '2'")


def test_results_open_through_a_pyarrow_filesystem_uri(tmp_path: Path) -> None:
    con = _table(tmp_path)
    remote = analysis.connect(f"file://{tmp_path}")
    q = "SELECT key, attack, eps, metric_robust_acc FROM rows ORDER BY ALL"
    assert remote.execute(q).fetchall() == con.execute(q).fetchall()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no robustgrid rows"):
        analysis.connect(f"file://{tmp_path / 'empty'}")
    with pytest.raises(FileNotFoundError, match=r"results: cannot list 'file://.*/nothing'"):
        analysis.connect(f"file://{tmp_path / 'nothing'}")


def test_plots_are_written(tmp_path: Path) -> None:
    con = _table(tmp_path)
    pts = trial_points(con, "pgd", 0.1, per="config")
    front = pareto_front(con, "pgd", 0.1, per="config")
    figures = [
        plots.pareto_scatter(pts, front, path=tmp_path / "p.png"),
        plots.robustness_curves(
            analysis.robustness_curve(con, by=["cfg_bits"]), path=tmp_path / "c.png"
        ),
        plots.heatmap(pts, "bits", "sparsity", "robust_acc", path=tmp_path / "h.png"),
    ]
    assert all(fig.axes for fig in figures)  # each returns the figure it drew
    for name in ("p.png", "c.png", "h.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_robustness_curves_draw_at_most_max_curves_lines_and_say_so() -> None:
    """A front of thousands of configs drew a line and a band each (80 s of the report at
    10^4 keys): a panel keeps MAX_CURVES, evenly spaced, the first and last among them."""
    import pandas as pd

    n = 40
    curve = pd.DataFrame(
        [
            {
                "cfg": f"c{i:02d}",
                "attack": "pgd",
                "norm": "inf",
                "eps": e,
                "mean": 0.5,
                "std": 0.0,
                "min": 0.4,
                "max": 0.6,
                "trials": 1,
            }
            for i in range(n)
            for e in (0.05, 0.1)
        ]
    )
    fig = plots.robustness_curves(curve)
    (ax,) = fig.axes
    labels = [line.get_label() for line in ax.get_lines()]
    assert len(labels) == plots.MAX_CURVES
    assert labels[0] == "cfg=c00" and labels[-1] == f"cfg=c{n - 1}"
    assert f"{plots.MAX_CURVES} of {n} lines" in ax.get_title()
    few = plots.robustness_curves(curve[curve.cfg < "c03"])
    assert len(few.axes[0].get_lines()) == 3 and " of " not in few.axes[0].get_title()


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_end_to_end(
    notebook: Path,
    smoke_run: tuple[Path, subprocess.CompletedProcess[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder, _ = smoke_run
    monkeypatch.setenv("ROBUSTGRID_RESULTS", str(folder))
    monkeypatch.setenv("ROBUSTGRID_FIGURES", str(tmp_path / "figures"))
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
    figures = sorted((tmp_path / "figures").glob("*.png"))
    assert figures and all(f.stat().st_size > 10_000 for f in figures)


def test_report_renders_in_headless_chromium(
    smoke_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    folder, _ = smoke_run
    out = tmp_path / "report.html"
    proc = grid_cli("report", str(folder), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert text.count('src="data:image/png;base64,') >= 4 and "Pareto front" in text
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine (.ci/run installs it)")
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400",
         f"--screenshot={shot}", out.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (2400, 1200)
    # Rendered figures, not a blank page: many distinct colours, and not all white.
    rgb = (pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    assert len(np.unique(rgb, axis=0)) > 200
    assert (rgb < 250).any(axis=1).mean() > 0.05


def test_a_truncated_file_is_left_out_with_a_warning(tmp_path: Path) -> None:
    con = _table(tmp_path)
    n = con.execute("SELECT count(DISTINCT key) FROM rows").fetchone()
    victim = sorted((tmp_path / "rows").glob("*.parquet"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.warns(UserWarning, match=f"left out 1 unreadable Parquet file.*{victim.name}"):
        con = analysis.connect(tmp_path)
    assert con.execute("SELECT count(DISTINCT key) FROM rows").fetchone() == (n[0] - 1,)
