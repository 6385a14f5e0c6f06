"""Trial identity, resume after kill -9, retries and searches, on a real local Ray."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from analysis.query import connect
from grid import space
from grid.spec import load_study
from tests.helpers import GRID, STUDIES, brute_force_hv, grid_cli

pytestmark = pytest.mark.slow  # every test runs the grid on Ray


def _rows(folder: Path) -> list[Path]:
    return sorted((folder / "rows").glob("*.parquet"))


def _assert_exactly_once(folder: Path, keys: set[str], rows_per_key: int) -> None:
    files = _rows(folder)
    assert {p.stem for p in files} == keys  # one file per key, none extra
    con = connect(folder)
    assert con.execute("SELECT count(DISTINCT key), count(*) FROM rows").fetchone() == (
        len(keys),
        len(keys) * rows_per_key,
    )
    dup = con.execute(
        "SELECT count(*) FROM (SELECT key, attack, eps FROM rows GROUP BY ALL HAVING count(*) > 1)"
    ).fetchone()
    assert dup == (0,)
    assert con.execute("SELECT bool_and(status = 'complete') FROM rows").fetchone() == (True,)


def _optuna_study(folder: Path, name: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "optuna.journal"))
    )
    return optuna.load_study(study_name=name, storage=storage)


def _complete(folder: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    """The trials Optuna recorded as complete in the study's journal."""
    return [t for t in _optuna_study(folder, name).trials if t.state.name == "COMPLETE"]


