"""Per-example worst cases over a trial's attacks (TF-free: numpy only).

Robust accuracy under a set of attacks counts an example only if it survives
every one of them: the AND of the per-example robust masks over the examples
all of them attacked, never the minimum of the attacks' accuracies (which are
taken over subsets of different sizes and can sit above the AND).  For each
(norm, eps) at which attacks ran, :func:`worst_cases` gives one
:class:`WorstCase` that the trial stores as its own row (attack ``worst``,
kind ``worst``), with its own sample count, interval, mask and subset digest;
every reader (fronts, searches, effects, McNemar, ``grid compare``) takes
those rows.  L-inf and L2 radii are never mixed.

The common subset: the intersection of the attacked positions.  With one
attack seed these are prefixes of one seeded stratified order
(``trainables.attacks.stratified_order``), so the intersection is the
shortest prefix, in its order; in general it keeps the order of the attack
with the fewest examples.  Minimal-perturbation attacks (C&W, DeepFool,
HopSkipJump, Boundary) count at each eps they give a result for; a (norm,
eps) with a single attack gets a worst row equal to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from trainables.headline import WORST

EPS_TOL = 1e-9  # two results' eps are the same radius within this (both on the 0-1 scale)


class MaskedResult(Protocol):
    """What a worst case needs of an attack's result (``trainables.attacks.AttackResult`` has it)."""

    @property
    def attack(self) -> str: ...
    @property
    def norm(self) -> str: ...
    @property
    def eps(self) -> float: ...
    @property
    def positions(self) -> np.ndarray: ...  # (samples,) int64: positions in the test split
    @property
    def clean(self) -> np.ndarray: ...  # (samples,) bool, same order
    @property
    def robust(self) -> np.ndarray: ...  # (samples,) bool, same order


@dataclass(frozen=True, eq=False)
class WorstCase:
    """The worst case at one (norm, eps): the same fields a row takes from an attack's result."""

    norm: str  # 'inf' | '2'
    eps: float  # 0-1 input scale, in ``norm``
    attacks: tuple[str, ...]  # the attacks it is taken over, sorted
    positions: np.ndarray  # (samples,) int64: the common subset's test-split positions
    clean: np.ndarray  # (samples,) bool: correct before every attack
    robust: np.ndarray  # (samples,) bool: correct before and after every attack
    subset_hash: str  # the digest of the common subset (as the attacks' own)
    seconds: float = 0.0  # no attack of its own: its attacks' rows hold the time (sums stay honest)
    attack: str = WORST
    kind: str = WORST
    median_norm: float | None = None  # no single perturbation to measure
    steps: int | None = None
    restarts: int | None = None

    @property
    def samples(self) -> int:
        return len(self.positions)

    @property
    def clean_correct(self) -> int:
        return int(self.clean.sum())

    @property
    def robust_correct(self) -> int:
        return int(self.robust.sum())

    @property
    def clean_acc(self) -> float:
        return self.clean_correct / self.samples

    @property
    def robust_acc(self) -> float:
        return self.robust_correct / self.samples

    @property
    def robust_mask(self) -> str:
        """Hex of ``np.packbits(robust)`` (bit i, MSB first, is example i): the attacks' encoding."""
        return np.packbits(np.asarray(self.robust, bool)).tobytes().hex()


def _radii(results: Sequence[MaskedResult]) -> list[tuple[str, float]]:
    """The distinct (norm, eps) of the results, in first-seen order (eps within EPS_TOL)."""
    out: list[tuple[str, float]] = []
    for r in results:
        if not any(n == r.norm and abs(e - r.eps) <= EPS_TOL for n, e in out):
            out.append((r.norm, float(r.eps)))
    return out


def worst_cases(
    results: Sequence[MaskedResult], digest: Callable[[np.ndarray], str]
) -> list[WorstCase]:
    """One worst case per (norm, eps) of ``results`` (see the module docstring).

    ``digest`` maps test-split positions (int64, subset order) to the subset
    digest the attacks' rows carry (``trainables.attacks.subset_digest`` of the
    pool positions).  A (norm, eps) whose attacks share no example gets none.
    """
    out = []
    for norm, eps in _radii(results):
        here = [r for r in results if r.norm == norm and abs(r.eps - eps) <= EPS_TOL]
        shortest = min(here, key=lambda r: len(r.positions))  # first of the shortest on ties
        order = np.asarray(shortest.positions, np.int64)
        keep = np.ones(len(order), bool)
        for r in here:
            keep &= np.isin(order, r.positions)
        common = order[keep]
        if len(common) == 0:
            continue
        clean = np.ones(len(common), bool)
        robust = np.ones(len(common), bool)
        for r in here:
            # each result's entries for the common positions, in the common order
            where = {int(p): i for i, p in enumerate(np.asarray(r.positions).tolist())}
            idx = np.fromiter((where[int(p)] for p in common), np.int64, len(common))
            clean &= np.asarray(r.clean, bool)[idx]
            robust &= np.asarray(r.robust, bool)[idx]
        out.append(
            WorstCase(
                norm=norm,
                eps=eps,
                attacks=tuple(sorted({r.attack for r in here})),
                positions=common,
                clean=clean,
                robust=robust & clean,  # robust means correct before the attack too
                subset_hash=digest(common),
            )
        )
    return out
