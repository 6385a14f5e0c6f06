"""A study across several Ray nodes on this machine (ray.cluster_utils.Cluster), one killed mid-trial."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from analysis.query import connect
from grid.spec import load_study
from tests.conftest import GRID

STUDY = Path(__file__).parent / "studies" / "resume.yaml"


@pytest.fixture
def cluster():  # type: ignore[no-untyped-def]
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
        },  # the driver's node runs no trials
    )
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    yield c, workers
    c.shutdown()


def test_study_survives_a_worker_node_killed_mid_trial(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c, workers = cluster
    study = load_study(STUDY)
    folder = tmp_path / study.name
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(
        [*GRID, "run", str(STUDY), "--results", str(tmp_path), "--address", c.address],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while not list((folder / "rows").glob("*.parquet")):  # trials are under way on both nodes
        assert driver.poll() is None, driver.stdout.read() if driver.stdout else ""
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(2.0)  # both nodes into their next trial (TF is imported, training runs)
    c.remove_node(workers[0], allow_graceful=False)  # the node dies with its running trial
    c.add_node(num_cpus=1)  # a replacement joins, as an autoscaler would bring one
    out, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, out[-4000:]
    assert "[retry]" in out  # the killed node's trial failed and Tune ran it again elsewhere
    con = connect(folder)
    per_key = con.execute(
        "SELECT key, count(*), bool_and(status = 'complete') FROM rows GROUP BY key"
    ).fetchall()
    assert {k for k, _, _ in per_key} == {t.key for t in study.trials()}
    assert all(n == 2 and ok for _, n, ok in per_key)  # exactly one complete row set per trial
    assert len(list((folder / "rows").glob("*.parquet"))) == study.grid_size