def test_driver_killed_with_sigkill_then_resumed(tmp_path: Path) -> None:
    study_file = STUDIES / "resume.yaml"
    study = load_study(study_file)
    folder = tmp_path / study.name
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(
        [*GRID, "run", str(study_file), "--results", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        busy = 0  # the most trials status.json listed running before any had finished
        while len(_rows(folder)) < 2:  # mid-study: some trials stored, most not
            assert driver.poll() is None, driver.stdout.read() if driver.stdout else ""
            assert time.monotonic() < deadline
            with contextlib.suppress(OSError, ValueError):
                if not _rows(folder):
                    running = json.loads((folder / "status.json").read_text())["running"]
                    busy = max(busy, len(running))
            time.sleep(0.1)
        # every slot (a CPU each) was busy from the start, and status.json said so
        # (it once lagged by the trial just starting: Tune marks it RUNNING after the callback)
        assert busy == min(os.cpu_count() or 1, study.grid_size)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        assert len(_rows(folder)) < study.grid_size
        status = grid_cli("status", str(study_file), "--results", str(tmp_path))
        assert status.returncode == 0, status.stderr
        assert "no driver running" in status.stdout  # the dead driver is not taken for a live one

        resumed = grid_cli("resume", str(study_file), "--results", str(tmp_path))
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        # fgsm at 2 eps and the per-example worst case at each
        _assert_exactly_once(folder, {t.key for t in study.trials()}, rows_per_key=4)
        assert (
            f"{study.grid_size} done, 0 running, 0 failed, 0 to do"
            in grid_cli("status", str(study_file), "--results", str(tmp_path)).stdout
        )

        again = grid_cli("run", str(study_file), "--results", str(tmp_path))
        assert again.returncode == 0, again.stderr
        assert f"{study.grid_size} already complete, 0 to run" in again.stdout
        assert "[1/" not in again.stdout  # zero trials ran
    finally:
        with contextlib.suppress(ProcessLookupError):  # the killed driver's local Ray processes
            os.killpg(driver.pid, signal.SIGKILL)


def test_optuna_search_retries_resumes_and_matches_brute_force(tmp_path: Path) -> None:
    study_file = tmp_path / "optuna.yaml"
    study_file.write_text((STUDIES / "optuna.yaml").read_text())
    study = load_study(study_file)
    folder = tmp_path / study.name
    faults = tmp_path / "faults"
    # Every trial raises on its first attempt: Tune retries it (FailureConfig) and the
    # retry's rows replace the failed row.
    first = grid_cli("run", str(study_file), "--results", str(tmp_path),
                     faults=["--fail-first-attempt", str(faults)])  # fmt: skip
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert first.stdout.count("[retry]") == 3 == len(list(faults.iterdir()))
    assert "injected fault" in first.stdout
    # The keys of the points Optuna completed, from its journal: one row set each.
    first_keys = {
        study.point_trials(space.to_point(study, t.params))[0].key
        for t in _complete(folder, study.name)
    }
    assert len(first_keys) == 3
    _assert_exactly_once(folder, first_keys, rows_per_key=2)  # fgsm and its worst-case row
    assert "HV " in first.stdout

    # A bigger budget continues the same Optuna study (its journal in the results folder).
    study_file.write_text(study_file.read_text().replace("budget: 3", "budget: 5"))
    second = grid_cli("run", str(study_file), "--results", str(tmp_path))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "5 trials, 3 already complete, 2 to run" in second.stdout
    assert len(_rows(folder)) == 5
    ostudy = _optuna_study(folder, study.name)
    complete = _complete(folder, study.name)
    assert {space.point_label(space.to_point(study, t.params)) for t in complete} == {
        space.point_label(p)
        for p in space.points(study)
        if study.point_trials(p)[0].key in {f.stem for f in _rows(folder)}
    }
    assert [d.name for d in ostudy.directions] == ["MAXIMIZE", "MINIMIZE", "MAXIMIZE"]
    assert "0 to run" in grid_cli("run", str(study_file), "--results", str(tmp_path)).stdout

    # The stored front and hypervolume equal a brute-force computation on the rows.
    con = connect(folder)
    pts = con.execute(
        "SELECT key, min(metric_robust_acc), any_value(metric_bytes), any_value(metric_clean_acc), "
        "any_value(metric_params) FROM rows GROUP BY key"
    ).fetchall()
    values = np.array([p[1:4] for p in pts], dtype=float)
    ref = [0.0, 1.1 * 4 * pts[0][4], 0.0]
    saved = json.loads((folder / "search.json").read_text())
    assert saved["reference"] == pytest.approx(ref)
    assert saved["hypervolume"] == pytest.approx(brute_force_hv(values, [True, False, True], ref))
    assert saved["points_complete"] == 5
    up = values * np.array([1.0, -1.0, 1.0])  # every objective as "more is better"
    brute = {
        pts[i][0]
        for i in range(len(pts))
        if not any((up[j] >= up[i]).all() and (up[j] > up[i]).any() for j in range(len(pts)))
    }
    assert {k for f in saved["front"] for k in f["keys"]} == brute
    status = grid_cli("status", str(study_file), "--results", str(tmp_path))
    assert "5 done, 0 running, 0 failed, 0 to do" in status.stdout
    assert f"hypervolume {saved['hypervolume_normalized']:.4f}" in status.stdout
    # the front as `grid pareto` lists one: smallest first, accuracies to 3 decimals
    lines = [ln.split() for ln in status.stdout.splitlines() if ln.startswith("  robust_acc ")]
    assert len(lines) == len(saved["front"]) > 0
    sizes = [int(ln[3].replace(",", "")) for ln in lines]
    assert sizes == sorted(sizes) and all(len(ln[1].split(".")[1]) == 3 for ln in lines)


def test_trial_that_keeps_failing_is_stored_failed_with_its_reason(tmp_path: Path) -> None:
    study_file = tmp_path / "broken.yaml"
    study_file.write_text(
        "name: broken\ndataset: digits\nmodel: digits_cnn\ntrain: {epochs: 1}\n"
        "resources: {retries: 1}\nartifacts: false\n"
    )
    faults = ["--fault-rate", "1", "--faults", str(tmp_path / "faults")]
    proc = grid_cli(
        "run", str(study_file), "--results", str(tmp_path), faults=faults
    )  # every attempt raises
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("[retry]") == 1 and "[failed]" in proc.stdout
    assert len(list((tmp_path / "faults").iterdir())) == 2  # the first attempt and its one retry
    con = connect(tmp_path / "broken")
    status, reason = con.execute("SELECT status, reason FROM rows").fetchone()
    assert status == "failed" and "injected fault" in reason
    out = grid_cli("status", str(study_file), "--results", str(tmp_path)).stdout
    assert "0 done, 0 running, 1 failed, 0 to do" in out and "injected fault" in out
