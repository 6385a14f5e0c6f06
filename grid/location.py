"""A results location: a local folder or an object-storage URI, reached through ``pyarrow.fs``,
and the small JSON state files written there (``search.json``, ``status.json``).

Every file is encoded in memory first, then written in one go: on a local
disk to ``.<name>.tmp-<uuid>`` and renamed into place, on object storage as
one object upload (an object appears whole or not at all).  A reader never
sees a partial file; a failed write (full disk, lost connection) leaves the
previous file as it was.  The store's layout: grid/store.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from grid.errors import ResultsError


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
                raise ResultsError(f"results: cannot open {self.uri}: {err}") from None
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
        return sorted(self.file_sizes(*parts, suffix=suffix))

    def file_sizes(self, *parts: str, suffix: str = "") -> dict[str, int]:
        """Each file's size under ``parts`` (hidden ones left out), from one listing."""
        sel = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        return {
            info.base_name: int(info.size or 0)
            for info in self.fs.get_file_info(sel)
            if info.type == pafs.FileType.File
            and info.base_name.endswith(suffix)
            and not info.base_name.startswith(".")
        }

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
