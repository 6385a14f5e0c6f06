"""Attack throughput: ART's PGD through robustgrid's compiled classifier, against peers.

For each model (QKeras, 4-bit weights, random weights: the cost of a step
does not depend on what the model learned), one run measures PGD (L-inf,
``--steps`` steps, no random start) on the same batch three ways:

  1. ART's ProjectedGradientDescent on ART's default TensorFlowV2Classifier;
  2. the same ART attack on ``trainables.compiled.CompiledClassifier`` (the
     classifier's loss and class gradients in ``tf.function``; what trials use);
  3. the practical limit: the whole PGD loop fused into one ``tf.function``;
  4. ART's own work alone: the same ART attack on a classifier whose loss
     gradient costs nothing (zeros), i.e. what the attack spends outside the
     classifier each step (projection, clipping, the closing success rate).

Each is warmed up once (tracing), then timed best of ``--repeat``.  The
adversarial examples of 1 and 2 are checked equal first.  Prints seconds and
the ratios compiled / fused and default / fused (goal: compiled within 1.3x),
and (compiled - ART's own work) / fused: the classifier's share against the
fused loop.

    python benchmarks/attack_throughput.py [--samples 256] [--steps 20] [--models digits_cnn resnet8 ds_cnn]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import tf_keras
from art.attacks.evasion import ProjectedGradientDescent
from art.estimators.classification import TensorFlowV2Classifier

from trainables.compiled import CompiledClassifier
from trainables.config import TrialConfig
from trainables.models import build_model

SHAPES = {"digits_cnn": (8, 8, 1), "resnet8": (32, 32, 3), "ds_cnn": (49, 10, 1)}
CLASSES = {"digits_cnn": 10, "resnet8": 10, "ds_cnn": 12}
EPS, STEP = 0.03, 0.0075


class FreeGradient(CompiledClassifier):
    """A loss gradient that costs nothing: ART's PGD on it times the attack's own work."""

    def loss_gradient(self, x: Any, y: Any, training_mode: bool = False, **kwargs: Any) -> Any:
        return tf.zeros_like(x) if isinstance(x, tf.Tensor) else np.zeros_like(x)


def fused_pgd(
    model: tf_keras.Model, eps: float, step: float, steps: int
) -> Callable[..., tf.Tensor]:
    loss = tf_keras.losses.CategoricalCrossentropy(from_logits=True)

    @tf.function
    def attack(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        adv = tf.identity(x)
        for _ in tf.range(steps):
            with tf.GradientTape() as tape:
                tape.watch(adv)
                value = loss(y, model(adv, training=False))
            adv = adv + step * tf.sign(tape.gradient(value, adv))
            adv = tf.clip_by_value(tf.clip_by_value(adv, x - eps, x + eps), 0.0, 1.0)
        return adv

    return attack


def best(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: traces and builds what is built once
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["digits_cnn", "resnet8", "ds_cnn"])
    args = ap.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(1)  # one trial's allocation
    tf.config.threading.set_inter_op_parallelism_threads(1)
    eps, step = 0.03, 0.0075
    print(
        f"PGD L-inf eps={eps} step={step} steps={args.steps}, {args.samples} samples, best of {args.repeat}, 1 thread"
    )
    print(
        f"{'model':<11}{'ART default s':>14}{'compiled s':>11}{'fused s':>9}{'ART own s':>10}"
        f"{'compiled/fused':>15}{'default/fused':>14}{'(compiled-own)/fused':>21}"
    )
    rng = np.random.default_rng(0)
    for name in args.models:
        t_default, t_compiled, t_fused, t_own = measure(
            name, args.samples, args.steps, args.repeat, rng
        )
        print(f"{name:<11}{t_default:>14.3f}{t_compiled:>11.3f}{t_fused:>9.3f}{t_own:>10.3f}"
              f"{t_compiled / t_fused:>15.2f}{t_default / t_fused:>14.2f}"
              f"{(t_compiled - t_own) / t_fused:>21.2f}")  # fmt: skip


def measure(
    name: str, samples: int, steps: int, repeat: int, rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """Seconds of (ART default, ART compiled, fused, ART's own work) PGD on one model."""
    eps, step = EPS, STEP
    shape, classes = SHAPES[name], CLASSES[name]
    tf_keras.utils.set_random_seed(0)
    model = build_model(TrialConfig(model=name, bits="4"), shape, classes)
    x = rng.random((samples, *shape), dtype=np.float32)
    y = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, samples)]

    def art(cls: type) -> Callable[[], np.ndarray]:
        clf = cls(
            model=model, nb_classes=classes, input_shape=shape, clip_values=(0.0, 1.0),
            loss_object=tf_keras.losses.CategoricalCrossentropy(from_logits=True),
        )  # fmt: skip
        pgd = ProjectedGradientDescent(
            clf, norm=np.inf, eps=eps, eps_step=step, max_iter=steps,
            num_random_init=0, batch_size=samples, verbose=False,
        )  # fmt: skip
        return lambda: pgd.generate(x, y)

    default, compiled, own = (
        art(TensorFlowV2Classifier),
        art(CompiledClassifier),
        art(FreeGradient),
    )
    if not np.allclose(default(), compiled(), atol=1e-6):
        raise SystemExit(f"{name}: compiled and default adversarial examples differ")
    fused_fn = fused_pgd(model, eps, step, steps)
    xt, yt = tf.constant(x), tf.constant(y)
    return (
        best(default, repeat),
        best(compiled, repeat),
        best(lambda: fused_fn(xt, yt).numpy(), repeat),
        best(own, repeat),
    )


if __name__ == "__main__":
    main()
