"""Robustness curves, the effect of each reduction, and JR on against off.

(The undefended baseline against the best point: :mod:`analysis.baseline`.)

All functions read the DuckDB views of :func:`analysis.query.connect` and
return pandas DataFrames.  Accuracies are fractions, eps is on the input's
0-1 scale, sizes are bytes.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence

import duckdb
import numpy as np
import pandas as pd

from analysis.inference import corrected_t, holm, mcnemar_exact, wilson_arrays
from analysis.paired import JR_PAIR_ID, discordant, is_missing, paired_points, robust_masks
from analysis.pareto import resolve, trial_points
from analysis.query import AXIS_COLUMNS, CONFIG_ID, NORMS, check_columns, where_clause

BASELINE = (
    "cfg_bits = 'float' AND cfg_sparsity = 0 AND cfg_clusters = 0 "
    "AND cfg_layer_sparsity = '{}' AND cfg_layer_clusters = '{}'"
)


def robustness_curve(
    con: duckdb.DuckDBPyConnection,
    attack: str | None = None,
    where: str | None = None,
    by: Sequence[str] = AXIS_COLUMNS,
    *,
    norm: str | None = None,
) -> pd.DataFrame:
    """Accuracy against eps for each attack and norm, per group of ``by`` columns (default: each config).

    ``norm`` keeps one norm ('inf' | '2'); without it every norm is kept, each
    its own curve (the ``norm`` column): never mixed.  The mean, sample
    standard deviation, min and max are over the group's trials (its folds);
    eps 0 is the clean accuracy of the same trials.  ``lo``/``hi``: the 95%
    Wilson interval of the group's pooled count (successes / examples summed
    over its trials), given only where the trials' test sets are disjoint
    (no two trials share dataset, seed, folds, fold and test fraction: the
    folds of one config); NaN where they overlap (several configs in a group,
    or the same config in two studies: the same examples counted twice) or
    counts are missing.
    """
    if norm is not None and norm not in NORMS:
        raise ValueError(f"norm: {norm!r} must be 'inf' or '2'")
    by = list(by)
    check_columns(con, by, "by")
    cols = ", ".join(by)
    sel = f"{cols}, " if by else ""
    flt = ("AND attack = $attack " if attack else "") + ("AND attack_norm = $norm" if norm else "")
    sql = f"""
        WITH r AS (
            SELECT {sel}key, concat_ws(':', cfg_dataset, cfg_seed, cfg_folds, fold, cfg_test_fraction) AS split, attack,
                   attack_norm AS norm, eps, metric_robust_acc AS acc,
                   round(metric_robust_acc * metric_samples) AS k, metric_samples AS n FROM rows
            WHERE status = 'complete' AND attack <> 'none' {flt} {where_clause(where)}
            UNION ALL
            SELECT DISTINCT {sel}key, concat_ws(':', cfg_dataset, cfg_seed, cfg_folds, fold, cfg_test_fraction) AS split, attack,
                   attack_norm AS norm, 0.0 AS eps, metric_clean_acc AS acc,
                   round(metric_clean_acc * metric_test_samples) AS k, metric_test_samples AS n
            FROM rows
            WHERE status = 'complete' AND attack <> 'none' {flt} {where_clause(where)}
        )
        SELECT {sel}attack, norm, eps, avg(acc) AS mean, coalesce(stddev_samp(acc), 0) AS std,
               min(acc) AS min, max(acc) AS max, count(DISTINCT key) AS trials,
               CASE WHEN count(n) = count(*) AND count(DISTINCT split) = count(*)
                    THEN sum(k) END AS _k,
               CASE WHEN count(n) = count(*) AND count(DISTINCT split) = count(*)
                    THEN sum(n) END AS _n
        FROM r GROUP BY ALL ORDER BY {sel}attack, norm, eps
    """
    params: dict[str, object] = {}
    if attack:
        params["attack"] = attack
    if norm:
        params["norm"] = norm
    df = con.execute(sql, params).df()
    if attack and df.empty:
        raise ValueError(
            f"attack: no complete rows for attack {attack!r}"
            + (f" under norm {norm!r}" if norm else "")
        )
    df["lo"], df["hi"] = wilson_arrays(
        df["_k"].to_numpy(dtype=float, na_value=np.nan),
        df["_n"].to_numpy(dtype=float, na_value=np.nan),
    )
    return df.drop(columns=["_k", "_n"])


def _config_text(con: duckdb.DuckDBPyConnection, key: str) -> str:
    """A trial's config as a message shows it: its stored JSON less the fold (else its id)."""
    got = con.execute(
        f"SELECT any_value(meta_config_json), any_value({CONFIG_ID}) FROM rows WHERE key = ?", [key]
    ).fetchall()  # all: a pending result would block the connection's next register
    row = got[0] if got else None
    if row is None or not row[0]:
        return str(row[1] if row else key)
    config = {k: v for k, v in json.loads(row[0]).items() if k != "fold"}
    return json.dumps(config, sort_keys=True)


