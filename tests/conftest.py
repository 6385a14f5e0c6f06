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

from tests.helpers import S3, SMOKE, grid_cli

# Decoded-dataset caches of the tests stay out of the user's ~/.cache.
os.environ.setdefault("ROBUSTGRID_CACHE", tempfile.mkdtemp(prefix="robustgrid-test-cache-"))


@pytest.hookimpl(tryfirst=True)  # before -m deselects by mark
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses a shared Ray run is slow: the fixture runs a study on Ray."""
    for item in items:
        if {"smoke_run", "logged_run"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def smoke_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The smoke study (16 tiny trials) run once on a real local Ray, shared by the e2e and analysis tests."""
    results = tmp_path_factory.mktemp("results")
    proc = grid_cli("run", str(SMOKE), "--results", str(results))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return results / "smoke", proc


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
