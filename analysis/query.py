"""Open a results location as DuckDB views.

``rows``   every row (one per trial x fold x attack x eps), as written;
``trials`` one row per complete trial: its config and footprint.
"""

from __future__ import annotations

from pathlib import Path

import duckdb


def parquet_glob(results: str | Path) -> str:
    """The Parquet glob for a results location.

    Accepts a study's folder (``results/<study>``, holding ``rows/``), a
    parent of several studies (``results``), or a glob / single file.
    """
    s = str(results)
    if any(ch in s for ch in "*?[") or s.endswith(".parquet"):
        return s
    p = Path(s)
    if not p.exists():
        raise FileNotFoundError(f"results: no such folder {s!r}")
    if (p / "rows").is_dir():
        return str(p / "rows" / "*.parquet")
    if any(p.glob("*/rows/*.parquet")):
        return str(p / "*" / "rows" / "*.parquet")
    raise FileNotFoundError(
        f"results: {s!r} holds no robustgrid rows (expected {s}/rows/*.parquet)"
    )


def connect(
    results: str | Path, con: duckdb.DuckDBPyConnection | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views ``rows`` and ``trials`` over ``results``."""
    con = con or duckdb.connect()
    glob = parquet_glob(results).replace("'", "''")
    con.execute(
        f"CREATE OR REPLACE VIEW rows AS SELECT * FROM read_parquet('{glob}', union_by_name = true)"
    )
    con.execute(
        """
        CREATE OR REPLACE VIEW trials AS
        SELECT key, any_value(meta_study) AS study,
               any_value(cfg_bits) AS bits, any_value(cfg_weight_bits) AS weight_bits,
               any_value(cfg_sparsity) AS sparsity, any_value(cfg_clusters) AS clusters,
               any_value(cfg_jr_weight) AS jr_weight, any_value(metric_clean_acc) AS clean_acc,
               any_value(metric_bytes) AS bytes, any_value(metric_params) AS params,
               any_value(metric_nonzero) AS nonzero, any_value(meta_total_s) AS total_s,
               count(*) AS n_rows
        FROM rows WHERE status = 'complete' GROUP BY key
        """
    )
    return con
