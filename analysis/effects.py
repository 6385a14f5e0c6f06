"""Robustness curves, the effect of each reduction, and a reference model against the best point.

All functions read the DuckDB views of :func:`analysis.query.connect` and
return pandas DataFrames.  Accuracies are fractions, eps is on the input's
0-1 scale, sizes are bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import duckdb
import numpy as np
import pandas as pd
from scipy import stats

from analysis.pareto import headline_eps, trial_points
from analysis.query import AXIS_COLUMNS, CONFIG_ID, check_columns, where_clause

# A trial's identity less its reductions and fold: trials that differ only in
# bits / sparsity / clusters (and fold) share it, so each can be paired with
# the uncompressed baseline of the same fold.
PAIR_ID = (
    "coalesce(regexp_replace(regexp_replace(regexp_replace(regexp_replace(meta_config_json, "
    """'"bits": "[^"]*"(, )?', ''), '"clusters": [0-9]+(, )?', ''), """
    """'"fold": [0-9]+(, )?', ''), '"sparsity": [0-9.e+-]+(, )?', ''), """
    "concat_ws('|', cfg_dataset, cfg_model, cfg_jr_weight, cfg_adv_training, cfg_adv_eps))"
)

BASELINE = "cfg_bits = 'float' AND cfg_sparsity = 0 AND cfg_clusters = 0"


def robustness_curve(
    con: duckdb.DuckDBPyConnection,
    attack: str | None = None,
    where: str | None = None,
    by: Sequence[str] = AXIS_COLUMNS,
) -> pd.DataFrame:
    """Accuracy against eps for each attack, per group of ``by`` columns (default: each config).

    The mean, sample standard deviation, min and max are over the group's
    trials (its folds); eps 0 is the clean accuracy of the same trials.
    """
    by = list(by)
    check_columns(con, by, "by")
    cols = ", ".join(by)
    sel = f"{cols}, " if by else ""
    flt = "AND attack = $attack" if attack else ""
    sql = f"""
        WITH r AS (
            SELECT {sel}key, attack, eps, metric_robust_acc AS acc FROM rows
            WHERE status = 'complete' AND attack <> 'none' {flt} {where_clause(where)}
            UNION ALL
            SELECT DISTINCT {sel}key, attack, 0.0 AS eps, metric_clean_acc AS acc FROM rows
            WHERE status = 'complete' AND attack <> 'none' {flt} {where_clause(where)}
        )
        SELECT {sel}attack, eps, avg(acc) AS mean, coalesce(stddev_samp(acc), 0) AS std,
               min(acc) AS min, max(acc) AS max, count(DISTINCT key) AS trials
        FROM r GROUP BY ALL ORDER BY {sel}attack, eps
    """
    df = con.execute(sql, {"attack": attack} if attack else {}).df()
    if attack and df.empty:
        raise ValueError(f"attack: no complete rows for attack {attack!r}")
    return df


def reductions_of(bits: str, sparsity: float, clusters: int) -> str:
    """'quantization', 'pruning', 'clustering', combined with '+', or 'none'."""
    parts = [
        name
        for name, on in (
            ("quantization", bits != "float"),
            ("pruning", sparsity > 0),
            ("clustering", clusters > 0),
        )
        if on
    ]
    return "+".join(parts) or "none"


def _paired_points(
    con: duckdb.DuckDBPyConnection, attack: str, eps: float | None, where: str | None
) -> pd.DataFrame:
    eps = headline_eps(con, attack) if eps is None else eps
    pts = trial_points(con, attack, eps, where)
    ids = con.execute(f"SELECT key, any_value({PAIR_ID}) AS pair_id FROM rows GROUP BY key").df()
    pts = pts.merge(ids, on="key")
    pts["reductions"] = [
        reductions_of(b, s, c) for b, s, c in zip(pts.bits, pts.sparsity, pts.clusters, strict=True)
    ]
    return pts


def _p_values(delta: np.ndarray) -> tuple[float, float]:
    """Two-sided paired t-test and Wilcoxon signed-rank p-values of the differences (NaN when undefined)."""
    if len(delta) < 2 or np.allclose(delta, delta[0]):
        return math.nan, math.nan
    t = float(stats.ttest_1samp(delta, 0.0).pvalue)
    w = float(stats.wilcoxon(delta).pvalue) if np.any(delta != 0) else math.nan
    return t, w


def reduction_effects(
    con: duckdb.DuckDBPyConnection,
    attack: str = "worst",
    eps: float | None = None,
    where: str | None = None,
    summary: bool = False,
) -> pd.DataFrame:
    """Each reduction alone and combined against the uncompressed baseline, paired over folds.

    Every trial is paired with the baseline trial (float, no pruning, no
    clustering) of the same fold and otherwise equal config (same JR,
    adversarial training, seed, training).  Per config (or per reduction
    combination with ``summary=True``): the mean robust accuracy, the
    baseline's, the mean paired difference, its 95% interval and the p-values
    of a paired t-test and a Wilcoxon signed-rank test (NaN below two pairs).
    """
    pts = _paired_points(con, attack, eps, where)
    base = pts[pts.reductions == "none"][["pair_id", "fold", "robust_acc", "bytes"]]
    if base.empty:
        raise ValueError(
            "baseline: no uncompressed trials (bits float, sparsity 0, clusters 0) to compare against"
        )
    paired = pts[pts.reductions != "none"].merge(
        base, on=["pair_id", "fold"], suffixes=("", "_baseline")
    )
    groups = (
        ["reductions"]
        if summary
        else ["reductions", "bits", "sparsity", "clusters", "jr_weight", "adv_training"]
    )
    out = []
    for keys, g in paired.groupby(groups, sort=True, dropna=False):
        delta = (g.robust_acc - g.robust_acc_baseline).to_numpy()
        t_p, w_p = _p_values(delta)
        half = (
            float(stats.t.ppf(0.975, len(delta) - 1) * delta.std(ddof=1) / math.sqrt(len(delta)))
            if len(delta) >= 2
            else math.nan
        )
        row = dict(zip(groups, keys if isinstance(keys, tuple) else (keys,), strict=True))
        row.update(
            pairs=len(delta),
            robust_acc=float(g.robust_acc.mean()),
            baseline_robust_acc=float(g.robust_acc_baseline.mean()),
            delta=float(delta.mean()),
            delta_ci95=half,
            p_ttest=t_p,
            p_wilcoxon=w_p,
            bytes_ratio=float((g.bytes / g.bytes_baseline).mean()),
        )
        out.append(row)
    order = {"quantization": 0, "pruning": 1, "clustering": 2}
    df = pd.DataFrame(out)
    if not df.empty:
        df["_n"] = df.reductions.str.count("[+]")
        df["_o"] = df.reductions.map(lambda r: "".join(str(order[p]) for p in r.split("+")))
        df = (
            df.sort_values(["_n", "_o", *groups[1:]])
            .drop(columns=["_n", "_o"])
            .reset_index(drop=True)
        )
    return df


def compare_to_baseline(
    con: duckdb.DuckDBPyConnection,
    attack: str = "worst",
    eps: float | None = None,
    baseline: str = BASELINE + " AND cfg_jr_weight = 0 AND cfg_adv_training = 'none'",
    where: str | None = None,
) -> pd.DataFrame:
    """The reference model (e.g. MLPerf Tiny's ResNet-8 or DS-CNN as published: float, uncompressed,
    undefended) against the most robust point at equal or smaller bytes, per dataset and model.

    ``baseline`` is a predicate over the rows that picks the reference; points
    are configs (the mean over folds).  Two rows per model: ``reference`` and
    ``best``, the latter with the gain in robust accuracy and the bytes ratio.
    """
    eps = headline_eps(con, attack) if eps is None else eps
    pts = trial_points(con, attack, eps, where, per="config")
    ref_ids = set(
        con.execute(
            f"SELECT DISTINCT {CONFIG_ID} FROM rows WHERE status = 'complete' AND ({baseline})"
        )
        .df()
        .iloc[:, 0]
    )
    out = []
    for (dataset, model), g in pts.groupby(["dataset", "model"], sort=True):
        refs = g[g.config_id.isin(ref_ids)]
        if refs.empty:
            continue
        ref = refs.sort_values("robust_acc", ascending=False).iloc[0]
        cands = g[g.bytes <= ref.bytes].sort_values(
            ["robust_acc", "bytes"], ascending=[False, True]
        )
        best = cands.iloc[0]
        for role, r in (("reference", ref), ("best", best)):
            out.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "role": role,
                    "key": r.key,
                    "bits": r.bits,
                    "sparsity": r.sparsity,
                    "clusters": r.clusters,
                    "jr_weight": r.jr_weight,
                    "adv_training": r.adv_training,
                    "folds": r.folds,
                    "robust_acc": r.robust_acc,
                    "clean_acc": r.clean_acc,
                    "bytes": r.bytes,
                    "robust_gain": r.robust_acc - ref.robust_acc,
                    "bytes_ratio": r.bytes / ref.bytes,
                }
            )
    if not out:
        raise ValueError(f"baseline: no complete trials match {baseline!r}")
    return pd.DataFrame(out)