_CONFIG_COLUMNS = [
    "reductions", "dataset", "model", "bits", "sparsity", "clusters", "jr_weight", "jr_layers",
    "layer_bits", "activation_bits", "adv_training", "seed", "layer_sparsity", "layer_clusters",
    "layer_activation_bits",
]  # fmt: skip


def reduction_effects(
    con: duckdb.DuckDBPyConnection,
    attack: str = "worst",
    eps: float | None = None,
    where: str | None = None,
    summary: bool = False,
    *,
    norm: str | None = None,
) -> pd.DataFrame:
    """Each reduction alone and combined against its own uncompressed baseline, fold by fold.

    Every trial is paired with the baseline trial (float, no pruning, no
    clustering) of the same fold and an otherwise identical config (JR and
    per-layer JR, adversarial training, seed, training settings, folds; per-layer
    bits and the activation width are quantization settings, like bits, so a
    quantized config's baseline is the float one): nothing is pooled across
    baselines.  Per config (``config_id``): the mean robust accuracy and its sample
    sd over the folds (``robust_std``, NaN for one fold), the baseline's, the mean
    paired difference ``delta``, and the test of delta = 0 over folds: Nadeau and Bengio's
    corrected resampled t-test for k-fold CV (``t``, ``p_value``,
    ``delta_ci95`` its half-width; NaN below two pairs, as for a holdout);
    ``mcnemar_b``/``mcnemar_c``/``p_mcnemar``: the exact McNemar test on the
    per-example robust masks, discordant counts summed over the folds (each
    fold's pair on the same attacked subset; NaN without masks).

    ``summary=True``: per reduction combination, dataset, model (and k), the
    deltas are first averaged per (seed, fold) over the combination's configs
    (each seed is its own partition: fold i of two seeds are different units),
    then the k r unit means (r seeds) are tested with the corrected repeated
    k-fold t (Bouckaert and Frank: variance (1/(k r) + 1/(k-1)) s^2, k r - 1
    df): a config-fold pair is never an independent observation.  Holdouts
    (k = 1) over r seeds: a seeded split per seed is random subsampling, tested
    with Nadeau and Bengio's corrected t at n_test/n_train = f / (1 - f) (f the
    test fraction); a fixed official test split (every seed attacked the same
    examples) gets the plain paired t over the seeds, and ``test`` says its p is
    conditional on that split.  Columns ``seeds`` (r), ``units`` (the (seed,
    fold) means tested) and ``test``.  No McNemar there (the configs share examples).

    Compressed trials without a baseline of the same fold and otherwise
    identical config cannot be paired: they are left out with a warning naming
    how many configs and an example.

    ``p_adjusted``: Holm's step-down correction over the p-values of this call
    (``p_mcnemar_adjusted`` likewise); Holm controls the family-wise error
    under any dependence, which these tests have (they share baselines).
    """
    eps, norm = resolve(con, attack, eps, norm)
    pts = paired_points(con, attack, eps, norm, where)
    base = pts[pts.reductions == "none"][["pair_id", "fold", "key", "robust_acc", "bytes"]]
    if base.empty:
        raise ValueError(
            "baseline: no uncompressed trials (bits float, sparsity 0, clusters 0) to compare against"
        )
    dup = base.duplicated(["pair_id", "fold"])
    if dup.any():
        raise ValueError(
            f"baseline: {int(dup.sum())} config-fold(s) have two baseline trials "
            f"(e.g. {base[dup].key.iloc[0]!r}): cannot pair"
        )
    compressed = pts[pts.reductions != "none"]
    paired = compressed.merge(base, on=["pair_id", "fold"], suffixes=("", "_baseline"))
    orphans = compressed[~compressed.key.isin(paired.key)]
    if not orphans.empty:
        warnings.warn(
            f"reduction_effects: {orphans.config_id.nunique()} compressed config(s) have no "
            f"baseline trial (float, sparsity 0, clusters 0, same fold, otherwise identical) "
            f"for {len(orphans)} trial(s), left out: e.g. trial {orphans.key.iloc[0]!r} of "
            f"config {_config_text(con, str(orphans.key.iloc[0]))}",
            UserWarning,
            stacklevel=2,
        )
    paired["delta"] = paired.robust_acc - paired.robust_acc_baseline
    if summary:
        df = _summary(paired)
    else:
        masks = robust_masks(con, [*paired.key, *paired.key_baseline], attack, eps, norm)
        df = _per_config(paired, masks)
    if df.empty:
        return df
    df["p_adjusted"] = holm(df["p_value"].to_numpy(dtype=float))
    if "p_mcnemar" in df:
        df["p_mcnemar_adjusted"] = holm(df["p_mcnemar"].to_numpy(dtype=float))
    order = {"quantization": 0, "pruning": 1, "clustering": 2}
    df["_n"] = df.reductions.str.count("[+]")
    df["_o"] = df.reductions.map(lambda r: "".join(str(order[p]) for p in r.split("+")))
    keys = [c for c in _CONFIG_COLUMNS[1:] if c in df]
    df = df.sort_values(["_n", "_o", *keys]).drop(columns=["_n", "_o"]).reset_index(drop=True)
    df.attrs.update(attack=attack, eps=eps, norm=norm)
    return df


