"""Gradient-masking diagnostics of one trial (Athalye et al. 2018; Carlini et al. 2019's
checklist): PGD at a large eps, the share of exactly-zero input gradients, and a
gradient-based attack (each one alone; AutoAttack's gradient parts together) that leaves
examples robust which a black-box or transfer attack (AutoAttack's Square part included)
broke.  The attacks are trainables.attacks' (ART's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tf_keras
from art.estimators.classification import TensorFlowV2Classifier

from trainables.attacks import (
    AttackResult,
    classifier,
    make_attack,
    predictions_only,
    stratified_order,
)
from trainables.config import WHITE_BOX, AttackName, AttackSpec
from trainables.rows import wilson

# PGD at an L-inf radius of 0.5 on the 0-1 scale can move every input to
# mid-grey: an honest model's accuracy there is ~0, and much more means the
# gradients lead PGD nowhere.  20 steps of 0.1 (step_ratio 0.2) and one
# random start: enough to cross the whole ball twice, cheap (<= 200 examples).
MASKING_PGD_EPS = 0.5
MASKING_PGD_STEPS = 20
MASKING_PGD_STEP_RATIO = 0.2
MASKING_PGD_RESTARTS = 1
MASKING_SAMPLES = 200  # examples of the masking checks (a prefix of the first white-box subset)
# `pgd_large_eps` fires when the 95% Wilson lower bound of that accuracy is
# above 2%: the true accuracy is then above 2% at 95% confidence, at any sample
# size (the count it takes: 8 or more robust examples of n=200, 5 of n=100,
# 3 of n=50, 2 of n=10; trainables.rows.wilson, checked in tests/test_masking.py).
MASKING_PGD_ACC_FLOOR = 0.02
# `zero_gradients` fires when more than 5% of the examples have an input
# gradient of the loss that is exactly zero everywhere: an honest float or
# quantized-aware model has none (a ReLU net needs every path dead), so 5%
# leaves room for a few saturated examples while a rounding input layer
# (zero gradient almost everywhere) trips it.
ZERO_GRAD_MAX_SHARE = 0.05
# `white_above_black` / `white_above_transfer` fire when, at the same eps and
# norm, on the examples both attacked, ONE gradient-based attack (each on its
# own: FGSM, PGD, C&W, DeepFool, and AutoAttack's gradient parts APGD-CE,
# APGD-T, FAB-T together) leaves robust more than max(2, 2% of them) examples
# that one black-box (resp. transfer) attack broke: a gradient attack that
# knows everything should not lose to one that knows less; a couple of
# examples is attack noise (different local optima).  Each pair is compared
# separately: ANDing every white-box attack first would let AutoAttack's own
# Square part (or any other attack) hide a masked gradient attack, so the flag
# could never fire where AutoAttack runs.  For the black-box side, AutoAttack's
# Square part counts as a black-box attack of its own: its kills are the
# examples that survived every gradient part and Square then broke.
WHITE_ABOVE_MIN_EXAMPLES = 2
WHITE_ABOVE_SHARE = 0.02
# AutoAttack's parts (AttackResult.parts): the gradient ones, in the order they run, and Square.
AUTOATTACK_GRADIENT_PARTS = ("apgd-ce", "apgd-t", "fab-t")
AUTOATTACK_BLACK_PARTS = ("square",)


@dataclass(frozen=True)
class MaskingReport:
    """A trial's gradient-masking diagnostics (the same on each of its rows)."""

    pgd_eps: float  # L-inf radius of the large-eps PGD
    pgd_acc: float  # robust accuracy under it (~0 for an honest model)
    samples: int  # examples of the checks
    zero_grad_share: float  # examples whose loss gradient w.r.t. the input is exactly zero
    flags: tuple[str, ...]  # names of the checks that fired

    @property
    def flags_text(self) -> str:
        return ",".join(self.flags)


def masking_subset(y: np.ndarray, attacks: Sequence[AttackSpec]) -> tuple[np.ndarray, int]:
    """Positions the masking checks run on, and their seed: a prefix (<= MASKING_SAMPLES) of
    the first white-box attack's subset, else of the first attack's ordering (seed 0 without
    attacks)."""
    whites = [a for a in attacks if a.name in WHITE_BOX]
    first = whites[0] if whites else (attacks[0] if attacks else None)
    seed = first.seed if first is not None else 0
    n = len(y) if first is None or first.samples is None else min(first.samples, len(y))
    return stratified_order(y, seed)[: min(n, MASKING_SAMPLES)], seed


def zero_gradient_share(clf: TensorFlowV2Classifier, x: np.ndarray, labels: np.ndarray) -> float:
    """Share of examples whose loss gradient w.r.t. the input is exactly zero everywhere."""
    if len(x) == 0:
        return float("nan")
    onehot = np.eye(clf.nb_classes, dtype=np.float32)[labels]
    grad = np.asarray(clf.loss_gradient(x.astype(np.float32), onehot))
    return float(np.mean(np.all(grad.reshape(len(x), -1) == 0.0, axis=1)))


