"""Datasets by name.  Loaded once per worker process (an LRU cache), so a
reused Ray worker does not reload data for every trial."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


@dataclass(frozen=True)
class Split:
    """A train/test split; images are float32 in [0, 1], labels int64."""

    x_train: np.ndarray  # (N_train, H, W, C) float32, 0-1 scale
    y_train: np.ndarray  # (N_train,) int64
    x_test: np.ndarray  # (N_test, H, W, C) float32, 0-1 scale
    y_test: np.ndarray  # (N_test,) int64
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])


@functools.lru_cache(maxsize=4)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: 1,797 real 8x8 images, 16 grey levels, 10 classes."""
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]  # (1797, 8, 8, 1), 0-1 scale
    y = bunch.target.astype(np.int64)
    return x, y


@functools.lru_cache(maxsize=16)
def load_split(dataset: str, seed: int, test_fraction: float) -> Split:
    """A stratified train/test split drawn from ``seed``."""
    if dataset != "digits":
        raise ValueError(f"dataset: unknown dataset {dataset!r} (known: digits)")
    x, y = _digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    for a in (x_tr, x_te, y_tr, y_te):
        a.setflags(write=False)  # shared by every trial in this worker
    return Split(x_tr, y_tr, x_te, y_te, num_classes=int(y.max()) + 1)
