"""The training loop: cross-entropy (+ Jacobian Regularization) in one
``tf.function`` step, fed by a batched, prefetched tf.data pipeline."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from trainables.jacobian import logits_and_jr


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


def fit(
    model: tf_keras.Model,
    data: tf.data.Dataset,
    epochs: int,
    learning_rate: float,
    jr_weight: float = 0.0,
    jr_projections: int = 1,
) -> None:
    """Train ``model`` (logits output) in place; handles tfmot pruning wrappers."""
    optimizer = tf_keras.optimizers.Adam(learning_rate)
    ce = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = model.trainable_variables

    @tf.function
    def step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape, _training_phase():
            if jr_weight > 0.0:
                logits, jr = logits_and_jr(lambda t: model(t, training=True), x, jr_projections)
                loss = ce(y, logits) + jr_weight * jr
            else:
                loss = ce(y, model(x, training=True))
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss

    # Pruning wrappers count steps in their own call; the callback only
    # resets the counter and applies the final masks at each epoch end.
    pruning = tfmot.sparsity.keras.UpdatePruningStep()
    pruning.set_model(model)
    pruning.on_train_begin()
    for epoch in range(epochs):
        for x, y in data:
            loss = step(x, y)
        pruning.on_epoch_end(epoch)
    if not np.isfinite(float(loss)):
        raise FloatingPointError(
            f"training diverged: loss {float(loss)} (learning_rate {learning_rate}, jr_weight {jr_weight})"
        )


def predict_logits(model: tf_keras.Model, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits in inference mode (stochastic quantizers are deterministic here)."""
    fwd = tf.function(lambda t: model(t, training=False))
    return np.concatenate(
        [fwd(x[i : i + batch_size]).numpy() for i in range(0, len(x), batch_size)]
    )
