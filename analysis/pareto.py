"""Pareto fronts over trials (robust accuracy up, bytes down) and their hypervolume.

The algorithms over arrays (``nondominated``, ``hypervolume``) live in ``analysis.fronts``;
this module reads the points from the results and keeps those names importable.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from analysis.fronts import hypervolume, nondominated
from analysis.inference import wilson_arrays
from analysis.query import CONFIG_ID, NORMS, where_clause
from trainables.headline import EPS_TOL, SIZES, WORST, WORST_NORM, reads_sql

# One point per trial (key), or per config (over its folds): robust accuracy
# under the attack at eps under one norm.  'worst' is the trial's stored worst
# row at that (norm, eps) (attack 'worst': every attack's per-example mask
# ANDed over the examples all of them attacked, trainables/worst.py), never a
# minimum of accuracies; ``attacks`` lists the attacks behind it (the other
# rows there).  robust_k / samples are the counts behind the robust accuracy
# (the worst row's: the common subset), clean_k / test_samples those behind
# the clean accuracy.  Trials without the selected row (old results without
# worst rows) give no point.
_PER_TRIAL = """
    SELECT key, any_value(config_id) AS config_id, any_value(fold) AS fold,
           any_value(cfg_folds) AS cfg_folds,
           any_value(dataset) AS dataset, any_value(model) AS model, any_value(jr_layers) AS jr_layers,
           any_value(bits) AS bits, any_value(sparsity) AS sparsity,
           any_value(clusters) AS clusters, any_value(jr_weight) AS jr_weight,
           any_value(adv_training) AS adv_training,
           any_value(clean_acc) AS clean_acc,
           min(robust_acc) FILTER (WHERE _selected) AS robust_acc,
           arg_min(struct_pack(k := robust_k, n := samples), robust_acc) FILTER (WHERE _selected) AS _w,
           any_value(clean_k) AS clean_k, any_value(test_samples) AS test_samples,
           any_value(bytes) AS bytes, any_value(params) AS params,
           any_value(nonzero) AS nonzero, any_value(jacobian_fro2) AS jacobian_fro2,
           string_agg(DISTINCT attack, ',' ORDER BY attack) FILTER (WHERE attack <> 'worst' OR $attack <> 'worst') AS attacks
    FROM (
        SELECT key, attack, SELECTED OR attack = 'none' AS _selected, CONFIG_ID AS config_id, fold, cfg_folds, cfg_dataset AS dataset,
               cfg_model AS model, cfg_bits AS bits, cfg_sparsity AS sparsity, cfg_jr_layers AS jr_layers,
               cfg_clusters AS clusters, cfg_jr_weight AS jr_weight,
               cfg_adv_training AS adv_training, metric_clean_acc AS clean_acc,
               metric_robust_acc AS robust_acc,
               round(metric_robust_acc * metric_samples) AS robust_k, metric_samples AS samples,
               round(metric_clean_acc * metric_test_samples) AS clean_k,
               metric_test_samples AS test_samples,
               SIZE AS bytes, metric_params AS params, metric_nonzero AS nonzero,
               metric_jacobian_fro2 AS jacobian_fro2
        FROM rows
        WHERE status = 'complete' AND abs(eps - $eps) < EPS_TOL
              AND ($attack = 'worst' OR attack = $attack)
              AND (attack = 'none' OR attack_norm = $norm)
              WHERE_EXTRA
    )
    GROUP BY key
    HAVING bool_or(_selected)
"""

_TRIAL_COLUMNS = """
    SELECT * EXCLUDE (_w), _w.k AS robust_k, _w.n AS samples FROM (PER_TRIAL)
