"""The results revision: rows computed by a trainer that computed something else are stale.

A trial's key hashes its config *and* ``trainables.config.RESULTS_REVISION``,
so a bump gives every trial a new key: `grid run` reruns them, `grid status`
reports the old rows as stale, and neither counts them as complete.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import grid.reads
import trainables.config
from grid.planning import plan
from grid.spec import load_study
from grid.state import StudyState
from grid.store import STATUS_STALE, ParquetSink, key_status, stale_revisions
from tests.helpers import config_rows, grid_cli
from trainables.config import RESULTS_REVISION

STUDY = """
name: rev
dataset: digits
model: digits_cnn
seed: 3
train: {epochs: 1, fine_tune_epochs: 0, batch_size: 128}
axes: {bits: [float, 4]}
attacks:
  - {name: fgsm, eps: [0.1], samples: 40}
artifacts: false
"""


def _set_revision(folder: Path, revision: int | None) -> None:
    """Rewrite the stored rows as a trainer of another revision would have left them."""
    for path in (folder / "rows").glob("*.parquet"):
        table = pq.read_table(path)
        table = table.drop_columns(["revision"])
        if revision is not None:
            table = table.append_column(
                "revision", pa.array([revision] * table.num_rows, pa.int64())
            )
        pq.write_table(table, path)


@pytest.fixture
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The study file and its folder with every trial complete: one row per trial,
    built from the study's own trial configs and written by the real Parquet sink
    (what is checked here is the rows' revision and keys, not their metrics, so no
    Ray run is needed to make them)."""
    root = tmp_path_factory.mktemp("rev")
    study = root / "rev.yaml"
    study.write_text(STUDY)
    sink = ParquetSink(str(root / "r" / "rev"), "rev", "r")
    for trial in load_study(study).trials():
        sink(trial.key, config_rows(trial, 0.5, 1000, study="rev"))
    return study, root / "r" / "rev"


@pytest.mark.slow
def test_bumped_revision_reruns_a_complete_study(
    finished: tuple[Path, Path], tmp_path: Path, ray_head: str
) -> None:
    study, folder = finished
    keys = {t.key for t in load_study(study).trials()}
    assert set(key_status(folder).values()) == {"complete"}
    # The same rows, as an older trainer (and one from before revisions existed) wrote them.
    copy = tmp_path / "r" / "rev"
    copy.parent.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(folder), str(copy)], check=True)
    _set_revision(copy, RESULTS_REVISION - 1)
    assert set(key_status(copy).values()) == {STATUS_STALE}

    status = grid_cli("status", str(study), "--results", str(tmp_path / "r"))
    assert status.returncode == 0, status.stderr[-2000:]
    assert "0 done" in status.stdout
    assert (
        f"stale: 2 stored trial(s) were computed under results revision {RESULTS_REVISION - 1}, "
        f"now {RESULTS_REVISION}" in status.stdout
    )
    assert "front 0 of 0 point(s)" in status.stdout or "no complete point" in status.stdout

    run = grid_cli("run", str(study), "--results", str(tmp_path / "r"), "--address", ray_head)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 trials, 0 already complete, 2 to run" in run.stdout
    assert "stale: 2 stored trial(s)" in run.stdout
    assert key_status(copy) == dict.fromkeys(keys, "complete")
    for path in (copy / "rows").glob("*.parquet"):
        assert set(pq.read_table(path, columns=["revision"]).column(0).to_pylist()) == {
            RESULTS_REVISION
        }
    again = grid_cli("run", str(study), "--results", str(tmp_path / "r"))
    assert "2 already complete, 0 to run" in again.stdout


def test_rows_without_a_revision_are_stale(finished: tuple[Path, Path], tmp_path: Path) -> None:
    _, folder = finished
    copy = tmp_path / "rev"
    subprocess.run(["cp", "-r", str(folder), str(copy)], check=True)
    _set_revision(copy, None)  # written before the column existed
    assert set(stale_revisions(copy).values()) == {0}


def test_a_revision_bump_changes_every_key(
    finished: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a code change that bumps RESULTS_REVISION does to a finished study's folder."""
    study_path, folder = finished
    study = load_study(study_path)
    before = {t.key for t in study.trials()}
    state = StudyState(study, folder)
    assert plan(study, state)[1:] == (2, 2)  # 2 trials, both complete
    monkeypatch.setattr(trainables.config, "RESULTS_REVISION", RESULTS_REVISION + 1)
    monkeypatch.setattr(grid.reads, "RESULTS_REVISION", RESULTS_REVISION + 1)  # the scan's
    after = {t.key for t in study.trials()}
    assert not before & after  # every trial has a new identity
    state = StudyState(study, folder)
    units, total, skipped = plan(study, state)
    assert (total, skipped, len(units)) == (2, 0, 2)  # both run again
    assert state.stale == dict.fromkeys(before, RESULTS_REVISION)
    assert not state.point_values()  # nothing stale reaches the front
