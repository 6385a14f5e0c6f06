"""Pareto fronts over trials (robust accuracy up, bytes down) and their hypervolume."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import numpy as np
import pandas as pd

from analysis.query import CONFIG_ID, where_clause

# One point per trial (key), or per config (the mean over its folds):
# robust accuracy under the attack at eps ('worst': the minimum over attacks,
# taken per fold before the mean).
_PER_TRIAL = """
    SELECT key, any_value(CONFIG_ID) AS config_id, any_value(fold) AS fold,
           any_value(cfg_dataset) AS dataset, any_value(cfg_model) AS model,
           any_value(cfg_bits) AS bits, any_value(cfg_sparsity) AS sparsity,
           any_value(cfg_clusters) AS clusters, any_value(cfg_jr_weight) AS jr_weight,
           any_value(cfg_adv_training) AS adv_training,
           any_value(metric_clean_acc) AS clean_acc,
           min(metric_robust_acc) AS robust_acc,
           any_value(metric_bytes) AS bytes, any_value(metric_params) AS params,
           any_value(metric_nonzero) AS nonzero, any_value(metric_jacobian_fro2) AS jacobian_fro2
    FROM rows
    WHERE status = 'complete' AND abs(eps - $eps) < 1e-9 AND ($attack = 'worst' OR attack = $attack)
          WHERE_EXTRA
    GROUP BY key
""".replace("CONFIG_ID", CONFIG_ID)

_PER_CONFIG = f"""
    SELECT min(key) AS key, config_id, count(*) AS folds,
           any_value(dataset) AS dataset, any_value(model) AS model,
           any_value(bits) AS bits, any_value(sparsity) AS sparsity, any_value(clusters) AS clusters,
           any_value(jr_weight) AS jr_weight, any_value(adv_training) AS adv_training,
           avg(clean_acc) AS clean_acc, avg(robust_acc) AS robust_acc,
           coalesce(stddev_samp(robust_acc), 0) AS robust_std,
           avg(bytes) AS bytes, any_value(params) AS params, avg(nonzero) AS nonzero,
           avg(jacobian_fro2) AS jacobian_fro2
    FROM ({_PER_TRIAL}) GROUP BY config_id
"""

DIRECTIONS = {"max", "min"}
DEFAULT_OBJECTIVES = {"robust_acc": "max", "bytes": "min"}


def headline_eps(con: duckdb.DuckDBPyConnection, attack: str = "worst") -> float:
    """The largest eps in the results (0.0 when only clean rows exist)."""
    row = con.execute(
        "SELECT max(eps) FROM rows WHERE status = 'complete' AND ($attack = 'worst' OR attack = $attack)",
        {"attack": attack},
    ).fetchone()
    if row is None or row[0] is None:
        raise ValueError(f"attack: no complete rows for attack {attack!r}")
    return float(row[0])


def _points_sql(per: str, where: str | None) -> str:
    if per not in ("trial", "config"):
        raise ValueError(f"per: {per!r} must be 'trial' or 'config'")
    sql = _PER_TRIAL if per == "trial" else _PER_CONFIG
    return sql.replace("WHERE_EXTRA", where_clause(where))


def trial_points(
    con: duckdb.DuckDBPyConnection,
    attack: str = "worst",
    eps: float | None = None,
    where: str | None = None,
    per: str = "trial",
) -> pd.DataFrame:
    """One point per complete trial (``per='config'``: per config, the mean over its folds).

    ``where`` filters the rows first (a DuckDB predicate, e.g. ``"cfg_adv_training = 'none'"``).
    """
    eps = headline_eps(con, attack) if eps is None else eps
    return con.execute(
        _points_sql(per, where) + " ORDER BY bytes, robust_acc DESC, key",
        {"eps": eps, "attack": attack},
    ).df()


def pareto_front(
    con: duckdb.DuckDBPyConnection,
    attack: str = "worst",
    eps: float | None = None,
    objectives: dict[str, str] | None = None,
    where: str | None = None,
    per: str = "trial",
) -> pd.DataFrame:
    """Points no other point dominates, by bytes.

    ``objectives`` maps a point column (robust_acc, clean_acc, bytes, params,
    nonzero, jacobian_fro2) to 'max' or 'min'; default robust accuracy up,
    bytes down.  A point is dominated when another is no worse in every
    objective and better in one (ties stay on the front).  Two objectives take
    one sort (O(n log n)); three or more a self-join (O(n^2)).
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
    eps = headline_eps(con, attack) if eps is None else eps
    if len(objectives) == 2:
        sql = _front_2d(_points_sql(per, where), objectives)
        return con.execute(sql, {"eps": eps, "attack": attack}).df()
    no_worse = " AND ".join(
        f"q.{c} {'>=' if d == 'max' else '<='} p.{c}" for c, d in objectives.items()
    )
    better = " OR ".join(f"q.{c} {'>' if d == 'max' else '<'} p.{c}" for c, d in objectives.items())
    sql = f"""
        WITH p AS ({_points_sql(per, where)})
        SELECT * FROM p
        WHERE NOT EXISTS (SELECT 1 FROM p AS q WHERE {no_worse} AND ({better}))
        ORDER BY bytes, robust_acc DESC, key
    """
    return con.execute(sql, {"eps": eps, "attack": attack}).df()


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


