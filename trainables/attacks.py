"""Adversarial evaluation with ART (no hand-written attacks).

White-box attacks get the model's gradients through ART's
TensorFlowV2Classifier; black-box attacks reach the model only through
ART's BlackBoxClassifier (a predict function returning numpy logits: raw
scores, so a score-based attack's margin does not saturate the way softmax
probabilities do at 1.0); transfer attacks are crafted on a float surrogate
and applied to the model.

The model is attacked in inference mode (``training=False``): QKeras'
stochastic quantizers are deterministic there, so gradients are not random.
Robust accuracy counts an example only if it is classified correctly both
clean and under attack (RobustBench's convention), so it never exceeds the
clean accuracy of the attacked examples.  Budget attacks (FGSM, PGD,
AutoAttack, Square, transfer) run once per eps; minimal-perturbation attacks
(C&W, DeepFool, HopSkipJump, Boundary) run once, and an example is robust at
eps when the attack fails or needs a perturbation larger than eps.

Attacked examples: a seeded, stratified ordering of the test split
(:func:`stratified_order`) whose every prefix keeps the split's class shares;
an attack of ``samples`` n with seed s attacks that ordering's first n.  So
every trial of a study (same data seed and fold, hence the same test split)
attacks the same examples, and attacks with the same seed attack nested
subsets: per-example outcomes pair across configs and across attacks.

Gradient masking: :mod:`trainables.masking` (its checks attack with this module).

``autoattack`` is the standard AutoAttack, run by :mod:`trainables.autoattack`
(compiled TensorFlow parts, checked against the reference implementation);
the other attacks are ART's.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras
from art.attacks.evasion import (
    AutoAttack,
    AutoProjectedGradientDescent,
    BoundaryAttack,
    CarliniL2Method,
    CarliniLInfMethod,
    DeepFool,
    FastGradientMethod,
    HopSkipJump,
    ProjectedGradientDescent,
    SquareAttack,
)
from art.estimators.classification import TensorFlowV2Classifier
from art.estimators.classification.blackbox import BlackBoxClassifierNeuralNetwork

from trainables.compiled import CompiledClassifier
from trainables.config import MINIMAL, AdvTraining, AttackName, AttackSpec

logging.getLogger("art").setLevel(logging.WARNING)

A = AttackName
_CLASSES: dict[AttackName, type] = {
    A.fgsm: FastGradientMethod, A.pgd: ProjectedGradientDescent, A.cw_l2: CarliniL2Method,
    A.cw_linf: CarliniLInfMethod, A.deepfool: DeepFool, A.square: SquareAttack, A.hopskipjump: HopSkipJump,
    A.boundary: BoundaryAttack, A.transfer_fgsm: FastGradientMethod, A.transfer_pgd: ProjectedGradientDescent,
    A.autoattack_art: AutoAttack,
}  # fmt: skip

# ``autoattack`` is the standard AutoAttack (Croce & Hein 2020; fra31/auto-attack,
# version='standard', what RobustBench reports): APGD-CE, APGD-T (targeted DLR
# against the 9 highest-scoring wrong classes), FAB-T and Square, each on the
# survivors of the previous ones, run by trainables/autoattack.py as compiled
# TensorFlow and checked against the reference implementation itself
# (tests/test_autoattack_reference.py).  Its budget: 100 APGD and FAB
# iterations, 5,000 Square queries (``max_iter`` scales both: Square gets 50
# queries per APGD iteration), one restart.
#
# ``autoattack_art`` is the ensemble robustgrid ran up to results revision 2:
# ART's AutoAttack given ART's untargeted parts (APGD-CE, APGD-DLR, Square with
# p_init 0.8, one restart).  Weaker than the standard version (no targeted
# parts, no FAB; ART's APGD returns its last iterate, not its best), and slower
# (ART's APGD runs its own eager classifier and a per-sample DLR loop): kept
# under its own name for comparison, never reported as AutoAttack.
AUTOATTACK_APGD_ITER = 100
AUTOATTACK_SQUARE_QUERIES_PER_ITER = 50
AUTOATTACK_STEP = 2.0  # APGD's first step, x eps (the paper's eta_0 = 2 eps)
# The standard AutoAttack's options (it is not an ART class): Square's query budget.
AUTOATTACK_OPTIONS = frozenset({"square_queries"})

# Budgets a study gets when it names an attack without ``max_iter`` / options: each
# attack's own published budget (cheap settings belong to smoke studies, which say so).
# C&W: Carlini & Wagner's reference code (nn_robust_attacks: l2_attack.py 10,000
# iterations and 9 binary search steps, li_attack.py 1,000 iterations).  DeepFool:
# the reference (LTS4) 50 iterations, overshoot 0.02.  Square: 5,000 queries and
# p_init 0.8, standard AutoAttack's Square.  HopSkipJump: the reference (HSJA) 40
# iterations, at most 10,000 and first 100 gradient-estimation queries.  Boundary:
# 5,000 steps (ART's default; Brendel et al. run to convergence).
CW_L2_ITER, CW_L2_BINARY_STEPS = 10_000, 9
CW_LINF_ITER = 1_000
DEEPFOOL_ITER, DEEPFOOL_OVERSHOOT = 50, 0.02
SQUARE_QUERIES, SQUARE_P_INIT = 5_000, 0.8
HSJ_ITER, HSJ_MAX_EVAL, HSJ_INIT_EVAL = 40, 10_000, 100
BOUNDARY_ITER = 5_000


def art_class(name: AttackName) -> Any:
    return _CLASSES[name]


def attack_options(name: AttackName) -> tuple[str, frozenset[str]]:
    """(what the options go to, the option names it knows): an ART class's ``attack_params``,
    or the standard AutoAttack's own."""
    if name is A.autoattack:
        return "the standard AutoAttack", AUTOATTACK_OPTIONS
    cls: Any = _CLASSES[name]
    return f"ART's {cls.__name__}", frozenset(cls.attack_params)


