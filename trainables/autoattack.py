"""The standard AutoAttack ensemble (Croce & Hein 2020) on TensorFlow parts.

As the reference's ``run_standard_evaluation`` (fra31/auto-attack,
``version='standard'``): the clean-correct examples are attacked by APGD-CE,
then APGD-T (targeted DLR, the 9 top wrong classes), FAB-T and Square (5,000
queries), each part only on the examples every earlier part failed to fool,
in batches of ``batch_size`` (250 as the reference), every part with the same
seed.  An example is robust when it is classified correctly clean and after
every part.

A part's output is clipped to the eps-ball and to [0, 1] before it is judged
(argmax of the model's logits), so a part cannot count a point outside the
threat model as a success.  FAB-T lives in ``trainables.fab`` (imported only
when the part runs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tf_keras

from trainables.apgd import apgd_ce, apgd_targeted, check_norm, predict
from trainables.square import square

STANDARD_PARTS = ("apgd-ce", "apgd-t", "fab-t", "square")

Part = Callable[[tf_keras.Model, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class AutoAttackOutcome:
    """x_adv (n, *shape); robust (n,) bool: clean-correct and survived every part;
    parts: part name -> cumulative robust mask right after that part;
    part_seconds: part name -> wall seconds spent in it."""

    x_adv: np.ndarray
    robust: np.ndarray
    parts: dict[str, np.ndarray]
    part_seconds: dict[str, float]


def clip_to_ball(x_adv: np.ndarray, x: np.ndarray, eps: float, norm: str) -> np.ndarray:
    """x_adv moved into the eps-ball around x (L-inf: clipped; L2: scaled down), then into [0, 1]."""
    d = (x_adv - x).astype(np.float32)
    if check_norm(norm) == "inf":
        d = np.clip(d, -eps, eps)
    else:
        l2 = np.sqrt((d.reshape(len(d), -1) ** 2).sum(1)).reshape((-1,) + (1,) * (d.ndim - 1))
        d = d * np.minimum(1.0, eps / np.maximum(l2, 1e-12))
    # Clipping to [0, 1] only shrinks each coordinate of d (x is in [0, 1]): still in the ball.
    return np.clip(x + d, 0.0, 1.0).astype(np.float32)


def _part(
    name: str, eps: float, norm: str, seed: int, apgd_iter: int, fab_iter: int, square_queries: int
) -> Part:
    if name == "apgd-ce":
        return lambda m, x, y: apgd_ce(m, x, y, eps=eps, norm=norm, n_iter=apgd_iter, seed=seed)
    if name == "apgd-t":
        return lambda m, x, y: apgd_targeted(
            m, x, y, eps=eps, norm=norm, n_iter=apgd_iter, seed=seed
        )
    if name == "fab-t":
        from trainables.fab import fab_targeted  # another helper's module; only needed here

        return lambda m, x, y: fab_targeted(m, x, y, eps=eps, norm=norm, n_iter=fab_iter, seed=seed)
    if name == "square":
        return lambda m, x, y: square(
            m, x, y, eps=eps, norm=norm, n_queries=square_queries, seed=seed
        )
    raise ValueError(f"unknown AutoAttack part {name!r} (known: {', '.join(STANDARD_PARTS)})")


def standard_autoattack(
    model: tf_keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    eps: float,
    norm: str,
    seed: int = 0,
    parts: Sequence[str] = STANDARD_PARTS,
    apgd_iter: int = 100,
    fab_iter: int = 100,
    square_queries: int = 5000,
    batch_size: int = 250,
) -> AutoAttackOutcome:
    """The standard AutoAttack on (x (n, *shape) in [0, 1], y (n,)); see the module docstring."""
    check_norm(norm)
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int64)
    fns = {
        name: _part(name, eps, norm, seed, apgd_iter, fab_iter, square_queries) for name in parts
    }
    robust = (
        predict(model, x).argmax(1) == y
    )  # (n,) the reference's robust_flags start as clean-correct
    x_adv = x.copy()
    masks: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for name in parts:
        t0 = time.perf_counter()
        todo = np.flatnonzero(robust)
        for start in range(0, todo.size, batch_size):
            idx = todo[start : start + batch_size]
            adv = clip_to_ball(fns[name](model, x[idx], y[idx]), x[idx], eps, norm)
            fooled = predict(model, adv).argmax(1) != y[idx]
            robust[idx[fooled]] = False
            x_adv[idx[fooled]] = adv[fooled]
        masks[name] = robust.copy()
        seconds[name] = time.perf_counter() - t0
    return AutoAttackOutcome(x_adv, robust, masks, seconds)
