"""Keras against deployed robustness, per config (``deployed: true`` studies; TF-free).

The trial's Keras worst case (attack ``worst``) beside the int8 flatbuffer's routes
(``deployed_transfer_<attack>``, ``deployed_bpda_pgd``, ``deployed_<query attack>``) and
their per-example worst case (``deployed_worst``), all at one (norm, eps), each the
mean over the config's folds with its counts pooled over the folds' disjoint test sets;
``gap`` is deployed worst minus Keras worst (negative: the deployed model is less robust
than its Keras numbers say).  ``agreement`` is the int8-vs-Keras prediction agreement
on the clean subset; ``deployed_flags`` the deployed flags that fired in any fold.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from analysis.query import CONFIG_ID, columns
from trainables.headline import DEPLOYED_WORST, EPS_TOL, STATUS_COMPLETE, WORST, norm_sql

DEPLOYED_FLAGS = ("deployed_query_above_transfer", "deployed_disagrees")
_CONFIG_COLUMNS = ("cfg_model", "cfg_bits", "cfg_sparsity", "cfg_clusters", "cfg_jr_weight")


def keras_vs_deployed(
    con: duckdb.DuckDBPyConnection, eps: float, norm: str = "inf"
) -> pd.DataFrame:
    """One row per config with deployed rows at (norm, eps): config columns, ``keras_worst``,
    ``deployed_worst``, ``gap``, one column per route, ``deployed_worst_lo/hi`` (95% Wilson,
    pooled counts), ``agreement`` and ``deployed_flags``.  Empty when the results hold no deployed rows."""
    if "metric_deployed_agreement" not in columns(con):
        return pd.DataFrame()
    cfg = ", ".join(f"any_value({c}) AS {c.removeprefix('cfg_')}" for c in _CONFIG_COLUMNS)
    long = con.execute(
        f"""
        SELECT {CONFIG_ID} AS config_id, {cfg}, attack,
               avg(metric_robust_acc) AS robust,
               sum(round(metric_robust_acc * metric_samples)) AS k, sum(metric_samples) AS n,
               avg(metric_deployed_agreement) AS agreement,
               string_agg(DISTINCT metric_masking_flags, ',') AS flags
        FROM rows
        WHERE status = '{STATUS_COMPLETE}' AND abs(eps - $eps) < {EPS_TOL!r}
              AND {norm_sql()} = $norm
              AND (attack = $worst OR starts_with(attack, 'deployed_'))
        GROUP BY config_id, attack
        """,
        {"eps": float(eps), "norm": norm, "worst": WORST},
    ).df()
    if long.empty or not (long.attack == DEPLOYED_WORST).any():
        return pd.DataFrame()
    from analysis.inference import wilson_arrays

    keys = ["config_id", *(c.removeprefix("cfg_") for c in _CONFIG_COLUMNS)]
    # one value per (config, attack): the query grouped by both
    wide = long.pivot(index="config_id", columns="attack", values="robust")
    labels = long.drop_duplicates("config_id").set_index("config_id")[keys[1:]]
    wide = labels.join(wide).rename(columns={WORST: "keras_worst"}).reset_index()
    worst = long[long.attack == DEPLOYED_WORST].set_index("config_id")
    lo, hi = wilson_arrays(worst["k"].to_numpy(), worst["n"].to_numpy())
    extra = pd.DataFrame(
        {
            "deployed_worst_lo": lo,
            "deployed_worst_hi": hi,
            "agreement": worst["agreement"].to_numpy(),
            "deployed_flags": [
                ",".join(sorted({f for f in str(s or "").split(",") if f in DEPLOYED_FLAGS}))
                for s in worst["flags"]
            ],
        },
        index=worst.index,
    )
    wide = wide.join(extra, on="config_id")
    if "keras_worst" in wide:
        wide.insert(len(keys) + 1, "gap", wide[DEPLOYED_WORST] - wide["keras_worst"])
    routes = sorted(
        a for a in set(long.attack) if a.startswith("deployed_") and a != DEPLOYED_WORST
    )
    first = [*keys, "keras_worst", DEPLOYED_WORST, "gap", "deployed_worst_lo", "deployed_worst_hi"]
    order = [c for c in first if c in wide.columns] + routes + ["agreement", "deployed_flags"]
    wide.columns.name = None
    return wide[order].sort_values(keys[1:]).reset_index(drop=True)
