"""The whole grid on a real local Ray: study file -> Tune trials -> Parquet -> Pareto front."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from analysis.pareto import pareto_front
from analysis.query import connect
from grid.spec import load_study
from tests.helpers import SMOKE, STUDIES, brute_force_front, grid_cli

pytestmark = pytest.mark.slow  # every test runs the grid on Ray


def test_one_complete_row_set_per_trial(
    smoke_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    folder, proc = smoke_run
    study = load_study(SMOKE)
    con = connect(folder)
    per_key = con.execute(
        "SELECT key, count(*) AS n, bool_and(status = 'complete') AS ok FROM rows GROUP BY key"
    ).fetchall()
    assert len(per_key) == study.grid_size == 16
    assert {k for k, _, _ in per_key} == {t.key for t in study.trials()}
    # fgsm x 2 eps + pgd x 1 eps, and the per-example worst case at each of the 2 eps
    assert all(n == 5 and ok for _, n, ok in per_key)
    assert con.execute("SELECT count(*), sum(n_rows) FROM trials").fetchone() == (16, 80)
    worst = con.execute(
        "SELECT eps, count(*) FROM rows WHERE attack = 'worst' GROUP BY eps ORDER BY eps"
    ).fetchall()
    assert worst == [(0.05, 16), (0.1, 16)]
    bad = con.execute(
        "SELECT count(*) FROM rows WHERE metric_robust_acc > metric_attack_clean_acc"
    ).fetchone()
    assert bad == (0,)
    assert con.execute(
        "SELECT count(DISTINCT meta_study), any_value(meta_study) FROM rows"
    ).fetchone() == (1, "smoke")
    # Progress was shown while it ran, and one front printed at the end (a row per config).
    assert proc.stdout.count("/16]") == 16
    assert proc.stdout.count(" hypervolume ") == 1 and "per point (a config;" in proc.stdout


def test_pareto_command_reads_parquet_alone(
    smoke_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    folder, _ = smoke_run
    con = connect(folder)
    pts = con.execute(
        "SELECT key, metric_robust_acc, metric_bytes FROM rows WHERE eps = 0.1 AND attack = 'worst'"
    ).fetchall()
    # The smoke study's attacks share their 100 examples: the AND is at most either attack's.
    above = con.execute(
        "SELECT count(*) FROM rows a JOIN rows w USING (key, eps) WHERE w.attack = 'worst' "
        "AND a.attack NOT IN ('worst', 'none') AND w.metric_robust_acc > a.metric_robust_acc"
    ).fetchone()
    assert len(pts) == 16 and above == (0,)
    expected = brute_force_front([(k, a, b) for k, a, b in pts])
    assert set(pareto_front(con)["key"]) == expected
    proc = grid_cli("pareto", str(folder))
    assert proc.returncode == 0, proc.stderr
    printed = {line.split()[-1] for line in proc.stdout.splitlines()[2:] if line.strip()}
    assert printed == expected


def test_second_run_runs_nothing(smoke_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    folder, _ = smoke_run
    before = {p.name: p.stat().st_mtime_ns for p in (folder / "rows").iterdir()}
    proc = grid_cli("run", str(SMOKE), "--results", str(folder.parent))
    assert proc.returncode == 0, proc.stderr
    assert "16 already complete, 0 to run" in proc.stdout
    assert "/16]" not in proc.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "rows").iterdir()} == before


def test_cross_validation_writes_k_row_sets_per_config(tmp_path: Path, ray_head: str) -> None:
    """k row sets per config; ``grid run`` builds its state once, reads no finished key back
    (the workers' summaries are trusted) and prints one front, a row per config with its
    folds aggregated.  The driver is a process of its own (tests/injected.py counts its store
    reads): an in-process Ray driver would carry state from earlier tests of this process."""
    cv = STUDIES / "cv_smoke.yaml"
    counts = tmp_path / "reads.json"
    proc = grid_cli(
        "run", str(cv), "--results", str(tmp_path), "--address", ray_head,
        faults=["--count-store-reads", str(counts)],
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "fold=2/3" in out
    reads = json.loads(counts.read_text())
    assert reads["read"] == [] and len(reads["scans"]) == 1  # the state, built once
    # One front, per config: the oracle aggregates the stored rows by hand.
    rows = pq.read_table(tmp_path / "cv-smoke" / "rows").to_pylist()
    per_key: dict[str, dict[str, Any]] = {}
    for r in rows:
        k = per_key.setdefault(r["key"], {"bits": r["cfg_bits"], "robust": []})
        k.update(clean=r["metric_clean_acc"], bytes=r["metric_bytes"])
        if r["attack"] == "worst" and r["attack_norm"] == "inf" and abs(r["eps"] - 0.1) < 1e-9:
            k["robust"].append(r["metric_robust_acc"])  # the headline: worst at the largest eps
    by_config: dict[str, list[dict[str, Any]]] = {}
    for k in per_key.values():
        assert len(k["robust"]) == 1
        by_config.setdefault(str(k["bits"]), []).append(k)
    agg = {
        bits: {
            "robust": [k["robust"][0] for k in ks],
            "clean": [k["clean"] for k in ks],
            "bytes": sum(k["bytes"] for k in ks) / len(ks),
            "folds": len(ks),
        }
        for bits, ks in by_config.items()
    }
    front = brute_force_front(
        [(b, sum(a["robust"]) / len(a["robust"]), a["bytes"]) for b, a in agg.items()]
    )
    assert "Pareto front" not in out and out.count(" hypervolume ") == 1  # one front printed
    row = re.compile(
        r"^\s+([\d,]+)\s+([\d.]+)\s+\[([\d.]+), ([\d.]+)\]\s+([\d.]+)\s+\[([\d.]+), ([\d.]+)\]"
        r"\s+(\d+)\s+bits=(\S+)"
    )
    printed = {m.group(9): m.groups()[:8] for m in map(row.match, out.splitlines()) if m}
    assert set(printed) == front

    def mean(v: list[float]) -> float:
        return sum(v) / len(v)

    for bits, got in printed.items():
        a = agg[bits]
        want = (
            f"{a['bytes']:,.0f}", f"{mean(a['robust']):.3f}", f"{min(a['robust']):.3f}",
            f"{max(a['robust']):.3f}", f"{mean(a['clean']):.3f}", f"{min(a['clean']):.3f}",
            f"{max(a['clean']):.3f}", "3",
        )  # fmt: skip
        assert got == want, (bits, got, want)
    con = connect(tmp_path / "cv-smoke")
    per_config = con.execute(
        "SELECT cfg_bits, count(DISTINCT key), list(fold ORDER BY fold), bool_and(status = 'complete') "
        "FROM rows WHERE attack <> 'worst' GROUP BY cfg_bits ORDER BY cfg_bits"
    ).fetchall()
    assert per_config == [("4", 3, [0, 1, 2], True), ("float", 3, [0, 1, 2], True)]
    # The folds' test sets partition the data: rebuild them from the rows' own configs.
    from trainables.config import TrialConfig
    from trainables.data import trial_split

    configs = [
        TrialConfig.model_validate(json.loads(c))
        for (c,) in con.execute(
            "SELECT DISTINCT meta_config_json FROM rows WHERE cfg_bits = '4'"
        ).fetchall()
    ]
    tests = [set(trial_split(c).test_index.tolist()) for c in configs]
    assert sum(map(len, tests)) == len(set().union(*tests)) == 1797


def test_export_writes_a_trial_out(
    smoke_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    folder, _ = smoke_run
    key = sorted(p.name for p in (folder / "artifacts").iterdir())[0]
    proc = grid_cli("export", str(folder), key[:6], "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "manifest.json", "model.h5", "model_int8.tflite", "weights.npz",
    ]  # fmt: skip
    assert f"exported trial {key}" in proc.stdout
    bad = grid_cli("export", str(folder), "zzzz")
    assert bad.returncode == 2 and "key: 'zzzz' matches no trial" in bad.stderr