def format_front(front: pd.DataFrame, attack: str, eps: float) -> str:
    """A plain-text table of a front, for the terminal."""
    title = f"Pareto front: robust accuracy ({attack} @ eps={eps:g}) up, bytes down — {len(front)} trial(s)"
    if front.empty:
        return title + "\n  (no complete trials)"
    header = f"  {'bytes':>9}  {'robust':>6}  {'clean':>6}  {'bits':>18}  {'sparsity':>8}  {'clusters':>8}  {'jr_weight':>9}  key"
    lines = [title, header]
    for r in front.itertuples():
        lines.append(
            f"  {r.bytes:>9,.0f}  {r.robust_acc:>6.3f}  {r.clean_acc:>6.3f}  {r.bits:>18}  "
            f"{r.sparsity:>8g}  {r.clusters:>8}  {r.jr_weight:>9g}  {r.key}"
        )
    return "\n".join(lines)


def _as_minimization(
    values: np.ndarray | Sequence[Sequence[float]], maximize: Sequence[bool]
) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(values, dtype=np.float64).reshape(-1, len(maximize))
    sign = np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)
    return v * sign, sign


def nondominated(
    values: np.ndarray | Sequence[Sequence[float]], maximize: Sequence[bool]
) -> np.ndarray:
    """Boolean mask of the points no other point dominates (ties: both stay)."""
    v, _ = _as_minimization(values, maximize)
    keep = np.ones(len(v), dtype=bool)
    for start in range(0, len(v), 512):  # blocks: memory 512 x n x d, not n x n x d
        block = v[start : start + 512]
        le = (v[:, None, :] <= block[None, :, :]).all(axis=2)  # le[j, i]: j no worse than i
        lt = (v[:, None, :] < block[None, :, :]).any(axis=2)
        keep[start : start + 512] = ~(le & lt).any(axis=0)
    return keep


def _hv_min(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume of minimisation points, all strictly below ``ref`` (slicing, n^(d-1))."""
    n, d = points.shape
    if n == 0:
        return 0.0
    if d == 1:
        return float(ref[0] - points[:, 0].min())
    order = np.argsort(points[:, -1], kind="stable")
    p = points[order]
    edges = np.append(p[:, -1], ref[-1])
    if d == 2:
        best = np.minimum.accumulate(p[:, 0])  # the front's x up to each y slice
        return float(np.sum((edges[1:] - edges[:-1]) * (ref[0] - best)))
    total = 0.0
    for i in range(n):
        height = edges[i + 1] - edges[i]
        if height > 0:
            total += height * _hv_min(p[: i + 1, :-1], ref[:-1])
    return total


def hypervolume(
    values: np.ndarray | Sequence[Sequence[float]],
    maximize: Sequence[bool],
    reference: Sequence[float],
) -> float:
    """Volume dominated by ``values`` and bounded by ``reference``, in the objectives' units.

    ``maximize[i]`` gives objective i's direction; points not strictly better
    than the reference in every objective add nothing.  Exact in any
    dimension (2 objectives: one sort).
    """
    v, sign = _as_minimization(values, maximize)
    ref = np.asarray(reference, dtype=np.float64) * sign
    if ref.shape != (len(maximize),):
        raise ValueError(
            f"reference: {list(reference)} needs one value per objective ({len(maximize)})"
        )
    inside = v[(v < ref).all(axis=1)]
    if len(inside) == 0:
        return 0.0
    front = inside[nondominated(inside, [False] * len(maximize))]
    return _hv_min(np.unique(front, axis=0), ref)