def _per_config(
    paired: pd.DataFrame, masks: dict[str, tuple[str, np.ndarray] | str]
) -> pd.DataFrame:
    # Positions per config in order of first appearance (as groupby(sort=False)), and column
    # lists: a pandas group per config costs ~1 ms, and a report has 10^4 configs per cell.
    ids = paired.config_id.tolist()
    at: dict[object, list[int]] = {}
    for i, cid in enumerate(ids):
        if not is_missing(cid):
            at.setdefault(cid, []).append(i)
    col = {c: paired[c].tolist() for c in _CONFIG_COLUMNS}
    folds, keys, base_keys = (paired[c].tolist() for c in ("cfg_folds", "key", "key_baseline"))
    delta = paired.delta.to_numpy(float)
    robust = paired.robust_acc.to_numpy(float)
    base = paired.robust_acc_baseline.to_numpy(float)
    ratio = (paired.bytes / paired.bytes_baseline).to_numpy(float)
    out = []
    for cid, rows in at.items():
        first = rows[0]
        k = int(folds[first])
        d = delta[rows]
        test = corrected_t(d, k)
        b = c = 0
        usable = True
        for i in rows:
            ma, mb = masks.get(keys[i]), masks.get(base_keys[i])
            if not isinstance(ma, tuple) or not isinstance(mb, tuple) or ma[0] != mb[0]:
                usable = False
                break
            db, dc = discordant(ma[1], mb[1])
            b, c = b + db, c + dc
        row = {name: col[name][first] for name in _CONFIG_COLUMNS}
        acc = robust[rows]
        row.update(
            folds=k,
            pairs=len(rows),
            robust_acc=_mean(acc),
            # the sample sd over the folds (NaN for one fold: no spread to measure)
            robust_std=_std(acc) if len(rows) > 1 else math.nan,
            baseline_robust_acc=_mean(base[rows]),
            delta=_mean(d),
            delta_ci95=test.half_ci95,
            t=test.t,
            p_value=test.p_value,
            test=test.test,
            mcnemar_b=b if usable else pd.NA,
            mcnemar_c=c if usable else pd.NA,
            p_mcnemar=mcnemar_exact(b, c) if usable else math.nan,
            bytes_ratio=_mean(ratio[rows]),
            config_id=cid,
        )
        out.append(row)
    df = pd.DataFrame(out)
    if not df.empty:
        df["mcnemar_b"] = df["mcnemar_b"].astype("Int64")
        df["mcnemar_c"] = df["mcnemar_c"].astype("Int64")
    return df


