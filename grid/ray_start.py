"""Ray for a run: a new local Ray of its own, or a cluster's; the study's builder packages shipped.

While Ray is up, ``status.json`` names this driver (``grid status`` shows it, and a
second driver on the same results is refused: ``grid.state.live_driver``).

A cluster (``--address``) is joined the way Ray documents for token authentication
(https://docs.ray.io/en/latest/ray-security/token-auth.html): ``RAY_AUTH_MODE=token``
with the token from ``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH`` names,
else ``~/.ray/auth_token``.  ``ray start --head`` on Ray 2.60 turns token authentication
on by itself when such a token exists, but a driver given an explicit address does not
(only ``address="auto"`` does), so it would retry for 20 s and fail with a traceback.
Here, with ``RAY_AUTH_MODE`` unset and a token at hand, the driver first asks the
cluster's GCS without one: a cluster started without authentication is joined as it is
(a token-mode client's actors die on one: checked on Ray 2.60 with ``ray.cluster_utils``),
one that asks for a token is joined in token mode; and that handshake turns every
failure to connect (nothing listening, a missing or wrong token, another Ray version) into one :class:`ClusterError`
line that says what to set.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from grid.errors import ClusterError, StudyError
from grid.spec import Study
from grid.state import write_status
from grid.store import Location

if TYPE_CHECKING:
    from grid.planning import RunPlan

# Every Ray worker needs Keras 2 before its first TensorFlow import.  (TensorFlow's C++ log
# level travels with the driver's mode: trainables.tflogs.worker_env.)
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "PYTHONWARNINGS": "ignore"}


@contextmanager
def ray_driver(
    study: Study, results_dir: Location, ray_address: str | None, planned: RunPlan, out: TextIO
) -> Iterator[int | None]:
    """Ray for this run (a local one, or the cluster at ``ray_address``), this driver in
    status.json while it lasts; yields the CPUs free on a local Ray (None on a cluster)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    # A local ray.init sets RAY_AUTH_MODE, and so does joining a cluster with a token; both leave
    # it set: put it back so that a later Ray in this process starts as the user asked.
    auth_mode = os.environ.get("RAY_AUTH_MODE")
    shipped = shipped_modules(study)
    for path in shipped:
        out.write(f"shipping {path} to the workers (Ray runtime_env py_modules)\n")
    try:
        init_ray(ray_address, shipped)
    except BaseException:
        _restore_auth_mode(auth_mode)
        raise
    write_status(
        results_dir, pid=os.getpid(), host=socket.gethostname(), running_driver=True,
        started_at=time.time(), strategy=study.search.strategy.value, total=planned.total,
        skipped=planned.skipped, running=[],
    )  # fmt: skip
    try:
        from grid import preflight

        preflight.check_cluster(study, results_dir, cluster=bool(ray_address))
        yield None if ray_address else int(ray.available_resources().get("CPU", 0))
    finally:
        ray.shutdown()
        _restore_auth_mode(auth_mode)
        write_status(results_dir, running_driver=False, running=[], finished_at=time.time())


def _restore_auth_mode(before: str | None) -> None:
    if before is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = before


