"""A study across several Ray nodes on this machine (ray.cluster_utils.Cluster), one killed mid-trial."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from analysis.query import connect
from grid.spec import load_study
from grid.store import Location
from tests.helpers import GRID, STUDIES, cifar_batches, grid_cli, write_cifar_bin

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

STUDY = STUDIES / "resume.yaml"


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


def _training(node) -> bool:  # type: ignore[no-untyped-def]
    """Whether ``node`` (a ray.cluster_utils node) runs a trial right now: its raylet has a
    worker process titled ``ray::ImplicitFunc.train`` (Tune's trainable inside its train call)."""
    from ray._private import ray_constants

    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            title = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
        if ppid == raylet and title.startswith(b"ray::ImplicitFunc.train"):
            return True
    return False


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
    # Wait until a trial has been stored (TF is imported, trials complete) and the node
    # about to be killed is inside a trial's train call, read from its own processes.
    while not list((folder / "rows").glob("*.parquet")) or not _training(workers[0]):
        assert driver.poll() is None, driver.stdout.read() if driver.stdout else ""
        assert time.monotonic() < deadline
        time.sleep(0.1)
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
    # exactly one complete row set per trial: fgsm at 2 eps and the worst case at each
    assert all(n == 4 and ok for _, n, ok in per_key)
    assert len(list((folder / "rows").glob("*.parquet"))) == study.grid_size


def test_dataset_reaches_each_node_once_and_workers_write_results_to_s3(s3, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """CIFAR-10 files on S3, results on S3, two worker nodes with their own disks (caches)."""
    import pyarrow.fs as pafs
    from ray.cluster_utils import Cluster

    data = tmp_path / "data"
    write_cifar_bin(data, cifar_batches(n=12))
    bucket, _ = pafs.FileSystem.from_uri(s3.uri)
    pafs.copy_files(str(data), "robustgrid-test/data/cifar10", destination_filesystem=bucket)
    study_file = tmp_path / "study.yaml"
    study_file.write_text(
        yaml.safe_dump(
            {
                "name": "s3-nodes",
                "dataset": {"name": "cifar10", "path": f"{s3.uri}/data/cifar10"},
                "model": "digits_cnn",
                "train": {"epochs": 1, "fine_tune_epochs": 0, "batch_size": 32},
                "axes": {"bits": ["float", "ternary"], "sparsity": [0.0, 0.5], "clusters": [0, 4]},
                "attacks": [{"name": "fgsm", "eps": [0.03], "samples": 8}],
                "results": f"{s3.uri}/results",
            }
        )
    )
    study = load_study(study_file)
    caches = [tmp_path / f"node{i}-cache" for i in range(2)]
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for cache in caches:  # each node has a disk of its own
            c.add_node(num_cpus=1, env_vars={"ROBUSTGRID_CACHE": str(cache)})
        c.wait_for_nodes()
        proc = grid_cli("run", str(study_file), "--address", c.address)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        again = grid_cli("run", str(study_file), "--address", c.address)
        assert again.returncode == 0 and "0 to run" in again.stdout, again.stdout[-2000:]
    finally:
        c.shutdown()
    where = f"{s3.uri}/results/{study.name}"
    con = connect(where)
    per_key = con.execute(
        "SELECT key, bool_and(status = 'complete') FROM rows GROUP BY key"
    ).fetchall()
    assert sorted(k for k, ok in per_key if ok) == sorted(t.key for t in study.trials())
    assert len(Location(where).folders("artifacts")) == 8  # written by the workers too
    used = [cache for cache in caches if (cache / "remote").is_dir()]
    assert used, "no node fetched the dataset"
    # 8 trials, one fetch and one decode per node that ran any
    assert s3.requests("GET", "data/cifar10/cifar-10-batches-bin/data_batch_1.bin") == len(used)
    for cache in used:
        assert len(list((cache / "decoded").glob("cifar10-*.npz"))) == 1
    proc = grid_cli("pareto", where)
    assert proc.returncode == 0 and "front" in proc.stdout.lower(), proc.stdout + proc.stderr
