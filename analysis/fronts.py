"""Pareto fronts and hypervolumes of arrays of objective values (no results, no SQL).

``nondominated``: two objectives one sort, three a sweep (both O(n log n)), more a blocked
pairwise check; ``hypervolume``: exact in any dimension.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _as_minimization(
    values: np.ndarray | Sequence[Sequence[float]], maximize: Sequence[bool]
) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(values, dtype=np.float64).reshape(-1, len(maximize))
    sign = np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)
    return v * sign, sign


def nondominated(
    values: np.ndarray | Sequence[Sequence[float]], maximize: Sequence[bool]
) -> np.ndarray:
    """Boolean mask of the points no other point dominates (ties: both stay)."""
    v, _ = _as_minimization(values, maximize)
    if v.shape[1] == 2 and len(v) and not np.isnan(v).any():
        return _nondominated_2d(v)
    if v.shape[1] == 3 and len(v):
        return _nondominated_3d(v)
    return _nondominated_pairwise(v)


def _nondominated_pairwise(v: np.ndarray) -> np.ndarray:
    """:func:`nondominated` of minimised objectives by comparing every pair (O(n^2 d)): any d."""
    keep = np.ones(len(v), dtype=bool)
    for start in range(0, len(v), 512):  # blocks: memory 512 x n x d, not n x n x d
        block = v[start : start + 512]
        le = (v[:, None, :] <= block[None, :, :]).all(axis=2)  # le[j, i]: j no worse than i
        lt = (v[:, None, :] < block[None, :, :]).any(axis=2)
        keep[start : start + 512] = ~(le & lt).any(axis=0)
    return keep


def _nondominated_2d(v: np.ndarray) -> np.ndarray:
    """:func:`nondominated` of two minimised objectives in O(n log n): one sort, a running minimum.

    With the points sorted by x, then y: a point is dominated exactly when a point of smaller x
    has y no greater, or a point of the same x has a smaller y (equal points both stay).
    """
    order = np.lexsort((v[:, 1], v[:, 0]))
    x, y = v[order, 0], v[order, 1]
    first = np.ones(len(v), dtype=bool)
    first[1:] = x[1:] != x[:-1]  # the first (smallest y) point of each distinct x
    group = np.cumsum(first) - 1
    least = y[first]  # each x's smallest y
    before = np.minimum.accumulate(least)  # smallest y at this x or any smaller one
    earlier = np.concatenate(([np.nan], before[:-1]))[group]  # at a strictly smaller x
    dominated = ((group > 0) & (earlier <= y)) | (least[group] < y)
    keep = np.empty(len(v), dtype=bool)
    keep[order] = ~dominated
    return keep


def _nondominated_3d(v: np.ndarray) -> np.ndarray:
    """:func:`nondominated` of three minimised objectives in O(n log n): a sweep in
    lexicographic order with a Fenwick tree over the ranks of y holding the smallest z.

    Equal points never dominate each other, so the sweep runs over the distinct points: in
    lexicographic (x, y, z) order every point that is <= p in all three objectives and not p
    itself comes before p, so p is dominated exactly when an earlier point has y <= p's y and
    z <= p's z (the tree's prefix minimum over y's rank).  A point with a NaN is never
    dominated and dominates nothing (its comparisons are false), as in the pairwise check.
    """
    keep = np.ones(len(v), dtype=bool)
    finite = ~np.isnan(v).any(axis=1)
    pts, back = np.unique(v[finite], axis=0, return_inverse=True)  # sorted lexicographically
    ys = np.unique(pts[:, 1])
    rank = (np.searchsorted(ys, pts[:, 1]) + 1).tolist()  # 1-based, for the tree
    zs = pts[:, 2].tolist()
    m = len(ys)
    tree = [math.inf] * (m + 1)  # tree[i]: min z over a range of ranks ending at i
    dominated = np.zeros(len(pts), dtype=bool)
    for i, (r, z) in enumerate(zip(rank, zs, strict=True)):
        best, j = math.inf, r
        while j > 0:  # min z over ranks 1..r
            best = min(best, tree[j])
            j -= j & -j
        if best <= z:
            dominated[i] = True
            continue  # whatever it dominates, its dominator dominates too
        j = r
        while j <= m:
            if z < tree[j]:
                tree[j] = z
            j += j & -j
    keep[np.flatnonzero(finite)] = ~dominated[back.reshape(-1)]
    return keep


def _hv_min(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume of minimisation points, all strictly below ``ref`` (slicing, n^(d-1))."""
    n, d = points.shape
    if n == 0:
        return 0.0
    if d == 1:
        return float(ref[0] - points[:, 0].min())
    order = np.argsort(points[:, -1], kind="stable")
    p = points[order]
    edges = np.append(p[:, -1], ref[-1])
    if d == 2:
        best = np.minimum.accumulate(p[:, 0])  # the front's x up to each y slice
        return float(np.sum((edges[1:] - edges[:-1]) * (ref[0] - best)))
    total = 0.0
    for i in range(n):
        height = edges[i + 1] - edges[i]
        if height > 0:
            total += height * _hv_min(p[: i + 1, :-1], ref[:-1])
    return total


def hypervolume(
    values: np.ndarray | Sequence[Sequence[float]],
    maximize: Sequence[bool],
    hv_ref_point: Sequence[float],
) -> float:
    """Volume dominated by ``values`` and bounded by ``hv_ref_point``, in the objectives' units.

    ``maximize[i]`` gives objective i's direction; points not strictly better
    than ``hv_ref_point`` in every objective add nothing.  Exact in any
    dimension (2 objectives: one sort).
    """
    v, sign = _as_minimization(values, maximize)
    ref = np.asarray(hv_ref_point, dtype=np.float64) * sign
    if ref.shape != (len(maximize),):
        raise ValueError(
            f"hv_ref_point: {list(hv_ref_point)} needs one value per objective ({len(maximize)})"
        )
    inside = v[(v < ref).all(axis=1)]
    if len(inside) == 0:
        return 0.0
    front = inside[nondominated(inside, [False] * len(maximize))]
    return _hv_min(np.unique(front, axis=0), ref)
