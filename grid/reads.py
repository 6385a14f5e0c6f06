"""Reading the store: many keys at once (one listing, batched dataset reads), one key's
rows, and each key's status and headline summary (:func:`scan`), under the store's one
dedupe rule (trainables/rowfiles.py: a key's per-key file wins over compacted rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from grid.location import Location, as_location
from trainables.config import RESULTS_REVISION
from trainables.headline import Headline
from trainables.rowfiles import compacted_rows_kept, is_compacted, key_of
from trainables.rows import COLUMNS, STATUS_COMPLETE, STATUS_FAILED, summary

# The rows' Arrow schema, as the sink writes them and every read casts them.
_ARROW = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
SCHEMA = pa.schema([pa.field(name, _ARROW[kind]) for name, kind in COLUMNS.items()])
_BATCH_FILES = 2_000  # files per dataset read; a batch with an unreadable file is read file by file
STATUS_STALE = "stale"


@dataclass(frozen=True)
class Listing:
    """One listing of ``rows/``: the per-key files and the compacted files."""

    per_key: dict[str, str]  # key -> file name
    compacted: list[str]  # file names
    sizes: dict[str, int] = field(default_factory=dict)  # file name -> bytes, from the listing


def list_rows(results_dir: str | Path | Location) -> Listing:
    """The files under ``rows/``, in one listing (one request on object storage), with
    their sizes: a reader that knows a file's size reads its footer without asking."""
    sizes = as_location(results_dir).file_sizes("rows", suffix=".parquet")
    names = sorted(sizes)
    return Listing(
        per_key={key_of(n): n for n in names if not is_compacted(n)},
        compacted=[n for n in names if is_compacted(n)],
        sizes=sizes,
    )


def _subschema(columns: list[str]) -> pa.Schema:
    return pa.schema([SCHEMA.field(c) for c in columns])


def _read_batch(
    loc: Location,
    names: list[str],
    columns: list[str],
    key_from_name: bool,
    sizes: dict[str, int] | None = None,
) -> list[pa.Table]:
    """The ``columns`` of the files ``names`` (one dataset read), each table with the file's order.

    Columns a file lacks (``revision`` in files from before it) come back null.  A batch
    holding an unreadable file (truncated, not Parquet) is read again file by file, and the
    unreadable ones are left out, as :func:`key_status` always did.  Files whose size the
    listing gave are read without a request for their size (on object storage, a HEAD
    per file: 2 requests a file instead of up to 5).
    """
    import pyarrow.dataset as pads

    schema = _subschema(columns)
    sizes = sizes or {}
    fmt = pads.ParquetFileFormat()
    try:
        fragments = [
            fmt.make_fragment(loc.path("rows", n), filesystem=loc.fs, file_size=sizes.get(n))
            for n in names
        ]
        dataset = pads.FileSystemDataset(fragments, schema=schema, format=fmt, filesystem=loc.fs)
        # __filename: each row's file (a per-key file's name is its key)
        table = dataset.to_table(columns=columns + (["__filename"] if key_from_name else []))
    except (pa.ArrowInvalid, OSError):
        out = []
        for n in names:
            t = loc.read_table("rows", n)
            if t is None:
                continue  # unreadable: left out, its trial runs again
            try:
                arrays = [
                    t.column(c).cast(schema.field(c).type)
                    if c in t.column_names
                    else pa.nulls(t.num_rows, schema.field(c).type)
                    for c in columns
                ]
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue  # a column of another type: not robustgrid rows
            t = pa.Table.from_arrays(arrays, schema=schema)
            if key_from_name:
                t = t.append_column("__filename", pa.array([loc.path("rows", n)] * t.num_rows))
            out.append(t)
        return out
    return [table]


def read_many(
    results_dir: str | Path | Location,
    columns: list[str],
    listing: Listing | None = None,
) -> pa.Table:
    """Every stored row's ``columns`` (plus ``key``), deduplicated by the store's one rule.

    Per-key files are read in batches of dataset reads (their key is the file's
    name); compacted files contribute the rows of the keys that have no per-key
    file (a per-key file is the newest write of its key).  Rows keep their files'
    order within each key.
    """
    loc = as_location(results_dir)
    listing = listing or list_rows(loc)
    cols = [c for c in dict.fromkeys(["key", *columns])]
    tables: list[pa.Table] = []
    names = list(listing.per_key.values())
    for i in range(0, len(names), _BATCH_FILES):
        for t in _read_batch(
            loc, names[i : i + _BATCH_FILES], cols, key_from_name=True, sizes=listing.sizes
        ):
            stem = pc.replace_substring_regex(t.column("__filename"), r"^.*/|\.parquet$", "")
            t = t.drop_columns(["__filename"]).set_column(
                cols.index("key"), "key", stem.cast(pa.string())
            )
            tables.append(t)
    if listing.compacted:
        kept = compacted_rows_kept(listing.per_key)  # the store's one rule
        for t in _read_batch(
            loc, listing.compacted, cols, key_from_name=False, sizes=listing.sizes
        ):
            tables.append(t.filter(kept))
    if not tables:
        return _subschema(cols).empty_table()
    return pa.concat_tables(tables)


@dataclass
class Scan:
    """What the store holds, per key, read in one listing and a few dataset reads.

    ``status``: as :func:`key_status`; ``stale``: as :func:`stale_revisions`;
    ``summaries``: ``trainables.rows.summarize(read_rows(key), headline)`` for each key
    (empty without a headline); ``reasons``: each key's first row's ``reason``.
    """

    status: dict[str, str]
    stale: dict[str, int]
    summaries: dict[str, dict[str, Any]]
    reasons: dict[str, str]


