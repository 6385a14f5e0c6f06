"""`grid compact`: killed between its steps, every key stays readable exactly once.

Compaction writes a compacted file (step 1), then deletes the per-key files it
merged (step 2).  Here compaction runs in a real subprocess that kills itself
with SIGKILL at a named step (its storage wrapped: tests/injected.py's KillingLocation);
after every kill, and after a final clean run, every Parquet file is read back
with pyarrow by hand, the store's one rule (a key's per-key file wins over its
compacted rows) is applied in a few lines, and every reader must show what it
showed before compaction: DuckDB's views, key_status, StudyState's points and
``grid status``.
"""

from __future__ import annotations

import io
import re
import signal
import socket
import subprocess
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from analysis.query import connect
from grid.cli import main
from grid.spec import Study, load_study
from grid.state import StudyState
from grid.store import (
    COMPACTED_PREFIX,
    Location,
    ParquetSink,
    key_status,
    write_json,
)
from tests.helpers import INJECTED, S3, SMOKE, grid_cli, rows_for, stand_in_driver

MAX_KEYS = 10  # 32 keys: four compacted files


def _study(tmp_path: Path) -> tuple[Path, Study]:
    data = yaml.safe_load(SMOKE.read_text())
    data["folds"] = 2  # points are means over two folds: a lost or doubled fold shows
    path = tmp_path / "smoke2.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, load_study(path)


def _fill(study: Study, where: str) -> dict[str, list[dict[str, Any]]]:
    """Every trial's rows through the real sink: complete, two failed, one stale, one flagged."""
    sink = ParquetSink(where, study.name, "r")
    written = {}
    for i, t in enumerate(study.trials()):
        robust = {
            ("fgsm", 0.05): 0.7 - i / 100,
            ("fgsm", 0.1): 0.6 - i / 100,
            ("pgd", 0.1): 0.5 - i / 90,
            ("worst", 0.05): 0.7 - i / 100,  # the per-example worst rows the trial stores
            ("worst", 0.1): 0.5 - i / 90,
        }
        kind: dict[str, Any] = {"status": "failed"} if i in (3, 17) else {}
        if i == 8:
            kind["revision"] = 1  # stale: computed under another results revision
        if i == 12:
            kind["extra"] = {"metric_masking_flags": "zero_grad"}
        rows = rows_for(t.key, robust, 0.9, 1000 + 37 * i, fold=t.fold, study=study.name, **kind)
        sink(t.key, rows)
        written[t.key] = rows
    return written


def _files(loc: Location) -> dict[str, bytes]:
    sel = pafs.FileSelector(loc.path("rows"), allow_not_found=True)
    out = {}
    for info in loc.fs.get_file_info(sel):
        if info.type == pafs.FileType.File and info.base_name.endswith(".parquet"):
            with loc.fs.open_input_file(info.path) as f:
                out[info.base_name] = f.read()
    return out


def _brute_force(loc: Location) -> dict[str, list[tuple[Any, ...]]]:
    """Every key's rows, read file by file: a per-key file wins over compacted rows."""
    per_key, compacted = {}, {}
    for name, data in _files(loc).items():
        rows = pq.read_table(pa_buffer(data)).to_pylist()
        if name.startswith(COMPACTED_PREFIX):
            keys = {r["key"] for r in rows}
            assert not keys & set(compacted), (
                f"a key in two compacted files: {keys & set(compacted)}"
            )
            for key in keys:
                compacted[key] = [_tuple(r) for r in rows if r["key"] == key]
        else:
            per_key[name.removesuffix(".parquet")] = [_tuple(r) for r in rows]
    return compacted | per_key


def pa_buffer(data: bytes) -> Any:
    import pyarrow as pa

    return pa.BufferReader(data)


def _tuple(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted(row.items()))