def square_p_init(p_init: float, shape: tuple[int, ...], norm: str) -> float:
    """Square's first tile share, shrunk so that its tile fits the input.

    ART draws the first L-inf tile with side round(sqrt(p_init x h x w)) and its
    position with ``randint(0, side_of_input - tile)`` on both axes, as if h == w:
    on a 49 x 10 MFCC input p_init 0.8 gives a 20-wide tile and ART raises
    (``high <= 0``).  The tile may be at most min(h, w) - 1 wide (odd, >= 3 for L2);
    p_init is cut to the largest share that gives such a tile, and kept otherwise
    (8 x 8 digits: 0.8 -> a 7-wide tile, unchanged)."""
    h, w = shape[0], shape[1] if len(shape) > 2 else 1
    side = min(h, w) - 1
    if norm == "2" and side % 2 == 0:
        side -= 1  # ART's L2 tiles are odd
    tile = max(round(math.sqrt(p_init * h * w)), 3 if norm == "2" else 1)
    if norm == "2" and tile % 2 == 0:
        tile += 1
    if tile <= side or side < 1:
        return p_init
    return (side * side) / (h * w)


@dataclass(frozen=True, eq=False)
class AttackResult:
    attack: str
    kind: str  # white | black | transfer
    norm: str  # inf | 2
    eps: float  # radius on the input's 0-1 scale, in ``norm``
    samples: int
    clean_acc: float  # accuracy of the attacked examples before the attack
    robust_acc: float  # correct before *and* after the attack, over ``samples``
    median_norm: float | None  # median perturbation of the successful adversarial examples
    seconds: float
    # Per attacked example, in subset order (the stratified ordering's first ``samples``):
    positions: np.ndarray  # (samples,) int64: positions in the test split
    clean: np.ndarray  # (samples,) bool: correct before the attack
    robust: np.ndarray  # (samples,) bool: correct before and after
    subset_hash: str  # subset_digest of the attacked examples' positions in the dataset pool
    steps: int | None = None  # PGD / APGD iterations as run
    restarts: int | None = None  # PGD / APGD random starts as run
    # An ensemble's parts (AutoAttack: 'apgd-ce', 'apgd-t', 'fab-t', 'square'): part name ->
    # (samples,) bool cumulative robust mask right after that part, same order as positions.
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    # (samples, *input) float32 adversarial inputs as the attack returned them (one array for
    # every eps of a minimal-perturbation attack); only with evaluate_attacks(keep_adv=True):
    # the deployed model's transfer route scores them on the int8 interpreter (trainables.deployed)
    x_adv: np.ndarray | None = None

    @property
    def clean_correct(self) -> int:
        return int(self.clean.sum())

    @property
    def robust_correct(self) -> int:
        return int(self.robust.sum())

    @property
    def robust_mask(self) -> str:
        """Hex of ``np.packbits(robust)``: bit i (MSB first) is attacked example i."""
        return robust_mask_hex(self.robust)


