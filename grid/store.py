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
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainables.config import RESULTS_REVISION
from trainables.rows import COLUMNS, STATUS_COMPLETE, STATUS_FAILED, WORST
from trainables.trivial import TRIVIAL_LAYERS, TRIVIAL_STUDY_PREFIX

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


# ---------------------------------------------------------------------------
# Reading many keys at once, and compaction

COMPACTED_PREFIX = "compacted-"
COMPACT_MAX_KEYS = 20_000  # keys per compacted file (docs/performance.md: the store at scale)
_BATCH_FILES = 2_000  # files per dataset read; a batch with an unreadable file is read file by file
_ROW_GROUP_ROWS = 4_096  # compacted files: row groups small enough for a key filter to skip most


def is_compacted(name: str) -> bool:
    """True for a compacted file's name (``compacted-<uuid>.parquet``), never a key's."""
    return name.startswith(COMPACTED_PREFIX)


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
        per_key={n.removesuffix(".parquet"): n for n in names if not is_compacted(n)},
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
        own = pa.array(sorted(listing.per_key), pa.string())
        for t in _read_batch(
            loc, listing.compacted, cols, key_from_name=False, sizes=listing.sizes
        ):
            tables.append(t.filter(pc.invert(pc.is_in(t.column("key"), value_set=own))))
    if not tables:
        return _subschema(cols).empty_table()
    return pa.concat_tables(tables)


@dataclass
class Scan:
    """What the store holds, per key, read in one listing and a few dataset reads.

    ``status``: as :func:`key_status`; ``stale``: as :func:`stale_revisions`;
    ``summaries``: ``trainables.rows.summarize(read_rows(key), objective)`` for each key
    (empty without an objective); ``reasons``: each key's first row's ``reason``.
    """

    status: dict[str, str]
    stale: dict[str, int]
    summaries: dict[str, dict[str, Any]]
    reasons: dict[str, str]


_STATUS_COLUMNS = ["key", "status", "revision"]
_SUMMARY_COLUMNS = [
    *_STATUS_COLUMNS,
    "reason",
    "attack",
    "attack_norm",
    "eps",
    "metric_robust_acc",
    "metric_clean_acc",
    "metric_bytes",
    "metric_tflite_bytes",
    "metric_params",
    "metric_masking_flags",
    "meta_train_s",
    "meta_total_s",
]


def scan(results_dir: str | Path | Location, objective: tuple[Any, ...] | None = None) -> Scan:
    """Every key's status (and, given a headline ``objective``, its summary) from one listing.

    Vectorised in DuckDB over the Arrow table of the columns needed: no per-key
    file read, no per-row Python.  The rules are :func:`key_status`'s and
    ``trainables.rows.summarize``'s (tests/test_store.py checks both against them).
    """
    return scan_table(
        read_many(results_dir, _SUMMARY_COLUMNS if objective else _STATUS_COLUMNS), objective
    )


def scan_table(table: pa.Table, objective: tuple[Any, ...] | None = None) -> Scan:
    """:func:`scan` over rows already read (``key`` and the columns it needs)."""
    import duckdb

    from trainables.config import DEFAULT_NORM

    table = table.append_column("_idx", pa.array(range(table.num_rows), pa.int64()))
    con = duckdb.connect()
    con.register("t", table)
    rev = int(RESULTS_REVISION)
    per_key = f"""
        SELECT key, min(_idx) AS first_idx,
               bool_and(coalesce(status = '{STATUS_COMPLETE}', false)) AS all_complete,
               bool_and(coalesce(revision = {rev}, false)) AS current
        FROM t GROUP BY key"""
    if not objective:
        got = con.execute(
            f"""SELECT a.key, a.all_complete, a.current, coalesce(f.revision, 0)
                FROM ({per_key}) a JOIN t f ON f._idx = a.first_idx"""
        ).fetchall()
        status, stale = {}, {}
        for key, all_complete, current, first_rev in got:
            status[key] = _key_state(all_complete, current)
            if not current:
                stale[key] = int(first_rev)
        return Scan(status, stale, {}, {})
    attack, eps = objective[0], objective[1]
    norm = objective[2] if len(objective) > 2 else None
    size = objective[3] if len(objective) > 3 else "encoded"
    cases = " ".join(f"WHEN '{a.value}' THEN '{n}'" for a, n in DEFAULT_NORM.items())
    row_norm = f"CASE WHEN coalesce(attack_norm, '') <> '' THEN attack_norm ELSE CASE attack {cases} ELSE 'inf' END END"
    q = "'" + str(attack).replace("'", "''") + "'"
    # 'worst' is its own stored rows (trainables/worst.py), L-inf unless a norm is named.
    if norm is not None:
        norm_ok = f"{row_norm} = '{norm}'"
    else:
        norm_ok = "true" if attack != WORST else f"{row_norm} = 'inf'"
    ok = f"status = '{STATUS_COMPLETE}' AND attack = {q} AND {norm_ok}"
    target = "max(eps) OVER (PARTITION BY key)" if eps is None else repr(float(eps))
    got = con.execute(
        f"""
        WITH ok AS (SELECT key, eps, metric_robust_acc, {target} AS target FROM t WHERE {ok}),
        head AS (SELECT key, min(metric_robust_acc) FILTER (WHERE abs(eps - target) < 1e-9) AS robust,
                        count(*) FILTER (WHERE abs(eps - target) < 1e-9) AS hits
                 FROM ok GROUP BY key),
        attacked AS (SELECT key, bool_or(attack IS NOT NULL AND attack <> 'none') AS any_attack
                     FROM t GROUP BY key)
        SELECT a.key, a.all_complete, a.current, f.revision, f.reason, h.robust, h.hits,
               x.any_attack, f.metric_clean_acc, f.metric_bytes, f.metric_tflite_bytes,
               f.metric_params, f.metric_masking_flags, f.meta_train_s, f.meta_total_s
        FROM ({per_key}) a JOIN t f ON f._idx = a.first_idx
             JOIN attacked x ON x.key = a.key LEFT JOIN head h ON h.key = a.key
        """
    ).fetchall()
    out = Scan({}, {}, {}, {})
    for (key, all_complete, current, first_rev, reason, robust, hits, any_attack, clean, nbytes,
         tflite, params, flags, train_s, total_s) in got:  # fmt: skip
        out.status[key] = _key_state(all_complete, current)
        if not current:
            out.stale[key] = int(first_rev or 0)
        out.reasons[key] = reason or ""
        complete = bool(all_complete)
        robust = robust if complete and hits else None
        if complete and (first_rev or 0) != RESULTS_REVISION:
            complete, why = (
                False,
                f"stale: computed under results revision {first_rev or 0}, now {RESULTS_REVISION}",
            )
        elif complete and robust is None and any_attack:
            complete, why = False, f"no rows for the objective's attack {attack} at eps {eps}"
        else:
            why = reason or ""
        out.summaries[key] = {
            "key": key,
            "status": STATUS_COMPLETE if complete else STATUS_FAILED,
            "reason": why,
            "clean_acc": clean,
            "robust_acc": robust if robust is not None or not complete else clean,
            "bytes": tflite if size == "tflite" else nbytes,
            "params": params,
            "masking_flags": flags or "",
            "train_s": train_s,
            "total_s": total_s,
        }
    return out


def _key_state(all_complete: bool, current: bool) -> str:
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


STATUS_STALE = "stale"


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
        raise ValueError(f"compact: max_keys must be at least 1, got {max_keys}")
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
        status = scan_table(table.select(_STATUS_COLUMNS)).status
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
