"""Pareto fronts over trials (robust accuracy up, bytes down) and their hypervolume."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import numpy as np
import pandas as pd

_POINTS = """
    SELECT key,
           any_value(cfg_bits) AS bits, any_value(cfg_sparsity) AS sparsity,
           any_value(cfg_clusters) AS clusters, any_value(cfg_jr_weight) AS jr_weight,
           any_value(metric_clean_acc) AS clean_acc,
           min(metric_robust_acc) AS robust_acc,
           any_value(metric_bytes) AS bytes
    FROM rows
    WHERE status = 'complete' AND abs(eps - $eps) < 1e-9 AND ($attack = 'worst' OR attack = $attack)
    GROUP BY key
"""


def headline_eps(con: duckdb.DuckDBPyConnection, attack: str = "worst") -> float:
    """The largest eps in the results (0.0 when only clean rows exist)."""
    row = con.execute(
        "SELECT max(eps) FROM rows WHERE status = 'complete' AND ($attack = 'worst' OR attack = $attack)",
        {"attack": attack},
    ).fetchone()
    if row is None or row[0] is None:
        raise ValueError(f"attack: no complete rows for attack {attack!r}")
    return float(row[0])


def trial_points(
    con: duckdb.DuckDBPyConnection, attack: str = "worst", eps: float | None = None
) -> pd.DataFrame:
    """One point per complete trial: robust accuracy under ``attack`` at ``eps`` (worst = min over attacks)."""
    eps = headline_eps(con, attack) if eps is None else eps
    return con.execute(
        _POINTS + " ORDER BY bytes, robust_acc DESC", {"eps": eps, "attack": attack}
    ).df()


def pareto_front(
    con: duckdb.DuckDBPyConnection, attack: str = "worst", eps: float | None = None
) -> pd.DataFrame:
    """Trials no other trial dominates (robust_acc >= and bytes <=, one strictly), by bytes."""
    eps = headline_eps(con, attack) if eps is None else eps
    sql = f"""
        WITH p AS ({_POINTS})
        SELECT * FROM p
        WHERE NOT EXISTS (
            SELECT 1 FROM p AS q
            WHERE q.robust_acc >= p.robust_acc AND q.bytes <= p.bytes
              AND (q.robust_acc > p.robust_acc OR q.bytes < p.bytes))
        ORDER BY bytes, robust_acc DESC, key
    """
    return con.execute(sql, {"eps": eps, "attack": attack}).df()


def format_front(front: pd.DataFrame, attack: str, eps: float) -> str:
    """A plain-text table of a front, for the terminal."""
    title = f"Pareto front: robust accuracy ({attack} @ eps={eps:g}) up, bytes down — {len(front)} trial(s)"
    if front.empty:
        return title + "\n  (no complete trials)"
    header = f"  {'bytes':>9}  {'robust':>6}  {'clean':>6}  {'bits':>18}  {'sparsity':>8}  {'clusters':>8}  {'jr_weight':>9}  key"
    lines = [title, header]
    for r in front.itertuples():
        lines.append(
            f"  {r.bytes:>9,}  {r.robust_acc:>6.3f}  {r.clean_acc:>6.3f}  {r.bits:>18}  "
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
