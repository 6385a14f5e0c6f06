"""The store's files under ``rows/`` and its one dedupe rule, for every reader.

A study's ``rows/`` holds per-key files (``<key>.parquet``, one trial's rows, the
newest write of that key) and compacted files (``compacted-<uuid>.parquet``, many
keys' rows, written by ``grid compact``).  **The rule**: a key's per-key file, when
present (readable or not), wins over its rows in a compacted file of the same
folder (after a crash between compaction's two steps both hold the same rows).

The store (grid/reads.py) and the analysis (analysis/query.py) both read through
here: :func:`is_compacted`, :func:`compacted_rows_kept` (Arrow tables and
datasets) and :func:`dedupe_sql` (DuckDB over a glob).  TF-free; pyarrow is
imported only by the function that needs it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

COMPACTED_PREFIX = "compacted-"
SUFFIX = ".parquet"


def is_compacted(path: str) -> bool:
    """True for a compacted file (``compacted-<uuid>.parquet``, by name or path), never a key's."""
    return path.rsplit("/", 1)[-1].startswith(COMPACTED_PREFIX)


def key_of(path: str) -> str:
    """The key a per-key file (name or path) holds: its name less ``.parquet``."""
    return path.rsplit("/", 1)[-1].removesuffix(SUFFIX)


def compacted_rows_kept(per_key: Iterable[str]) -> Any:
    """A pyarrow filter expression over a compacted file's rows: those of keys without a
    per-key file in the same folder (``per_key``: those keys).  ``Table.filter`` and
    ``Dataset.filter`` both take it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return ~pc.field("key").isin(pa.array(sorted(set(per_key)), pa.string()))


def dedupe_sql(read: str, glob: str, filename: str = "_rg_file") -> str:
    """DuckDB SQL of the rows of ``read`` (a ``read_parquet(..., filename = '<filename>')``
    call) under the rule, with the files ``glob`` (a quoted DuckDB glob) lists as the
    per-key files that win.  The result keeps the ``filename`` column."""
    return f"""
        SELECT * FROM {read} r
        WHERE NOT starts_with(parse_filename(r.{filename}), '{COMPACTED_PREFIX}')
           OR NOT EXISTS (
               SELECT 1 FROM glob({glob}) g
               WHERE NOT starts_with(parse_filename(g.file), '{COMPACTED_PREFIX}')
                 AND parse_dirpath(g.file) = parse_dirpath(r.{filename})
                 AND parse_filename(g.file, true) = r.key)"""
