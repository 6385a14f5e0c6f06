"""The "Per-layer assignments" section (analysis.assignments, grid report, grid compare).

Rows are written by hand through the real sink (grid.store.ParquetSink) in the real schema
(tests/helpers.rows_for) and read back through DuckDB; the expected fronts, the uniform flags
and the budget's effect come from a few lines of brute force here over the values written,
never from analysis.pareto.
"""

from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import analysis
from analysis.assignments import budget_from, front_table, per_layer
from analysis.report import build_report, write_report
from grid.cli import main
from grid.store import ParquetSink
from tests.helpers import brute_force_hv, rows_for

LAYERS = ["conv1", "conv2", "logits"]  # digits_cnn's weight layers, in model order
CHOICES = ["8", "4", "ternary"]
BUDGET = 3000


def _layers_json(names: list[str]) -> str:
    """meta_layers_json as the trainable writes it: the footprint's layers, in model order."""
    return json.dumps([{"name": n, "kernel_params": 100, "bytes": 10} for n in names])


def _point(
    key: str, bits: dict[str, str], robust: float, nbytes: int, *, cfg_bits: str | None = None,
    model: str = "digits_cnn",
) -> list[dict[str, Any]]:  # fmt: skip
    """One config's rows (pgd and its worst row at L-inf 0.1) with an assignment of bits.

    The config columns are canonical as the grid writes them: the most common width is the
    study-wide value, the other layers are overrides (``cfg_bits`` forces one, e.g. ans_hybrid,
    whose widths only the built JSON holds).
    """
    values = list(bits.values())
    base = max(values, key=values.count)
    overrides = {k: v for k, v in bits.items() if v != base}
    if cfg_bits is not None:
        base, overrides = cfg_bits, {}
    return rows_for(
        key, {("pgd", 0.1): robust, ("worst", 0.1): robust}, 0.9, nbytes,
        bits=base, layer_bits=json.dumps(overrides, sort_keys=True), model=model,
        samples=100, test_samples=200,
        extra={"meta_layer_bits_json": json.dumps(bits, sort_keys=True),
               "meta_layers_json": _layers_json(list(bits))},
    )  # fmt: skip


def _study(
    tmp_path: Path, seed: int = 3
) -> tuple[Path, list[tuple[str, dict[str, str], float, int]]]:
    """digits_cnn configs of every per-layer assignment of bits (random figures) and one
    ans_hybrid point; another model with uniform points only (no section for it)."""
    rng = np.random.default_rng(seed)
    sink = ParquetSink(str(tmp_path), "mixed", "r")
    written = []
    # Every assignment once (27; the three uniform ones among them): one config each.
    for i, combo in enumerate(itertools.product(CHOICES, repeat=len(LAYERS))):
        bits = dict(zip(LAYERS, combo, strict=True))
        robust = float(rng.integers(0, 40)) / 40
        nbytes = int(rng.integers(5, 45)) * 100
        key = f"k{i:02d}"
        sink(key, _point(key, bits, robust, nbytes))
        written.append((key, bits, robust, nbytes))
    hybrid = {"conv1": "8", "conv2": "4", "logits": "8"}
    sink("hyb", _point("hyb", hybrid, 0.99, 2900, cfg_bits="ans_hybrid"))
    written.append(("hyb", hybrid, 0.99, 2900))
    for j, b in enumerate(CHOICES):
        key = f"o{j}"
        sink(key, _point(key, {n: b for n in LAYERS}, 0.5, 1000 * (j + 1), model="other_cnn"))
    return tmp_path, written


def _brute_front(pts: list[tuple[str, float, int]]) -> set[str]:
    return {
        k
        for k, r, b in pts
        if not any(r2 >= r and b2 <= b and (r2 > r or b2 < b) for _, r2, b2 in pts)
    }


def test_fronts_uniform_flags_and_budget_equal_brute_force(tmp_path: Path) -> None:
    root, written = _study(tmp_path)
    con = analysis.connect(root)
    found = per_layer(con, max_bytes=BUDGET)
    assert [(a.dataset, a.model) for a in found] == [("digits", "digits_cnn")]  # not other_cnn
    a = found[0]
    assert a.layers == LAYERS
    assert len(a.points) == len(written)

    uniform = {k for k, bits, _, _ in written if len(set(bits.values())) == 1}
    assert len(uniform) == 3
    assert set(a.points.key[a.points.uniform]) == uniform
    assert "hyb" not in uniform  # ans_hybrid's built widths differ between layers

    ok = [(k, r, b) for k, _, r, b in written if b <= BUDGET]
    assert a.infeasible == sum(1 for *_, b in written if b > BUDGET) > 0
    front = _brute_front(ok)
    assert set(a.front.key) == front
    assert all(b <= BUDGET for b in a.front.bytes)  # points over the budget are off the front
    assert set(a.uniform_front.key) == _brute_front([p for p in ok if p[0] in uniform])
    # A front point is uniform-dominated when some feasible uniform point dominates it.
    for k, r, b in ok:
        if k in front:
            dominated = any(
                r2 >= r and b2 <= b and (r2 > r or b2 < b) for k2, r2, b2 in ok if k2 in uniform
            )
            assert bool(a.front.set_index("key").uniform_dominated[k]) == dominated, k
    assert "hyb" in front  # the most robust point within budget

    # Hypervolume: hv_ref_point's bytes is the budget; a box count as the oracle.
    vals = np.array([[r, b] for _, r, b in ok])
    assert a.hypervolume == pytest.approx(brute_force_hv(vals, [True, False], [0.0, BUDGET]))
    uni_vals = np.array([[r, b] for k, r, b in ok if k in uniform])
    assert a.uniform_hypervolume == pytest.approx(
        brute_force_hv(uni_vals, [True, False], [0.0, BUDGET])
    )

    # The table: each layer's column is the written bits of that front point.
    table = front_table(a).set_index("key")
    by_key = {k: bits for k, bits, _, _ in written}
    for key, r in table.iterrows():
        assert [r[layer] for layer in LAYERS] == [by_key[str(key)][n] for n in LAYERS]
        assert r["kind"] == ("uniform" if key in uniform else "per-layer")

    # Without a budget every point is feasible and the front is that of all points.
    free = per_layer(con)[0]
    assert set(free.front.key) == _brute_front([(k, r, b) for k, _, r, b in written])
    assert free.infeasible == 0


