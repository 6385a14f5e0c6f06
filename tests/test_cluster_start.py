"""Clusters as users start them: `ray start --head` (token authentication on by default when a
token exists, Ray 2.60), `grid run --address` from a plain environment, the run summary's slots
from the cluster's CPUs, and the shared-results probe across nodes that do not share a disk.

Each head is a real ``ray start --head --block`` in a process group of its own, killed (the
group) in a finally: never ``ray stop``, which would stop every Ray on the machine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from grid.progress import slots_held
from grid.ray_start import host_port, token_source
from grid.spec import StudyError
from tests.helpers import GRID, RAY, STUDIES, free_port, plain_env, ray_node

STUDY = STUDIES / "resume.yaml"  # 8 tiny trials


def two_trials(tmp_path: Path) -> Path:
    """The resume study cut to 2 trials (float and ternary), for runs that only check plumbing."""
    import yaml

    spec = yaml.safe_load(STUDY.read_text())
    spec["axes"] = {"bits": ["float", "ternary"]}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def grid(*args: str, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GRID, *args], capture_output=True, text=True, env=env, timeout=timeout)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one error line a refused run ends with (TensorFlow's C++ start-up notices aside),
    and no traceback."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("grid run: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return errors[0]


# --- pure functions, and the nothing-there case -------------------------------------


def test_token_source_follows_rays_precedence(tmp_path: Path) -> None:
    assert token_source({}, tmp_path) is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t")
    assert token_source({}, tmp_path) == str(tmp_path / ".ray" / "auth_token")
    assert token_source({"RAY_AUTH_TOKEN_PATH": "/x"}, tmp_path) == "RAY_AUTH_TOKEN_PATH (/x)"
    both = {"RAY_AUTH_TOKEN": "abc", "RAY_AUTH_TOKEN_PATH": "/x"}
    assert token_source(both, tmp_path) == "RAY_AUTH_TOKEN"
    assert token_source({"RAY_AUTH_TOKEN": ""}, tmp_path) == str(tmp_path / ".ray" / "auth_token")


def test_address_must_be_host_and_port() -> None:
    assert host_port("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert host_port("[::1]:6379") == ("::1", 6379)
    assert host_port("auto") is None and host_port("ray://head:10001") is None
    for bad in ("head", "head:port", ":6379"):
        with pytest.raises(StudyError, match="--address"):
            host_port(bad)


@pytest.mark.parametrize(
    ("nodes", "cpus", "gpus", "want"),
    [
        ([{"CPU": 2.0}], 1, 0, 2),
        ([{"CPU": 3.0}], 2, 0, 1),  # a trial does not span nodes' halves
        ([{"CPU": 3.0}, {"CPU": 3.0}], 2, 0, 2),  # nor nodes: 6 CPUs, 2 trials
        ([{"CPU": 0.0}, {"CPU": 4.0}], 1, 0, 4),  # a head with no CPUs holds none
        ([{"CPU": 16.0, "GPU": 1.0}], 1, 0.25, 4),  # four trials share the GPU
        ([{"CPU": 2.0, "GPU": 1.0}], 1, 0.25, 2),  # CPUs bind first
        ([{"CPU": 8.0, "GPU": 1.0}], 1, 0.1, 8),  # 1 / 0.1 = 10 although 0.1 is inexact
        ([{"CPU": 8.0}], 1, 1, 0),  # no GPU: no GPU trial fits
        ([], 1, 0, 0),
    ],
)
def test_slots_held(nodes: list[dict[str, float]], cpus: int, gpus: float, want: int) -> None:
    assert slots_held(nodes, cpus, gpus) == want


@pytest.mark.slow  # the grid command line in a subprocess: about 10 s
def test_no_cluster_at_the_address_is_one_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    proc = grid("run", str(STUDY), "--results", str(tmp_path), "--address", f"127.0.0.1:{port}",
                env=plain_env(), timeout=120)  # fmt: skip
    assert f"127.0.0.1:{port}: no Ray cluster answers there" in error_line(proc)


# --- slow: real clusters from `ray start` --------------------------------------------------


@pytest.mark.slow
@pytest.mark.cluster
def test_grid_run_against_a_token_authenticated_head(tmp_path: Path) -> None:
    """`ray start --head --num-cpus=2` in a HOME holding a token (`ray get-auth-token
    --generate`, as Ray's docs say for clusters; no RAY_AUTH_MODE anywhere): Ray turns token
    authentication on by itself.  Without the token, or with a wrong one, `grid run --address`
    says so in one line; with the user's plain environment it runs the 8 trials, and the
    summary reports the cluster's 2 slots (not 8)."""
    home, stranger = tmp_path / "home", tmp_path / "stranger"
    home.mkdir(), stranger.mkdir()
    subprocess.run([RAY, "get-auth-token", "--generate"], env=plain_env(HOME=str(home)),
                   check=True, capture_output=True)  # fmt: skip
    assert (home / ".ray" / "auth_token").is_file()
    port = free_port()
    address = f"127.0.0.1:{port}"
    results = tmp_path / "results"
    run = ["run", str(STUDY), "--results", str(results), "--address", address]
    args = [
        "--head",
        "--include-dashboard=false",
        f"--port={port}",
        "--num-cpus=2",
        "--node-ip-address=127.0.0.1",
    ]
    with ray_node(args, plain_env(HOME=str(home)), tmp_path / "head.log"):
        missing = grid(*run, env=plain_env(HOME=str(stranger)), timeout=120)
        wrong = grid(*run, env=plain_env(HOME=str(home), RAY_AUTH_TOKEN="0" * 32), timeout=120)
        for proc, what in (
            (missing, "no token was found"),
            (wrong, "refused the token from RAY_AUTH_TOKEN"),
        ):
            line = error_line(proc)
            assert what in line and "RAY_AUTH_TOKEN" in line, line
        assert not list((results / "resume" / "rows").glob("*.parquet"))  # refused before any trial
        ok = grid(*run, env=plain_env(HOME=str(home)))
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    rows = sorted((results / "resume" / "rows").glob("*.parquet"))
    assert len(rows) == 8
    print(next(ln for ln in ok.stdout.splitlines() if "slot(s)" in ln))  # the figure, with -s
    summary = re.search(r"on (\d+) slot\(s\): efficiency ([0-9.]+)", ok.stdout)
    assert summary and summary.group(1) == "2", ok.stdout[-2000:]
    assert float(summary.group(2)) > 0.3, ok.stdout[-2000:]  # 8 slots would read about 0.2


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True
    )
    return probe.returncode == 0


