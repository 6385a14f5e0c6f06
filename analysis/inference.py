"""Small, self-contained statistics: Wilson intervals, exact McNemar, the corrected
resampled t-test of Nadeau and Bengio, and Holm's step-down correction.

Kept apart from the queries so each can be checked against a hand computation
(tests/test_statistics.py).  Independent of ``trainables.rows.wilson`` on purpose:
the analysis recomputes the intervals it shows from the counts.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import special, stats

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(k: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The 95% Wilson score interval of ``k`` successes in ``n`` trials (``z`` for other levels).

    centre = (k + z^2/2) / (n + z^2), half = z sqrt(n) / (n + z^2) * sqrt(p(1-p) + z^2/4n);
    (nan, nan) for n = 0 or missing counts.  50/100 -> (0.4038, 0.5962).
    """
    lo, hi = wilson_arrays(np.array([k], dtype=float), np.array([n], dtype=float), z)
    return float(lo[0]), float(hi[0])


def wilson_arrays(k: np.ndarray, n: np.ndarray, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise :func:`wilson` (NaN where n <= 0 or a count is missing)."""
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    ok = np.isfinite(k) & np.isfinite(n) & (n > 0)
    safe_n = np.where(ok, n, 1.0)
    p = np.where(ok, k, 0.0) / safe_n
    z2 = z * z
    centre = (p + z2 / (2 * safe_n)) / (1 + z2 / safe_n)
    half = z / (1 + z2 / safe_n) * np.sqrt(p * (1 - p) / safe_n + z2 / (4 * safe_n * safe_n))
    lo = np.where(ok, np.clip(centre - half, 0.0, 1.0), np.nan)
    hi = np.where(ok, np.clip(centre + half, 0.0, 1.0), np.nan)
    return lo, hi


class McNemar(NamedTuple):
    """Discordant pairs of two classifiers on the same examples, and the exact two-sided p-value.

    ``b``: examples robust under A but not B; ``c``: robust under B but not A.
    """

    b: int
    c: int
    p_value: float


@functools.lru_cache(
    maxsize=65536
)  # scipy's binom.cdf costs ~0.4 ms a call; reports make 10^4-10^5
def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: 2 P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), capped at 1.

    Exact at every count (the chi-square approximation is never needed); 1.0
    when there is no discordant pair.
    """
    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * stats.binom.cdf(min(b, c), n, 0.5)))


def unpack_mask(hex_mask: str, n: int) -> np.ndarray:
    """The per-example booleans of ``metric_robust_mask`` (hex of np.packbits), ``n`` of them."""
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(hex_mask), dtype=np.uint8))
    if len(bits) < n or len(bits) - n >= 8:
        raise ValueError(f"metric_robust_mask: {len(bits)} bits cannot hold {n} examples")
    return bits[:n].astype(bool)


class CorrectedT(NamedTuple):
    t: float
    p_value: float
    half_ci95: float  # half-width of the 95% interval of the mean difference
    test: str


# Zero spread: s^2 at most (ZERO_SPREAD * max(1, |mean|))^2.  Deltas of accuracies
# (counts / n) that are equal up to rounding (k1/300 - k0/300 in every fold) have
# s^2 ~ 1e-33, not 0: exact equality would give t ~ 1e14.
ZERO_SPREAD = 1e-9


def corrected_t(
    deltas: Sequence[float] | np.ndarray,
    folds: int,
    repetitions: int = 1,
    *,
    test_train: float | None = None,
) -> CorrectedT:
    """Paired differences over folds (and repetitions of the k-fold split), tested against 0.

    k-fold cross-validation (``folds`` = k >= 2), repeated ``repetitions`` = r
    times (each repetition a different partition, e.g. another seed): the
    corrected repeated k-fold t-test (Nadeau and Bengio 2003; Bouckaert and
    Frank 2004 for r > 1), t = mean / sqrt((1/J + n_test/n_train) s^2) over the
    J (repetition, fold) deltas present (J = k r when none is missing), s^2
    their sample variance, n_test/n_train = 1/(k-1) (the training sets overlap,
    so the plain 1/J underestimates the variance); J - 1 degrees of freedom.
    More than k r deltas: a ValueError (they cannot all be (repetition, fold)
    units).  Fewer than two pairs (a single holdout, ``folds`` = 1): NaN.

    Several holdouts (``folds`` = 1, one per seed): with ``test_train`` =
    n_test/n_train, each seed drew its own random split, which is Nadeau and
    Bengio's random subsampling: the same corrected t with that ratio.  Without
    it the split is fixed (an official test split: every seed tests the same
    examples): the plain paired t over the seeds (correction 0), whose p is
    conditional on that one test split (it measures the training's variation,
    not the test set's), and ``test`` says so.

    No spread (s^2 <= (1e-9 max(1, |mean|))^2, rounding included): p = 1.0 and
    t = 0 when the mean is 0 too (|mean| <= 1e-9: the reduction changed nothing;
    it stays in Holm's family), else t and p NaN (a constant nonzero difference:
    the test is undefined).
    """
    if repetitions < 1:
        raise ValueError(f"repetitions: {repetitions} must be at least 1")
    if test_train is not None and not (math.isfinite(test_train) and test_train > 0):
        raise ValueError(f"test_train: {test_train} must be a positive n_test/n_train")
    d = np.asarray(deltas, dtype=float)
    j = len(d)
    units = max(folds, 1) * repetitions
    if j > units:
        raise ValueError(
            f"corrected_t: {j} deltas, more than {repetitions} repetition(s) of a "
            f"{folds}-fold split hold ({units}): average them per (repetition, fold) first"
        )
    if j < 2:
        return CorrectedT(math.nan, math.nan, math.nan, f"none ({j} pair)")
    s2 = float(np.var(d, ddof=1))
    if folds >= 2:
        ratio = 1.0 / (folds - 1)
        test = (
            f"corrected repeated t (Bouckaert-Frank, {repetitions} x {folds}-fold)"
            if repetitions > 1
            else f"corrected t (Nadeau-Bengio, {folds}-fold)"
        )
    elif test_train is not None:
        ratio = test_train
        test = (
            f"corrected t (Nadeau-Bengio, random subsampling: {j} seeded holdouts, "
            f"n_test/n_train {test_train:.3g})"
        )
    else:
        ratio = 0.0
        test = f"{CONDITIONAL} ({j} seeds)"
    mean = float(d.mean())
    if s2 <= (ZERO_SPREAD * max(1.0, abs(mean))) ** 2:
        if abs(mean) <= ZERO_SPREAD:
            return CorrectedT(0.0, 1.0, 0.0, test)
        return CorrectedT(math.nan, math.nan, 0.0, test)
    se = math.sqrt((1.0 / j + ratio) * s2)
    half = float(_t975(j - 1) * se)
    t = mean / se
    # stats.t.sf(x, df) is special.stdtr(df, -x) behind ~0.3 ms of argument checks a call
    return CorrectedT(t, float(2.0 * special.stdtr(j - 1, -abs(t))), half, test)


@functools.lru_cache(maxsize=1024)
def _t975(df: int) -> float:
    """The t distribution's 97.5% quantile at ``df`` degrees of freedom (cached: ~0.5 ms a call)."""
    return float(stats.t.ppf(0.975, df))


# The test of seeds over one fixed test split: its p says nothing about other test sets.
CONDITIONAL = "paired t, p conditional on the fixed test split"


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error, any dependence); NaNs stay NaN.

    Sorted p_(1) <= ... <= p_(m): adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)),
    m the number of non-NaN p-values.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out
