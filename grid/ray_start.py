"""Ray for a run: a new local Ray of its own, or a cluster's; the study's builder packages shipped.

While Ray is up, ``status.json`` names this driver (``grid status`` shows it, and a
second driver on the same results is refused: ``grid.state.live_driver``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from grid.spec import Study
from grid.state import write_status
from grid.store import Location

if TYPE_CHECKING:
    from grid.planning import Plan

# Every Ray worker needs Keras 2 before its first TensorFlow import.
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}


@contextmanager
def ray_driver(
    study: Study, results_dir: Location, ray_address: str | None, planned: Plan, out: TextIO
) -> Iterator[int | None]:
    """Ray for this run (a local one, or the cluster at ``ray_address``), this driver in
    status.json while it lasts; yields the CPUs free on a local Ray (None on a cluster)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    auth_mode = os.environ.get("RAY_AUTH_MODE")  # a local ray.init sets it, and leaves it set
    shipped = shipped_modules(study)
    for path in shipped:
        out.write(f"shipping {path} to the workers (Ray runtime_env py_modules)\n")
    init_ray(ray_address, shipped)
    write_status(
        results_dir, pid=os.getpid(), host=socket.gethostname(), running_driver=True,
        started_at=time.time(), strategy=study.search.strategy.value, total=planned.total,
        skipped=planned.skipped, running=[],
    )  # fmt: skip
    try:
        yield None if ray_address else int(ray.available_resources().get("CPU", 0))
    finally:
        ray.shutdown()
        if auth_mode is None:  # so that a later Ray in this process starts as the user asked
            os.environ.pop("RAY_AUTH_MODE", None)
        write_status(results_dir, running_driver=False, running=[], finished_at=time.time())


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

    runtime_env: dict[str, Any] = {"env_vars": WORKER_ENV}
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
        ray.init(address=address, **kwargs)
    else:
        # A new local Ray of our own ("local": never join a cluster that happens to
        # run on this machine); dashboard off (and never on 0.0.0.0).
        ray.init(address="local", include_dashboard=False, **kwargs)
