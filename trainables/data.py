"""Datasets by name, split into train/test by a stratified holdout or k folds.

A dataset reaches each node once: object-storage paths are copied to the
node's cache (``$ROBUSTGRID_CACHE``, default ``~/.cache/robustgrid``) by the
first worker that needs them, under a file lock, and decoded arrays are cached
there too; each worker process then keeps the arrays in memory (an LRU
cache), so a reused Ray worker does not reload them for every trial.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold, train_test_split

from trainables.datasets import (
    DatasetError,
    Pool,
    cache_root,
    load_cifar10,
    load_speech_commands,
    load_svhn,
)

DATASETS = ("digits", "cifar10", "svhn", "speech_commands")


@dataclass(frozen=True)
class Split:
    """A train/test split; inputs are float32 in [0, 1], labels int64."""

    x_train: np.ndarray  # (N_train, H, W, C) float32, 0-1 scale
    y_train: np.ndarray  # (N_train,) int64
    x_test: np.ndarray  # (N_test, H, W, C) float32, 0-1 scale
    y_test: np.ndarray  # (N_test,) int64
    num_classes: int
    test_index: np.ndarray  # (N_test,) positions of the test examples in the dataset's pool

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])


def _digits() -> Pool:
    """scikit-learn's digits: 1,797 real 8x8 images, 16 grey levels, 10 classes."""
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]  # (1797, 8, 8, 1), 0-1 scale
    return Pool(x, bunch.target.astype(np.int64), tuple(str(i) for i in range(10)), None)


def localize(path: str) -> Path:
    """A local folder for ``path``; object storage (s3://, gs://, ...) is copied to the cache once."""
    if "://" not in path or path.startswith("file://"):
        return Path(path.removeprefix("file://")).expanduser()
    import pyarrow.fs as pafs
    from filelock import FileLock

    dest = cache_root() / "remote" / hashlib.sha256(path.encode()).hexdigest()[:16]
    if (dest / ".complete").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):  # the workers of a node copy it once between them
        if not (dest / ".complete").is_file():
            dest.mkdir(parents=True, exist_ok=True)
            try:
                pafs.copy_files(path, str(dest), destination_filesystem=pafs.LocalFileSystem())
            except (OSError, ValueError) as err:
                raise DatasetError(f"{path}: cannot copy from object storage: {err}") from None
            (dest / ".complete").touch()
    return dest


def _fingerprint(root: Path) -> str:
    """Names, sizes and modification times of every file under ``root``."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            st = path.stat()
            h.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _cached(dataset: str, root: Path, read: Callable[[], Pool]) -> Pool:
    """Decoded arrays cached on this node's disk (npz: no pickle), keyed by the source files.

    Decoding (CIFAR batches, SVHN .mat, and above all the MFCCs of every
    Speech Commands clip) then happens once per node, not once per worker.
    """
    from filelock import FileLock

    cache = cache_root() / "decoded" / f"{dataset}-{_fingerprint(root)}.npz"
    cache.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache) + ".lock"):  # one decode per node, however many workers wait
        return _decode_once(cache, read)


def _decode_once(cache: Path, read: Callable[[], Pool]) -> Pool:
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                test = z["official_test"] if z["has_official_test"] else None
                return Pool(z["x"], z["y"], tuple(str(c) for c in z["classes"]), test)
        except (OSError, ValueError, KeyError):
            cache.unlink(missing_ok=True)  # damaged: decode again
    pool = read()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.savez(f, x=pool.x, y=pool.y, classes=np.array(pool.classes),
                 official_test=pool.official_test if pool.official_test is not None else np.zeros(0, bool),
                 has_official_test=pool.official_test is not None)  # fmt: skip
    os.replace(tmp, cache)
    return pool


@functools.lru_cache(maxsize=4)
def load_pool(
    dataset: str, path: str | None = None, download: bool = False, md5: str | None = None
) -> Pool:
    """Every example of ``dataset`` (read once per process)."""
    if dataset == "digits":
        return _digits()
    readers = {"cifar10": load_cifar10, "svhn": load_svhn, "speech_commands": load_speech_commands}
    if dataset not in readers:
        raise DatasetError(f"dataset: unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
    root = localize(path) if path else cache_root() / "datasets" / dataset
    if not root.is_dir():
        if not download:
            raise DatasetError(
                f"{root}: no such folder for dataset {dataset!r}; set dataset.path, or dataset.download: true"
            )
        root.mkdir(parents=True, exist_ok=True)
    pool = _cached(dataset, root, lambda: readers[dataset](root, download, md5))
    for a in (pool.x, pool.y):
        a.setflags(write=False)  # shared by every trial in this worker
    return pool


@functools.lru_cache(maxsize=16)
def load_split(
    dataset: str,
    seed: int,
    test_fraction: float,
    folds: int = 1,
    fold: int = 0,
    path: str | None = None,
    download: bool = False,
    md5: str | None = None,
) -> Split:
    """Train/test split of ``dataset``.

    folds >= 2: fold ``fold`` of a stratified, shuffled k-fold (seeded) over
    every example, so the k test folds partition the dataset.  folds == 1:
    the official test split where the dataset has one, else a stratified
    holdout of ``test_fraction``.
    """
    pool = load_pool(dataset, path, download, md5)
    n = len(pool.y)
    if folds >= 2:
        if not 0 <= fold < folds:
            raise ValueError(f"fold: {fold} is not in 0..{folds - 1}")
        splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(
            np.zeros(n), pool.y
        )
        train_idx, test_idx = list(splits)[fold]
    elif pool.official_test is not None:
        test_idx = np.flatnonzero(pool.official_test)
        train_idx = np.flatnonzero(~pool.official_test)
    else:
        train_idx, test_idx = train_test_split(
            np.arange(n), test_size=test_fraction, random_state=seed, stratify=pool.y
        )
    classes = len(pool.classes)
    out = Split(
        pool.x[train_idx], pool.y[train_idx], pool.x[test_idx], pool.y[test_idx], classes, test_idx
    )
    for a in (out.x_train, out.y_train, out.x_test, out.y_test):
        a.setflags(write=False)
    return out
