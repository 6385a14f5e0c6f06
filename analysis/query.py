"""Open a results location as DuckDB views (schema: analysis/SCHEMA.md).

``all_rows`` every row as written (long: one per trial x fold x attack x eps),
             columns a file lacks filled with NULL, ``revision`` 0 where absent;
``rows``     the rows of the current results revision (``RESULTS_REVISION``):
             rows of any other revision are stale and left out unless
             ``connect(..., stale=True)`` (:func:`stale_keys` lists them);
``trials``   one row per complete trial of ``rows`` (wide): its config,
             footprint, clean accuracy and one ``robust_<attack>@<eps>`` column
             per attack and eps.

Compacted files (``rows/compacted-*.parquet``, ``grid compact``) are read beside
the per-key files under the store's one rule: a key's per-key file, when present,
wins over its rows in a compacted file of the same folder (grid/store.py).

A location is a study's results folder (holding ``rows/``), a parent of
several studies, a Parquet glob or file, or a URI that pyarrow's filesystems
read (``s3://bucket/results/study``, ``gs://...``, ``file:///...``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

# TF-free (pydantic only): the results revision, the columns of the schema, the headline's
# rule (the norm of rows without attack_norm), the identity columns, and the store's files
# (trainables/rowfiles.py: its one dedupe rule).
from trainables import identity
from trainables.config import AXES, RESULTS_REVISION
from trainables.headline import norm_sql
from trainables.rowfiles import compacted_rows_kept, dedupe_sql, is_compacted, key_of
from trainables.rows import COLUMNS

# A config's identity over its folds (trainables/identity.py): written by the worker,
# filled on read for older rows (:func:`fill_identities`).
CONFIG_ID = "meta_config_id"

# Per-layer overrides (trainables.config.TrialConfig.layer_*): JSON objects, '{}' when none.
LAYER_OVERRIDE_COLUMNS = (
    "cfg_layer_bits", "cfg_layer_sparsity", "cfg_layer_clusters", "cfg_layer_activation_bits",
)  # fmt: skip

NORMS = ("inf", "2")
_SQL_TYPES = {"string": "VARCHAR", "int64": "BIGINT", "float64": "DOUBLE", "bool": "BOOLEAN"}

# The axes an analyst groups by, as the rows name them (one definition: trainables.config.AXES;
# with the dataset, so "each config" never pools two datasets, and the per-layer overrides,
# so it never pools two per-layer assignments).
AXIS_COLUMNS = (
    "cfg_dataset",
    *(c for a in AXES for c in a.columns),
    *(c for c in LAYER_OVERRIDE_COLUMNS if c not in {c for a in AXES for c in a.columns}),
)


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


def _remote_dataset(uri: str) -> list[Any]:
    """The rows under a filesystem URI as pyarrow datasets (no DuckDB extension needed): the
    per-key files, and per folder its compacted files less the keys that have a per-key file."""
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
    sizes = {i.path: i.size for i in infos if i.type == pafs.FileType.File}

    def dataset(paths: list[str]) -> Any:
        """``ds.dataset(paths)`` (the first file's schema), each file's size from the listing:
        no request per file for its size (2 a file, footer and data, instead of 3)."""
        fmt = ds.ParquetFileFormat()
        frags = [fmt.make_fragment(p, filesystem=fs, file_size=sizes.get(p)) for p in paths]
        return ds.FileSystemDataset(frags, frags[0].physical_schema, fmt, filesystem=fs)

    per_key = [f for f in files if not is_compacted(f)]
    parts = [dataset(per_key)] if per_key else []
    # The store's one rule: a key's per-key file, when present, wins over its compacted rows.
    for folder in sorted({f.rsplit("/", 1)[0] for f in files if is_compacted(f)}):
        own = [key_of(f) for f in per_key if f.rsplit("/", 1)[0] == folder]
        merged = dataset([f for f in files if is_compacted(f) and f.rsplit("/", 1)[0] == folder])
        parts.append(merged.filter(compacted_rows_kept(own)) if own else merged)
    return parts


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
    results: str | Path, con: duckdb.DuckDBPyConnection | None = None, *, stale: bool = False
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views ``all_rows``, ``rows`` and ``trials`` over ``results``.

    ``rows`` holds the current revision's rows only (``stale=True``: every
    revision); a warning says how many stale trials were left out.
    """
    con = con or duckdb.connect()
    s = str(results)
    if "://" in s:
        views = []
        for i, part in enumerate(_remote_dataset(s)):
            con.register(f"rows_arrow_{i}", part)
            views.append(f"SELECT * FROM rows_arrow_{i}")
        con.execute("CREATE OR REPLACE VIEW raw_rows AS " + " UNION ALL BY NAME ".join(views))
    else:
        glob = parquet_glob(results)
        pattern = "'" + glob.replace("'", "''") + "'"
        source = pattern
        try:
            con.execute(f"SELECT count(*) FROM read_parquet({source}, union_by_name = true)")
        except duckdb.Error:
            source = _readable_files(glob)  # a truncated or foreign file: leave it out, say which
        con.execute(f"CREATE OR REPLACE VIEW raw_rows AS {_deduped(source, pattern, glob)}")
    # Read the files once: every view below (and each query of a report) would read them all
    # again through raw_rows, which at 10^4 per-key files is 10^4 file opens per query.
    con.execute("CREATE OR REPLACE TEMP TABLE raw_rows_read AS SELECT * FROM raw_rows")
    fill_identities(con, "raw_rows_read")
    con.execute("CREATE OR REPLACE VIEW raw_rows AS SELECT * FROM raw_rows_read")
    _rows_views(con, stale)
    pairs = con.execute(
        "SELECT DISTINCT attack, attack_norm, eps FROM rows WHERE status = 'complete' "
        "AND attack <> 'none' ORDER BY attack, attack_norm, eps"
    ).fetchall()
    norms_of: dict[str, set[str]] = {}
    for a, n, _ in pairs:
        norms_of.setdefault(a, set()).add(n)

    def _name(a: str, n: str, e: float) -> str:
        # An attack run under two norms gets the norm in its column name: never mixed.
        tag = f"-L{n}" if len(norms_of[a]) > 1 else ""
        return f"robust_{a}{tag}@{e:g}"

    robust = "".join(
        f""",
               max(metric_robust_acc) FILTER (WHERE attack = '{a.replace("'", "''")}'
                   AND attack_norm = '{n}' AND eps = {e!r}) AS "{_name(a, n, e)}\""""
        for a, n, e in pairs
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
               any_value(revision) AS revision,
               any_value(metric_clean_acc) AS clean_acc, any_value(metric_bytes) AS bytes,
               any_value(metric_tflite_bytes) AS tflite_bytes,
               any_value(metric_params) AS params, any_value(metric_nonzero) AS nonzero,
               any_value(metric_jacobian_fro2) AS jacobian_fro2,
               any_value(meta_total_s) AS total_s, count(*) AS n_rows{robust}
        FROM rows WHERE status = 'complete' GROUP BY key
        """
    )
    return con


# Rows without meta_config_json (written by other tools): their ids come from these
# columns; the per-attack and derived ones (cfg_weight_bits follows cfg_bits) stay out.
_NOT_IDENTITY = {"cfg_attack_steps", "cfg_attack_restarts", "cfg_weight_bits"}


def fill_identities(con: duckdb.DuckDBPyConnection, table: str) -> None:
    """Give rows written before the identity columns existed (no column, or NULL) their ids,
    once on read, in place in ``table``.

    The ids are trainables/identity.py's, over ``meta_config_json`` parsed as JSON: equal to
    what the worker writes for the same config.  Rows without it (written by other tools) get
    ids over their config columns, fold, revision and (for ``meta_config_id``) study.  One
    JSON parse per trial, not per row.
    """
    have = set(columns(con, table))
    for c in identity.IDS:
        if c not in have:
            con.execute(f"ALTER TABLE {table} ADD COLUMN {c} VARCHAR")
    missing = " OR ".join(f"{c} IS NULL" for c in identity.IDS)
    config_cols = sorted(c for c in have if c.startswith("cfg_") and c not in _NOT_IDENTITY)
    extra = [c for c in ("meta_config_json", "meta_study", "revision", "fold") if c in have]
    picked = ", ".join(f"any_value({c}) AS {c}" for c in [*extra, *config_cols])
    cur = con.execute(
        f"SELECT key, {picked or 'NULL AS none'} FROM {table} WHERE {missing} GROUP BY key"
        + (", meta_study" if "meta_study" in have else "")
    )
    names = [d[0] for d in cur.description or []]
    todo = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    if not todo:
        return
    import json

    import pyarrow as pa

    filled: dict[str, list[Any]] = {"key": [], "study": [], **{c: [] for c in identity.IDS}}
    for row in todo:
        blob = row.get("meta_config_json")
        if blob:
            ids = identity.id_columns(json.loads(blob))
        else:
            config = {c.removeprefix("cfg_"): row[c] for c in config_cols}
            config.update(
                study=row.get("meta_study"), revision=row.get("revision") or 0, fold=row.get("fold")
            )
            ids = {
                c: identity.digest(config, without | ({"study"} if c != CONFIG_ID else set()))
                for c, without in identity.IDS.items()
            }
        filled["key"].append(row["key"])
        filled["study"].append(row.get("meta_study"))
        for c, v in ids.items():
            filled[c].append(v)
    con.register("_identity_fill", pa.table(filled))
    same_study = (
        f" AND {table}.meta_study IS NOT DISTINCT FROM f.study" if "meta_study" in have else ""
    )
    sets = ", ".join(f"{c} = coalesce({table}.{c}, f.{c})" for c in identity.IDS)
    con.execute(
        f"UPDATE {table} SET {sets} FROM _identity_fill f WHERE {table}.key = f.key{same_study}"
    )
    con.unregister("_identity_fill")


def _deduped(source: str, pattern: str, glob: str) -> str:
    """The rows of ``source`` under the store's one rule (grid/store.py): a key's per-key file,
    when present (readable or not), wins over its rows in a compacted file of the same folder.

    Without compacted files this is the plain read; ``pattern`` is listed by DuckDB's own
    ``glob`` so both sides name files alike.
    """
    import glob as globbing

    read = f"read_parquet({source}, union_by_name = true"
    if not any(is_compacted(f) for f in globbing.iglob(glob)):
        return f"SELECT * FROM {read})"
    kept = dedupe_sql(f"{read}, filename = '_rg_file')", pattern, "_rg_file")
    return f"SELECT * EXCLUDE (_rg_file) FROM ({kept})"


def _rows_views(con: duckdb.DuckDBPyConnection, stale: bool) -> None:
    """``all_rows`` (every schema column, NULL where a file lacks it) and ``rows`` (current revision)."""
    have = set(columns(con, "raw_rows"))
    missing = [
        f"CAST(NULL AS {_SQL_TYPES[kind]}) AS {name}"
        for name, kind in COLUMNS.items()
        if name not in have
    ]
    replace = [
        "coalesce(revision, 0) AS revision",  # rows without a revision predate it: revision 0
        # rows written before per-layer overrides existed had none: '{}', as a config without them
        *(f"coalesce({c}, '{{}}') AS {c}" for c in LAYER_OVERRIDE_COLUMNS),
        # rows without attack_norm (written before it existed): the headline's rule, the
        # attack's default norm (trainables/headline.py); clean-only and failed rows have none
        "CASE WHEN attack_norm IS NOT NULL OR attack IS NULL OR attack = 'none' THEN attack_norm "
        f"ELSE {norm_sql()} END AS attack_norm",
        # One label for two model specs (two layer lists both named my_cnn, a builder whose
        # source changed): each spec gets its own label, so grouping by model never mixes them.
        "CASE WHEN cfg_model_spec IS NOT NULL AND cfg_model IN (SELECT cfg_model FROM filled_rows "
        "WHERE cfg_model_spec IS NOT NULL GROUP BY cfg_model HAVING count(DISTINCT cfg_model_spec) > 1) "
        "THEN cfg_model || '#' || left(md5(cfg_model_spec), 6) ELSE cfg_model END AS cfg_model",
    ]
    # The missing columns go in first so that REPLACE finds revision and attack_norm.
    con.execute(
        "CREATE OR REPLACE VIEW filled_rows AS SELECT * "
        + "".join(", " + m for m in missing)
        + " FROM raw_rows"
    )
    con.execute(
        f"CREATE OR REPLACE VIEW all_rows AS SELECT * REPLACE ({', '.join(replace)}) FROM filled_rows"
    )
    current = "" if stale else f" WHERE revision = {int(RESULTS_REVISION)}"
    con.execute(f"CREATE OR REPLACE VIEW rows AS SELECT * FROM all_rows{current}")
    if not stale:
        left = con.execute(
            f"SELECT count(DISTINCT key), list(DISTINCT revision ORDER BY revision) FROM all_rows "
            f"WHERE revision <> {int(RESULTS_REVISION)}"
        ).fetchone()
        if left is not None and left[0]:
            import warnings

            warnings.warn(
                f"results: left out {left[0]} stale trial(s) of revision(s) {left[1]} "
                f"(current revision {RESULTS_REVISION}): rerun them, or "
                "analysis.connect(..., stale=True) to read them; analysis.stale_keys(con) lists them",
                stacklevel=3,
            )


def stale_keys(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """The trials whose rows are of a revision other than the current one (0: no revision).

    One row per trial: study, key, revision, status (of its first row) and rows.
    """
    return con.execute(
        f"""
        SELECT any_value(meta_study) AS study, key, any_value(revision) AS revision,
               min(status) AS status, count(*) AS rows
        FROM all_rows WHERE revision <> {int(RESULTS_REVISION)}
        GROUP BY key ORDER BY study, key
        """
    ).df()


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