"""

# Per config: means over the folds; the counts summed over the folds' disjoint
# test sets (their Wilson interval is that of the pooled proportion).
_PER_CONFIG = """
    SELECT min(key) AS key, config_id, count(*) AS folds,
           any_value(dataset) AS dataset, any_value(model) AS model, any_value(jr_layers) AS jr_layers,
           any_value(bits) AS bits, any_value(sparsity) AS sparsity, any_value(clusters) AS clusters,
           any_value(jr_weight) AS jr_weight, any_value(adv_training) AS adv_training,
           avg(clean_acc) AS clean_acc, avg(robust_acc) AS robust_acc,
           coalesce(stddev_samp(robust_acc), 0) AS robust_std,
           CASE WHEN count(robust_k) = count(*) THEN sum(robust_k) END AS robust_k, CASE WHEN count(samples) = count(*) THEN sum(samples) END AS samples,
           CASE WHEN count(clean_k) = count(*) THEN sum(clean_k) END AS clean_k, CASE WHEN count(test_samples) = count(*) THEN sum(test_samples) END AS test_samples,
           avg(bytes) AS bytes, any_value(params) AS params, avg(nonzero) AS nonzero,
           avg(jacobian_fro2) AS jacobian_fro2, min(attacks) AS attacks,
           count(DISTINCT attacks) AS _attack_sets
    FROM (TRIALS) GROUP BY config_id