def shipped_modules(study: Study) -> list[str]:
    """The local folders (or files) of the study's builder packages that Ray must ship.

    A builder's top-level package reaches every worker through the Ray runtime
    environment's ``py_modules``, unless it is installed in site-packages (then
    each node is expected to have it installed, like robustgrid itself).
    """
    import site
    import sysconfig

    from trainables.modelspec import ImportedModel, source_files

    installed = {
        Path(p).resolve()
        for p in [*site.getsitepackages(), site.getusersitepackages(),
                  sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
        if p
    }  # fmt: skip
    out: list[str] = []
    for m in study.models:
        if not isinstance(m, ImportedModel):
            continue
        root, _ = source_files(m.builder)
        resolved = root.resolve()
        if any(resolved.is_relative_to(p) for p in installed) or str(resolved) in out:
            continue
        out.append(str(resolved))
    return out


def init_ray(address: str | None, py_modules: list[str] | None = None) -> None:
    import ray

    from trainables import tflogs

    # The workers log TensorFlow's C++ lines as the driver was asked to (grid --verbose)
    runtime_env: dict[str, Any] = {"env_vars": {**WORKER_ENV, **tflogs.worker_env()}}
    if (
        py_modules
    ):  # the study's builder packages, uploaded to the cluster and put on the workers' path
        runtime_env["py_modules"] = list(py_modules)
    kwargs: dict[str, Any] = {
        "runtime_env": runtime_env,
        "logging_level": logging.ERROR,
        "log_to_driver": False,  # trial output goes to each trial's log, not over the progress lines
    }
    if address:
        connect(address, **kwargs)
    else:
        # A new local Ray of our own ("local": never join a cluster that happens to
        # run on this machine); dashboard off (and never on 0.0.0.0).
        ray.init(address="local", include_dashboard=False, **kwargs)


AUTH_DOC = "https://docs.ray.io/en/latest/ray-security/token-auth.html"


def token_source(env: Mapping[str, str] | None = None, home: Path | None = None) -> str | None:
    """Where Ray takes a client's token from, in Ray's order of precedence; None when nowhere.

    ``RAY_AUTH_TOKEN`` (the token itself), ``RAY_AUTH_TOKEN_PATH`` (a file holding it),
    then the default file ``~/.ray/auth_token`` (what ``ray get-auth-token --generate``
    and a local ``ray.init`` write).
    """
    env = os.environ if env is None else env
    if env.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if env.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH ({env['RAY_AUTH_TOKEN_PATH']})"
    default = (home or Path.home()) / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


def host_port(address: str) -> tuple[str, int] | None:
    """``HOST:PORT`` of a GCS address; None for what Ray resolves itself (auto, ray://)."""
    if address == "auto" or "://" in address:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise StudyError(
            f"--address: {address!r} is not HOST:PORT (the head's GCS address, "
            "as `ray start --head` prints it)"
        )
    return host.strip("[]"), int(port)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Ray's C++ core writes its connection retries to file descriptor 2: catch them in a file
    (their text tells an authentication failure apart), written back where nothing failed."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as caught:
        os.dup2(caught.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if not failed:
                caught.seek(0)
                os.write(2, caught.read())


def connect(address: str, **kwargs: Any) -> None:
    """``ray.init`` against the cluster at ``address``; a failure to connect is one ClusterError."""
    import ray

    where = host_port(address)
    if where is not None:
        try:
            socket.create_connection(where, timeout=5).close()
        except OSError as err:
            raise ClusterError(
                f"--address {address}: no Ray cluster answers there ({err.strerror or err}); "
                "start one with `ray start --head`, or fix --address / RAY_ADDRESS"
            ) from None
    source = token_source()
    if where is not None:
        if os.environ.get("RAY_AUTH_MODE") is None and source is not None:
            # Ask the cluster first: one started without authentication (ray.init's local
            # clusters, an older `ray up`) kills a token-mode client's actors.
            if not _handshake(address, source, raise_auth=False):
                _token_mode()
                _handshake(address, source)
        else:
            _handshake(address, source)
    elif os.environ.get("RAY_AUTH_MODE") is None and source is not None:
        _token_mode()  # "auto" or ray://: Ray resolves the cluster itself, as ray.init("auto")
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ray.exceptions.AuthenticationError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "version" in first.lower():
            hint = "install the cluster's Ray and Python versions here (constraints.txt pins Ray)"
        else:
            hint = f"see {AUTH_DOC} if the cluster uses token authentication"
        raise ClusterError(
            f"--address {address}: cannot join the Ray cluster: {first}; {hint}"
        ) from None


def _token_mode() -> None:
    """RAY_AUTH_MODE=token for this process (and the Ray it starts) and Ray's cached config,
    as Ray's own ``ray.init(address="auto")`` does when a token exists."""
    from ray._private.authentication.authentication_token_setup import _enable_token_auth

    _enable_token_auth()


def _handshake(address: str, source: str | None, raise_auth: bool = True) -> bool:
    """One request to the cluster's GCS (a second at most): a token it refuses fails here,
    in one line, instead of after Ray's 20 s of retries and a traceback.  False when the
    cluster asks for a token and ``raise_auth`` is off (the caller then tries with one)."""
    import ray
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    try:
        with _quiet_stderr():
            GcsClient(address=address)
    except ray.exceptions.AuthenticationError:
        if not raise_auth:
            return False
        if os.environ.get("RAY_AUTH_MODE", "").lower() not in ("", "token"):
            what = f"RAY_AUTH_MODE is {os.environ['RAY_AUTH_MODE']!r} here; unset it or set it to token, with "
        elif source is None:
            what = "no token was found here; set "
        else:
            what = f"it refused the token from {source}; set "
        raise ClusterError(
            f"--address {address}: the Ray cluster requires token authentication and {what}"
            "RAY_AUTH_TOKEN to the cluster's token (`ray get-auth-token` on the head prints it), "
            f"or RAY_AUTH_TOKEN_PATH to a file holding it, or put it in ~/.ray/auth_token ({AUTH_DOC})"
        ) from None
    except Exception as err:  # Ray's other errors: ray.init below tells them apart
        logging.getLogger(__name__).debug("GCS handshake with %s: %s", address, err)
    return True
