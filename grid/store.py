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

Every file is encoded in memory first, then written in one go: on a local
disk to ``.<name>.tmp-<uuid>`` and renamed into place, on object storage as
one object upload (an object appears whole or not at all).  A reader never
sees a partial file, and a retried trial replaces its own row set instead of
adding a second one.  A failed write (full disk, lost connection) leaves the
previous file as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainables.config import RESULTS_REVISION
from trainables.rows import COLUMNS, STATUS_COMPLETE, STATUS_FAILED

_ARROW = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
SCHEMA = pa.schema([pa.field(name, _ARROW[kind]) for name, kind in COLUMNS.items()])


def is_remote(where: str | Path) -> bool:
    """True for an object-storage URI (anything with a scheme other than file://)."""
    s = str(where)
    return "://" in s and not s.startswith("file://")


class Location:
    """A results folder on a local disk or in object storage, reached through ``pyarrow.fs``.

    Pickles as its URI: each Ray worker opens its own filesystem, with the
    credentials of its own environment.
    """

    def __init__(self, where: str | Path) -> None:
        s = str(where)
        if is_remote(s):
            self.uri = s.rstrip("/")
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
            except (pa.ArrowInvalid, OSError, ValueError) as err:
                raise ValueError(f"results: cannot open {self.uri}: {err}") from None
            self.root = self.root.rstrip("/")
            self.local: Path | None = None
        else:
            self.local = Path(s.removeprefix("file://")).expanduser().resolve()
            self.uri = str(self.local)
            self.fs, self.root = pafs.LocalFileSystem(), self.uri

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (Location, (self.uri,))

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def child(self, *parts: str) -> Location:
        return Location("/".join([self.uri, *parts]))

    def path(self, *parts: str) -> str:
        """The filesystem path of ``parts`` under this location."""
        return "/".join([self.root, *parts])

    def display(self, *parts: str) -> str:
        """``parts`` under this location, as a user would write it (path or URI)."""
        return "/".join([self.uri, *parts])

    def exists(self, *parts: str) -> bool:
        try:
            return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound
        except OSError:
            return False

    def is_dir(self, *parts: str) -> bool:
        try:
            return self.fs.get_file_info(self.path(*parts)).type == pafs.FileType.Directory
        except OSError:
            return False

    def files(self, *parts: str, suffix: str = "") -> list[str]:
        """Names of the files (not folders) directly under ``parts`` ending in ``suffix``."""
        sel = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        return sorted(
            info.base_name
            for info in self.fs.get_file_info(sel)
            if info.type == pafs.FileType.File
            and info.base_name.endswith(suffix)
            and not info.base_name.startswith(".")
        )

    def folders(self, *parts: str) -> list[str]:
        """Names of the folders directly under ``parts`` (hidden ones left out)."""
        sel = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        return sorted(
            info.base_name
            for info in self.fs.get_file_info(sel)
            if info.type == pafs.FileType.Directory and not info.base_name.startswith(".")
        )

    def write_bytes(self, data: bytes, *parts: str) -> str:
        """Write ``data`` as one file, atomically; the previous file survives a failed write."""
        final = self.path(*parts)
        if self.local is None:
            with self.fs.open_output_stream(final) as f:  # one upload: the object appears whole
                f.write(data)
            return final
        target = Path(final)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)  # atomic on POSIX: readers see the old file or the new one
        finally:
            tmp.unlink(missing_ok=True)
        return final

    def read_bytes(self, *parts: str) -> bytes | None:
        """The file's bytes; None when it is missing or cannot be read."""
        try:
            with self.fs.open_input_stream(self.path(*parts)) as f:
                data: bytes = f.read()
                return data
        except (OSError, pa.ArrowInvalid):
            return None

    def read_table(self, *parts: str, columns: list[str] | None = None) -> pa.Table | None:
        """A Parquet file as a table; None when missing, truncated or not Parquet."""
        try:
            return pq.read_table(self.path(*parts), columns=columns, filesystem=self.fs)
        except (pa.ArrowInvalid, OSError):
            return None

    def delete(self, *parts: str) -> None:
        self.fs.delete_file(self.path(*parts))

    def mirror(self, name: str) -> Path:
        """A local file for ``name``: the file itself on a local disk; for object storage,
        a copy in this machine's cache, fetched when the stored one is larger (newer, for
        the append-only Optuna journal).  ``push`` sends it back."""
        local = self.mirror_path(name)
        if self.local is not None:
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            size = self.fs.get_file_info(self.path(name)).size
        except OSError:
            size = None
        if size is not None and (not local.is_file() or local.stat().st_size < size):
            data = self.read_bytes(name)
            if data is not None:
                tmp = local.with_name(f".{name}.tmp-{uuid.uuid4().hex}")
                tmp.write_bytes(data)
                os.replace(tmp, local)
        return local

    def push(self, name: str) -> None:
        """Upload the local mirror of ``name`` (nothing to do for a local location)."""
        if self.local is None:
            local = self.mirror_path(name)
            if local.is_file():
                self.write_bytes(local.read_bytes(), name)

    def mirror_path(self, name: str) -> Path:
        if self.local is not None:
            return self.local / name
        from trainables.datasets import cache_root

        tag = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        return cache_root() / "mirror" / tag / name


