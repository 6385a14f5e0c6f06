from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import subprocess
import sys
import tempfile
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
