"""Adversarial evaluation with ART (no hand-written attacks).

The model is attacked in inference mode (``training=False``): QKeras'
stochastic quantizers are deterministic there, so gradients are not random.
Robust accuracy counts an example as robust only if it is classified
correctly both clean and under attack (RobustBench's convention), so it
can never exceed the clean accuracy of the attacked examples.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tf_keras
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
from art.estimators.classification import TensorFlowV2Classifier

from trainables.config import AdvTraining, AttackName, AttackSpec

logging.getLogger("art").setLevel(logging.WARNING)


@dataclass(frozen=True)
class AttackResult:
    attack: str
    eps: float  # L-inf radius on the input's 0-1 scale
    samples: int
    clean_acc: float  # accuracy of the attacked examples before the attack
    robust_acc: float  # correct before *and* after the attack, over ``samples``
    seconds: float


def classifier(
    model: tf_keras.Model, num_classes: int, input_shape: tuple[int, ...]
) -> TensorFlowV2Classifier:
    """ART wrapper on the logits model; inputs live in [0, 1]."""
    return TensorFlowV2Classifier(
        model=model,
        nb_classes=num_classes,
        input_shape=input_shape,
        loss_object=tf_keras.losses.CategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0),
    )


def _attack(
    spec: AttackSpec, clf: TensorFlowV2Classifier, eps: float, batch_size: int
) -> FastGradientMethod | ProjectedGradientDescent:
    if spec.name is AttackName.fgsm:
        return FastGradientMethod(clf, norm=np.inf, eps=eps, batch_size=batch_size)
    if spec.name is AttackName.pgd:
        return ProjectedGradientDescent(
            clf,
            norm=np.inf,
            eps=eps,
            eps_step=spec.step_ratio * eps,
            max_iter=spec.steps,
            num_random_init=0,  # deterministic: same config, same rows
            batch_size=batch_size,
            verbose=False,
        )
    raise ValueError(f"attacks.name: unknown attack {spec.name!r}")


def adversarial_examples(
    model: tf_keras.Model, num_classes: int, input_shape: tuple[int, ...], adv: AdvTraining
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """ART's FGSM or PGD against ``model`` as it trains: (x, labels) -> adversarial x."""
    clf = classifier(model, num_classes, input_shape)
    spec = AttackSpec(name=AttackName(adv.method.value), eps=(adv.eps,), steps=adv.steps)
    attack = _attack(spec, clf, adv.eps, batch_size=256)
    eye = np.eye(num_classes, dtype=np.float32)
    return lambda x, y: attack.generate(x=x, y=eye[y]).astype(np.float32)


def evaluate_attacks(
    model: tf_keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    attacks: tuple[AttackSpec, ...],
    batch_size: int = 256,
) -> list[AttackResult]:
    """One result per (attack, eps), on the first ``spec.samples`` test examples."""
    clf = classifier(model, num_classes, tuple(x.shape[1:]))
    results = []
    for spec in attacks:
        n = len(x) if spec.samples is None else min(spec.samples, len(x))
        xs, ys = x[:n], y[:n]
        onehot = np.eye(num_classes, dtype=np.float32)[ys]
        clean_ok = np.argmax(clf.predict(xs, batch_size=batch_size), axis=1) == ys
        for eps in spec.eps:
            t0 = time.perf_counter()
            x_adv = _attack(spec, clf, eps, batch_size).generate(x=xs, y=onehot)
            adv_ok = np.argmax(clf.predict(x_adv, batch_size=batch_size), axis=1) == ys
            results.append(
                AttackResult(
                    attack=spec.name.value,
                    eps=float(eps),
                    samples=n,
                    clean_acc=float(clean_ok.mean()),
                    robust_acc=float((clean_ok & adv_ok).mean()),
                    seconds=time.perf_counter() - t0,
                )
            )
    return results
