"""The undefended baseline (e.g. MLPerf Tiny's ResNet-8 or DS-CNN as published) against the
most robust point at equal or smaller bytes (``compare_to_baseline``).

Reads the DuckDB views of :func:`analysis.query.connect`; returns pandas DataFrames.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from analysis.pareto import resolve, trial_points
from analysis.query import CONFIG_ID, where_clause

# The undefended baseline of compare_to_baseline, condition by condition: truly
# float (no per-layer bits either), unpruned, unclustered, without JR of any
# kind and without adversarial training.  NULL fails a condition (unknown is
# not "without").  ("Reference" names only a dataset's MLPerf Tiny reference model,
# analysis.variants.REFERENCE_MODELS, and "hv_ref_point" the hypervolume's point.)
UNDEFENDED = {
    "float (cfg_bits 'float')": "cfg_bits = 'float'",
    "default layer bits (cfg_layer_bits '{}')": "cfg_layer_bits = '{}'",
    "unpruned (cfg_sparsity 0)": "cfg_sparsity = 0",
    "no layer pruned (cfg_layer_sparsity '{}')": "cfg_layer_sparsity = '{}'",
    "unclustered (cfg_clusters 0)": "cfg_clusters = 0",
    "no layer clustered (cfg_layer_clusters '{}')": "cfg_layer_clusters = '{}'",
    "without input-output JR (cfg_jr_weight 0)": "cfg_jr_weight = 0",
    "without per-layer JR (cfg_jr_layers '{}')": "cfg_jr_layers = '{}'",
    "without adversarial training (cfg_adv_training 'none')": "cfg_adv_training = 'none'",
}
UNDEFENDED_SQL = " AND ".join(f"({c})" for c in UNDEFENDED.values())


def compare_to_baseline(
    con: duckdb.DuckDBPyConnection,
    attack: str = "worst",
    eps: float | None = None,
    baseline: str | None = None,
    where: str | None = None,
    *,
    norm: str | None = None,
    size: str = "encoded",
) -> pd.DataFrame:
    """The undefended baseline (e.g. MLPerf Tiny's ResNet-8 or DS-CNN as published) against the
    most robust point at equal or smaller bytes, per dataset and model.

    The baseline is truly float (``cfg_bits`` 'float' and ``cfg_layer_bits``
    '{}'), unpruned, unclustered, without JR (``cfg_jr_weight`` 0 and
    ``cfg_jr_layers`` '{}') and without adversarial training (``UNDEFENDED``);
    ``baseline`` replaces that with any predicate over the rows.  When none
    exists, a ValueError says which conditions the closest configs miss.
    Points are configs (the mean over folds, Wilson intervals of the pooled
    counts); two rows per model: ``baseline`` and ``best``, the latter with
    the gain in robust accuracy and the bytes ratio (``size``: which bytes).
    """
    eps, norm = resolve(con, attack, eps, norm)
    pts = trial_points(con, attack, eps, where, per="config", norm=norm, size=size)
    predicate = UNDEFENDED_SQL if baseline is None else baseline
    ref_ids = set(
        con.execute(
            f"SELECT DISTINCT {CONFIG_ID} FROM rows WHERE status = 'complete' AND ({predicate})"
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
        for role, r in (("baseline", ref), ("best", best)):
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
                    "robust_lo": r.robust_lo,
                    "robust_hi": r.robust_hi,
                    "clean_acc": r.clean_acc,
                    "bytes": r.bytes,
                    "robust_gain": r.robust_acc - ref.robust_acc,
                    "bytes_ratio": r.bytes / ref.bytes,
                }
            )
    if not out:
        if baseline is not None:
            raise ValueError(f"baseline: no complete trials match {baseline!r}")
        raise ValueError(_no_undefended(con, where))
    df = pd.DataFrame(out)
    df.attrs.update(attack=attack, eps=eps, norm=norm, size=size)
    return df


def _no_undefended(con: duckdb.DuckDBPyConnection, where: str | None) -> str:
    """Why there is no undefended baseline: the conditions, and what the closest configs miss."""
    misses = []
    for name in UNDEFENDED:
        others = " AND ".join(f"({c})" for n, c in UNDEFENDED.items() if n != name) or "true"
        row = con.execute(
            f"SELECT count(DISTINCT {CONFIG_ID}) FROM rows WHERE status = 'complete' "
            f"AND ({others}) {where_clause(where)}"
        ).fetchone()
        if row and row[0]:
            misses.append(f"{row[0]} config(s) miss only: {name}")
    return (
        "baseline: no undefended baseline in the results: no complete config is "
        + ", ".join(UNDEFENDED)
        + (f" ({'; '.join(misses)})" if misses else "")
        + "; run one, or pass baseline= a predicate of your own"
    )
