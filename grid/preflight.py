"""Checks before anything runs: each fails in seconds with a :class:`StudyError` naming the field.

A results folder that cannot be written or that another driver is using, a
dataset that is not there, a custom model that cannot be built: each would
otherwise fail every trial, after Ray started and the cluster scaled up.
"""

from __future__ import annotations

import uuid

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
