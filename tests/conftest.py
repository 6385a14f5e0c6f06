from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import logging
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Decoded-dataset caches of the tests stay out of the user's ~/.cache.
os.environ.setdefault("ROBUSTGRID_CACHE", tempfile.mkdtemp(prefix="robustgrid-test-cache-"))

SMOKE = Path(__file__).parent / "studies" / "smoke.yaml"
GRID = [sys.executable, "-m", "grid.cli"]


def grid_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run the ``grid`` command line in a subprocess, as a user would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([*GRID, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def smoke_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The smoke study (16 tiny trials) run once on a real local Ray, shared by the e2e and analysis tests."""
    results = tmp_path_factory.mktemp("results")
    proc = grid_cli("run", str(SMOKE), "--results", str(results))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return results / "smoke", proc


@dataclass
class S3:
    """A local S3 endpoint (moto's server) that pyarrow's real S3 client talks to over HTTP."""

    uri: str  # s3://<bucket>
    endpoint: str
    log: list[str]  # the server's access log: 'GET /bucket/key ...' per request

    def requests(self, method: str, key_part: str) -> int:
        plain = (re.sub(r"\x1b\[[0-9;]*m", "", line) for line in self.log)  # colour codes out
        return sum(1 for line in plain if f'"{method} /' in line and key_part in line)


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
