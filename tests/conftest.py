from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import logging
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import S3, SMOKE, free_port, grid_cli, plain_env, ray_node

# Decoded-dataset caches of the tests stay out of the user's ~/.cache.
os.environ.setdefault("ROBUSTGRID_CACHE", tempfile.mkdtemp(prefix="robustgrid-test-cache-"))


@pytest.hookimpl(tryfirst=True)  # before -m deselects by mark
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses a shared Ray run is slow: the fixture runs a study on Ray."""
    for item in items:
        if {"smoke_run", "logged_run", "ray_head"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def smoke_run(
    tmp_path_factory: pytest.TempPathFactory, ray_head: str
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The smoke study (16 tiny trials) run once on the session's Ray, shared by the e2e and
    analysis tests."""
    results = tmp_path_factory.mktemp("results")
    proc = grid_cli("run", str(SMOKE), "--results", str(results), "--address", ray_head)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return results / "smoke", proc


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Ray for the session (``ray start --head`` on 127.0.0.1, every CPU of this machine),
    joined by the ``grid run --address`` of tests whose subject is not Ray's own start or stop.

    Each such run then skips a local Ray's start and shutdown (GCS, raylet, dashboard,
    monitor and agents: about 10 s of wall on 2 cores each); its workers are its own (Ray
    gives every job fresh ones), so no state passes between tests.  Tests of starting,
    joining or losing Ray (test_cluster*, test_autoscale, test_resume's kill -9) start their own.
    Started on first use only; its process group is killed at the session's end.
    """
    port = free_port()
    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    args = ["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
            "--disable-usage-stats"]  # fmt: skip
    with ray_node(args, plain_env(), log):
        yield f"127.0.0.1:{port}"


class _Log(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    """An S3 bucket on 127.0.0.1; credentials and endpoint in the environment, as in a cloud run.

    Real S3 cannot be reached from here; moto's server speaks its HTTP API, and
    everything on our side (pyarrow.fs, Ray workers, DuckDB reads) is the real code.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="robustgrid-test")
    log: list[str] = []
    handler = _Log(log)
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.addHandler(handler)
    werkzeug.setLevel(logging.INFO)
    try:
        yield S3("s3://robustgrid-test", endpoint, log)
    finally:
        werkzeug.removeHandler(handler)
        server.stop()