def as_location(where: str | Path | Location) -> Location:
    return where if isinstance(where, Location) else Location(where)


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


def read_rows(results_dir: str | Path | Location, key: str) -> list[dict[str, Any]] | None:
    table = as_location(results_dir).read_table("rows", f"{key}.parquet")
    if table is None:
        return None  # missing or unreadable: the trial is simply run again
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows or None


STATUS_STALE = "stale"


def key_status(results_dir: str | Path | Location) -> dict[str, str]:
    """Each stored key's status: 'complete' when every row is, 'stale' when its rows were
    computed under another results revision (``trainables.config.RESULTS_REVISION``; files
    without the column predate it), else 'failed'.

    Unreadable files (a truncated copy, say) are left out: their trials run again.
    """
    loc = as_location(results_dir)
    out: dict[str, str] = {}
    for name in loc.files("rows", suffix=".parquet"):
        t = loc.read_table("rows", name, columns=["key", "status", "revision"])
        if t is None:  # a file from before results revisions (or unreadable: left out)
            t = loc.read_table("rows", name, columns=["key", "status"])
        if t is not None and t.num_rows:
            statuses = set(t.column("status").to_pylist())
            revisions = (
                set(t.column("revision").to_pylist()) if "revision" in t.column_names else {None}
            )
            key = name.removesuffix(".parquet")
            if revisions != {RESULTS_REVISION}:
                out[key] = STATUS_STALE
            else:
                out[key] = STATUS_COMPLETE if statuses == {STATUS_COMPLETE} else STATUS_FAILED
    return out


def stale_revisions(results_dir: str | Path | Location) -> dict[str, int]:
    """Stale keys -> the revision their rows were computed under (0: before revisions)."""
    loc = as_location(results_dir)
    out: dict[str, int] = {}
    for key, st in key_status(loc).items():
        if st == STATUS_STALE:
            t = loc.read_table("rows", f"{key}.parquet", columns=["revision"])
            rev = (
                t.column("revision")[0].as_py()
                if t is not None and "revision" in t.column_names
                else 0
            )
            out[key] = int(rev or 0)
    return out


def completed_keys(results_dir: str | Path | Location) -> set[str]:
    """Keys whose row set is complete (failed and unreadable files do not count)."""
    return {k for k, v in key_status(results_dir).items() if v == STATUS_COMPLETE}


def write_json(where: str | Path | Location, name: str, data: Any) -> None:
    """Write a small JSON state file atomically (readers never see half of it)."""
    as_location(where).write_bytes(json.dumps(data, indent=1, default=str).encode(), name)


def read_json(where: str | Path | Location, name: str) -> Any:
    data = as_location(where).read_bytes(name)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None