STATUS_COLUMNS = ["key", "status", "revision"]
# a summary's first-row fields (trainables.rows.summary), less key
_FIRST = [
    "revision", "reason", "metric_clean_acc", "metric_bytes", "metric_tflite_bytes",
    "metric_params", "metric_masking_flags", "meta_train_s", "meta_total_s",
]  # fmt: skip
_SUMMARY_COLUMNS = [
    *STATUS_COLUMNS,
    *(c for c in _FIRST if c != "revision"),
    "attack",
    "attack_norm",
    "eps",
    "metric_robust_acc",
]


def scan(results_dir: str | Path | Location, headline: Headline | None = None) -> Scan:
    """Every key's status (and, given a ``headline``, its summary) from one listing.

    Vectorised in DuckDB over the Arrow table of the columns needed: no per-key
    file read, no per-row Python.  The rules are :func:`key_state`'s, the headline's
    (its SQL, trainables/headline.py) and ``trainables.rows.summary``'s
    (tests/test_store.py checks the scan against ``summarize`` key by key).
    """
    return scan_table(
        read_many(results_dir, _SUMMARY_COLUMNS if headline else STATUS_COLUMNS), headline
    )


def scan_table(table: pa.Table, headline: Headline | None = None) -> Scan:
    """:func:`scan` over rows already read (``key`` and the columns it needs)."""
    import duckdb

    table = table.append_column("_idx", pa.array(range(table.num_rows), pa.int64()))
    con = duckdb.connect()
    con.register("t", table)
    rev = int(RESULTS_REVISION)
    # the summary's "has attack rows" needs the attack column, which a status scan leaves out
    attacked = "bool_or(attack IS NOT NULL AND attack <> 'none')" if headline else "false"
    per_key = f"""
        SELECT key, min(_idx) AS first_idx,
               bool_and(coalesce(status = '{STATUS_COMPLETE}', false)) AS all_complete,
               bool_and(coalesce(revision = {rev}, false)) AS current,
               {attacked} AS attacked
        FROM t GROUP BY key"""
    if headline is None:
        got = con.execute(
            f"""SELECT a.key, a.all_complete, a.current, coalesce(f.revision, 0)
                FROM ({per_key}) a JOIN t f ON f._idx = a.first_idx"""
        ).fetchall()
        status, stale = {}, {}
        for key, all_complete, current, first_rev in got:
            status[key] = key_state(all_complete, current)
            if not current:
                stale[key] = int(first_rev)
        return Scan(status, stale, {}, {})
    first = ", ".join(f"f.{c}" for c in _FIRST)
    got = con.execute(
        f"""
        SELECT a.key, a.all_complete, a.current, a.attacked, h.robust, h.hits, {first}
        FROM ({per_key}) a JOIN t f ON f._idx = a.first_idx
             LEFT JOIN ({headline.sql("t")}) h ON h.key = a.key
        """
    ).fetchall()
    out = Scan({}, {}, {}, {})
    for key, all_complete, current, attacked, robust, hits, *values in got:
        row = {"key": key, **dict(zip(_FIRST, values, strict=True))}
        out.status[key] = key_state(all_complete, current)
        if not current:
            out.stale[key] = int(row["revision"] or 0)
        out.reasons[key] = row["reason"] or ""
        complete = bool(all_complete)
        value = robust if complete and hits else None
        out.summaries[key] = summary(row, complete, value, bool(attacked), headline)
    return out


def key_state(all_complete: bool, current: bool) -> str:
    """A stored key's state from its rows: 'stale' when any row is of another results revision
    (``trainables.config.RESULTS_REVISION``; rows without the column predate it), else
    'complete' when every row is, else 'failed'."""
    if not current:
        return STATUS_STALE
    return STATUS_COMPLETE if all_complete else STATUS_FAILED


def read_rows(results_dir: str | Path | Location, key: str) -> list[dict[str, Any]] | None:
    """The rows stored for ``key`` (None when there are none, or its file is unreadable).

    Its per-key file when there is one (the newest write wins), else its rows in the
    compacted files, found by one filtered dataset read over them.
    """
    loc = as_location(results_dir)
    table = loc.read_table("rows", f"{key}.parquet")
    if table is None and not loc.exists("rows", f"{key}.parquet"):
        table = _read_compacted(loc, key)
    if table is None:
        return None  # missing or unreadable: the trial is simply run again
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows or None


def _read_compacted(loc: Location, key: str) -> pa.Table | None:
    import pyarrow.dataset as pads

    names = list_rows(loc).compacted
    if not names:
        return None
    paths = [loc.path("rows", n) for n in names]
    try:
        dataset = pads.dataset(paths, schema=SCHEMA, format="parquet", filesystem=loc.fs)
        return dataset.to_table(filter=pads.field("key") == key)
    except (pa.ArrowInvalid, OSError):
        return None


def key_status(results_dir: str | Path | Location) -> dict[str, str]:
    """Each stored key's status: 'complete' when every row is, 'stale' when its rows were
    computed under another results revision (``trainables.config.RESULTS_REVISION``; files
    without the column predate it), else 'failed'.

    Unreadable files (a truncated copy, say) are left out: their trials run again.
    One listing and batched dataset reads (:func:`scan`), per-key files and compacted ones.
    """
    return scan(results_dir).status


def stale_revisions(results_dir: str | Path | Location) -> dict[str, int]:
    """Stale keys -> the revision their rows were computed under (0: before revisions)."""
    return scan(results_dir).stale


def completed_keys(results_dir: str | Path | Location) -> set[str]:
    """Keys whose row set is complete (failed and unreadable files do not count)."""
    return {k for k, v in key_status(results_dir).items() if v == STATUS_COMPLETE}
