"""Datasets by name, split into train/test by a stratified holdout or k folds.

Where a pool has groups (Speech Commands: the speaker of each clip), folds and
holdouts are grouped: no group has examples on both sides of a split.  Where a
pool holds raw features (Speech Commands' MFCCs), each split is min-max scaled
to [0, 1] with its training examples' range; test inputs are clipped into it.

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
from typing import TYPE_CHECKING

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from trainables.datasets import (
    DatasetError,
    Pool,
    cache_root,
    load_cifar10,
    load_speech_commands,
    load_svhn,
)

if TYPE_CHECKING:
    from trainables.config import TrialConfig

DATASETS = ("digits", "cifar10", "svhn", "speech_commands")
# Each dataset's input shape (H, W, C) and number of classes, known without loading it
# (a model is built for them before any trial starts): digits 8x8 grey; CIFAR-10 and SVHN
# 32x32 RGB; Speech Commands 49 frames x 10 MFCCs, 12 classes (10 words, silence, unknown).
SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "digits": ((8, 8, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "svhn": ((32, 32, 3), 10),
    "speech_commands": ((49, 10, 1), 12),
}


def dataset_shape(name: str) -> tuple[tuple[int, int, int], int]:
    """(input shape (H, W, C), classes) of a dataset, without loading it."""
    if name not in SHAPES:
        raise ValueError(f"dataset: unknown dataset {name!r} (known: {', '.join(SHAPES)})")
    return SHAPES[name]


# Version of the decoded-arrays cache layout, part of the file name: a cache of
# another layout (v1 had no groups and held Speech Commands pre-scaled over all
# clips, test clips included) is never read.
CACHE_FORMAT = 2


@dataclass(frozen=True)
class Split:
    """A train/test split; inputs are float32 in [0, 1], labels int64."""

    x_train: np.ndarray  # (N_train, H, W, C) float32, 0-1 scale
    y_train: np.ndarray  # (N_train,) int64
    x_test: np.ndarray  # (N_test, H, W, C) float32, 0-1 scale
    y_test: np.ndarray  # (N_test,) int64
    num_classes: int
    test_index: np.ndarray  # (N_test,) positions of the test examples in the dataset's pool
    train_index: np.ndarray  # (N_train,) positions of the training examples in the pool
    # (lo, hi) raw-feature range of the training examples that maps to [0, 1]
    # (x = clip((raw - lo) / (hi - lo), 0, 1)); None where the pool is already 0-1.
    feature_range: tuple[float, float] | None = None

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

    cache = cache_root() / "decoded" / f"{dataset}-v{CACHE_FORMAT}-{_fingerprint(root)}.npz"
    cache.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache) + ".lock"):  # one decode per node, however many workers wait
        return _decode_once(cache, read)


def _decode_once(cache: Path, read: Callable[[], Pool]) -> Pool:
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if int(z["format"]) != CACHE_FORMAT:
                    raise ValueError("another cache format")
                test = z["official_test"] if z["has_official_test"] else None
                groups = z["groups"] if z["has_groups"] else None
                return Pool(z["x"], z["y"], tuple(str(c) for c in z["classes"]), test,
                            groups, bool(z["needs_scaling"]))  # fmt: skip
        except (OSError, ValueError, KeyError):
            cache.unlink(missing_ok=True)  # damaged or of another layout: decode again
    pool = read()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.savez(f, format=CACHE_FORMAT, x=pool.x, y=pool.y, classes=np.array(pool.classes),
                 official_test=pool.official_test if pool.official_test is not None else np.zeros(0, bool),
                 has_official_test=pool.official_test is not None,
                 groups=pool.groups if pool.groups is not None else np.zeros(0, str),
                 has_groups=pool.groups is not None, needs_scaling=pool.needs_scaling)  # fmt: skip
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
    for a in (pool.x, pool.y, pool.official_test, pool.groups):
        if a is not None:
            a.setflags(write=False)  # shared by every trial in this worker
    return pool


def _grouped_folds(
    y: np.ndarray, groups: np.ndarray, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """StratifiedGroupKFold (shuffled, seeded): class shares as even as whole groups allow."""
    try:
        return list(
            StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(
                np.zeros(len(y)), y, groups
            )
        )
    except ValueError as err:
        raise DatasetError(f"folds: {folds} grouped folds impossible here: {err}") from None


def _split_indices(
    pool: Pool, seed: int, test_fraction: float, folds: int, fold: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions in the pool."""
    n = len(pool.y)
    if folds >= 2:
        if not 0 <= fold < folds:
            raise ValueError(f"fold: {fold} is not in 0..{folds - 1}")
        if pool.groups is not None:
            train_idx, test_idx = _grouped_folds(pool.y, pool.groups, folds, seed)[fold]
        else:  # unchanged for independent examples: the same folds for the same seed
            splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(
                np.zeros(n), pool.y
            )
            train_idx, test_idx = list(splits)[fold]
    elif pool.official_test is not None:
        test_idx = np.flatnonzero(pool.official_test)
        train_idx = np.flatnonzero(~pool.official_test)
        if pool.groups is not None:
            shared = np.intersect1d(pool.groups[test_idx], pool.groups[train_idx])
            if len(shared):
                raise DatasetError(
                    f"the official test split shares {len(shared)} group(s) (speakers) with the "
                    f"training examples, e.g. {shared[0]!r}; use folds >= 2 for grouped folds"
                )
    elif pool.groups is not None:
        # Grouped holdout: the first of round(1 / test_fraction) grouped stratified folds,
        # so the test share is about test_fraction and no group crosses.
        k = max(2, round(1 / test_fraction))
        train_idx, test_idx = _grouped_folds(pool.y, pool.groups, k, seed)[0]
    else:
        train_idx, test_idx = train_test_split(
            np.arange(n), test_size=test_fraction, random_state=seed, stratify=pool.y
        )
    if len(train_idx) == 0 or len(test_idx) == 0:
        side = "training" if len(train_idx) == 0 else "test"
        raise DatasetError(
            f"folds: fold {fold} of {folds} has no {side} examples ({n} examples"
            + (f" in {len(np.unique(pool.groups))} groups)" if pool.groups is not None else ")")
        )
    return np.asarray(train_idx), np.asarray(test_idx)


