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
import secrets
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
from tests.helpers import STUDIES, grid_cli, stop_cluster

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

STUDY = STUDIES / "resume.yaml"


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
def autoscaling_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    import ray._private.services as services

    # Token authentication, with a token of its own: a `ray start` enforces it as soon
    # as ~/.ray/auth_token exists (any earlier local Ray writes one), so the cluster,
    # its nodes, the watcher and the driver all get the same token from here.
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))

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
        # The fake provider's nodes belong to the autoscaler's monitor, not to this process,
        # and `ray stop` would end every Ray on the machine (the session's shared head too):
        # end the processes of this cluster alone, found by its GCS address.
        stop_cluster(address)


WATCH = r"""
import sys, time
from ray._raylet import GcsClient
gcs = GcsClient(address=sys.argv[1])
while True:
    alive = sum(1 for n in gcs.get_all_node_info().values() if n.state == 0) - 1  # less the head
    print(f"{time.monotonic()} {alive}", flush=True)
    time.sleep(0.5)
"""


class Watcher:
    """Alive worker nodes over time, read from the GCS by a process of its own
    (a GCS client in this process would carry the state of earlier in-process Ray runs)."""

    def __init__(self, address: str) -> None:
        self.seen: list[tuple[float, int]] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WATCH, address], stdout=subprocess.PIPE, text=True
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t, n = line.split()
            self.seen.append((float(t), int(n)))

    def now(self, timeout: float = 60.0) -> int:
        """The count of a reading taken after this call."""
        t0 = time.monotonic()
        while not self.seen or self.seen[-1][0] < t0:
            assert time.monotonic() < t0 + timeout, "the GCS watcher gives no readings"
            time.sleep(0.1)
        return self.seen[-1][1]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def test_cluster_scales_from_zero_up_while_trials_pend_and_back_down(
    autoscaling_cluster: str,
    tmp_path: Path,
) -> None:
    address = autoscaling_cluster
    watcher = Watcher(address)
    try:
        assert watcher.now() == 0  # no workers until there is work
        proc = grid_cli("run", str(STUDY), "--results", str(tmp_path), "--address", address)
        ended = time.monotonic()
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        deadline = ended + 120
        while watcher.now() > 0:  # idle nodes are terminated
            assert time.monotonic() < deadline, f"workers still up: {watcher.seen[-5:]}"
            time.sleep(1.0)
    finally:
        watcher.stop()
    during = [n for t, n in watcher.seen if t <= ended]
    assert max(during) == 2, during  # scaled out to the worker type's max while trials pended
    study = load_study(STUDY)
    con = connect(tmp_path / study.name)
    per_key = con.execute(
        "SELECT key, bool_and(status = 'complete') FROM rows GROUP BY key"
    ).fetchall()
    assert sorted(k for k, ok in per_key if ok) == sorted(t.key for t in study.trials())
