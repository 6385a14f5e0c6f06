"""Open a results location as DuckDB views (schema: analysis/SCHEMA.md).

``rows``    every row as written (long: one per trial x fold x attack x eps);
``trials``  one row per complete trial (wide): its config, footprint, clean
            accuracy and one ``robust_<attack>@<eps>`` column per attack and eps.

A location is a study's results folder (holding ``rows/``), a parent of
several studies, a Parquet glob or file, or a URI that pyarrow's filesystems
read (``s3://bucket/results/study``, ``gs://...``, ``file:///...``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

# A config's identity over its folds: the trial's config JSON without the fold
# (rows without it, written by other tools, fall back to the axes' columns).
CONFIG_ID = (
    """coalesce(regexp_replace(meta_config_json, '"fold": [0-9]+(, )?', ''), """
    "concat_ws('|', meta_study, cfg_dataset, cfg_model, cfg_bits, cfg_sparsity, cfg_clusters, "
    "cfg_jr_weight, cfg_adv_training, cfg_adv_eps))"
)

# The axes an analyst groups by, as the rows name them.
AXIS_COLUMNS = ("cfg_bits", "cfg_sparsity", "cfg_clusters", "cfg_jr_weight", "cfg_adv_training")


def parquet_glob(results: str | Path) -> str:
    """The Parquet glob for a local results location.

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


def _remote_dataset(uri: str) -> Any:
    """The rows under a filesystem URI as a pyarrow dataset (no DuckDB extension needed)."""
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri)
    root = root.rstrip("/")
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except (FileNotFoundError, OSError) as err:
        raise FileNotFoundError(f"results: cannot list {uri!r}: {err}") from None
    files = sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and i.path.endswith(".parquet")
        and ("/rows/" in i.path[len(root) :] or root.endswith("/rows"))
    )
    if not files:
        raise FileNotFoundError(
            f"results: {uri!r} holds no robustgrid rows (expected .../rows/*.parquet)"
        )
    return ds.dataset(files, filesystem=fs, format="parquet")


def _readable_files(glob: str) -> str:
    """A DuckDB list of the Parquet files under ``glob`` whose footer reads; warns about the rest."""
    import glob as globbing
    import warnings

    import pyarrow as pa
    import pyarrow.parquet as pq

    good, bad = [], []
    for path in sorted(globbing.glob(glob)):
        try:
            pq.read_metadata(path)
            good.append(path)
        except (pa.ArrowInvalid, OSError):
            bad.append(path)
    if bad:
        warnings.warn(
            f"results: left out {len(bad)} unreadable Parquet file(s) (truncated or not Parquet): "
            + ", ".join(bad[:5]),
            stacklevel=3,
        )
    if not good:
        raise FileNotFoundError(f"results: no readable Parquet files match {glob!r}")
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in good) + "]"


def connect(
    results: str | Path, con: duckdb.DuckDBPyConnection | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views ``rows`` and ``trials`` over ``results``."""
    con = con or duckdb.connect()
    s = str(results)
    if "://" in s:
        con.register("rows_arrow", _remote_dataset(s))
        con.execute("CREATE OR REPLACE VIEW rows AS SELECT * FROM rows_arrow")
    else:
        glob = parquet_glob(results)
        source = "'" + glob.replace("'", "''") + "'"
        try:
            con.execute(f"SELECT count(*) FROM read_parquet({source}, union_by_name = true)")
        except duckdb.Error:
            source = _readable_files(glob)  # a truncated or foreign file: leave it out, say which
        con.execute(
            f"CREATE OR REPLACE VIEW rows AS SELECT * FROM read_parquet({source}, union_by_name = true)"
        )
    pairs = con.execute(
        "SELECT DISTINCT attack, eps FROM rows WHERE status = 'complete' AND attack <> 'none' "
        "ORDER BY attack, eps"
    ).fetchall()
    robust = "".join(
        f""",
               max(metric_robust_acc) FILTER (WHERE attack = '{a.replace("'", "''")}' AND eps = {e!r})
                   AS "robust_{a}@{e:g}\""""
        for a, e in pairs
    )
    con.execute(
        f"""
        CREATE OR REPLACE VIEW trials AS
        SELECT key, any_value(meta_study) AS study, any_value({CONFIG_ID}) AS config_id,
               any_value(fold) AS fold, any_value(cfg_folds) AS folds,
               any_value(cfg_dataset) AS dataset, any_value(cfg_model) AS model,
               any_value(cfg_bits) AS bits, any_value(cfg_weight_bits) AS weight_bits,
               any_value(cfg_sparsity) AS sparsity, any_value(cfg_clusters) AS clusters,
               any_value(cfg_jr_weight) AS jr_weight, any_value(cfg_adv_training) AS adv_training,
               any_value(cfg_adv_eps) AS adv_eps, any_value(cfg_seed) AS seed,
               any_value(metric_clean_acc) AS clean_acc, any_value(metric_bytes) AS bytes,
               any_value(metric_params) AS params, any_value(metric_nonzero) AS nonzero,
               any_value(metric_jacobian_fro2) AS jacobian_fro2,
               any_value(meta_total_s) AS total_s, count(*) AS n_rows{robust}
        FROM rows WHERE status = 'complete' GROUP BY key
        """
    )
    return con


def columns(con: duckdb.DuckDBPyConnection, view: str = "rows") -> list[str]:
    return [r[0] for r in con.execute(f"DESCRIBE {view}").fetchall()]


def check_columns(
    con: duckdb.DuckDBPyConnection, names: tuple[str, ...] | list[str], what: str
) -> None:
    """Raise naming ``what`` and the value when a column is not in the rows."""
    known = columns(con)
    for name in names:
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{what}: no column {name!r} in the rows{hint}")


def where_clause(where: str | None) -> str:
    """``AND (<where>)`` for a user's row filter (a DuckDB predicate over the rows' columns)."""
    return f" AND ({where})" if where else ""
