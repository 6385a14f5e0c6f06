"""Results on object storage: the store, the driver's state and the CLI through pyarrow's S3 client.

The bucket is served on 127.0.0.1 by moto's server (no real S3 is reachable
from here); every request goes through ``pyarrow.fs.S3FileSystem`` over HTTP,
as it would to AWS.  Credentials and endpoint come from the environment only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from analysis.query import connect
from grid.cli import main
from grid.launch import run_study
from grid.preflight import check_writable
from grid.spec import StudyError, load_study, parse_study
from grid.state import StudyState
from grid.store import (
    Location,
    ParquetSink,
    key_status,
    read_json,
    read_rows,
    write_artifacts,
    write_json,
)
from tests.helpers import S3, rows_for

BASE = {"name": "s", "dataset": "digits", "model": "digits_cnn"}


def _objects(s3: S3, prefix: str) -> list[str]:
    loc = Location(f"{s3.uri}/{prefix}")
    sel = pafs.FileSelector(loc.root, recursive=True, allow_not_found=True)
    return sorted(
        i.path.removeprefix(loc.root + "/")
        for i in loc.fs.get_file_info(sel)
        if i.type == pafs.FileType.File
    )


def test_rows_written_read_and_replaced_on_s3(s3: S3) -> None:
    where = f"{s3.uri}/results/s"
    sink = ParquetSink(where, "s", "abc")
    sink("k1", rows_for("k1", {("pgd", 0.1): 0.4, ("fgsm", 0.1): 0.5}, 0.9, 100, status="failed"))
    sink("k2", rows_for("k2", {("pgd", 0.1): 0.3}, 0.8, 50))
    assert key_status(where) == {"k1": "failed", "k2": "complete"}
    sink("k1", rows_for("k1", {("pgd", 0.1): 0.4, ("fgsm", 0.1): 0.5}, 0.9, 100))  # the retry
    assert key_status(where) == {"k1": "complete", "k2": "complete"}
    assert _objects(s3, "results/s") == ["rows/k1.parquet", "rows/k2.parquet"]  # no second set
    rows = read_rows(where, "k1")
    assert rows is not None and len(rows) == 2 and {r["meta_git_rev"] for r in rows} == {"abc"}
    con = connect(where)  # analysts read the bucket directly
    assert con.execute("SELECT count(*), count(DISTINCT key) FROM rows").fetchone() == (3, 2)
    assert s3.requests("PUT", "results/s/rows/k1.parquet") == 2  # one upload per write


def test_state_files_artifacts_and_export_on_s3(s3: S3, tmp_path: Path) -> None:
    loc = Location(f"{s3.uri}/results/s")
    write_json(loc, "status.json", {"pid": 1})
    assert read_json(loc, "status.json") == {"pid": 1}
    assert read_json(loc, "search.json") is None
    files = {"model.h5": b"m" * 10, "old.bin": b"o", "manifest.json": b"{}"}
    write_artifacts(loc, "k1", files)
    puts = [ln for ln in s3.log if '"PUT /robustgrid-test/results/s/artifacts/k1/' in ln]
    assert "manifest.json" in puts[-1]  # a reader that sees the manifest sees every file
    manifest = {
        "files": {"model.h5": {"bytes": 10, "sha256": "ab" * 32}},
        "bytes": 10,
        "clean_acc": 0.5,
        "tflite_test_acc": None,
        "tflite_error": "none built",
    }
    write_artifacts(
        loc, "k1", {"model.h5": b"m" * 10, "manifest.json": json.dumps(manifest).encode()}
    )
    assert _objects(s3, "results/s/artifacts") == ["k1/manifest.json", "k1/model.h5"]
    out = tmp_path / "export"
    assert main(["export", str(loc), "k1", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.h5"]
    assert (out / "model.h5").read_bytes() == b"m" * 10


def test_the_optuna_journal_follows_the_results(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROBUSTGRID_CACHE", str(tmp_path / "driver-1"))
    loc = Location(f"{s3.uri}/results/s")
    journal = loc.mirror("optuna.journal")
    assert not journal.exists() and journal.is_relative_to(tmp_path / "driver-1")
    journal.write_bytes(b'{"op": 0}\n')
    loc.push("optuna.journal")
    monkeypatch.setenv(
        "ROBUSTGRID_CACHE", str(tmp_path / "driver-2")
    )  # a resume on another machine
    again = loc.mirror("optuna.journal")
    assert again != journal and again.read_bytes() == b'{"op": 0}\n'
    again.write_bytes(b'{"op": 0}\n{"op": 1}\n')  # a longer local journal is kept, not overwritten
    assert loc.mirror("optuna.journal").read_bytes().count(b"\n") == 2
    # StudyState.save pushes it with search.json for Optuna studies
    study = parse_study(
        {
            **BASE,
            "axes": {"bits": ["float", "ternary"]},
            "search": {"strategy": "optuna", "budget": 2},
        }
    )
    state = StudyState(study, loc)
    state.save("optuna")
    assert loc.read_bytes("optuna.journal") == b'{"op": 0}\n{"op": 1}\n'
    assert read_json(loc, "search.json")["strategy"] == "optuna"
    # The journal is uploaded whole: at most every JOURNAL_PUSH_S during a run, not per trial
    again.write_bytes(b'{"op": 0}\n{"op": 1}\n{"op": 2}\n')
    puts = s3.requests("PUT", "optuna.journal")
    state.save("optuna")
    assert s3.requests("PUT", "optuna.journal") == puts
    assert loc.read_bytes("optuna.journal") == b'{"op": 0}\n{"op": 1}\n'
    StudyState(study, loc).save("optuna")  # the run's end: a new state's first save uploads
    assert loc.read_bytes("optuna.journal").count(b"\n") == 3


def test_unwritable_or_unknown_locations_fail_before_anything_runs(s3: S3, tmp_path: Path) -> None:
    with pytest.raises(StudyError, match=r"results: cannot write to s3://no-such-bucket/r/s/rows"):
        check_writable(Location("s3://no-such-bucket/r/s"))
    study = parse_study(BASE)
    with pytest.raises(StudyError, match="no-such-bucket"):
        run_study(study, results="s3://no-such-bucket/r")
    with pytest.raises(StudyError, match=r"results = 'ftp://host/r': unsupported storage 'ftp://'"):
        parse_study({**BASE, "results": "ftp://host/r"})
    with pytest.raises(StudyError, match=r"--results: unsupported storage 'http://'"):
        study.results_dir("http://host/r")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root writes anywhere: a file where the folder should be
        locked = tmp_path / "a-file"
        locked.write_text("x")
    with pytest.raises(StudyError, match=f"results: cannot write to {locked}"):
        run_study(study, results=str(locked))


FULL_DISK = r"""
import resource, signal, sys
from grid.store import ParquetSink
from tests.helpers import rows_for
sink = ParquetSink(sys.argv[1], "s", "r")
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # files past 4 KiB: EFBIG, like a full disk
rows = rows_for("k1", {("pgd", e / 100): 0.4 for e in range(200)}, 0.9, 100)
for r in rows:
    r["reason"] = "x" * 200