def _gradient_mask(r: AttackResult) -> np.ndarray | None:
    """A white-box result's robust mask under its gradient-based attack alone.

    AutoAttack with parts: the cumulative mask after its last gradient part
    (FAB-T, else the last APGD present), so its Square part is left out; an
    ensemble without its parts recorded: its whole mask.  None: no gradient part ran.
    """
    if not r.parts:
        return np.asarray(r.robust, bool)
    grad = [p for p in AUTOATTACK_GRADIENT_PARTS if p in r.parts]
    return np.asarray(r.parts[grad[-1]], bool) & r.clean if grad else None


def _breaks(
    results: Sequence[AttackResult], other_kind: str
) -> list[tuple[AttackResult, np.ndarray]]:
    """Each ``other_kind`` attack with its per-example 'broke it' mask (clean-correct, not robust).

    ``black``: AutoAttack's Square part counts too: the examples that survived every gradient
    part before it and that Square broke."""
    out = [(r, r.clean & ~r.robust) for r in results if r.kind == other_kind]
    if other_kind == "black":
        for r in results:
            before = _gradient_mask(r) if r.parts else None
            for part in AUTOATTACK_BLACK_PARTS:
                if part in r.parts and before is not None:
                    out.append((r, before & ~np.asarray(r.parts[part], bool)))
    return out


def _white_above(results: Sequence[AttackResult], other_kind: str) -> bool:
    """True when, at some (norm, eps), one gradient-based attack leaves robust more than
    max(WHITE_ABOVE_MIN_EXAMPLES, WHITE_ABOVE_SHARE x common) examples one ``other_kind``
    attack broke (each white-box attack against each other one, on the examples both attacked)."""
    whites = [(r, m) for r in results if r.kind == "white" and (m := _gradient_mask(r)) is not None]
    for other, broke in _breaks(results, other_kind):
        broken = dict(zip(other.positions.tolist(), broke.tolist(), strict=True))
        for w, robust in whites:
            if w.norm != other.norm or abs(w.eps - other.eps) > 1e-9:
                continue
            # per test-split position both attacked: robust under w, broken by the other
            common = [(p, ok) for p, ok in zip(w.positions.tolist(), robust.tolist(), strict=True)
                      if p in broken]  # fmt: skip
            count = sum(1 for p, ok in common if ok and broken[p])
            if count > max(WHITE_ABOVE_MIN_EXAMPLES, WHITE_ABOVE_SHARE * len(common)):
                return True
    return False


def masking_diagnostics(
    model: tf_keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    attacks: Sequence[AttackSpec],
    results: Sequence[AttackResult],
    batch_size: int = 256,
) -> MaskingReport:
    """Gradient-masking checks of one trial (thresholds: the module's MASKING_* / *_SHARE constants).

    Flags: ``pgd_large_eps`` (ART PGD at MASKING_PGD_EPS leaves the Wilson lower bound of the
    accuracy above MASKING_PGD_ACC_FLOOR), ``zero_gradients`` (more than ZERO_GRAD_MAX_SHARE of
    the examples have an all-zero input gradient), ``white_above_black`` /
    ``white_above_transfer`` (see :func:`_white_above`).
    """
    shape = tuple(x.shape[1:])
    white = classifier(model, num_classes, shape)
    black = predictions_only(model, num_classes, shape)
    positions, seed = masking_subset(y, attacks)
    xs, ys = x[positions], y[positions]
    clean_ok = np.argmax(black.predict(xs), axis=1) == ys
    spec = AttackSpec(
        name=AttackName.pgd,
        eps=(MASKING_PGD_EPS,),
        steps=MASKING_PGD_STEPS,
        step_ratio=MASKING_PGD_STEP_RATIO,
        restarts=MASKING_PGD_RESTARTS,
    )
    np.random.seed(seed)  # ART's random start draws from numpy's global generator
    onehot = np.eye(num_classes, dtype=np.float32)[ys]
    x_adv = make_attack(spec, white, MASKING_PGD_EPS, batch_size).generate(x=xs, y=onehot)
    robust = clean_ok & (np.argmax(black.predict(x_adv.astype(np.float32)), axis=1) == ys)
    n = len(positions)
    zero_share = zero_gradient_share(white, xs, ys)
    flags = []
    if n and wilson(int(robust.sum()), n)[0] > MASKING_PGD_ACC_FLOOR:
        flags.append("pgd_large_eps")
    if n and zero_share > ZERO_GRAD_MAX_SHARE:
        flags.append("zero_gradients")
    if _white_above(results, "black"):
        flags.append("white_above_black")
    if _white_above(results, "transfer"):
        flags.append("white_above_transfer")
    return MaskingReport(
        pgd_eps=MASKING_PGD_EPS,
        pgd_acc=float(robust.mean()) if n else float("nan"),
        samples=n,
        zero_grad_share=zero_share,
        flags=tuple(flags),
    )
