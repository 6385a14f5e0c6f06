"""FAB-T's cost: one compiled 100-step targeted run against the bare gradient loop of the same budget.

For each model (QKeras 4-bit, random weights: a step's cost does not depend on
what the model learned) and each norm, times on the same batch:

  1. ``trainables.fab``'s compiled run of one target (``n_iter`` steps, each one
     forward/backward of z_t - z_y, the two projections, one forward to test success);
  2. the same gradient and forward budget as one bare compiled loop (sign step, no
     projections): the practical limit of any implementation of this budget.

Prints seconds (best of ``--repeat`` after a tracing call) and the ratio 1 / 2: what the
projections (a sort of 2 x batch rows of input size each step) add.  Then the whole
``fab_targeted`` (9 targets, survivors only) on 100 real digits against a digits CNN trained
for 8 epochs, L-inf eps 0.1: seconds of two calls (each traces its functions).

    python benchmarks/fab_throughput.py [--samples 100] [--models digits_cnn resnet8 ds_cnn]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import tf_keras
from sklearn.datasets import load_digits

from trainables.config import TrialConfig
from trainables.fab import _build_runner, fab_targeted
from trainables.models import build_model

SHAPES = {"digits_cnn": (8, 8, 1), "resnet8": (32, 32, 3), "ds_cnn": (49, 10, 1)}
CLASSES = {"digits_cnn": 10, "resnet8": 10, "ds_cnn": 12}


def bare_loop(
    model: tf_keras.Model, shape: tuple[int, ...], steps: int
) -> Callable[..., tf.Tensor]:
    """FAB-T's gradient and forward budget per step, with a sign step instead of projections."""
    spec_y = tf.TensorSpec([None], tf.int32)

    @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.float32), spec_y, spec_y])
    def run(x: tf.Tensor, y: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
        keep = [-1] + [1] * len(shape)

        def step(i: tf.Tensor, x1: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            with tf.GradientTape() as tape:
                tape.watch(x1)
                z = model(x1, training=False)
                total = tf.reduce_sum(
                    tf.gather(z, target, axis=1, batch_dims=1)
                    - tf.gather(z, y, axis=1, batch_dims=1)
                )
            x1 = tf.clip_by_value(x1 + 1e-3 * tf.sign(tape.gradient(total, x1)), 0.0, 1.0)
            pred = tf.argmax(model(x1, training=False), axis=1, output_type=tf.int32)
            return i + 1, tf.where(tf.reshape(pred != y, keep), x, x1)

        return tf.while_loop(lambda i, _: i < steps, step, (tf.constant(0), x))[1]

    return run


def best(fn: Callable[..., object], args: tuple[np.ndarray, ...], repeat: int) -> float:
    fn(*args)  # tracing
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["digits_cnn", "resnet8", "ds_cnn"])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"one target, {args.steps} steps, {args.samples} samples, best of {args.repeat}")
    print(f"{'model':<11}{'norm':>5}{'FAB s':>9}{'bare s':>9}{'FAB/bare':>9}")
    for name in args.models:
        shape, classes = SHAPES[name], CLASSES[name]
        tf_keras.utils.set_random_seed(0)
        model = build_model(TrialConfig(model=name, bits="4"), shape, classes)
        x = rng.random((args.samples, *shape), dtype=np.float32)
        logits = model.predict(x, verbose=0)
        y = logits.argmax(axis=1).astype(np.int32)
        target = np.argsort(logits, axis=1)[:, -2].astype(np.int32)
        bare = bare_loop(model, shape, args.steps)
        t_bare = best(bare, (x, y, target), args.repeat)
        for norm in ("inf", "2"):
            run = _build_runner(model, shape, norm, args.steps)
            t_fab = best(run, (x, y, target), args.repeat)
            print(f"{name:<11}{norm:>5}{t_fab:>9.3f}{t_bare:>9.3f}{t_fab / t_bare:>9.2f}")

    bunch = load_digits()
    xd = (bunch.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1)
    yd = bunch.target.astype(np.int32)
    tf_keras.utils.set_random_seed(0)
    model = build_model(TrialConfig(bits="float"), (8, 8, 1), 10)
    model.compile(
        optimizer=tf_keras.optimizers.Adam(3e-3),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(xd[:1500], yd[:1500], epochs=8, batch_size=64, verbose=0)
    x, y = xd[1500:1600], yd[1500:1600]
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        adv = fab_targeted(model, x, y, eps=0.1, norm="inf")
        times.append(time.perf_counter() - t0)
    robust = (model.predict(adv, verbose=0).argmax(axis=1) == y).mean()
    print(
        f"fab_targeted, 100 digits, digits_cnn (float, 8 epochs), L-inf eps 0.1: "
        f"{times[0]:.2f} s, {times[1]:.2f} s (two calls, each tracing its own functions); "
        f"robust accuracy {robust:.2f}"
    )


if __name__ == "__main__":
    main()