try:
    sink("k1", rows)
except OSError as err:
    print("write failed:", err)
    sys.exit(3)
"""


def test_a_full_disk_fails_the_write_and_keeps_the_old_rows(tmp_path: Path) -> None:
    sink = ParquetSink(str(tmp_path), "s", "r")
    sink("k1", rows_for("k1", {("pgd", 0.1): 0.4}, 0.9, 100, status="failed"))
    before = (tmp_path / "rows" / "k1.parquet").read_bytes()
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path)],
        capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
    )  # fmt: skip
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "File too large" in proc.stdout
    assert (tmp_path / "rows" / "k1.parquet").read_bytes() == before  # untouched
    assert sorted(p.name for p in (tmp_path / "rows").iterdir()) == ["k1.parquet"]  # no temp left
    assert key_status(tmp_path) == {"k1": "failed"}  # so the trial runs again


def test_status_of_a_study_on_s3(s3: S3, capsys: pytest.CaptureFixture[str]) -> None:
    study = load_study(Path(__file__).parent / "studies" / "resume.yaml")
    loc = study.results_dir(f"{s3.uri}/r")
    assert str(loc) == f"{s3.uri}/r/{study.name}"
    t = study.trials()[0]
    rows = rows_for(t.key, {("fgsm", 0.1): 0.4, ("worst", 0.1): 0.4}, 0.9, 100)  # its worst row
    ParquetSink(str(loc), study.name, "r")(t.key, rows)
    assert (
        main(
            [
                "status",
                str(Path(__file__).parent / "studies" / "resume.yaml"),
                "--results",
                f"{s3.uri}/r",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"1 done, 0 running, 0 failed, {study.grid_size - 1} to do" in out


def test_a_missing_dataset_is_refused_before_any_trial(s3: S3, tmp_path: Path) -> None:
    study = parse_study({**BASE, "dataset": {"name": "cifar10", "path": str(tmp_path / "empty")}})
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyError, match=r"dataset.path: .*empty: no CIFAR-10 here"):
        run_study(study, results=str(tmp_path / "r"))  # a local run reads it first
    assert not list((tmp_path / "r").rglob("*.parquet"))  # nothing ran
    remote = parse_study(
        {**BASE, "dataset": {"name": "cifar10", "path": f"{s3.uri}/datasets/none"}}
    )
    with pytest.raises(
        StudyError, match=r"dataset.path: s3://robustgrid-test/datasets/none: not found"
    ):
        run_study(remote, results=str(tmp_path / "r"), address="127.0.0.1:1")  # before connecting
    study_file = tmp_path / "s.yaml"
    study_file.write_text(
        json.dumps({**BASE, "dataset": {"name": "svhn", "path": str(tmp_path / "no")}})
    )
    assert main(["run", str(study_file), "--results", str(tmp_path / "r")]) == 2
