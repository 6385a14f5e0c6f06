"""The Parquet store: one file per trial key, written atomically.

Layout under a study's results folder::

    <results>/<study>/rows/<key>.parquet   one row per trial x fold x attack x eps
    <results>/<study>/artifacts/<key>/     the trial's model, weights, TFLite, manifest
    <results>/<study>/tune/                Ray Tune's experiment state

A file is written to ``<key>.parquet.tmp-<uuid>`` and renamed into place,
so a reader never sees a partial file, and a retried trial replaces its
own row set instead of adding a second one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trainables.rows import COLUMNS, STATUS_COMPLETE

_ARROW = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
SCHEMA = pa.schema([pa.field(name, _ARROW[kind]) for name, kind in COLUMNS.items()])


def rows_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / "rows"


@dataclass(frozen=True)
class ParquetSink:
    """Picklable writer that Ray workers call with each trial's rows."""

    results_dir: str
    study: str
    git_rev: str

    def __call__(self, key: str, rows: list[dict[str, Any]]) -> Path:
        if not rows:
            raise ValueError(f"trial {key}: no rows to write")
        for row in rows:
            if row.get("key") != key:
                raise ValueError(f"trial {key}: a row carries key {row.get('key')!r}")
            row["meta_study"] = self.study
            row["meta_git_rev"] = self.git_rev
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        folder = rows_dir(self.results_dir)
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{key}.parquet"
        tmp = folder / f"{key}.parquet.tmp-{uuid.uuid4().hex}"
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, final)  # atomic on POSIX: readers see the old file or the new one
        finally:
            tmp.unlink(missing_ok=True)
        return final

    def write_artifacts(self, key: str, files: dict[str, bytes]) -> Path:
        return write_artifacts(self.results_dir, key, files)


def artifacts_dir(results_dir: str | Path, key: str | None = None) -> Path:
    folder = Path(results_dir) / "artifacts"
    return folder / key if key else folder


def write_artifacts(results_dir: str | Path, key: str, files: dict[str, bytes]) -> Path:
    """Write a trial's artifact files as one folder, swapped in atomically."""
    final = artifacts_dir(results_dir, key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex}"
    old = final.parent / f".old-{key}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        for name, data in files.items():
            if "/" in name or name.startswith("."):
                raise ValueError(f"artifact name {name!r} must be a plain file name")
            (tmp / name).write_bytes(data)
        if final.exists():
            os.replace(final, old)  # a retried trial: the new set replaces the old one
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return final


def completed_keys(results_dir: str | Path) -> set[str]:
    """Keys whose row set is complete (failed and unreadable files do not count)."""
    done: set[str] = set()
    folder = rows_dir(results_dir)
    if not folder.is_dir():
        return done
    for path in folder.glob("*.parquet"):
        try:
            t = pq.read_table(path, columns=["key", "status"])
        except (pa.ArrowInvalid, OSError):
            continue  # unreadable: the trial is simply run again
        statuses = set(t.column("status").to_pylist())
        if t.num_rows and statuses == {STATUS_COMPLETE}:
            done.add(path.stem)
    return done
