"""Pareto fronts over trials: robust accuracy up, bytes down."""

from __future__ import annotations

import duckdb
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
