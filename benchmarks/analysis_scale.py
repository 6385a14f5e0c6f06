"""The analysis queries over one million rows: DuckDB (analysis) against pandas, in one run.

Writes 1,000,000 synthetic rows in the real schema (62,500 trials x 2 attacks x
8 eps) to Parquet, then times, best of ``--repeat``:
  pareto    the Pareto front (worst attack at the largest eps, robust up, bytes down)
  curve     robustness curves (accuracy vs eps per attack, mean/std/min/max by bits)
with robustgrid's DuckDB queries (reading the Parquet files each time) and with
pandas (the same answer, from pd.read_parquet; timed with and without the read).
Both answers are checked to be equal before any time is printed.

    python benchmarks/analysis_scale.py [--trials 62500] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import analysis
from grid.store import SCHEMA

ATTACKS = ("fgsm", "pgd")
EPS = (0.01, 0.02, 0.03, 0.05, 0.08, 0.1, 0.15, 0.2)


def write_rows(folder: Path, trials: int, files: int = 8, seed: int = 0) -> int:
    """Synthetic rows in the store's schema, split over ``files`` Parquet files."""
    rng = np.random.default_rng(seed)
    bits = np.array(["float", "8", "6", "4", "3", "2", "ternary", "binary"])[
        rng.integers(0, 8, trials)
    ]
    sparsity = rng.choice([0.0, 0.25, 0.5, 0.75, 0.9], trials)
    clusters = rng.choice([0, 4, 8, 16, 32], trials)
    nbytes = rng.integers(1_000, 400_000, trials)
    clean = rng.uniform(0.5, 0.95, trials)
    per = len(ATTACKS) * len(EPS)
    t_idx = np.repeat(np.arange(trials), per)
    attack = np.tile(np.repeat(np.array(ATTACKS), len(EPS)), trials)
    eps = np.tile(np.array(EPS * len(ATTACKS)), trials)
    robust = clean[t_idx] * np.exp(-eps * rng.uniform(2, 12, len(t_idx)))
    n = len(t_idx)
    cols: dict[str, pa.Array] = {f.name: pa.nulls(n, f.type) for f in SCHEMA}
    cols.update(
        schema_version=pa.array(np.ones(n, dtype=np.int64)),
        key=pa.array(np.char.add("k", t_idx.astype(str))),
        fold=pa.array(np.zeros(n, dtype=np.int64)),
        attack=pa.array(attack),
        attack_kind=pa.array(np.full(n, "white")),
        attack_norm=pa.array(np.full(n, "inf")),
        eps=pa.array(eps),
        status=pa.array(np.full(n, "complete")),
        reason=pa.array(np.full(n, "")),
        cfg_dataset=pa.array(np.full(n, "cifar10")),
        cfg_model=pa.array(np.full(n, "resnet8")),
        cfg_bits=pa.array(bits[t_idx]),
        cfg_sparsity=pa.array(sparsity[t_idx]),
        cfg_clusters=pa.array(clusters[t_idx].astype(np.int64)),
        cfg_jr_weight=pa.array(np.zeros(n)),
        cfg_adv_training=pa.array(np.full(n, "none")),
        metric_clean_acc=pa.array(clean[t_idx]),
        metric_robust_acc=pa.array(robust),
        metric_bytes=pa.array(nbytes[t_idx].astype(np.int64)),
        metric_params=pa.array(np.full(n, 78_666, dtype=np.int64)),
        meta_study=pa.array(np.full(n, "scale")),
    )
    table = pa.table([cols[f.name] for f in SCHEMA], schema=SCHEMA)
    (folder / "rows").mkdir(parents=True)
    step = -(-n // files)
    for i in range(files):
        pq.write_table(table.slice(i * step, step), folder / "rows" / f"part-{i}.parquet")
    return n


def pandas_front(df: pd.DataFrame, eps: float) -> set[str]:
    """Worst attack at eps per trial, then the same front rule (ties stay) with a sort and a running max."""
    sel = df[(df.status == "complete") & (np.abs(df.eps - eps) < 1e-9)]
    pts = sel.groupby("key").agg(
        robust_acc=("metric_robust_acc", "min"), bytes=("metric_bytes", "first")
    )
    a, b = -pts["bytes"], pts["robust_acc"]  # both "more is better"
    best = b.groupby(a).max()
    above = best.sort_index(ascending=False).cummax().shift(1)  # best b among strictly greater a
    on = (b.to_numpy() >= best.loc[a].to_numpy()) & ~(b.to_numpy() <= above.loc[a].to_numpy())
    return set(pts.index[on])


def pandas_curve(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[(df.status == "complete") & (df.attack != "none")]
    robust = ok[["cfg_bits", "key", "attack", "eps", "metric_robust_acc"]].rename(
        columns={"metric_robust_acc": "acc"}
    )
    clean = ok.drop_duplicates(["key", "attack"])[["cfg_bits", "key", "attack", "metric_clean_acc"]]
    clean = clean.rename(columns={"metric_clean_acc": "acc"}).assign(eps=0.0)
    both = pd.concat([robust, clean], ignore_index=True)
    out = both.groupby(["cfg_bits", "attack", "eps"]).agg(
        mean=("acc", "mean"), std=("acc", "std"), min=("acc", "min"), max=("acc", "max"),
        trials=("key", "nunique"),
    )  # fmt: skip
    return out.reset_index()


def best_of(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trials", type=int, default=62_500)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "scale"
        n = write_rows(folder, args.trials)
        eps = max(EPS)
        con = analysis.connect(folder)
        t_db_front, front = best_of(lambda: analysis.pareto_front(con, "worst", eps), args.repeat)
        t_db_curve, curve = best_of(
            lambda: analysis.robustness_curve(con, by=["cfg_bits"]), args.repeat
        )
        t_read, df = best_of(lambda: pd.read_parquet(folder / "rows"), args.repeat)
        assert isinstance(df, pd.DataFrame)
        t_pd_front, pfront = best_of(lambda: pandas_front(df, eps), args.repeat)
        t_pd_curve, pcurve = best_of(lambda: pandas_curve(df), args.repeat)
        # Same answers before any time counts.
        assert isinstance(front, pd.DataFrame) and isinstance(curve, pd.DataFrame)
        assert set(front["key"]) == pfront, "fronts differ"
        assert isinstance(pcurve, pd.DataFrame)
        merged = curve.merge(pcurve, on=["cfg_bits", "attack", "eps"], suffixes=("", "_pd"))
        assert len(merged) == len(curve) == len(pcurve)
        for col in ("mean", "std", "min", "max", "trials"):
            assert np.allclose(merged[col], merged[f"{col}_pd"]), col
    print(f"{n:,} rows ({args.trials:,} trials) in 8 Parquet files; front: {len(front)} trials; "
          f"best of {args.repeat}")  # fmt: skip
    print(
        f"  {'query':<8} {'duckdb':>9} {'pandas+read':>12} {'pandas warm':>12}  {'ratio (pandas+read)/duckdb':>27}"
    )
    for name, db, pd_s in (("pareto", t_db_front, t_pd_front), ("curve", t_db_curve, t_pd_curve)):
        print(
            f"  {name:<8} {db:>8.3f}s {t_read + pd_s:>11.3f}s {pd_s:>11.3f}s  {(t_read + pd_s) / db:>27.2f}"
        )
    print(f"  (pandas read_parquet alone: {t_read:.3f}s; duckdb reads the files in every query)")


if __name__ == "__main__":
    main()
