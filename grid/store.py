"""The Parquet store: one file per trial key, written atomically, anywhere pyarrow reaches.

A study's results live at a *location*: a local folder, or an object-storage
URI (``s3://bucket/prefix``, ``gs://bucket/prefix``, any ``pyarrow.fs`` URI).
Ray workers write their trials' rows there themselves, through
``pyarrow.fs``; credentials come from the environment (or the node's
instance profile), never from a study file.  Layout::

    <results>/<study>/rows/<key>.parquet   one row per trial x fold x attack x eps
    <results>/<study>/artifacts/<key>/     the trial's model, weights, TFLite, manifest
    <results>/<study>/tune/                Ray Tune's experiment state (local results only)
    <results>/<study>/optuna.journal       an Optuna search's study (survives restarts)
    <results>/<study>/search.json          objectives, reference, hypervolume and front
    <results>/<study>/status.json          the driver's live state (pid, running trials)
    <results>/<study>/rows/compacted-<uuid>.parquet   many keys' rows (``grid compact``)

Reading many keys (:func:`scan`, :func:`key_status`, :func:`read_many`) is one
listing of ``rows/`` and batched dataset reads of the columns needed, never a
loop of one request per key.  **Compaction** (:func:`compact`) merges complete
and stale keys into ``compacted-<uuid>.parquet`` files (sorted by key, at most
``COMPACT_MAX_KEYS`` keys each): step 1 writes the compacted file atomically,
step 2 deletes the per-key files it merged.  The contract every reader keeps
(here, ``analysis.query.connect`` and through them ``grid status/pareto/report/
resume``) is one rule: **a key's per-key file, when present, wins over its rows
in a compacted file** (it is the newest write; after a crash between the steps
both hold the same rows).  The next compaction first deletes per-key files whose
key a compacted file holds, so a key is in at most one compacted file.  Failed
keys stay per-key: their retry rewrites them.

Every file is encoded in memory first, then written in one go: on a local
disk to ``.<name>.tmp-<uuid>`` and renamed into place, on object storage as
one object upload (an object appears whole or not at all).  A reader never
sees a partial file, and a retried trial replaces its own row set instead of
adding a second one.  A failed write (full disk, lost connection) leaves the
previous file as it was.

The store's parts, each importable from here as before: ``grid.location`` (locations
and the JSON state files), ``grid.sink`` (the row sink and artifacts), ``grid.reads``
(listing, batched reads, :func:`scan`, key states); compaction is this module's own.
The dedupe rule and the compacted files' prefix are ``trainables.rowfiles``' (the
analysis reads through the same module without importing grid).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from grid.errors import StudyError

# The store's parts, importable from here as before: locations and JSON state files,
# the sink, the reads.
from grid.location import Location, as_location, is_remote, read_json, write_json
from grid.reads import (
    SCHEMA,
    STATUS_COLUMNS,
    STATUS_STALE,
    Listing,
    Scan,
    completed_keys,
    key_status,
    list_rows,
    read_many,
    read_rows,
    scan,
    scan_table,
    stale_revisions,
)
from grid.sink import ParquetSink, artifacts_dir, write_artifacts
from trainables.rowfiles import COMPACTED_PREFIX, is_compacted
from trainables.rows import STATUS_FAILED

__all__ = [
    "COMPACTED_PREFIX", "COMPACT_MAX_KEYS", "SCHEMA", "STATUS_STALE", "CompactReport", "Listing",
    "Location", "ParquetSink", "Scan", "artifacts_dir", "as_location", "compact", "completed_keys",
    "is_compacted", "is_remote", "key_status", "list_rows", "read_json", "read_many", "read_rows",
    "scan", "scan_table", "stale_revisions", "write_artifacts", "write_json",
]  # fmt: skip

COMPACT_MAX_KEYS = 20_000  # keys per compacted file (docs/performance.md: the store at scale)
_ROW_GROUP_ROWS = 4_096  # compacted files: row groups small enough for a key filter to skip most


@dataclass(frozen=True)
class CompactReport:
    """What one :func:`compact` did."""

    written: list[str]  # compacted files written (names under rows/)
    keys: int  # keys merged into them
    deleted: int  # per-key files deleted after their key was merged
    finished: int  # per-key files an interrupted compaction had merged, deleted now
    kept: int  # per-key files left as they are (failed keys, unreadable files)
    seconds: float

    def describe(self) -> str:
        files = f"{len(self.written)} compacted file(s)" if self.written else "no new file"
        done = (
            f"; finished an interrupted compaction: {self.finished} file(s) deleted"
            if self.finished
            else ""
        )
        return (
            f"compacted {self.keys} key(s) into {files}, deleted {self.deleted} per-key file(s), "
            f"kept {self.kept} (failed or unreadable){done} in {self.seconds:.1f}s"
        )


def compact(
    results_dir: str | Path | Location, *, max_keys: int = COMPACT_MAX_KEYS
) -> CompactReport:
    """Merge complete (and stale) per-key row sets into ``rows/compacted-<uuid>.parquet``.

    Step 1 writes a compacted file (sorted by key, at most ``max_keys`` keys) in one
    atomic write; step 2 deletes the per-key files it merged.  A crash between them
    leaves a key in both, and every reader takes the per-key file (the store's one
    rule); the next compaction first deletes per-key files whose key a compacted file
    already holds (complete keys are never rewritten by a driver), so a key is in at
    most one compacted file.  Failed keys stay per-key: their retry rewrites them.
    """
    import time

    if max_keys < 1:
        raise StudyError(f"compact: max_keys must be at least 1, got {max_keys}")
    t0 = time.perf_counter()
    loc = as_location(results_dir)
    listing = list_rows(loc)
    finished = 0
    if listing.compacted:
        merged = read_many(loc, ["key"], Listing({}, listing.compacted, listing.sizes)).column(
            "key"
        )
        held = set(pc.unique(merged).to_pylist())
        for key in sorted(k for k in listing.per_key if k in held):
            loc.delete("rows", listing.per_key.pop(key))
            finished += 1
    # One full read per batch of per-key files: their statuses come from the same rows.
    names = sorted(listing.per_key)
    written, deleted, merged = [], 0, 0
    for i in range(0, len(names), max_keys):
        part = Listing({k: listing.per_key[k] for k in names[i : i + max_keys]}, [], listing.sizes)
        table = read_many(loc, list(SCHEMA.names), part)
        status = scan_table(table.select(STATUS_COLUMNS)).status
        keys = sorted(k for k, st in status.items() if st != STATUS_FAILED)
        if not keys:
            continue
        table = table.filter(pc.is_in(table.column("key"), value_set=pa.array(keys, pa.string())))
        table = table.take(
            pc.sort_indices(table, [("key", "ascending")])
        )  # stable: rows keep their order
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, row_group_size=_ROW_GROUP_ROWS)
        name = f"{COMPACTED_PREFIX}{uuid.uuid4().hex}.parquet"
        loc.write_bytes(buf.getvalue().to_pybytes(), "rows", name)  # step 1: whole or not at all
        written.append(name)
        merged += len(keys)
        for key in keys:  # step 2: the merged per-key files go
            loc.delete("rows", part.per_key[key])
            deleted += 1
    kept = len(listing.per_key) - merged
    return CompactReport(written, merged, deleted, finished, kept, time.perf_counter() - t0)