@contextmanager
def two_nodes(tmp_path: Path, results: Path | None, env: dict[str, str]) -> Iterator[str]:
    """A head (1 CPU) and a worker node (1 CPU) from `ray start`, both on this machine, with
    token authentication on every node as Ray's docs set a cluster up (RAY_AUTH_MODE=token and
    the token in ``env``'s HOME, which the driver's plain environment shares).

    Separate disks, simulated honestly: with ``results`` given, the worker node's `ray start`
    runs in a mount namespace of its own (``unshare -m``) where another, empty folder is
    bind-mounted over ``results``.  Its raylet and every worker it starts see that other
    folder at the same absolute path, exactly as a second machine's local disk would be
    seen: the driver hands tasks the path as a string (``Location`` pickles as its URI) and
    each node opens it on its own filesystem.
    """
    if not (Path(env["HOME"]) / ".ray" / "auth_token").is_file():
        subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True,
                       capture_output=True)  # fmt: skip
    nodes_env = {**env, "RAY_AUTH_MODE": "token"}  # the nodes', not the driver's
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = [
        "--head",
        "--include-dashboard=false",
        f"--port={port}",
        "--num-cpus=1",
        "--node-ip-address=127.0.0.1",
    ]
    worker = ["--address", address, "--num-cpus=1", "--node-ip-address=127.0.0.1"]
    wrap = None
    if results is not None:
        other = tmp_path / "other-disk"
        other.mkdir()
        wrap = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                f'mount --bind "{other}" "{results}" && exec "$0" "$@"']  # fmt: skip
    with (
        ray_node(head, nodes_env, tmp_path / "head.log"),
        ray_node(worker, nodes_env, tmp_path / "worker.log", wrap),
    ):
        deadline = time.monotonic() + 60
        while True:  # both nodes registered
            status = subprocess.run([RAY, "status", "--address", address], capture_output=True,
                                    text=True, env=nodes_env)  # fmt: skip
            if status.stdout.count("node_") >= 2 or time.monotonic() > deadline:
                break
            time.sleep(1)
        yield address


@pytest.mark.slow
@pytest.mark.cluster
def test_nodes_without_a_shared_results_folder_are_refused(tmp_path: Path) -> None:
    if not _unshare_works():
        pytest.skip("needs mount namespaces (unshare -m) to give a node a disk of its own")
    results = tmp_path / "results"
    results.mkdir()
    (tmp_path / "home").mkdir()
    env = plain_env(HOME=str(tmp_path / "home"))
    with two_nodes(tmp_path, results, env) as address:
        proc = grid("run", str(two_trials(tmp_path)), "--results", str(results),
                    "--address", address, env=env)  # fmt: skip
    line = error_line(proc)
    assert "is not the same folder on every node" in line and "--results s3://" in line, line
    assert "1 of 2 node(s)" in line, line
    assert not list((results / "resume" / "rows").glob("*.parquet"))  # no trial ran
    assert not (results / "resume" / ".node-probe").exists() or not any(
        (results / "resume" / ".node-probe").iterdir()
    )  # the probe cleaned up after itself


@pytest.mark.slow
@pytest.mark.cluster
def test_shared_folder_and_object_storage_pass_the_probe(tmp_path: Path, s3) -> None:  # type: ignore[no-untyped-def]
    """The same two nodes, sharing the disk: the probe passes (checked directly, then a run
    whose store gets all rows); and results in the local S3 endpoint pass too."""
    results = tmp_path / "results"
    study = str(two_trials(tmp_path))
    (tmp_path / "home").mkdir()
    env = plain_env(HOME=str(tmp_path / "home"))  # the s3 fixture's AWS_* variables included
    with two_nodes(tmp_path, None, env) as address:
        shared = grid("run", study, "--results", str(results), "--address", address, env=env)
        remote = grid("run", study, "--results", f"{s3.uri}/results", "--address", address,
                      env=env)  # fmt: skip
    assert shared.returncode == 0, shared.stdout[-3000:] + shared.stderr[-3000:]
    assert len(list((results / "resume" / "rows").glob("*.parquet"))) == 2
    assert not (results / "resume" / ".node-probe").exists()
    assert remote.returncode == 0, remote.stdout[-3000:] + remote.stderr[-3000:]
    assert s3.requests("PUT", "results/resume/.node-probe/") >= 3  # the driver's and each node's
    assert s3.requests("PUT", "results/resume/rows/") >= 2