def _mean(a: np.ndarray) -> float:
    """pandas' Series.mean (NaN skipped); numpy's where nothing is missing (the same sum)."""
    return float(a.mean()) if not np.isnan(a).any() else float(pd.Series(a).mean())


def _std(a: np.ndarray) -> float:
    """pandas' Series.std (ddof 1, NaN skipped); numpy's where nothing is missing (the same
    two-pass sums)."""
    return float(a.std(ddof=1)) if not np.isnan(a).any() else float(pd.Series(a).std(ddof=1))


def _holdout_ratio(g: pd.DataFrame, folds: int) -> float | None:
    """n_test/n_train of seeded holdouts, for the corrected t; None for a fixed test split.

    Holdouts (``folds`` 1) over several seeds: where every seed's trials attacked the same
    examples (one ``meta_attack_subset`` over the seeds: an official test split, fixed), the
    seeds only vary the training, and the test is conditional on that split (None).  Otherwise
    each seed drew its own split: random subsampling, n_test/n_train = f / (1 - f) with f the
    test fraction.  Without recorded subsets (no attacks) the split is unknown: the corrected
    ratio, the conservative choice (a larger variance)."""
    if folds >= 2 or g._seed.nunique() < 2:
        return None
    subsets = g.groupby("_seed").test_subset.agg(lambda s: tuple(sorted(s.dropna().unique())))
    if all(subsets) and len(set(subsets)) == 1:
        return None  # the same test examples under every seed: a fixed split
    f = float(g.test_fraction.mean())
    return f / (1.0 - f) if 0.0 < f < 1.0 else None


def _summary(paired: pd.DataFrame) -> pd.DataFrame:
    out = []
    paired = paired.assign(_seed=paired.seed.fillna(-1))
    groups = paired.groupby(
        ["reductions", "dataset", "model", "cfg_folds"], sort=True, dropna=False
    )
    for (reductions, dataset, model, k), g in groups:
        # One number per (seed, fold): the unit of the test.  Each seed is its own
        # partition, so fold i of one seed and fold i of another are different units.
        per_unit = g.groupby(["_seed", "fold"]).delta.mean()
        seeds = g._seed.nunique()
        test = corrected_t(
            per_unit.to_numpy(), int(k), repetitions=seeds, test_train=_holdout_ratio(g, int(k))
        )
        out.append(
            {
                "reductions": reductions,
                "dataset": dataset,
                "model": model,
                "folds": int(k),
                "seeds": seeds,
                "units": len(per_unit),
                "configs": g.config_id.nunique(),
                "pairs": len(g),
                "robust_acc": float(g.robust_acc.mean()),
                "baseline_robust_acc": float(g.robust_acc_baseline.mean()),
                "delta": float(per_unit.mean()),
                "delta_ci95": test.half_ci95,
                "t": test.t,
                "p_value": test.p_value,
                "test": test.test,
                "bytes_ratio": float((g.bytes / g.bytes_baseline).mean()),
            }
        )
    return pd.DataFrame(out)