def _readers(study_file: Path, study: Study, where: str) -> dict[str, Any]:
    """What every reader shows: DuckDB's views, key_status, StudyState's points, grid status."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stale trial's warning
        con = connect(where)
        counts = con.execute(
            "SELECT count(*), count(DISTINCT key) FROM all_rows UNION ALL "
            "SELECT count(*), count(DISTINCT key) FROM rows"
        ).fetchall()
        trials = con.execute("SELECT * FROM trials ORDER BY key").fetchall()
    state = StudyState(study, where)
    out = io.StringIO()
    with redirect_stdout(out):
        rc = main(["status", str(study_file), "--results", where.rsplit("/", 1)[0]])
    assert rc == 0
    return {
        "counts": counts,
        "trials": trials,
        "status": key_status(where),
        "points": state.point_values(),
        "flags": state.flags,
        "stale": state.stale,
        "grid status": out.getvalue(),
    }


@pytest.mark.slow
def test_compact_killed_at_every_step(tmp_path: Path) -> None:
    study_file, study = _study(tmp_path)
    loc = study.results_dir(str(tmp_path / "r"))
    written = _fill(study, str(loc))
    expected = {k: [_tuple(r | {"meta_study": study.name, "meta_git_rev": "r"}) for r in rows]
                for k, rows in written.items()}  # fmt: skip
    assert _brute_force(loc) == expected
    before = _readers(study_file, study, str(loc))
    assert before["counts"] == [(30 * 5 + 2 * 5, 32), (29 * 5 + 2 * 5, 31)]
    assert "2 failed" in before["grid status"] and "masking" in before["grid status"]

    def compact(kill_at: str | None) -> None:
        if kill_at:
            proc = subprocess.run(
                [*INJECTED, "--kill-compact-at", kill_at, "--max-keys", str(MAX_KEYS), str(loc)],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
        else:
            proc = grid_cli("compact", str(loc), "--max-keys", str(MAX_KEYS), timeout=300)
        if kill_at:
            assert proc.returncode == -signal.SIGKILL, (kill_at, proc.stdout, proc.stderr)
        else:
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "compacted" in proc.stdout
        assert _brute_force(loc) == expected, kill_at  # every key exactly once, none lost
        assert _readers(study_file, study, str(loc)) == before, kill_at

    compact("written")  # the first compacted file whole, no per-key file deleted yet
    names = _files(loc)
    assert sum(n.startswith(COMPACTED_PREFIX) for n in names) == 1 and len(names) == 33
    compact("finished-1")  # the next run finishes the crashed one first: killed inside that
    compact("deleted-5")  # killed after some deletes of a new compacted file's keys
    compact("deleted-all")  # killed after all of one file's deletes
    compact(None)
    names = sorted(_files(loc))
    per_key = [n for n in names if not n.startswith(COMPACTED_PREFIX)]
    failed = {t.key for i, t in enumerate(study.trials()) if i in (3, 17)}
    assert per_key == sorted(f"{k}.parquet" for k in failed)  # failed keys stay per-key
    assert len(names) - len(per_key) in (3, 4)  # 30 keys merged from 10 files at a time
    compact(None)  # nothing left to do: the same again
    assert sorted(_files(loc)) == names


def test_compact_refuses_a_live_driver_and_bad_input(tmp_path: Path) -> None:
    study_file, study = _study(tmp_path)
    loc = study.results_dir(str(tmp_path / "r"))
    _fill(study, str(loc))
    # A live process that looks like a driver (its command line names grid) owns the folder.
    with stand_in_driver() as driver:
        write_json(
            loc,
            "status.json",
            {"running_driver": True, "pid": driver.pid, "host": socket.gethostname()},
        )
        err = io.StringIO()
        with redirect_stderr(err):
            assert main(["compact", str(study_file), "--results", str(tmp_path / "r")]) == 2
        assert f"a driver (pid {driver.pid}) is running on {loc}" in err.getvalue()
        assert not any(n.startswith(COMPACTED_PREFIX) for n in _files(loc))
    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["compact", str(loc), "--max-keys", "0"]) == 2
        assert main(["compact", str(study_file), "--results", str(tmp_path / "none")]) == 2
    assert "max_keys must be at least 1, got 0" in err.getvalue()
    assert "holds no rows to compact" in err.getvalue()


def test_compact_on_s3(s3: S3, tmp_path: Path) -> None:
    study_file, study = _study(tmp_path)
    where = f"{s3.uri}/r/{study.name}"
    written = _fill(study, where)
    loc = Location(where)
    expected = {k: [_tuple(r | {"meta_study": study.name, "meta_git_rev": "r"}) for r in rows]
                for k, rows in written.items()}  # fmt: skip
    before = _readers(study_file, study, where)
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["compact", where, "--max-keys", str(MAX_KEYS)]) == 0
    assert re.search(r"compacted 30 key\(s\) into [34] compacted file\(s\)", out.getvalue())
    assert _brute_force(loc) == expected
    assert _readers(study_file, study, where) == before
    # After compaction a study's status is a handful of object reads, not one per key.
    s3.log.clear()
    key_status(where)
    gets = s3.requests("GET", "/r/smoke/rows/")
    assert gets <= 6 * 4, gets  # <= 4 compacted + 2 failed files, a few ranged reads each


def test_the_dedupe_rule_has_one_owner() -> None:
    """analysis names the store's files without importing grid: both read trainables.rowfiles."""
    import analysis.query
    import grid.reads
    import trainables.rowfiles

    assert COMPACTED_PREFIX is trainables.rowfiles.COMPACTED_PREFIX
    assert (
        analysis.query.is_compacted is grid.reads.is_compacted is trainables.rowfiles.is_compacted
    )


@pytest.mark.slow
def test_grid_run_compacts_many_loose_keys(tmp_path: Path) -> None:
    """`grid run` on a study whose store holds >= AUTO_COMPACT_KEYS complete per-key files
    (nothing left to run: no Ray) compacts them, as a user's plain `grid run` does; a
    second run finds nothing loose and leaves the files alone."""
    from grid.launch import AUTO_COMPACT_KEYS

    jr = [round(0.001 * i, 3) for i in range(AUTO_COMPACT_KEYS // 40 + 1)]
    results = tmp_path / "results"
    path = tmp_path / "big.yaml"
    path.write_text(
        "name: big\ndataset: digits\nmodel: digits_cnn\nfolds: 5\n"
        f"axes:\n  bits: [float, 8, 4, ternary]\n  sparsity: [0.0, 0.5]\n  jr_weight: {jr}\n"
        f"attacks:\n  - name: pgd\n    eps: [0.1]\nresults: {results}\n"
    )
    study = load_study(path)
    trials = list(study.trials())
    assert len(trials) >= AUTO_COMPACT_KEYS
    sink = ParquetSink(str(study.results_dir()), study.name, "r")
    for i, t in enumerate(trials):
        sink(t.key, rows_for(t.key, {("pgd", 0.1): 0.5 + i / 1e5, ("worst", 0.1): 0.5 + i / 1e5}, 0.9, 1000 + i, fold=t.fold,
                             study=study.name))  # fmt: skip
    loc = study.results_dir()
    before, status_before = key_status(loc), grid_cli("status", str(path)).stdout
    first = grid_cli("run", str(path))
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"compacted {len(trials)} key(s) into 1 compacted file(s)" in first.stdout
    names = sorted(_files(loc))
    assert len(names) == 1 and names[0].startswith(COMPACTED_PREFIX), names
    assert key_status(loc) == before
    assert grid_cli("status", str(path)).stdout == status_before
    again = grid_cli("run", str(path))
    assert again.returncode == 0 and "compacted" not in again.stdout, again.stdout[-2000:]
    assert sorted(_files(loc)) == names