"""

DIRECTIONS = {"max", "min"}
DEFAULT_OBJECTIVES = {"robust_acc": "max", "bytes": "min"}
SIZE_LABELS = {
    "encoded": "encoded bytes (smallest encoding, a lower bound)",
    "tflite": "TFLite bytes (deployable int8 flatbuffer)",
}


def norm_label(norm: str) -> str:
    """'L-inf' or 'L2'."""
    return "L-inf" if norm == "inf" else f"L{norm}"


def describe(attack: str, eps: float, norm: str, size: str | None = None) -> str:
    """'worst case over the attacks (L-inf) at eps 0.1' [+ '; size: encoded bytes ...'], for headers
    and titles ('worst': per example, robust only if robust under every attack)."""
    who = "worst case over the attacks" if attack == "worst" else attack
    text = f"{who} ({norm_label(norm)}) at eps {eps:g}"
    return text + (f"; size: {SIZE_LABELS[size]}" if size else "")


def _attack_rows(con: duckdb.DuckDBPyConnection, attack: str) -> list[tuple[str, float]]:
    return [
        (str(n), float(e))
        for n, e in con.execute(
            "SELECT DISTINCT attack_norm, eps FROM rows WHERE status = 'complete' "
            "AND attack = $attack",
            {"attack": attack},
        ).fetchall()
    ]


def _no_rows(con: duckdb.DuckDBPyConnection, attack: str) -> ValueError:
    stale = con.execute(
        "SELECT count(DISTINCT key) FROM all_rows WHERE key NOT IN (SELECT key FROM rows)"
    ).fetchone()
    hint = (
        f" ({stale[0]} stale trial(s) of other revisions are left out: "
        "analysis.connect(..., stale=True) reads them)"
        if stale and stale[0]
        else ""
    )
    return ValueError(f"attack: no complete rows for attack {attack!r}{hint}")


def resolve(
    con: duckdb.DuckDBPyConnection,
    attack: str = "worst",
    eps: float | None = None,
    norm: str | None = None,
) -> tuple[float, str]:
    """The (eps, norm) a selection of ``attack`` means; never two norms at once.

    ``norm`` None: 'inf' for 'worst', the attack's own norm for a named attack
    (an error when it was run under both).  ``eps`` None: the largest eps of
    that attack and norm.  An eps that exists only under the other norm is an
    error that says so.  A study without attacks (clean rows only): eps 0.
    """
    if norm is not None and norm not in NORMS:
        raise ValueError(f"norm: {norm!r} must be 'inf' or '2'")
    pairs = _attack_rows(con, attack)
    if not pairs:
        clean = con.execute(
            "SELECT count(*) FROM rows WHERE status = 'complete' AND attack = 'none'"
        ).fetchone()
        if attack == "worst" and clean and clean[0]:
            if eps is not None and abs(eps) > 1e-9:
                raise ValueError(f"eps: {eps:g}: the results hold clean rows only (eps 0)")
            return 0.0, norm or WORST_NORM
        raise _no_rows(con, attack)
    norms = sorted({n for n, _ in pairs})
    if norm is None:
        if attack == WORST:
            norm = WORST_NORM
        elif len(norms) > 1:
            raise ValueError(
                f"norm: attack {attack!r} was run under norms {norms}: pass norm= one of them"
            )
        else:
            norm = norms[0]
    here = sorted({e for n, e in pairs if n == norm})
    if eps is None:
        if not here:
            raise ValueError(
                f"norm: no complete rows for attack {attack!r} under {norm_label(norm)} "
                f"(its norms: {norms}): pass norm={norms[0]!r}"
            )
        return here[-1], norm
    if any(abs(e - eps) < 1e-9 for e in here):
        return float(eps), norm
    other = sorted({n for n, e in pairs if n != norm and abs(e - eps) < 1e-9})
    if other:
        raise ValueError(
            f"eps: {eps:g} exists only under {norm_label(other[0])} for attack {attack!r}, "
            f"not under {norm_label(norm)} (eps there: {[f'{e:g}' for e in here]}): "
            f"pass norm={other[0]!r}"
        )
    raise ValueError(
        f"eps: no complete rows for attack {attack!r} at eps {eps:g} under {norm_label(norm)} "
        f"(eps there: {[f'{e:g}' for e in here]})"
    )


def headline_eps(
    con: duckdb.DuckDBPyConnection, attack: str = "worst", norm: str | None = None
) -> float:
    """The largest eps of the attack under the norm ('worst': L-inf by default; 0.0 for clean rows only)."""
    return resolve(con, attack, None, norm)[0]


def _points_sql(per: str, where: str | None, size: str = "encoded") -> str:
    if per not in ("trial", "config"):
        raise ValueError(f"per: {per!r} must be 'trial' or 'config'")
    if size not in SIZES:
        raise ValueError(f"size: {size!r} must be 'encoded' or 'tflite'")
    # The headline's rows (trainables/headline.py), at the resolved eps and norm; ``rows``
    # has attack_norm filled by the same rule (analysis.query).
    selected = reads_sql("$attack", "$norm", "$eps", row_norm="attack_norm")
    per_trial = (
        _PER_TRIAL.replace("SELECTED", selected)
        .replace("EPS_TOL", repr(EPS_TOL))
        .replace("CONFIG_ID", CONFIG_ID)
        .replace("SIZE", SIZES[size])
        .replace("WHERE_EXTRA", where_clause(where))  # the user's text last: never rewritten
    )
    trials = _TRIAL_COLUMNS.replace("PER_TRIAL", per_trial)
    return trials if per == "trial" else _PER_CONFIG.replace("TRIALS", trials)


def _params(attack: str, eps: float, norm: str) -> dict[str, object]:
    return {"eps": eps, "attack": attack, "norm": norm}


def _finish(df: pd.DataFrame, attack: str, eps: float, norm: str, size: str) -> pd.DataFrame:
    """Wilson intervals from the counts, and the selection in ``df.attrs``."""
    if size == "tflite" and df["bytes"].isna().any():
        missing = int(df["bytes"].isna().sum())
        raise ValueError(
            f"size: 'tflite': {missing} of {len(df)} point(s) have no metric_tflite_bytes "
            "(rows written before the TFLite size was recorded?); use size='encoded'"
        )
    df["robust_lo"], df["robust_hi"] = wilson_arrays(
        df["robust_k"].to_numpy(dtype=float, na_value=np.nan),
        df["samples"].to_numpy(dtype=float, na_value=np.nan),
    )
    df["clean_lo"], df["clean_hi"] = wilson_arrays(
        df["clean_k"].to_numpy(dtype=float, na_value=np.nan),
        df["test_samples"].to_numpy(dtype=float, na_value=np.nan),
    )
    sets = set(df["attacks"].dropna())
    if "_attack_sets" in df:
        sets |= {"(differs between folds)"} if (df.pop("_attack_sets") > 1).any() else set()
    if attack == "worst" and len(sets) > 1:
        import warnings

        counts = df["attacks"].value_counts()
        warnings.warn(
            f"worst at eps {eps:g} ({norm_label(norm)}) is taken over different attack sets: "
            + "; ".join(f"[{a}] {n} point(s)" for a, n in counts.items())
            + (" (and within configs, between folds)" if "(differs between folds)" in sets else "")
            + ": a point attacked by fewer attacks looks more robust; compare like with like "
            "(where=...) or name one attack",
            stacklevel=3,
        )
    df.attrs.update(attack=attack, eps=eps, norm=norm, size=size)
    return df


def trial_points(
    con: duckdb.DuckDBPyConnection,
    attack: str = "worst",
    eps: float | None = None,
    where: str | None = None,
    per: str = "trial",
    *,
    norm: str | None = None,
    size: str = "encoded",
) -> pd.DataFrame:
    """One point per complete trial (``per='config'``: per config, over its folds).

    ``where`` filters the rows first (a DuckDB predicate, e.g. ``"cfg_adv_training = 'none'"``).
    ``norm`` picks the attacks' norm ('inf' | '2'; see :func:`resolve`), ``size``
    what ``bytes`` holds: 'encoded' (``metric_bytes``, the smallest encoding,
    a lower bound) or 'tflite' (``metric_tflite_bytes``, the deployable int8
    flatbuffer).  ``robust_lo``/``robust_hi`` (``clean_lo``/``clean_hi``) are
    the 95% Wilson interval of the counts; per config, of the counts summed
    over the folds' disjoint test sets.  ``df.attrs`` records attack, eps,
    norm and size.
    """
    eps, norm = resolve(con, attack, eps, norm)
    df = con.execute(
        _points_sql(per, where, size) + " ORDER BY bytes, robust_acc DESC, key",
        _params(attack, eps, norm),
    ).df()
    return _finish(df, attack, eps, norm, size)


def pareto_front(
    con: duckdb.DuckDBPyConnection,
    attack: str = "worst",
    eps: float | None = None,
    objectives: dict[str, str] | None = None,
    where: str | None = None,
    per: str = "trial",
    *,
    norm: str | None = None,
    size: str = "encoded",
) -> pd.DataFrame:
    """Points no other point dominates, by bytes (columns as :func:`trial_points`).

    ``objectives`` maps a point column (robust_acc, clean_acc, bytes, params,
    nonzero, jacobian_fro2) to 'max' or 'min'; default robust accuracy up,
    bytes down.  A point is dominated when another is no worse in every
    objective and better in one (ties stay on the front).  Two objectives take
    one sort in SQL (O(n log n)), three a sweep (:func:`nondominated`,
    O(n log n)), more a pairwise check (O(n^2)).
    """
    objectives = dict(objectives or DEFAULT_OBJECTIVES)
    known = {"robust_acc", "clean_acc", "bytes", "params", "nonzero", "jacobian_fro2"}
    for col, direction in objectives.items():
        if col not in known:
            raise ValueError(
                f"objectives: unknown objective {col!r} (known: {', '.join(sorted(known))})"
            )
        if direction not in DIRECTIONS:
            raise ValueError(f"objectives.{col}: direction {direction!r} must be 'max' or 'min'")
    if not objectives:
        raise ValueError("objectives: give at least one")
    eps, norm = resolve(con, attack, eps, norm)
    points_sql = _points_sql(per, where, size)
    params = _params(attack, eps, norm)
    if size == "tflite":
        _finish(con.execute(points_sql, params).df(), attack, eps, norm, size)  # no size: error
    if len(objectives) == 2:
        df = con.execute(_front_2d(points_sql, objectives), params).df()
        return _finish(df, attack, eps, norm, size)
    # Three or more: the points, then nondominated (3: a sweep, O(n log n); more: pairwise).
    # A NULL objective neither dominates nor is dominated, as SQL's comparisons would have it.
    df = con.execute(points_sql + " ORDER BY bytes, robust_acc DESC, key", params).df()
    values = np.column_stack(
        [df[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in objectives]
    ).reshape(len(df), len(objectives))
    keep = nondominated(values, [d == "max" for d in objectives.values()])
    df = df[keep].reset_index(drop=True)
    return _finish(df, attack, eps, norm, size)


def _front_2d(points_sql: str, objectives: dict[str, str]) -> str:
    """The front of two objectives in O(n log n): one sort, a running maximum (no self-join).

    With both objectives as "more is better" (a, b): p is dominated exactly
    when some point has a greater a and b >= p's, or the same a and a greater b.
    """
    (ca, da), (cb, db) = objectives.items()
    a = ca if da == "max" else f"-{ca}"
    b = cb if db == "max" else f"-{cb}"
    return f"""
        WITH p AS ({points_sql}),
        t AS (SELECT *, {a} AS _a, {b} AS _b FROM p),
        g AS (SELECT _a, max(_b) AS _best FROM t GROUP BY _a),
        c AS (SELECT _a, _best, max(_best) OVER (ORDER BY _a DESC
                  ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS _above FROM g)
        SELECT t.* EXCLUDE (_a, _b) FROM t JOIN c USING (_a)
        WHERE t._b >= c._best AND (c._above IS NULL OR t._b > c._above)
        ORDER BY bytes, robust_acc DESC, key
    """


def format_front(
    front: pd.DataFrame,
    attack: str,
    eps: float,
    norm: str | None = None,
    size: str | None = None,
) -> str:
    """A plain-text table of a front, for the terminal (norm and size from ``front.attrs`` by default)."""
    norm = norm or front.attrs.get("norm", "inf")
    size = size or front.attrs.get("size", "encoded")
    what = "tflite bytes" if size == "tflite" else "encoded bytes"
    title = (
        f"Pareto front: robust accuracy ({describe(attack, eps, norm)}) up, {what} down "
        f"— {len(front)} trial(s); [lo, hi] = 95% Wilson interval"
    )
    if front.empty:
        return title + "\n  (no complete trials)"
    # Columns for what varies beyond the bits axis: the model and per-layer JR.
    extra = [c for c in ("model", "jr_layers") if c in front and front[c].nunique(dropna=False) > 1]
    width = {c: max(len(c), *(len(str(v)) for v in front[c])) for c in extra}
    more = "".join(f"  {c:>{width[c]}}" for c in extra)
    header = f"  {'bytes':>9}  {'robust':>6}  {'[lo, hi]':>13}  {'clean':>6}  {'bits':>18}  {'sparsity':>8}  {'clusters':>8}  {'jr_weight':>9}{more}  key"
    lines = [title, header]
    for r in front.itertuples():
        ci = f"[{r.robust_lo:.3f}, {r.robust_hi:.3f}]" if np.isfinite(r.robust_lo) else "n/a"
        cells = "".join(f"  {getattr(r, c)!s:>{width[c]}}" for c in extra)
        lines.append(
            f"  {r.bytes:>9,.0f}  {r.robust_acc:>6.3f}  {ci:>13}  {r.clean_acc:>6.3f}  {r.bits:>18}  "
            f"{r.sparsity:>8g}  {r.clusters:>8}  {r.jr_weight:>9g}{cells}  {r.key}"
        )
    return "\n".join(lines)


__all__ = [
    "DEFAULT_OBJECTIVES", "SIZES", "SIZE_LABELS", "describe", "format_front", "headline_eps",
    "hypervolume", "nondominated", "norm_label", "pareto_front", "resolve", "trial_points",
]  # fmt: skip
