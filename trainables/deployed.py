"""Attacks on the deployed model: the trial's full-int8 TFLite flatbuffer, run by the interpreter.

Every other robust accuracy robustgrid stores is measured on the QKeras (QAT) model
in TensorFlow; what ships is ``model_int8.tflite`` (trainables/artifacts.py).  This
module attacks that flatbuffer through ``tf.lite.Interpreter`` on the same seeded,
stratified subsets as the Keras attacks, by three routes:

- **transfer** (``deployed_transfer_<attack>``): every white-box attack the study runs,
  its adversarial inputs crafted on the trial's own QAT model (the Keras attack's own
  examples when ``evaluate_attacks(keep_adv=True)`` kept them, else recomputed), then
  quantized to the interpreter's int8 input with its scale and zero point and scored
  there (Costa & Pinto 2024's route);
- **BPDA** (``deployed_bpda_pgd``, Athalye et al. 2018's backward pass differentiable
  approximation): PGD whose gradients come from the QAT model and whose forward passes
  and step acceptance run on the interpreter (see :func:`bpda_pgd`);
- **query** (``deployed_square``, ``deployed_hopskipjump``, ``deployed_boundary``): ART's
  score- and decision-based attacks on an ART black-box wrapper over the interpreter's
  dequantized int8 output scores.  Each black-box attack the study names runs with the
  study's settings; a study without one gets ART's Square with its published budget
  (5,000 queries, ``trainables.attacks.SQUARE_QUERIES``) at each L-inf eps of its white-box
  attacks, on the smallest white-box subset.

``deployed_worst`` is, per (norm, eps), the AND of every route's per-example robust
mask over the examples all of them attacked (trainables/worst.py's rule).  Robust
means correct on the interpreter before and after the attack.  Every count carries its
95% Wilson interval (the rows take them from the counts).

Flags (added to the trial's ``metric_masking_flags``):

- ``deployed_query_above_transfer``: a query route's robust accuracy is above a transfer
  or BPDA route's at the same (norm, eps) by more than the difference's interval: on the
  examples both attacked (paired), the 95% interval of p_query - p_other by Newcombe's
  method 10 for paired proportions (Wilson intervals of each proportion combined with the
  correlation of the pairs; Newcombe 1998, Statist. Med. 17:2635) lies entirely above 0.
  A query attack that knows less than a gradient route should not leave more examples
  robust; when it does beyond sampling noise, the interpreter's flat int8 scores mask it.
- ``deployed_disagrees``: int8 and Keras predictions agree on the clean subset less often
  than AGREEMENT_MIN at 95% confidence (the Wilson upper bound of the agreement is below it):
  the flatbuffer is not the model the Keras numbers describe.

The interpreter runs batched: one ``invoke`` per batch of up to ``batch`` examples, the
input resized to a power-of-two bucket (padded with zeros), one interpreter per bucket so
a query attack's shrinking batches never re-allocate; with per-tensor input quantization
and inference-mode layers each example's output is independent of its batch-mates
(tests/test_deployed.py checks batched == one invoke per example).

Parts: the interpreter runner (:mod:`trainables.int8`), the route comparisons and flags
(:mod:`trainables.deployed_checks`), the routes and their rows here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
import tf_keras

from trainables.attacks import (
    SQUARE_QUERIES,
    AttackResult,
    _perturbation,
    evaluate_attacks,
    make_attack,
    stratified_order,
    subset_digest,
)
from trainables.config import MINIMAL, AttackName, AttackSpec
from trainables.deployed_checks import (
    AGREEMENT_MIN,
    FLAG_DISAGREES,
    FLAG_QUERY_ABOVE,
    Comparison,
    compare_routes,
    deployed_flags,
)
from trainables.headline import DEPLOYED_WORST
from trainables.int8 import Int8Runner, cross_entropy
from trainables.rows import wilson
from trainables.worst import WorstCase, worst_cases

PREFIX = "deployed_"
KIND = "deployed"  # attack_kind of every deployed row (never mixed into the Keras 'worst')
WORST_ATTACK = DEPLOYED_WORST  # trainables/headline.py: the deployed objective reads it
# BPDA: a rejected step halves that example's step size (the QAT gradient at an unchanged
# point would propose the same rejected step forever), down to step / BPDA_MIN_SHRINK.
BPDA_MIN_SHRINK = 64.0
ROUTES = ("transfer", "bpda", "query")


# --------------------------------------------------------------------------- BPDA


@dataclass(frozen=True, eq=False)
class BpdaRun:
    x_adv: np.ndarray  # (n, *input) float32: per example, a point the interpreter misclassifies if found, else its highest-loss point
    losses: np.ndarray  # (restarts, steps + 1, n) float64: the interpreter's loss at each run's current point after each step
    accepted: np.ndarray  # (restarts, steps, n) bool: step taken (interpreter loss did not fall)
    proposed: (
        np.ndarray
    )  # (restarts, steps, n) float64: the interpreter's loss at each step's candidate


def keras_gradient(model: tf_keras.Model) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """(x, labels) -> d CE(model(x), y) / dx, one traced graph (inference mode: QKeras'
    stochastic quantizers are deterministic there; straight-through rounding gives the
    QAT model's gradient, the BPDA approximation of the int8 forward pass)."""

    @tf.function(reduce_retracing=True)
    def grad(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = model(x, training=False)
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        return tape.gradient(loss, x)

    def run(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        parts = [
            grad(tf.constant(x[i : i + 256], tf.float32), tf.constant(y[i : i + 256], tf.int64))
            for i in range(0, len(x), 256)
        ]
        return np.concatenate([p.numpy() for p in parts]).astype(np.float32)

    return run


def bpda_pgd(
    gradient: Callable[[np.ndarray, np.ndarray], np.ndarray],
    runner: Int8Runner,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    steps: int,
    step_ratio: float,
    restarts: int,
    seed: int,
) -> BpdaRun:
    """L-inf PGD with the QAT model's gradient and the interpreter's acceptance.

    Each step proposes ``x + step * sign(grad)`` (per example step size, start
    ``step_ratio * eps``), projected onto the eps ball around ``x`` and [0, 1]; the
    interpreter scores the candidate and the step is kept only where its cross-entropy
    does not fall below the current point's (``>=``: on the plateaus of int8 scores a strict
    rise would freeze an example at its first step, while the QAT gradient still points
    somewhere; the loss never goes down either way).  A rejected step halves that
    example's step size.  ``restarts`` r >= 1 runs r random starts (uniform in the ball),
    0 one run from ``x``; an example the interpreter misclassifies is done (its point kept).
    Shapes: x (n, *input) float32 in [0, 1], y (n,) int64.
    """
    rng = np.random.default_rng(seed)
    n = len(x)
    runs = max(1, restarts)
    best = x.copy()
    best_loss = np.full(n, -np.inf)
    fooled = np.zeros(n, bool)
    losses = np.zeros((runs, steps + 1, n))
    accepted = np.zeros((runs, steps, n), bool)
    proposed = np.full((runs, steps, n), np.nan)
    lo, hi = np.clip(x - eps, 0.0, 1.0), np.clip(x + eps, 0.0, 1.0)  # the feasible box
    for r in range(runs):
        cur = x.copy()
        if restarts >= 1:
            cur = np.clip(x + rng.uniform(-eps, eps, x.shape).astype(np.float32), lo, hi)
        scores = runner.scores(cur)
        cur_loss = cross_entropy(scores, y)
        done = fooled | (np.argmax(scores, axis=1) != y)
        step = np.full(n, step_ratio * eps, np.float32)
        losses[r, 0] = cur_loss
        for t in range(steps):
            live = np.flatnonzero(~done)
            if len(live):
                g = gradient(cur[live], y[live])
                shape = (len(live),) + (1,) * (x.ndim - 1)
                cand = np.clip(
                    cur[live] + step[live].reshape(shape) * np.sign(g), lo[live], hi[live]
                )
                cand_scores = runner.scores(cand)
                cand_loss = cross_entropy(cand_scores, y[live])
                take = (
                    cand_loss >= cur_loss[live]
                )  # never a step that lowers the interpreter's loss
                proposed[r, t, live] = cand_loss
                accepted[r, t, live] = take
                idx = live[take]
                cur[idx] = cand[take]
                cur_loss[idx] = cand_loss[take]
                done[idx] |= np.argmax(cand_scores[take], axis=1) != y[idx]
                shrink = live[~take]
                step[shrink] = np.maximum(step[shrink] / 2, step_ratio * eps / BPDA_MIN_SHRINK)
            losses[r, t + 1] = cur_loss
        # keep, per example: the first run that fooled the interpreter, else the highest loss
        newly = done & ~fooled
        better = ~fooled & ~newly & (cur_loss > best_loss)
        take_run = newly | better
        best[take_run] = cur[take_run]
        best_loss[take_run] = cur_loss[take_run]
        fooled |= newly
    return BpdaRun(best.astype(np.float32), losses, accepted, proposed)


# --------------------------------------------------------------------------- routes


@dataclass(frozen=True, eq=False)
class DeployedReport:
    """Every route's per-example results on the interpreter, the worst cases over them and the checks."""

    routes: dict[
        str, list[AttackResult]
    ]  # 'transfer' | 'bpda' | 'query' -> results (kind 'deployed')
    worst: list[WorstCase]  # attack 'deployed_worst', kind 'deployed'
    agreed: int  # examples of the clean subset where int8 and Keras predict the same class
    agreement_samples: int
    comparisons: list[Comparison]
    seconds: dict[str, float]  # route -> wall seconds (attack + interpreter)
    interpreter_seconds: dict[str, float]  # route -> seconds inside the interpreter
    invokes: dict[str, int]  # route -> interpreter invocations
    flags: tuple[str, ...] = field(default=())

    @property
    def results(self) -> list[AttackResult]:
        return [r for route in ROUTES for r in self.routes.get(route, [])]

    @property
    def all_outcomes(self) -> list[AttackResult | WorstCase]:
        """The rows' outcomes, in row order: every route's results, then the worst cases."""
        return [*self.results, *self.worst]

    @property
    def agreement(self) -> float:
        return self.agreed / self.agreement_samples if self.agreement_samples else float("nan")

    @property
    def agreement_interval(self) -> tuple[float, float]:
        return wilson(self.agreed, self.agreement_samples)


def _judge(
    runner: Int8Runner,
    name: str,
    norm: str,
    radii: Sequence[float],
    minimal: bool,
    positions: np.ndarray,
    clean_ok: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    x_adv: np.ndarray,
    digest: str,
    seconds: float,
    steps: int | None = None,
    restarts: int | None = None,
) -> list[AttackResult]:
    """Score adversarial inputs on the interpreter: one result per eps (the rule of
    trainables.attacks.evaluate_attacks: a minimal-perturbation attack breaks an example at
    eps only if its perturbation is within eps).  ``seconds``: the crafting time, to which
    the scoring time is added (a transfer route's examples were crafted by the Keras attack,
    whose row holds that time: it passes 0, so sums over rows stay honest)."""
    t0 = time.perf_counter()
    adv_ok = runner.predict(x_adv) == ys
    size = _perturbation(xs, x_adv, norm)
    fooled = clean_ok & ~adv_ok
    median = float(np.median(size[fooled])) if fooled.any() else None
    seconds += time.perf_counter() - t0
    out = []
    for eps in radii:
        broken = fooled & (size <= eps * (1 + 1e-6)) if minimal else fooled
        robust = clean_ok & ~broken
        out.append(AttackResult(
            attack=name, kind=KIND, norm=norm, eps=float(eps), samples=len(positions),
            clean_acc=float(clean_ok.mean()), robust_acc=float(robust.mean()), median_norm=median,
            seconds=seconds / len(radii), positions=positions, clean=clean_ok, robust=robust,
            subset_hash=digest, steps=steps, restarts=restarts,
        ))  # fmt: skip
    return out


def default_query_specs(attacks: Sequence[AttackSpec]) -> list[AttackSpec]:
    """The study's black-box attacks, else ART's Square (published budget) at every L-inf eps
    of its white-box attacks, on the smallest white-box subset (the study's costliest attack's)."""
    black = [a for a in attacks if a.kind == "black"]
    if black:
        return black
    white = [a for a in attacks if a.kind == "white" and a.norm_value == "inf"]
    if not white:
        return []
    smallest = min(white, key=lambda a: a.samples if a.samples is not None else 1 << 62)
    radii = sorted({float(e) for a in white for e in a.eps})
    return [
        AttackSpec(
            name=AttackName.square, eps=tuple(radii), max_iter=SQUARE_QUERIES,
            samples=smallest.samples, seed=smallest.seed,
        )
    ]  # fmt: skip


def bpda_specs(attacks: Sequence[AttackSpec]) -> list[AttackSpec]:
    """BPDA's PGD settings: each L-inf PGD the study runs (its steps, restarts, subset), else
    PGD's defaults at every L-inf eps of the white-box attacks on the largest white-box subset."""
    pgd = [a for a in attacks if a.name is AttackName.pgd]
    if pgd:
        return pgd
    white = [a for a in attacks if a.kind == "white" and a.norm_value == "inf"]
    if not white:
        return []
    largest = max(white, key=lambda a: a.samples if a.samples is not None else 1 << 62)
    radii = sorted({float(e) for a in white for e in a.eps})
    return [
        AttackSpec(
            name=AttackName.pgd, eps=tuple(radii), samples=largest.samples, seed=largest.seed
        )
    ]


def evaluate_deployed(
    model: tf_keras.Model,
    flatbuffer: bytes,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    attacks: Sequence[AttackSpec],
    keras_results: Sequence[AttackResult] = (),
    test_index: np.ndarray | None = None,
    batch: int = 256,
    routes: Sequence[str] = ROUTES,
) -> DeployedReport:
    """Every route on the interpreter, the per-example worst cases over them and the flags.

    ``x`` (n, *input) float32 in [0, 1] and ``y`` (n,) int64: the trial's test split (each
    route attacks its spec's stratified prefix, as the Keras attacks do);
    ``keras_results``: the Keras attacks' results, whose ``x_adv`` (when kept) the transfer
    route reuses; ``test_index``: pool positions for the subset digests.
    """
    runner = Int8Runner(flatbuffer, batch)
    pool = np.arange(len(x)) if test_index is None else np.asarray(test_index)
    orders: dict[int, np.ndarray] = {}

    def subset(spec: AttackSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
        n = len(x) if spec.samples is None else min(spec.samples, len(x))
        if spec.seed not in orders:
            orders[spec.seed] = stratified_order(y, spec.seed)
        pos = orders[spec.seed][:n]
        xs, ys = x[pos], y[pos]
        clean_ok = runner.predict(xs) == ys
        return pos, xs, ys, clean_ok, subset_digest(pool[pos])

    out: dict[str, list[AttackResult]] = {r: [] for r in ROUTES}
    seconds = dict.fromkeys(ROUTES, 0.0)
    inner = dict.fromkeys(ROUTES, 0.0)
    invokes = dict.fromkeys(ROUTES, 0)

    def account(route: str, t0: float, s0: float, i0: int) -> None:
        seconds[route] += time.perf_counter() - t0
        inner[route] += runner.seconds - s0
        invokes[route] += runner.invokes - i0

    white = [a for a in attacks if a.kind == "white"]
    if "transfer" in routes:
        for spec in white:
            t0, s0, i0 = time.perf_counter(), runner.seconds, runner.invokes
            kept = [r for r in keras_results if r.attack == spec.name.value and r.x_adv is not None]
            if not kept:  # recompute the Keras attack's adversarial inputs
                kept = evaluate_attacks(
                    model, x, y, num_classes, (spec,), test_index=test_index, keep_adv=True
                )
            pos, xs, ys, clean_ok, digest = subset(spec)
            minimal = spec.name in MINIMAL
            # a minimal-perturbation attack's one x_adv serves every eps; a budget attack's is per eps
            groups = [(kept[0], [r.eps for r in kept])] if minimal else [(r, [r.eps]) for r in kept]
            for res, radii in groups:
                assert res.x_adv is not None
                if not np.array_equal(res.positions, pos):
                    raise AssertionError(
                        f"deployed transfer: {spec.name.value} attacked other examples"
                    )
                out["transfer"] += _judge(
                    runner, f"{PREFIX}transfer_{spec.name.value}", spec.norm_value, radii, minimal,
                    pos, clean_ok, xs, ys, res.x_adv, digest, 0.0,
                    res.steps, res.restarts,
                )  # fmt: skip
            account("transfer", t0, s0, i0)
    if "bpda" in routes:
        grad = keras_gradient(model)
        for spec in bpda_specs(attacks):
            pos, xs, ys, clean_ok, digest = subset(spec)
            for eps in spec.eps:
                t0, s0, i0 = time.perf_counter(), runner.seconds, runner.invokes
                run = bpda_pgd(
                    grad,
                    runner,
                    xs,
                    ys,
                    float(eps),
                    spec.steps,
                    spec.step_ratio,
                    spec.restarts,
                    spec.seed,
                )
                out["bpda"] += _judge(
                    runner, f"{PREFIX}bpda_pgd", "inf", [eps], False, pos, clean_ok, xs, ys,
                    run.x_adv, digest, time.perf_counter() - t0, spec.steps, spec.restarts,
                )  # fmt: skip
                account("bpda", t0, s0, i0)
    if "query" in routes:
        bb = runner.black_box()
        eye = np.eye(num_classes, dtype=np.float32)
        for spec in default_query_specs(attacks):
            pos, xs, ys, clean_ok, digest = subset(spec)
            minimal = spec.name in MINIMAL
            runs: list[tuple[float | None, list[float]]] = (
                [(None, list(spec.eps))] if minimal else [(e, [e]) for e in spec.eps]
            )
            for budget, radii in runs:
                t0, s0, i0 = time.perf_counter(), runner.seconds, runner.invokes
                np.random.seed(spec.seed)  # ART draws from numpy's global generator
                x_adv = (
                    make_attack(spec, bb, budget, batch)
                    .generate(x=xs, y=eye[ys])
                    .astype(np.float32)
                )
                out["query"] += _judge(
                    runner, f"{PREFIX}{spec.name.value}", spec.norm_value, radii, minimal, pos,
                    clean_ok, xs, ys, x_adv, digest, time.perf_counter() - t0,
                )  # fmt: skip
                account("query", t0, s0, i0)
    every = [r for route in ROUTES for r in out[route]]
    worst = [
        dataclasses.replace(w, attack=WORST_ATTACK, kind=KIND)
        for w in worst_cases(every, lambda p: subset_digest(pool[p]))
    ]
    agreed, agreed_n = conversion_agreement(model, runner, x, y, attacks)
    comparisons = compare_routes(out["query"], out["transfer"] + out["bpda"])
    flags = deployed_flags(comparisons, agreed, agreed_n)
    return DeployedReport(out, worst, agreed, agreed_n, comparisons, seconds, inner, invokes, flags)


def clean_subset(y: np.ndarray, attacks: Sequence[AttackSpec]) -> np.ndarray:
    """The positions of the largest attacked subset (the union of the nested prefixes of the
    first attack's seed); the whole split without attacks."""
    if not attacks:
        return np.arange(len(y))
    seed = attacks[0].seed
    n = max(
        len(y) if a.samples is None else min(a.samples, len(y)) for a in attacks if a.seed == seed
    )
    return stratified_order(y, seed)[:n]


def conversion_agreement(
    model: tf_keras.Model,
    runner: Int8Runner,
    x: np.ndarray,
    y: np.ndarray,
    attacks: Sequence[AttackSpec],
) -> tuple[int, int]:
    """(agreed, n): examples of the clean attacked subset where int8 and Keras predict the same class."""
    pos = clean_subset(y, attacks)
    if len(pos) == 0:
        return 0, 0
    keras = np.argmax(model.predict(x[pos], batch_size=256, verbose=0), axis=1)
    return int(np.sum(runner.predict(x[pos]) == keras)), len(pos)


__all__ = [
    "AGREEMENT_MIN",
    "FLAG_DISAGREES",
    "FLAG_QUERY_ABOVE",
    "KIND",
    "PREFIX",
    "ROUTES",
    "WORST_ATTACK",
    "BpdaRun",
    "Comparison",
    "DeployedReport",
    "Int8Runner",
    "bpda_pgd",
    "compare_routes",
    "cross_entropy",
    "evaluate_deployed",
    "keras_gradient",
]
