"""Adversarial evaluation with ART (no hand-written attacks).

White-box attacks get the model's gradients through ART's
TensorFlowV2Classifier; black-box attacks reach the model only through
ART's BlackBoxClassifier (a predict function returning numpy scores);
transfer attacks are crafted on a float surrogate and applied to the model.

The model is attacked in inference mode (``training=False``): QKeras'
stochastic quantizers are deterministic there, so gradients are not random.
Robust accuracy counts an example only if it is classified correctly both
clean and under attack (RobustBench's convention), so it never exceeds the
clean accuracy of the attacked examples.  Budget attacks (FGSM, PGD,
Square, transfer) run once per eps; minimal-perturbation attacks (C&W,
DeepFool, HopSkipJump, Boundary) run once, and an example is robust at eps
when the attack fails or needs a perturbation larger than eps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tf_keras
from art.attacks.evasion import (
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
}  # fmt: skip


def art_class(name: AttackName) -> Any:
    return _CLASSES[name]


@dataclass(frozen=True)
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
    """Black-box ART wrapper: the attack sees softmax scores as numpy, never a tensor or a gradient.

    (ART's neural-network flavour of the black-box wrapper, which Square requires; it has no
    gradient methods either.)"""

    def predict(x: np.ndarray) -> np.ndarray:
        out = [
            model(x[i : i + batch].astype(np.float32), training=False).numpy()
            for i in range(0, len(x), batch)
        ]
        logits = np.concatenate(out) if out else np.zeros((0, num_classes), np.float32)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return BlackBoxClassifierNeuralNetwork(
        predict, input_shape, num_classes, channels_first=False, clip_values=(0.0, 1.0)
    )


def _norm_arg(norm: str) -> float | int:
    return np.inf if norm == "inf" else 2


def make_attack(spec: AttackSpec, estimator: Any, eps: float | None, batch_size: int = 256) -> Any:
    """The ART attack for ``spec`` (at ``eps`` for budget attacks)."""
    n, it, norm = spec.name, spec.max_iter, spec.norm_value
    kw: dict[str, Any]
    if n in (A.fgsm, A.transfer_fgsm):
        kw = {"norm": np.inf, "eps": eps, "batch_size": batch_size}
    elif n in (A.pgd, A.transfer_pgd):
        kw = {
            "norm": np.inf,
            "eps": eps,
            "eps_step": spec.step_ratio * float(eps or 0),
            "max_iter": spec.steps,
            "num_random_init": 0,
            "batch_size": batch_size,
            "verbose": False,
        }
    elif n is A.cw_l2:
        kw = {
            "max_iter": it or 10,
            "binary_search_steps": 5,
            "batch_size": batch_size,
            "verbose": False,
        }
    elif n is A.cw_linf:
        kw = {"max_iter": it or 10, "batch_size": batch_size, "verbose": False}
    elif n is A.deepfool:
        kw = {"max_iter": it or 50, "batch_size": batch_size, "verbose": False}
    elif n is A.square:
        kw = {
            "norm": _norm_arg(norm),
            "eps": eps,
            "max_iter": it or 100,
            "batch_size": batch_size,
            "verbose": False,
        }
    elif n is A.hopskipjump:
        kw = {
            "norm": _norm_arg(norm),
            "max_iter": it or 10,
            "max_eval": 1000,
            "init_eval": 10,
            "batch_size": batch_size,
            "targeted": False,
            "verbose": False,
        }
    elif n is A.boundary:
        kw = {"max_iter": it or 200, "targeted": False, "batch_size": batch_size, "verbose": False}
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


def evaluate_attacks(
    model: tf_keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    attacks: tuple[AttackSpec, ...],
    surrogate: tf_keras.Model | None = None,
    batch_size: int = 256,
) -> list[AttackResult]:
    """One result per (attack, eps), on the first ``spec.samples`` test examples."""
    shape = tuple(x.shape[1:])
    white = classifier(model, num_classes, shape)
    black = predictions_only(model, num_classes, shape)
    source = classifier(surrogate, num_classes, shape) if surrogate is not None else None
    eye = np.eye(num_classes, dtype=np.float32)
    results = []
    for spec in attacks:
        n = len(x) if spec.samples is None else min(spec.samples, len(x))
        xs, ys = x[:n], y[:n]
        estimator = {"white": white, "black": black, "transfer": source}[spec.kind]
        if estimator is None:
            raise ValueError(f"attacks.name: {spec.name.value} needs a surrogate model")
        clean_ok = np.argmax(black.predict(xs), axis=1) == ys
        norm = spec.norm_value
        runs: list[tuple[float | None, list[float]]] = (
            [(None, list(spec.eps))] if spec.name in MINIMAL else [(e, [e]) for e in spec.eps]
        )
        for budget, radii in runs:
            np.random.seed(spec.seed)  # ART draws from numpy's global generator
            t0 = time.perf_counter()
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
                results.append(AttackResult(
                    attack=spec.name.value, kind=spec.kind, norm=norm, eps=float(eps), samples=n,
                    clean_acc=float(clean_ok.mean()), robust_acc=float((clean_ok & ~broken).mean()),
                    median_norm=median, seconds=seconds,
                ))  # fmt: skip
    return results
