"""The training loop: cross-entropy (+ Jacobian Regularization) in one
``tf.function`` step, fed by a batched, prefetched tf.data pipeline."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from trainables.jacobian import logits_and_jr, outputs_and_jr


def dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> tf.data.Dataset:
    """Shuffled (reshuffled each epoch), batched, prefetched; no per-sample Python."""
    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


@contextlib.contextmanager
def _training_phase() -> Iterator[None]:
    # QKeras' stochastic_ternary switches on K.learning_phase(), which the
    # ``training=True`` argument does not set: without this scope it would
    # train deterministically.  The scope is deprecated, so hush its warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with tf_keras.backend.learning_phase_scope(1):
            yield


@contextlib.contextmanager
def _unfused_batch_norm(model: tf_keras.Model, unfuse: bool) -> Iterator[None]:
    # JR differentiates the batch norms' gradients once more, and TensorFlow
    # gets that wrong for its fused kernel: the gradient of FusedBatchNormGradV3
    # treats the batch mean and variance as constants (tensorflow/tensorflow
    # #20407), off by 1-30% on ResNet-8's weights against a float64 reference
    # (tests/test_defences.py).  The same normalisation in plain ops
    # differentiates twice exactly, and faster: an input-output JR step on
    # ResNet-8 took 2.06x a plain step with fused batch norms, 1.84x unfused
    # (benchmarks/jr_cost.py).  Unfused only while a JR step traces.
    layers = [
        m
        for m in model.submodules
        if unfuse and isinstance(m, tf_keras.layers.BatchNormalization) and m.fused
    ]
    for layer in layers:
        layer.fused = False
    try:
        yield
    finally:
        for layer in layers:
            layer.fused = True


def training_step(
    model: tf_keras.Model,
    learning_rate: float,
    jr_weight: float = 0.0,
    jr_projections: int = 1,
    jr_layers: dict[str, float] | None = None,
    hold_zeros: list[tuple[tf.Variable, np.ndarray]] | None = None,
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """One optimiser step on a batch (x, y) in a ``tf.function``; returns the loss.

    Cross-entropy, + ``jr_weight`` x input-output JR, + per-layer JR on the
    outputs of ``jr_layers`` (layer name -> weight).  With per-layer JR the
    logits' and every layer's penalties share one backward pass per
    projection (``jacobian.outputs_and_jr``); JR steps trace batch norms
    unfused (``_unfused_batch_norm``).  ``hold_zeros`` (variable,
    keep mask) pairs stay zero where the mask is False after every step.
    """
    optimizer = tf_keras.optimizers.Adam(learning_rate)
    ce = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = model.trainable_variables
    layered = {k: v for k, v in (jr_layers or {}).items() if v > 0.0}
    probe = probe_model(model, list(layered)) if layered else None
    weights = [jr_weight, *layered.values()]
    held = [(var, tf.constant(keep, dtype=var.dtype)) for var, keep in hold_zeros or []]

    @tf.function
    def step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        jr = probe is not None or jr_weight > 0.0
        with tf.GradientTape() as tape, _training_phase(), _unfused_batch_norm(model, jr):
            if probe is not None:
                logits, penalty = outputs_and_jr(
                    lambda t: probe(t, training=True), x, weights, jr_projections
                )
                loss = ce(y, logits) + penalty
            elif jr_weight > 0.0:
                logits, penalty = logits_and_jr(
                    lambda t: model(t, training=True), x, jr_projections
                )
                loss = ce(y, logits) + jr_weight * penalty
            else:
                loss = ce(y, model(x, training=True))
            if model.losses:  # weight decay the model declares (MLPerf Tiny references: l2 1e-4)
                loss += tf.add_n(model.losses)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        for var, keep in held:
            var.assign(var * keep)
        return loss

    return step


def fit(
    model: tf_keras.Model,
    data: tf.data.Dataset,
    epochs: int,
    learning_rate: float,
    jr_weight: float = 0.0,
    jr_projections: int = 1,
    jr_layers: dict[str, float] | None = None,
    adversary: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    adv_ratio: float = 0.0,
    hold_zeros: list[tuple[tf.Variable, np.ndarray]] | None = None,
) -> None:
    """Train ``model`` (logits output) in place; handles tfmot pruning wrappers.

    The step is ``training_step``'s (JR and ``hold_zeros`` as documented
    there); ``adversary`` (an ART attack's generate) replaces the first
    ``adv_ratio`` share of each batch with adversarial examples.
    """
    step = training_step(model, learning_rate, jr_weight, jr_projections, jr_layers, hold_zeros)
    # Pruning wrappers count steps in their own call; the callback only
    # resets the counter and applies the final masks at each epoch end.
    pruning = tfmot.sparsity.keras.UpdatePruningStep()
    pruning.set_model(model)
    pruning.on_train_begin()
    n_adv = 0
    for epoch in range(epochs):
        for x, y in data:
            if adversary is not None and adv_ratio > 0.0:
                xb, yb = x.numpy(), y.numpy()
                n_adv = round(adv_ratio * len(xb))
                if n_adv:
                    xb[:n_adv] = adversary(xb[:n_adv], yb[:n_adv])
                x = tf.constant(xb)
            loss = step(x, y)
        pruning.on_epoch_end(epoch)
    if not np.isfinite(float(loss)):
        raise FloatingPointError(
            f"training diverged: loss {float(loss)} (learning_rate {learning_rate}, jr_weight {jr_weight})"
        )


def predict_logits(model: tf_keras.Model, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits in inference mode (stochastic quantizers are deterministic here)."""
    # Eager: a handful of batches per trial, not worth a (re)traced tf.function.
    return np.concatenate(
        [model(x[i : i + batch_size], training=False).numpy() for i in range(0, len(x), batch_size)]
    )


def find_layer(model: tf_keras.Model, name: str) -> tf_keras.layers.Layer:
    """A layer by its name, also when tfmot wrapped it (``prune_low_magnitude_<name>``)."""
    for layer in model.layers:
        if layer.name == name or layer.name.endswith("_" + name):
            return layer
    raise ValueError(
        f"jr_layers: no layer named {name!r} (layers: {[layer.name for layer in model.layers]})"
    )


def probe_model(model: tf_keras.Model, names: list[str]) -> tf_keras.Model:
    """Same layers, more outputs: [logits, output of each named layer]."""
    return tf_keras.Model(
        model.inputs, [model.output, *(find_layer(model, n).output for n in names)]
    )


def jr_layer_names(model: tf_keras.Model, spec: dict[str, float]) -> dict[str, float]:
    """Expand ``{"all": w}`` to every activation layer of the model (its hidden representations)."""
    if "all" not in spec:
        return dict(spec)
    from qkeras import QActivation

    w = spec["all"]
    return {layer.name: w for layer in model.layers if isinstance(layer, QActivation)}