def test_uniform_only_results_have_no_section(tmp_path: Path) -> None:
    sink = ParquetSink(str(tmp_path), "u", "r")
    for j, b in enumerate(CHOICES):
        sink(f"u{j}", _point(f"u{j}", {n: b for n in LAYERS}, 0.5, 1000 * (j + 1)))
    con = analysis.connect(tmp_path)
    assert per_layer(con) == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert "Per-layer assignments" not in build_report(con, "t")


def test_report_and_compare_show_the_section_and_read_the_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study, written = _study(tmp_path / "res" / "mixed")  # the sink writes study/rows/
    root = study.parent
    assert budget_from(study) is None
    (study / "search.json").write_text(json.dumps({"objective": {"max_bytes": BUDGET}}))
    assert budget_from(study) == BUDGET and budget_from(root) == BUDGET
    over = sum(1 for *_, b in written if b > BUDGET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = write_report(study, tmp_path / "r.html")
    text = out.read_text()
    section = text[text.index("<h2>Per-layer assignments</h2>") :]
    assert 'alt="per-layer assignments: digits digits_cnn"' in section
    assert f"budget 3,000 B (encoded): {over} of {len(written)} complete points over it" in section

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["compare", str(study), "--csv", str(tmp_path / "csv")])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "Per-layer assignments: digits / digits_cnn" in printed
    assert (tmp_path / "csv" / "per_layer_digits_digits_cnn.csv").exists()
    # The hybrid point's row: its bytes, robust accuracy and built widths per layer.
    assert ["2,900", "0.990", "0.900", "per-layer", "no", "8", "4", "8"] in [
        x.split() for x in printed.splitlines()
    ]


def test_sparsity_and_clusters_per_layer_are_read_and_shown(tmp_path: Path) -> None:
    """Bits uniform, sparsity / clusters per layer: per-layer points all the same. One config
    gives its assignment in the built JSON, one only as overrides (rows without the built JSON)."""
    sink = ParquetSink(str(tmp_path), "sc", "r")
    eight = json.dumps(dict.fromkeys(LAYERS, "8"), sort_keys=True)
    common = {"meta_layer_bits_json": eight, "meta_layers_json": _layers_json(LAYERS)}
    built = {
        "cfg_layer_sparsity": json.dumps({"conv2": 0.75}),
        "cfg_layer_clusters": json.dumps({"logits": 8}),
        "meta_layer_sparsity_json": json.dumps({"conv1": 0.0, "conv2": 0.75, "logits": 0.0}),
        "meta_layer_clusters_json": json.dumps({"conv1": 0, "conv2": 0, "logits": 8}),
    }
    overrides_only = {"cfg_layer_sparsity": json.dumps({"conv1": 0.0, "logits": 0.0})}
    cases = [
        ("uni", 0.6, 2000, {}, 0.0),
        ("built", 0.7, 1500, built, 0.0),
        ("over", 0.5, 900, overrides_only, 0.5),  # study-wide 0.5 but conv1 and logits at 0
        ("bad", 0.4, 1600, {"cfg_layer_clusters": json.dumps({"conv1": 16})}, 0.0),
    ]
    for key, robust, nbytes, extra, sparsity in cases:
        rows = rows_for(
            key, {("pgd", 0.1): robust, ("worst", 0.1): robust}, 0.9, nbytes, bits="8",
            sparsity=sparsity, samples=100, extra={**common, **extra},
        )  # fmt: skip
        sink(key, rows)
    (a,) = per_layer(analysis.connect(tmp_path))
    assign = dict(zip(a.points.key, a.points.assignment, strict=True))
    assert assign["built"]["conv2"] == {"bits": "8", "sparsity": 0.75, "clusters": 0}
    assert assign["built"]["logits"] == {"bits": "8", "sparsity": 0.0, "clusters": 8}
    assert [assign["over"][n]["sparsity"] for n in LAYERS] == [0.0, 0.5, 0.0]
    assert assign["bad"]["conv1"]["clusters"] == 16
    assert set(a.points.key[a.points.uniform]) == {"uni"}
    # Front (brute force): over (0.5, 900), built (0.7, 1500); uni (0.6, 2000) and bad dominated.
    assert (
        set(a.front.key)
        == _brute_front([(k, r, b) for k, r, b, _, _ in cases])
        == {"over", "built"}
    )
    table = front_table(a).set_index("key")
    assert table.loc["built", "conv2"] == "8 s0.75" and table.loc["built", "logits"] == "8 c8"
    assert table.loc["over", "conv2"] == "8 s0.5" and table.loc["over", "conv1"] == "8"
    assert not table.uniform_dominates.any()  # the uniform point is dominated by both
