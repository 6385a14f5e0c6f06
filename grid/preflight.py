"""Checks before anything runs: each fails in seconds with a :class:`StudyError` naming the field.

A results folder that cannot be written or that another driver is using, a
dataset that is not there, a custom model that cannot be built: each would
otherwise fail every trial, after Ray started and the cluster scaled up.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from grid.spec import Study, StudyError
from grid.state import live_driver
from grid.store import Location, is_remote


def check_results(results_dir: Location) -> None:
    """The results folder can be written, and no other driver runs this study there."""
    check_writable(results_dir)
    other = live_driver(results_dir)
    if other is not None:
        raise StudyError(
            f"results: {results_dir} is in use by a running driver (pid {other}); "
            "wait for it or stop it first"
        )


def check_writable(results_dir: Location) -> None:
    """Prove a file can be written (and removed) in the rows folder, before anything runs."""
    name = f".write-check-{uuid.uuid4().hex}"
    try:
        results_dir.write_bytes(b"robustgrid", "rows", name)
        results_dir.delete("rows", name)
    except OSError as err:
        what = getattr(err, "strerror", None) or str(err).splitlines()[0]
        raise StudyError(
            f"results: cannot write to {results_dir.display('rows')}: {what}"
        ) from None


def check_inputs(study: Study, local: bool) -> None:
    """What the trials read: the dataset, and each custom model built once (TensorFlow)."""
    check_dataset(study, local)
    study.check_models()  # a custom model that cannot be built fails here, not in every trial


def check_dataset(study: Study, local: bool) -> None:
    """The study's dataset is there and readable, before any trial starts.

    A local run reads it here once (the decoded arrays land in this node's
    cache, where the workers find them); on a cluster a local path names the
    workers' disks, not this one, so only an object-storage path is checked.
    """
    d = study.dataset
    path = study._common()["data_path"]  # resolved as the trials get it
    if d.name.value == "digits" or d.download:
        return  # ships with scikit-learn / fetched (with its checksum) by the workers
    from trainables.datasets import DatasetError

    try:
        if path and is_remote(path):
            import pyarrow.fs as pafs

            try:
                fs, inner = pafs.FileSystem.from_uri(path)
                missing = fs.get_file_info(inner).type == pafs.FileType.NotFound
            except (OSError, ValueError) as err:
                raise DatasetError(f"{path}: {str(err).splitlines()[0]}") from None
            if missing:
                raise DatasetError(f"{path}: not found")
        elif local:
            from trainables.data import load_pool

            load_pool(d.name.value, path, False, d.md5)
            load_pool.cache_clear()  # the driver keeps no copy
    except DatasetError as err:
        raise StudyError(f"dataset.path: {err}") from None


# ---------------------------------------------------------------------------
# Once Ray is up: what the cluster holds, and whether its nodes share the results folder


def check_cluster(study: Study, results_dir: Location, cluster: bool) -> None:
    """After Ray started (or was joined), before any trial: GPUs the study asks for exist or
    can be added; on a cluster, every node sees the same results folder."""
    check_gpus(study)
    if cluster:
        check_shared_results(results_dir)


def gpus_reachable() -> float:
    """GPUs the Ray cluster has now, or can scale to (an autoscaler's node types)."""
    import ray

    now = float(ray.cluster_resources().get("GPU", 0.0))
    try:
        from ray._private.state import state

        most = (state.get_max_resources_from_cluster_config() or {}).get("GPU") or 0
    except Exception:  # no autoscaler config, or another Ray: what is there now
        most = 0
    return max(now, float(most))


def check_gpus(study: Study) -> None:
    """A study asking for GPUs on a Ray without any (nor an autoscaler that adds some) fails
    here, in one line: Tune would otherwise leave every trial pending for resources forever."""
    want = study.resources.gpus_per_trial
    if want <= 0:
        return
    have = gpus_reachable()
    if have < want:
        raise StudyError(
            f"resources.gpus_per_trial: {want:g} GPU(s) per trial, but the Ray cluster has "
            f"{have:g} GPU(s) and no autoscaler node type with more; run on a Ray with GPUs "
            "(--address) or set resources.gpus_per_trial: 0"
        )


PROBE_DIR = ".node-probe"
PROBE_TIMEOUT_S = 120.0


def _probe_on_node(uri: str, driver_file: str, node_file: str) -> tuple[str, bool, str]:
    """Runs on one node: writes ``node_file`` into the results folder, reads ``driver_file``.

    The folder is opened here, from its URI, exactly as a trial's ParquetSink opens it on
    its node (``Location`` pickles as its URI), with this node's disks and credentials.
    """
    import socket as sock

    where = Location(uri)
    try:
        where.write_bytes(node_file.encode(), PROBE_DIR, node_file)
        seen = where.exists(PROBE_DIR, driver_file)
        return sock.gethostname(), seen, ""
    except OSError as err:
        return sock.gethostname(), False, str(err).splitlines()[0]


def _drop_probe(uri: str, name: str) -> None:
    """Remove a probe file (and the probe folder once empty, on a local disk)."""
    where = Location(uri)
    with contextlib.suppress(OSError):  # never written (the node could not write there)
        where.delete(PROBE_DIR, name)
    if where.local is not None:
        with contextlib.suppress(OSError):  # not empty, or gone
            (where.local / PROBE_DIR).rmdir()


def check_shared_results(results_dir: Location, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Every alive node of the cluster and this driver see the same results folder.

    A local folder on a cluster whose nodes do not share a disk would leave each worker's
    rows on its own machine, out of the driver's sight (every trial then looks missing).
    The probe: the driver writes a uniquely named file into ``<results>/.node-probe/``; a
    task pinned to each alive node (NodeAffinitySchedulingStrategy, no CPU, so a busy or
    CPU-less node runs it too) writes a file of its own and checks that it sees the
    driver's; the driver then checks that it sees each node's.  Probe files are removed
    (a node's own by a task on that node).  Nodes an autoscaler adds later are not probed.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    run = uuid.uuid4().hex[:12]
    driver_file = f"{run}-driver"
    uri = results_dir.uri
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe_on_node)
    drop = ray.remote(num_cpus=0, max_retries=0)(_drop_probe)

    def on(node: dict[str, Any]) -> dict[str, Any]:
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)}

    names = {n["NodeID"]: f"{run}-{n['NodeID'][:16]}" for n in nodes}
    results_dir.write_bytes(b"driver", PROBE_DIR, driver_file)
    try:
        refs = [probe.options(**on(n)).remote(uri, driver_file, names[n["NodeID"]]) for n in nodes]
        try:
            answers = ray.get(refs, timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise StudyError(
                f"results: the cluster's nodes did not answer a probe of {results_dir} within "
                f"{timeout_s:.0f}s; check that every node can start Ray workers"
            ) from None
        apart = []
        for n, (host, saw_driver, error) in zip(nodes, answers, strict=True):
            seen_by_driver = results_dir.exists(PROBE_DIR, names[n["NodeID"]])
            if not (saw_driver and seen_by_driver):
                why = error or (
                    "does not see the driver's file"
                    if not saw_driver
                    else "its file is not seen here"
                )
                apart.append(f"{n.get('NodeManagerAddress', host)} ({host}: {why})")
        ray.get([drop.options(**on(n)).remote(uri, names[n["NodeID"]]) for n in nodes],
                timeout=timeout_s)  # fmt: skip
    finally:
        _drop_probe(uri, driver_file)
    if apart:
        raise StudyError(
            f"results: {results_dir} is not the same folder on every node of the cluster: "
            f"{len(apart)} of {len(nodes)} node(s) see another one, {'; '.join(apart)}; "
            "use object storage (--results s3://BUCKET/PREFIX) or a folder every node mounts"
        )
