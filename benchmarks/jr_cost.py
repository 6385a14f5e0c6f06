"""Jacobian Regularization's cost per training step, against a plain step, per model.

For each model (the paper studies' setting: stochastic ternary weights,
8-bit activations; each model at its study's batch size; 1 thread) one run
times ``trainables.train.training_step`` -- the step every trial trains
with -- on the same batches, six ways:

  plain          cross-entropy only (the peer);
  io JR          + input-output JR (``jr_weight``): one extra backward pass,
                 batch norms as JR steps trace them (``train.UNFUSE_IN_JR``);
  io JR alt      the same with the other exact batch norm: unfused with
                 exact moments if JR steps keep TensorFlow's fused kernel,
                 else fused (both differentiate twice exactly; the faster
                 one is what JR steps use);
  layer JR       + per-layer JR on every activation (``jr_layers: {all: w}``)
                 and on the logits: all outputs share one backward pass;
  layer alt      the same with the other exact batch norm;
  layer before   the same penalty with one backward pass per regularized
                 output, normal draws and fused batch norms (the code
                 before per-layer JR shared one pass).

Each step is traced first, then ``--steps`` steps are timed per repeat, the
kinds interleaved; best of ``--repeat``.  Goals: io JR <= 1.8x, per-layer
JR <= 2.5x a plain step.

    python benchmarks/jr_cost.py [--models digits_cnn resnet8 ds_cnn] [--steps 30] [--repeat 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Iterator

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import tf_keras

import trainables.train as train
from trainables.config import TrialConfig
from trainables.models import build_model

SHAPES = {"digits_cnn": (8, 8, 1), "resnet8": (32, 32, 3), "ds_cnn": (49, 10, 1)}
CLASSES = {"digits_cnn": 10, "resnet8": 10, "ds_cnn": 12}
BATCH = {"digits_cnn": 64, "resnet8": 32, "ds_cnn": 100}  # default, stq_jr_cifar10, stq_jr_kws
JR_WEIGHT, LAYER_WEIGHT = 0.05, 0.01
KINDS = ("plain", "io JR", "io JR alt", "layer JR", "layer alt", "layer before")


def separate_passes_jr(
    forward: Callable[[tf.Tensor], list[tf.Tensor]],
    x: tf.Tensor,
    weights: list[float],
    n_proj: int = 1,
) -> tuple[tf.Tensor, tf.Tensor]:
    """The same estimate with one backward pass per weighted output (the former code)."""
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        outs = forward(x)
    batch = tf.cast(tf.shape(x)[0], x.dtype)
    penalty = tf.constant(0.0, x.dtype)
    for out, w in zip(outs, weights, strict=True):
        if w == 0.0:
            continue
        flat = tf.reshape(out, [tf.shape(out)[0], -1])
        dim = tf.cast(tf.shape(flat)[1], x.dtype)
        v = tf.random.normal(tf.shape(flat), dtype=x.dtype)
        v = v / tf.norm(v, axis=1, keepdims=True)
        vj = tape.gradient(out, x, output_gradients=tf.reshape(v, tf.shape(out)))
        penalty += w * dim * tf.reduce_sum(tf.square(vj)) / batch
    del tape
    return outs[0], penalty


@contextlib.contextmanager
def variant(kind: str) -> Iterator[None]:
    """Trace ``training_step`` with the other batch norm ("alt") or as before ("before")."""
    saved = train.outputs_and_jr, train.UNFUSE_IN_JR
    if kind.endswith("alt"):
        train.UNFUSE_IN_JR = not saved[1]
    if kind == "layer before":
        train.UNFUSE_IN_JR = False
        train.outputs_and_jr = separate_passes_jr
    try:
        yield
    finally:
        train.outputs_and_jr, train.UNFUSE_IN_JR = saved


def build_step(
    name: str, kind: str, batches: list[tuple[tf.Tensor, tf.Tensor]]
) -> tuple[Callable[[tf.Tensor, tf.Tensor], tf.Tensor], int]:
    """A traced training step of one kind, and how many outputs its JR regularizes."""
    tf_keras.utils.set_random_seed(0)
    cfg = TrialConfig(model=name, bits="stochastic_ternary", activation_bits=8)
    model = build_model(cfg, SHAPES[name], CLASSES[name])
    layers = train.jr_layer_names(model, {"all": LAYER_WEIGHT})
    if kind == "plain":
        step, outputs = train.training_step(model, 1e-3), 0
    elif kind.startswith("io JR"):
        step, outputs = train.training_step(model, 1e-3, jr_weight=JR_WEIGHT), 1
    else:
        step = train.training_step(model, 1e-3, jr_weight=JR_WEIGHT, jr_layers=layers)
        outputs = len(layers) + 1
    with variant(kind):
        for x, y in batches[:2]:  # trace, and the optimiser's first (slot-creating) step
            float(step(x, y))
    return step, outputs


def seconds_per_step(
    step: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
    batches: list[tuple[tf.Tensor, tf.Tensor]],
    steps: int,
) -> float:
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step(*batches[i % len(batches)])
    float(loss)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    rng = np.random.default_rng(0)
    print(
        f"stochastic ternary weights, 8-bit activations, 1 thread; {args.steps} steps per "
        f"repeat, best of {args.repeat}; ratios against the plain step"
    )
    alt = "fused" if train.UNFUSE_IN_JR else "unfused"
    print(f"JR steps' batch norms: {'unfused' if train.UNFUSE_IN_JR else 'fused'}; alt: {alt}")
    print(
        f"{'model':<11}{'batch':>6}{'plain ms':>9}{'io JR':>7}{'alt':>7}"
        f"{'outputs':>8}{'layer JR':>9}{'alt':>7}{'before':>7}   (ratios to plain)"
    )
    for name in args.models:
        batch = BATCH[name]
        batches = [
            (
                tf.constant(rng.random((batch, *SHAPES[name]), dtype=np.float32)),
                tf.constant(rng.integers(0, CLASSES[name], batch)),
            )
            for _ in range(8)
        ]
        steps = {kind: build_step(name, kind, batches) for kind in KINDS}
        best = dict.fromkeys(KINDS, float("inf"))
        for r in range(args.repeat):
            for kind in KINDS[r % len(KINDS) :] + KINDS[: r % len(KINDS)]:  # rotate the order
                best[kind] = min(best[kind], seconds_per_step(steps[kind][0], batches, args.steps))
        ratio = {kind: best[kind] / best["plain"] for kind in KINDS}
        print(
            f"{name:<11}{batch:>6}{best['plain'] * 1e3:>9.1f}{ratio['io JR']:>7.2f}"
            f"{ratio['io JR alt']:>7.2f}{steps['layer JR'][1]:>8}"
            f"{ratio['layer JR']:>9.2f}{ratio['layer alt']:>7.2f}{ratio['layer before']:>7.2f}"
        )


if __name__ == "__main__":
    main()