def _minmax(
    train: np.ndarray, test: np.ndarray
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Both scaled by the training examples' global min and max (float32 throughout, so the
    training extremes land exactly on 0 and 1); test values outside that range are clipped."""
    lo, hi = train.min(), train.max()
    span = np.maximum(hi - lo, np.float32(1e-6))

    def scale(a: np.ndarray) -> np.ndarray:
        return np.clip((a - lo) / span, 0.0, 1.0).astype(np.float32)

    return scale(train), scale(test), (float(lo), float(hi))


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
    every example, so the k test folds partition the dataset; grouped
    (StratifiedGroupKFold on the pool's groups, e.g. Speech Commands
    speakers) where the pool has groups.  folds == 1: the official test split
    where the dataset has one (checked group-disjoint), else a stratified
    holdout of ``test_fraction`` (grouped where the pool has groups).

    Raw features (Speech Commands' MFCCs) are min-max scaled with the
    training examples' range only; test inputs are clipped into [0, 1].
    """
    pool = load_pool(dataset, path, download, md5)
    train_idx, test_idx = _split_indices(pool, seed, test_fraction, folds, fold)
    x_train, x_test = pool.x[train_idx], pool.x[test_idx]
    feature_range = None
    if pool.needs_scaling:
        x_train, x_test, feature_range = _minmax(x_train, x_test)
    out = Split(
        x_train,
        pool.y[train_idx],
        x_test,
        pool.y[test_idx],
        len(pool.classes),
        test_idx,
        train_idx,
        feature_range,
    )
    for a in (out.x_train, out.y_train, out.x_test, out.y_test, out.test_index, out.train_index):
        a.setflags(write=False)
    return out


def trial_split(cfg: TrialConfig) -> Split:
    """The train/test split a trial trains and attacks on (its dataset, seed and fold)."""
    return load_split(
        cfg.dataset.value,
        cfg.seed,
        cfg.test_fraction,
        cfg.folds,
        cfg.fold,
        cfg.data_path,
        cfg.download,
        cfg.data_md5,
    )
