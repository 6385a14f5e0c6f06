"""Jacobian Regularization (Hoffman, Roberts & Yaida 2019).

For logits z = f(x) with C classes, ||J||_F^2 = C * E_v ||v^T J||^2 for v
uniform on the unit sphere of R^C.  The estimator below draws ``n_proj``
such v per example and needs one extra backward pass per projection
(one nested GradientTape); 1 projection is enough for training.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf


def logits_and_jr(
    forward: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor, n_proj: int = 1
) -> tuple[tf.Tensor, tf.Tensor]:
    """Return (logits (B, C), penalty ()) where penalty estimates mean_b ||J_b||_F^2.

    penalty = C / (n_proj * B) * sum_{b, p} ||v_{b,p}^T J_b||^2
    Call it inside the training step's own GradientTape so the penalty is
    differentiated with respect to the weights (double backprop).
    """
    x = tf.convert_to_tensor(x)
    with tf.GradientTape(persistent=n_proj > 1) as tape:
        tape.watch(x)
        logits = forward(x)  # (B, C)
    batch = tf.cast(tf.shape(logits)[0], logits.dtype)
    classes = tf.cast(tf.shape(logits)[1], logits.dtype)
    total = tf.constant(0.0, logits.dtype)
    for _ in range(n_proj):
        v = tf.random.normal(tf.shape(logits), dtype=logits.dtype)  # (B, C)
        v = v / tf.norm(v, axis=1, keepdims=True)  # unit vector per example
        vj = tape.gradient(logits, x, output_gradients=v)  # (B, *input) = v^T J per example
        total += tf.reduce_sum(tf.square(vj))
    if n_proj > 1:
        del tape
    return logits, classes * total / (float(n_proj) * batch)


def exact_jacobian_sq_norm(forward: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor) -> tf.Tensor:
    """mean_b ||J_b||_F^2 from the full Jacobian (tests and diagnostics only)."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = forward(x)  # (B, C)
    jac = tape.batch_jacobian(logits, x)  # (B, C, *input)
    return tf.reduce_mean(tf.reduce_sum(tf.reshape(tf.square(jac), [tf.shape(jac)[0], -1]), axis=1))


def outputs_and_jr(
    forward: Callable[[tf.Tensor], list[tf.Tensor]],
    x: tf.Tensor,
    weights: list[float],
    n_proj: int = 1,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-layer JR: ``forward`` returns [logits, h_1, ..., h_L]; returns (logits, penalty).

    penalty = sum_i weights[i] * estimate of mean_b ||d out_i / d x||_F^2, each
    output flattened per example, with the same random-projection estimator
    (dimension D_i of the output in place of C).  One forward pass; one
    backward pass per weighted output and projection.
    """
    x = tf.convert_to_tensor(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        outs = forward(x)
    batch = tf.cast(tf.shape(x)[0], x.dtype)
    penalty = tf.constant(0.0, x.dtype)
    for out, w in zip(outs, weights, strict=True):
        if w == 0.0:
            continue
        flat = tf.reshape(out, [tf.shape(out)[0], -1])  # (B, D)
        dim = tf.cast(tf.shape(flat)[1], x.dtype)
        total = tf.constant(0.0, x.dtype)
        for _ in range(n_proj):
            v = tf.random.normal(tf.shape(flat), dtype=x.dtype)
            v = v / tf.norm(v, axis=1, keepdims=True)
            vj = tape.gradient(out, x, output_gradients=tf.reshape(v, tf.shape(out)))
            total += tf.reduce_sum(tf.square(vj))
        penalty += w * dim * total / (float(n_proj) * batch)
    del tape
    return outs[0], penalty


def layer_jacobian_sq_norm(forward: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor) -> tf.Tensor:
    """mean_b ||d h / d x||_F^2 for any layer output h (exact, via batch_jacobian)."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        h = forward(x)
        flat = tf.reshape(h, [tf.shape(h)[0], -1])  # (B, D)
    jac = tape.batch_jacobian(flat, x)  # (B, D, *input)
    return tf.reduce_mean(tf.reduce_sum(tf.reshape(tf.square(jac), [tf.shape(jac)[0], -1]), axis=1))
