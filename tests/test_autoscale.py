"""A study on an autoscaling Ray cluster (Ray's fake_multinode provider on this machine).

The head has no CPUs and the worker type scales between 0 and 2 nodes: the
study's pending trials make the autoscaler add nodes, and the idle nodes go
away once the study is done.  Nothing is mocked: the autoscaler, its monitor
and the nodes it starts are Ray's own, as on a cloud, only with processes for
machines.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from analysis.query import connect
from grid.spec import load_study
from tests.conftest import grid_cli

STUDY = Path(__file__).parent / "studies" / "resume.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _config(gcs: str) -> dict[str, object]:
    return {
        "cluster_name": "robustgrid-autoscale-test",
        "max_workers": 2,
        "upscaling_speed": 2.0,
        "idle_timeout_minutes": 0.1,  # an idle node goes after 6 s
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu_worker": {
                "resources": {"CPU": 1},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            },
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def _ray() -> str:
    """The ``ray`` command of this interpreter's environment."""
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


@pytest.fixture
def autoscaling_cluster(tmp_path: Path) -> Iterator[str]:
    import ray._private.services as services

    address = f"{services.get_node_ip_address()}:{_free_port()}"
    config = tmp_path / "autoscale.yaml"
    config.write_text(json.dumps(_config(address)))
    env = {
        **os.environ,
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        "TF_USE_LEGACY_KERAS": "1",
    }
    subprocess.run(
        [_ray(), "start", "--head", f"--port={address.rsplit(':', 1)[1]}", "--num-cpus=0",
         "--include-dashboard=false", f"--autoscaling-config={config}"],
        check=True, env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    try:
        yield address
    finally:
        # The fake provider's nodes belong to the autoscaler's monitor, not to
        # this process: `ray stop` ends them with the head (as Ray's own
        # AutoscalingCluster does; it stops every Ray on the machine).
        subprocess.run([_ray(), "stop", "--force"], capture_output=True, timeout=120)


def _alive_workers(address: str) -> int:
    from ray._raylet import GcsClient

    nodes = GcsClient(address=address).get_all_node_info().values()
    return sum(1 for n in nodes if n.state == 0) - 1  # ALIVE, less the head


def test_cluster_scales_from_zero_up_while_trials_pend_and_back_down(
    autoscaling_cluster: str,
    tmp_path: Path,
) -> None:
    address = autoscaling_cluster
    assert _alive_workers(address) == 0  # no workers until there is work
    seen: list[tuple[float, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append((time.monotonic(), _alive_workers(address)))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        proc = grid_cli("run", str(STUDY), "--results", str(tmp_path), "--address", address)
        ended = time.monotonic()
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        deadline = ended + 120
        while _alive_workers(address) > 0:  # idle nodes are terminated
            assert time.monotonic() < deadline, (
                f"still {_alive_workers(address)} workers: {seen[-5:]}"
            )
            time.sleep(1.0)
    finally:
        stop.set()
        watcher.join()
    during = [n for t, n in seen if t <= ended]
    assert max(during) == 2, during  # scaled out to the worker type's max while trials pended
    assert _alive_workers(address) == 0
    study = load_study(STUDY)
    con = connect(tmp_path / study.name)
    per_key = con.execute(
        "SELECT key, bool_and(status = 'complete') FROM rows GROUP BY key"
    ).fetchall()
    assert sorted(k for k, ok in per_key if ok) == sorted(t.key for t in study.trials())
