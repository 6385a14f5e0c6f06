"""Jacobian Regularization's cost per training step, against a plain step, per model.

For each model (the paper studies' setting: stochastic ternary weights,
8-bit activations; each model at its study's batch size; 1 thread) one run
times ``trainables.train.training_step`` -- the step every trial trains
with -- on the same batches, six ways:

  plain          cross-entropy only (the peer);
  io JR          + input-output JR (``jr_weight``): one extra backward pass,
                 batch norms as JR steps trace them (``train.JR_BATCH_NORM``:
                 Keras' unfused path with exact moments);
  io compact     the same with ``train.compact_batch_norm`` (closed-form
                 first derivative; also exact; not the default);
  layer JR       + per-layer JR on every activation (``jr_layers: {all: w}``)
                 and on the logits: all outputs share one backward pass;
  layer main     the same with one random word per Rademacher sign (the
                 code before issue 21; now ``jacobian.rademacher`` draws 32
                 signs per word);
  plain qkeras / io qkeras / layer qkeras
                 plain, io JR, layer JR with QKeras' own quantized_relu
                 gradient (``train.CHEAP_ACTIVATION_GRADIENTS`` off: a SelectV2
                 and a ReluGrad per activation, where the default takes one
                 select with the same values, ``train._relu_ste``);
  layer before   the same penalty with one backward pass per regularized
                 output, normal draws and fused batch norms (the code
                 before per-layer JR shared one pass).

Each step is traced first, then each repeat times ``--steps`` steps of every
kind, the kinds interleaved (order rotated per repeat).  Each repeat gives
each kind's ratio to the plain step of the same repeat, in wall time and in
the process's CPU time (the latter less sensitive to other processes on a
shared machine); the table shows the median of the repeats' ratios and, in
brackets, their range.  Goals: io JR <= 1.8x, per-layer JR <= 2.5x a plain
step.

    python benchmarks/jr_cost.py [--models digits_cnn resnet8 ds_cnn] [--steps 20] [--repeat 5]
    python benchmarks/jr_cost.py --models resnet8 ds_cnn --steps 3 --repeat 15  # issue 21, loaded 2 cores
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

import trainables.jacobian as jacobian
import trainables.train as train
from trainables.config import TrialConfig
from trainables.models import build_model

SHAPES = {"digits_cnn": (8, 8, 1), "resnet8": (32, 32, 3), "ds_cnn": (49, 10, 1)}
CLASSES = {"digits_cnn": 10, "resnet8": 10, "ds_cnn": 12}
BATCH = {"digits_cnn": 64, "resnet8": 32, "ds_cnn": 100}  # default, stq_jr_cifar10, stq_jr_kws
JR_WEIGHT, LAYER_WEIGHT = 0.05, 0.01
KINDS = (
    "plain", "io JR", "io compact", "layer JR", "layer main", "plain qkeras", "io qkeras",
    "layer qkeras", "layer before",
)  # fmt: skip
DEFAULT_KINDS = KINDS[:-1]  # "layer before" is slow (12x a plain DS-CNN step): ask for it


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


def word_per_sign(shape: tf.Tensor, dtype: tf.DType, scale: float = 1.0) -> tf.Tensor:
    """Rademacher signs drawn one random word each (the code before ``jacobian.rademacher``)."""
    bits = tf.random.uniform(shape, maxval=2, dtype=tf.int32)
    return tf.cast(2 * bits - 1, dtype) * scale


@contextlib.contextmanager
def variant(kind: str) -> Iterator[None]:
    """Trace ``training_step`` with the compact batch norm, old draws ("main"), or as before."""
    saved = train.outputs_and_jr, train.JR_BATCH_NORM, jacobian.rademacher
    cheap = train.CHEAP_ACTIVATION_GRADIENTS
    if kind.endswith("qkeras"):
        train.CHEAP_ACTIVATION_GRADIENTS = False
    if kind.endswith("compact"):
        train.JR_BATCH_NORM = "compact"
    if kind == "layer main":
        jacobian.rademacher = word_per_sign
    if kind == "layer before":
        train.JR_BATCH_NORM = "fused"
        train.outputs_and_jr = separate_passes_jr
    try:
        yield
    finally:
        train.outputs_and_jr, train.JR_BATCH_NORM, jacobian.rademacher = saved
        train.CHEAP_ACTIVATION_GRADIENTS = cheap


def build_step(
    name: str, kind: str, batches: list[tuple[tf.Tensor, tf.Tensor]]
) -> tuple[Callable[[tf.Tensor, tf.Tensor], tf.Tensor], int]:
    """A traced training step of one kind, and how many outputs its JR regularizes."""
    tf_keras.utils.set_random_seed(0)
    cfg = TrialConfig(model=name, bits="stochastic_ternary", activation_bits=8)
    model = build_model(cfg, SHAPES[name], CLASSES[name])
    layers = train.jr_layer_names(model, {"all": LAYER_WEIGHT})
    if kind.startswith("plain"):
        step, outputs = train.training_step(model, 1e-3), 0
    elif kind.startswith("io"):
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
) -> tuple[float, float]:
    """(wall, process CPU) seconds per step."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(steps):
        loss = step(*batches[i % len(batches)])
    float(loss)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def summary(ratios: list[float]) -> str:
    """Median [min-max]."""
    return f"{np.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--kinds", nargs="+", default=list(DEFAULT_KINDS), choices=list(KINDS))
    args = ap.parse_args()
    kinds = ["plain", *(k for k in args.kinds if k != "plain")]
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    rng = np.random.default_rng(0)
    print(
        f"stochastic ternary weights, 8-bit activations, 1 thread; {args.steps} steps per "
        f"repeat, {args.repeat} repeats; ratio to the plain step of the same repeat: "
        f"median [range]; JR steps' batch norms: {train.JR_BATCH_NORM}"
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
        steps = {kind: build_step(name, kind, batches) for kind in kinds}
        times: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
        for r in range(args.repeat):
            for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:  # rotate the order
                times[kind].append(seconds_per_step(steps[kind][0], batches, args.steps))
        plain_wall = [w for w, _ in times["plain"]]
        print(
            f"{name} (batch {batch}): plain step {np.median(plain_wall) * 1e3:.1f} ms wall, "
            f"{np.median([c for _, c in times['plain']]) * 1e3:.1f} ms CPU (medians)"
        )
        for kind in kinds[1:]:
            wall = [t[0] / p[0] for t, p in zip(times[kind], times["plain"], strict=True)]
            cpu = [t[1] / p[1] for t, p in zip(times[kind], times["plain"], strict=True)]
            outputs = f" ({steps[kind][1]} outputs)" if kind.startswith("layer") else ""
            print(f"  {kind + outputs:<28} wall {summary(wall):<20} CPU {summary(cpu)}")
        if "plain qkeras" in times:  # QKeras' activation gradient in both steps: the old ratios
            for kind in ("io qkeras", "layer qkeras"):
                if kind in times:
                    base = times["plain qkeras"]
                    cpu = [t[1] / p[1] for t, p in zip(times[kind], base, strict=True)]
                    print(f"  {kind + ' / plain qkeras':<28} CPU {summary(cpu)}")


if __name__ == "__main__":
    main()
