"""The store's writers: the Parquet row sink Ray workers call, and a trial's artifact folder.

Rows: ``<results>/<study>/rows/<key>.parquet``, one file per trial key, encoded
whole before any byte is written, then written atomically (grid/location.py):
a retried trial replaces its own row set instead of adding a second one.
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

from grid.location import Location, as_location
from grid.reads import SCHEMA, read_rows
from trainables.trivial import TRIVIAL_LAYERS, TRIVIAL_STUDY_PREFIX


def _encode(table: pa.Table) -> bytes:
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    return bytes(buf.getvalue().to_pybytes())


@dataclass(frozen=True)
class ParquetSink:
    """Picklable writer that Ray workers call with each trial's rows.

    ``results_dir`` is a local folder or an object-storage URI: the worker
    writes there itself.
    """

    results_dir: str
    study: str
    git_rev: str

    def __call__(self, key: str, rows: list[dict[str, Any]]) -> str:
        if not rows:
            raise ValueError(f"trial {key}: no rows to write")
        for row in rows:
            if row.get("key") != key:
                raise ValueError(f"trial {key}: a row carries key {row.get('key')!r}")
            row["meta_study"] = self.study
            row["meta_git_rev"] = self.git_rev
        if rows[0].get("meta_layers_json") == TRIVIAL_LAYERS and not self.study.startswith(
            TRIVIAL_STUDY_PREFIX
        ):
            raise ValueError(
                f"trial {key}: made-up rows of a trivial trial for study {self.study!r}"
            )
        data = _encode(
            pa.Table.from_pylist(rows, schema=SCHEMA)
        )  # whole before any byte is written
        return Location(self.results_dir).write_bytes(data, "rows", f"{key}.parquet")

    def write_artifacts(self, key: str, files: dict[str, bytes]) -> str:
        return write_artifacts(self.results_dir, key, files)

    def read(self, key: str) -> list[dict[str, Any]] | None:
        """The rows stored for ``key`` (None when there are none or the file is unreadable)."""
        return read_rows(self.results_dir, key)


def artifacts_dir(results_dir: str | Path, key: str | None = None) -> Path:
    """The artifacts folder (of ``key``) under a local results folder."""
    folder = Path(results_dir) / "artifacts"
    return folder / key if key else folder


def write_artifacts(results_dir: str | Path | Location, key: str, files: dict[str, bytes]) -> str:
    """Write a trial's artifact files as one folder.

    Locally the folder is built aside and swapped in atomically; on object
    storage each file is one upload and ``manifest.json``, when there is one,
    goes last, so a reader that finds the manifest finds every file.
    """
    for name in files:
        if "/" in name or name.startswith("."):
            raise ValueError(f"artifact name {name!r} must be a plain file name")
    loc = as_location(results_dir)
    if loc.local is None:
        before = loc.files("artifacts", key)
        for name in sorted(files, key=lambda n: n == "manifest.json"):
            loc.write_bytes(files[name], "artifacts", key, name)
        for name in set(before) - set(files):  # a retried trial: its set replaces the old one
            loc.delete("artifacts", key, name)
        return loc.display("artifacts", key)
    final = artifacts_dir(loc.local, key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex}"
    old = final.parent / f".old-{key}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        if final.exists():
            os.replace(final, old)  # a retried trial: the new set replaces the old one
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return str(final)