def robust_mask_hex(robust: np.ndarray) -> str:
    return np.packbits(np.asarray(robust, bool)).tobytes().hex()


def subset_digest(pool_positions: np.ndarray) -> str:
    """16 hex digits of SHA-256 over the positions (int64 little-endian) in subset order."""
    return hashlib.sha256(np.asarray(pool_positions, dtype="<i8").tobytes()).hexdigest()[:16]


def stratified_order(y: np.ndarray, seed: int) -> np.ndarray:
    """A seeded ordering of ``range(len(y))`` whose every prefix is stratified.

    For every prefix length n and class c, the prefix holds within one (strictly)
    of n * share_c examples of c, share_c being c's share of ``y``.  Each class's
    members come in a seeded random order; the classes interleave by earliest
    deadline first (the (k+1)-th example of c is due by prefix (k+1)/share_c, and
    may be placed once k < n * share_c): Pfair scheduling on one processor,
    which keeps every class's lag in (-1, 1).  Same ``y`` and ``seed``, same order.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    members = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    priority = rng.permutation(len(classes))  # seeded tie-break between equal deadlines
    total = len(y)
    taken = np.zeros(len(classes), np.int64)
    order = np.empty(total, np.int64)
    for n in range(1, total + 1):
        eligible = taken * total < n * counts  # one more keeps count_c - n * share_c < 1
        deadline = np.where(eligible, (taken + 1) / counts, np.inf)
        c = int(np.lexsort((priority, deadline))[0])
        order[n - 1] = members[c][taken[c]]
        taken[c] += 1
    return order


def classifier(
    model: tf_keras.Model, num_classes: int, input_shape: tuple[int, ...]
) -> TensorFlowV2Classifier:
    """White-box ART wrapper on the logits model; inputs live in [0, 1].

    ART's TensorFlowV2Classifier with its gradients traced into ``tf.function``
    (``trainables.compiled``): the same gradients, at graph speed."""
    return CompiledClassifier(
        model=model,
        nb_classes=num_classes,
        input_shape=input_shape,
        loss_object=tf_keras.losses.CategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0),
    )


def predictions_only(
    model: tf_keras.Model, num_classes: int, input_shape: tuple[int, ...], batch: int = 512
) -> BlackBoxClassifierNeuralNetwork:
    """Black-box ART wrapper: the attack sees the logits as numpy, never a tensor or a gradient.

    Logits, not softmax probabilities: Square's loss is the margin between the
    true class's score and the best other one, and a confident model's softmax
    rounds to exactly 1.0 and 0.0 in float32, where that margin stops moving.
    (ART's neural-network flavour of the black-box wrapper, which Square requires;
    it has no gradient methods either.)"""

    # One graph for the forward pass: score-based attacks query it once per iteration, and
    # an eager call of a small QKeras model costs 5-8x the traced one (same outputs).
    forward = tf.function(
        lambda t: model(t, training=False),
        input_signature=[tf.TensorSpec([None, *input_shape], tf.float32)],
    )

    def predict(x: np.ndarray) -> np.ndarray:
        out = [
            forward(tf.constant(x[i : i + batch], tf.float32)).numpy()
            for i in range(0, len(x), batch)
        ]
        return np.concatenate(out) if out else np.zeros((0, num_classes), np.float32)

    return BlackBoxClassifierNeuralNetwork(
        predict, input_shape, num_classes, channels_first=False, clip_values=(0.0, 1.0)
    )


def _norm_arg(norm: str) -> float | int:
    return np.inf if norm == "inf" else 2


def autoattack_iterations(spec: AttackSpec) -> int:
    return spec.max_iter or AUTOATTACK_APGD_ITER


def make_attack(spec: AttackSpec, estimator: Any, eps: float | None, batch_size: int = 256) -> Any:
    """The ART attack for ``spec`` (at ``eps`` for budget attacks)."""
    n, it, norm = spec.name, spec.max_iter, spec.norm_value
    kw: dict[str, Any]
    if n in (A.fgsm, A.transfer_fgsm):
        kw = {"norm": np.inf, "eps": eps, "batch_size": batch_size}
    elif n in (A.pgd, A.transfer_pgd):
        # ART's TF2 PGD with num_random_init r >= 1 starts every run at a random
        # point and keeps, per example, a later run's result when it succeeds
        # (prediction changed): an example survives only if it survives all r.
        kw = {
            "norm": np.inf,
            "eps": eps,
            "eps_step": spec.step_ratio * float(eps or 0),
            "max_iter": spec.steps,
            "num_random_init": spec.restarts,
            "batch_size": batch_size,
            "verbose": False,
        }
    elif n is A.autoattack:  # pragma: no cover - evaluate_attacks runs it (trainables.autoattack)
        raise ValueError("attacks.name: autoattack is not an ART attack; evaluate_attacks runs it")
    elif n is A.autoattack_art:
        e, p = float(eps or 0), _norm_arg(norm)
        apgd_iter = autoattack_iterations(spec)
        parts: list[Any] = [
            AutoProjectedGradientDescent(
                estimator, norm=p, eps=e, eps_step=AUTOATTACK_STEP * e, max_iter=apgd_iter,
                targeted=False, nb_random_init=max(1, spec.restarts), batch_size=batch_size,
                loss_type=loss, verbose=False,
            )
            for loss in ("cross_entropy", "difference_logits_ratio")
        ]  # fmt: skip
        parts.append(
            SquareAttack(
                estimator, norm=p, eps=e, p_init=square_p_init(0.8, estimator.input_shape, norm),
                nb_restarts=1, batch_size=batch_size,
                max_iter=AUTOATTACK_SQUARE_QUERIES_PER_ITER * apgd_iter, verbose=False,
            )
        )  # fmt: skip
        kw = {
            "norm": p,
            "eps": e,
            "eps_step": AUTOATTACK_STEP * e,
            "attacks": parts,
            "batch_size": batch_size,
            "targeted": False,
        }
    elif n is A.cw_l2:
        kw = {
            "max_iter": it or CW_L2_ITER,
            "binary_search_steps": CW_L2_BINARY_STEPS,
            "batch_size": batch_size,
            "verbose": False,
        }
    elif n is A.cw_linf:
        kw = {"max_iter": it or CW_LINF_ITER, "batch_size": batch_size, "verbose": False}
    elif n is A.deepfool:
        kw = {
            "max_iter": it or DEEPFOOL_ITER,
            "epsilon": DEEPFOOL_OVERSHOOT,
            "batch_size": batch_size,
            "verbose": False,
        }
    elif n is A.square:
        p_init = float(spec.options.get("p_init", SQUARE_P_INIT))
        kw = {
            "norm": _norm_arg(norm),
            "eps": eps,
            "max_iter": it or SQUARE_QUERIES,
            "batch_size": batch_size,
            "verbose": False,
        }
        kw.update(spec.options)
        kw["p_init"] = square_p_init(p_init, estimator.input_shape, norm)
        return _CLASSES[n](estimator, **kw)
    elif n is A.hopskipjump:
        kw = {
            "norm": _norm_arg(norm),
            "max_iter": it or HSJ_ITER,
            "max_eval": HSJ_MAX_EVAL,
            "init_eval": HSJ_INIT_EVAL,
            "batch_size": batch_size,
            "targeted": False,
            "verbose": False,
        }
    elif n is A.boundary:
        kw = {
            "max_iter": it or BOUNDARY_ITER,
            "targeted": False,
            "batch_size": batch_size,
            "verbose": False,
        }
    else:  # pragma: no cover - the enum is exhaustive
        raise ValueError(f"attacks.name: unknown attack {n!r}")
    kw.update(spec.options)
    return _CLASSES[n](estimator, **kw)


def _perturbation(x: np.ndarray, x_adv: np.ndarray, norm: str) -> np.ndarray:
    d = (x_adv - x).reshape(len(x), -1)
    return np.abs(d).max(axis=1) if norm == "inf" else np.linalg.norm(d, axis=1)


def adversarial_examples(
    model: tf_keras.Model, num_classes: int, input_shape: tuple[int, ...], adv: AdvTraining
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """ART's FGSM or PGD against ``model`` as it trains: (x, labels) -> adversarial x."""
    clf = classifier(model, num_classes, input_shape)
    spec = AttackSpec(name=AttackName(adv.method.value), eps=(adv.eps,), steps=adv.steps)
    attack = make_attack(spec, clf, adv.eps)
    eye = np.eye(num_classes, dtype=np.float32)
    return lambda x, y: attack.generate(x=x, y=eye[y]).astype(np.float32)