def jr_effects(
    con: duckdb.DuckDBPyConnection,
    attack: str = "worst",
    eps: float | None = None,
    where: str | None = None,
    *,
    norm: str | None = None,
) -> pd.DataFrame:
    """Jacobian Regularization on against off at equal compression, fold by fold.

    Each trial with JR (input-output ``jr_weight`` > 0 or per-layer ``jr_layers``)
    is paired with the trial of the same fold whose config is identical except
    for JR (same dataset, model, bits and per-layer bits, sparsity, clusters,
    adversarial training, seed, training settings, folds, results revision) and
    has none.  Per JR config: mean robust and clean accuracy with JR
    (``robust_acc``, ``clean_acc``) and without (``robust_off``, ``clean_off``),
    the mean paired difference ``delta`` (robust) and ``clean_delta``, the
    corrected resampled t-test of delta = 0 over the folds (``t``, ``p_value``,
    ``delta_ci95``; NaN for a single holdout), Holm's correction over the call
    (``p_adjusted``), and both sizes' mean bytes.  JR configs without a JR-off
    partner are left out with a warning.
    """
    eps, norm = resolve(con, attack, eps, norm)
    pts = trial_points(con, attack, eps, where, norm=norm)
    ids = con.execute(f"SELECT key, any_value({JR_PAIR_ID}) AS pair_id FROM rows GROUP BY key").df()
    pts = pts.merge(ids, on="key")
    pts["cfg_folds"] = pts["cfg_folds"].fillna(1).astype(int)
    layers = pts.jr_layers.fillna("{}").map(lambda j: bool(json.loads(j)) if j else False)
    on_mask = (pts.jr_weight.fillna(0) > 0) | layers
    off = pts[~on_mask][["pair_id", "fold", "key", "robust_acc", "clean_acc", "bytes"]]
    dup = off.duplicated(["pair_id", "fold"])
    if dup.any():
        raise ValueError(
            f"jr_effects: {int(dup.sum())} config-fold(s) have two JR-off trials "
            f"(e.g. {off[dup].key.iloc[0]!r}): cannot pair"
        )
    on = pts[on_mask]
    if on.empty or off.empty:
        raise ValueError(
            "jr_effects: the results need trials with JR and without it at equal compression "
            f"({len(on)} with, {len(off)} without)"
        )
    paired = on.merge(off, on=["pair_id", "fold"], suffixes=("", "_off"))
    orphans = on[~on.key.isin(paired.key)]
    if not orphans.empty:
        warnings.warn(
            f"jr_effects: {orphans.config_id.nunique()} JR config(s) have no JR-off trial of the "
            f"same fold and otherwise identical config for {len(orphans)} trial(s), left out: "
            f"e.g. trial {orphans.key.iloc[0]!r}",
            UserWarning,
            stacklevel=2,
        )
    out = []
    for _, g in paired.groupby("config_id", sort=False):
        first = g.iloc[0]
        delta = (g.robust_acc - g.robust_acc_off).to_numpy()
        test = corrected_t(delta, int(first.cfg_folds))
        out.append(
            {
                "dataset": first.dataset,
                "model": first.model,
                "bits": first.bits,
                "sparsity": first.sparsity,
                "clusters": first.clusters,
                "adv_training": first.adv_training,
                "jr_weight": first.jr_weight,
                "jr_layers": first.jr_layers,
                "folds": int(first.cfg_folds),
                "pairs": len(g),
                "robust_off": float(g.robust_acc_off.mean()),
                "robust_acc": float(g.robust_acc.mean()),
                "delta": float(delta.mean()),
                "delta_ci95": test.half_ci95,
                "t": test.t,
                "p_value": test.p_value,
                "clean_off": float(g.clean_acc_off.mean()),
                "clean_acc": float(g.clean_acc.mean()),
                "clean_delta": float((g.clean_acc - g.clean_acc_off).mean()),
                "bytes_off": float(g.bytes_off.mean()),
                "bytes": float(g.bytes.mean()),
            }
        )
    if not out:
        raise ValueError(
            "jr_effects: no config with JR has a JR-off trial of the same fold and otherwise "
            "identical config (same model, bits, sparsity, clusters, adversarial training, training)"
        )
    df = pd.DataFrame(out)
    df["p_adjusted"] = holm(df["p_value"].to_numpy(dtype=float))
    keys = [
        "dataset",
        "model",
        "bits",
        "sparsity",
        "clusters",
        "adv_training",
        "jr_weight",
        "jr_layers",
    ]
    df = df.sort_values(keys).reset_index(drop=True)
    df.attrs.update(attack=attack, eps=eps, norm=norm)
    return df
