"""The deployed model's checks (trainables/deployed.py's flags): a query route against a
transfer or BPDA route, paired per example with Newcombe's interval, and the int8-vs-Keras
agreement.  numpy only.

- ``deployed_query_above_transfer``: the 95% paired interval of p_query - p_other
  (Newcombe 1998, method 10) lies entirely above 0 at some (norm, eps);
- ``deployed_disagrees``: the Wilson upper bound of the int8-vs-Keras agreement on the
  clean subset is below AGREEMENT_MIN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from trainables.headline import EPS_TOL
from trainables.rows import wilson

if TYPE_CHECKING:
    from trainables.attacks import AttackResult
    from trainables.worst import WorstCase

FLAG_QUERY_ABOVE = "deployed_query_above_transfer"
FLAG_DISAGREES = "deployed_disagrees"
# The int8 model should predict what the QAT model predicts: below 95% agreement (at 95%
# confidence) its robustness is another model's.
AGREEMENT_MIN = 0.95


@dataclass(frozen=True)
class Comparison:
    """A query route against a transfer or BPDA route at one (norm, eps), paired."""

    query: str
    other: str
    norm: str
    eps: float
    samples: int  # examples both attacked
    diff: float  # p_query - p_other (robust accuracy), on those examples
    lo: float  # Newcombe's 95% paired interval of diff
    hi: float

    @property
    def fires(self) -> bool:
        return self.lo > 0.0


def newcombe_paired(
    a: np.ndarray, b: np.ndarray, z: float = 1.959963984540054
) -> tuple[float, float, float]:
    """(p_a - p_b, lo, hi): Newcombe's (1998) method 10 for the difference of two paired proportions.

    ``a``, ``b``: (n,) bool outcomes on the same examples.  Wilson intervals (l1, u1) of p_a
    and (l2, u2) of p_b, phi the correlation of the 2x2 table (0 where a margin is empty):
    lo = d - sqrt((p_a - l1)^2 - 2 phi (p_a - l1)(u2 - p_b) + (u2 - p_b)^2),
    hi = d + sqrt((u1 - p_a)^2 - 2 phi (u1 - p_a)(p_b - l2) + (p_b - l2)^2).
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    n = len(a)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    both, only_a = int(np.sum(a & b)), int(np.sum(a & ~b))
    only_b, neither = int(np.sum(~a & b)), int(np.sum(~a & ~b))
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = wilson(both + only_a, n, z)
    l2, u2 = wilson(both + only_b, n, z)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / np.sqrt(margins) if margins > 0 else 0.0
    d = p1 - p2
    lo = d - np.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    hi = d + np.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return float(d), float(lo), float(hi)


def _on_common(
    q: AttackResult | WorstCase, o: AttackResult | WorstCase
) -> tuple[np.ndarray, np.ndarray]:
    """Both results' robust masks on the positions both attacked, in ``q``'s order."""
    where = {int(p): i for i, p in enumerate(np.asarray(o.positions).tolist())}
    keep = [i for i, p in enumerate(np.asarray(q.positions).tolist()) if int(p) in where]
    idx = np.array([where[int(q.positions[i])] for i in keep], np.int64)
    return np.asarray(q.robust, bool)[keep], np.asarray(o.robust, bool)[idx]


def compare_routes(
    query: Sequence[AttackResult], others: Sequence[AttackResult]
) -> list[Comparison]:
    """Each query route against each transfer / BPDA route at the same (norm, eps)."""
    out = []
    for q in query:
        for o in others:
            if q.norm != o.norm or abs(q.eps - o.eps) > EPS_TOL:
                continue
            a, b = _on_common(q, o)
            if len(a) == 0:
                continue
            d, lo, hi = newcombe_paired(a, b)
            out.append(Comparison(q.attack, o.attack, q.norm, q.eps, len(a), d, lo, hi))
    return out


def deployed_flags(comparisons: Sequence[Comparison], agreed: int, n: int) -> tuple[str, ...]:
    """The flags of the module docstring, from the route comparisons and the agreement count."""
    flags = []
    if any(c.fires for c in comparisons):
        flags.append(FLAG_QUERY_ABOVE)
    if n and wilson(agreed, n)[1] < AGREEMENT_MIN:
        flags.append(FLAG_DISAGREES)
    return tuple(flags)