def run_autoattack(
    model: tf_keras.Model, spec: AttackSpec, x: np.ndarray, y: np.ndarray, eps: float
) -> Any:
    """The standard AutoAttack at ``eps`` with the spec's budget (trainables.autoattack)."""
    from trainables.autoattack import standard_autoattack  # TF graphs built only when used

    iterations = autoattack_iterations(spec)
    queries = int(
        spec.options.get("square_queries", AUTOATTACK_SQUARE_QUERIES_PER_ITER * iterations)
    )
    return standard_autoattack(
        model, x, y, eps=eps, norm=spec.norm_value, seed=spec.seed,
        apgd_iter=iterations, fab_iter=iterations, square_queries=queries,
    )  # fmt: skip


def _steps_restarts(spec: AttackSpec) -> tuple[int | None, int | None]:
    if spec.name in (A.pgd, A.transfer_pgd):
        return spec.steps, spec.restarts
    if spec.name is A.autoattack:
        return autoattack_iterations(spec), 1
    if spec.name is A.autoattack_art:
        return autoattack_iterations(spec), max(1, spec.restarts)
    return None, None


def evaluate_attacks(
    model: tf_keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    attacks: tuple[AttackSpec, ...],
    surrogate: tf_keras.Model | None = None,
    batch_size: int = 256,
    test_index: np.ndarray | None = None,
    keep_adv: bool = False,
) -> list[AttackResult]:
    """One result per (attack, eps), on the first ``spec.samples`` of ``stratified_order(y, spec.seed)``.

    ``test_index``: the examples' positions in the dataset pool (``Split.test_index``), for
    each result's ``subset_hash``; default: their positions in ``x``.  ``keep_adv``: each
    result carries its adversarial inputs (``AttackResult.x_adv``).
    """
    shape = tuple(x.shape[1:])
    pool_index = np.arange(len(x)) if test_index is None else np.asarray(test_index)
    white = classifier(model, num_classes, shape)
    black = predictions_only(model, num_classes, shape)
    source = classifier(surrogate, num_classes, shape) if surrogate is not None else None
    eye = np.eye(num_classes, dtype=np.float32)
    orders: dict[int, np.ndarray] = {}
    results = []
    for spec in attacks:
        n = len(x) if spec.samples is None else min(spec.samples, len(x))
        if spec.seed not in orders:
            orders[spec.seed] = stratified_order(y, spec.seed)
        positions = orders[spec.seed][:n]
        xs, ys = x[positions], y[positions]
        digest = subset_digest(pool_index[positions])
        estimator = {"white": white, "black": black, "transfer": source}[spec.kind]
        if estimator is None:
            raise ValueError(f"attacks.name: {spec.name.value} needs a surrogate model")
        clean_ok = np.argmax(black.predict(xs), axis=1) == ys
        norm = spec.norm_value
        steps, restarts = _steps_restarts(spec)
        runs: list[tuple[float | None, list[float]]] = (
            [(None, list(spec.eps))] if spec.name in MINIMAL else [(e, [e]) for e in spec.eps]
        )
        for budget, radii in runs:
            np.random.seed(spec.seed)  # ART draws from numpy's global generator
            t0 = time.perf_counter()
            parts: dict[str, np.ndarray] = {}
            if spec.name is A.autoattack:
                outcome = run_autoattack(model, spec, xs, ys, float(budget or 0.0))
                x_adv, parts = outcome.x_adv.astype(np.float32), dict(outcome.parts)
            else:
                # Black-box attacks get labels too: they are data, not access to the model.
                x_adv = (
                    make_attack(spec, estimator, budget, batch_size)
                    .generate(x=xs, y=eye[ys])
                    .astype(np.float32)
                )
            adv_ok = np.argmax(black.predict(x_adv), axis=1) == ys  # judged on the attacked model
            size = _perturbation(xs, x_adv, norm)
            fooled = clean_ok & ~adv_ok
            seconds = (time.perf_counter() - t0) / len(radii)
            median = float(np.median(size[fooled])) if fooled.any() else None
            for eps in radii:
                broken = fooled & (size <= eps * (1 + 1e-6)) if budget is None else fooled
                robust = clean_ok & ~broken
                results.append(AttackResult(
                    attack=spec.name.value, kind=spec.kind, norm=norm, eps=float(eps), samples=n,
                    clean_acc=float(clean_ok.mean()), robust_acc=float(robust.mean()),
                    median_norm=median, seconds=seconds, positions=positions, clean=clean_ok,
                    robust=robust, subset_hash=digest, steps=steps, restarts=restarts, parts=parts,
                    x_adv=x_adv if keep_adv else None,
                ))  # fmt: skip
    return results
