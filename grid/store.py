"""The Parquet store: one file per trial key, written atomically.

Layout under a study's results folder::

    <results>/<study>/rows/<key>.parquet   one row per trial x fold x attack x eps
    <results>/<study>/artifacts/<key>/     the trial's model, weights, TFLite, manifest
    <results>/<study>/tune/                Ray Tune's experiment state
    <results>/<study>/optuna.journal       an Optuna search's study (survives restarts)
    <results>/<study>/search.json          objectives, reference, hypervolume and front
    <results>/<study>/status.json          the driver's live state (pid, running trials)

A file is written to ``<key>.parquet.tmp-<uuid>`` and renamed into place,
so a reader never sees a partial file, and a retried trial replaces its
own row set instead of adding a second one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trainables.rows import COLUMNS, STATUS_COMPLETE, STATUS_FAILED

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

    def read(self, key: str) -> list[dict[str, Any]] | None:
        """The rows stored for ``key`` (None when there are none or the file is unreadable)."""
        return read_rows(self.results_dir, key)


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


def read_rows(results_dir: str | Path, key: str) -> list[dict[str, Any]] | None:
    path = rows_dir(results_dir) / f"{key}.parquet"
    try:
        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    except (pa.ArrowInvalid, OSError):
        return None  # missing or unreadable: the trial is simply run again
    return rows or None


def key_status(results_dir: str | Path) -> dict[str, str]:
    """Each stored key's status: 'complete' when every row is, else 'failed'.

    Unreadable files (a truncated copy, say) are left out: their trials run again.
    """
    out: dict[str, str] = {}
    folder = rows_dir(results_dir)
    if not folder.is_dir():
        return out
    for path in folder.glob("*.parquet"):
        try:
            t = pq.read_table(path, columns=["key", "status"])
        except (pa.ArrowInvalid, OSError):
            continue
        if t.num_rows:
            statuses = set(t.column("status").to_pylist())
            out[path.stem] = STATUS_COMPLETE if statuses == {STATUS_COMPLETE} else STATUS_FAILED
    return out


def completed_keys(results_dir: str | Path) -> set[str]:
    """Keys whose row set is complete (failed and unreadable files do not count)."""
    return {k for k, v in key_status(results_dir).items() if v == STATUS_COMPLETE}


def write_json(path: str | Path, data: Any) -> None:
    """Write a small JSON state file atomically (readers never see half of it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        tmp.write_text(json.dumps(data, indent=1, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
