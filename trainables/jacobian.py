"""Jacobian Regularization (Hoffman, Roberts & Yaida 2019).

For logits z = f(x) with C classes, ||J||_F^2 = C * E_v ||v^T J||^2 for v
uniform on the unit sphere of R^C.  The estimator below draws ``n_proj``
such v per example and needs one extra backward pass per projection
(one nested GradientTape); 1 projection is enough for training.  Per-layer
JR regularizes several outputs with one backward pass per projection.
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
    """mean_b ||J_b||_F^2 from the full Jacobian (tests and diagnostics only).

    ``batch_jacobian`` takes J_b = d(sum_b' z_b') / d x_b.  That is the
    per-example Jacobian unless the examples interact, as they do through
    training-mode batch norms: there it differs from both the per-example
    blocks and what ``logits_and_jr`` estimates (C x E||v^T J||^2 sums every
    block d z_b' / d x_b squared): 290 vs 332 (per-example blocks: 310) on 4
    examples through conv -> batch norm -> ReLU -> dense.
    """
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

    penalty estimates sum_i weights[i] * mean_b ||d out_i / d x||_F^2, each
    output flattened per example.  All outputs share one backward pass per
    projection: with independent Rademacher vectors u_i (entries +-1, so
    E[u_i u_i^T] = I) and v_i = sqrt(w_i) u_i,

        E || sum_i v_i^T J_i ||^2 = sum_i w_i ||J_i||_F^2

    because the cross terms E[v_i^T J_i J_j^T v_j] vanish for i != j.  For L
    outputs this costs one backward pass instead of L.  Rademacher rather
    than the sphere of ``logits_and_jr``: as unbiased, a variance no larger
    than Gaussian vectors' (Hutchinson 1990), and far cheaper to draw for the
    large hidden outputs (the normal draws took a fifth of a DS-CNN step).
    """
    x = tf.convert_to_tensor(x)
    with tf.GradientTape(persistent=n_proj > 1) as tape:
        tape.watch(x)
        outs = forward(x)
    weighted = [(out, w) for out, w in zip(outs, weights, strict=True) if w != 0.0]
    batch = tf.cast(tf.shape(x)[0], x.dtype)
    total = tf.constant(0.0, x.dtype)
    if weighted:
        for _ in range(n_proj):
            projections = []
            for out, w in weighted:
                bits = tf.random.uniform(tf.shape(out), maxval=2, dtype=tf.int32)
                sign = tf.cast(2 * bits - 1, x.dtype)  # Rademacher, same shape as out
                projections.append(sign * (w**0.5))
            vj = tape.gradient([out for out, _ in weighted], x, output_gradients=projections)
            total += tf.reduce_sum(tf.square(vj))
    if n_proj > 1:
        del tape
    return outs[0], total / (float(n_proj) * batch)


def layer_jacobian_sq_norm(forward: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor) -> tf.Tensor:
    """mean_b ||d h / d x||_F^2 for any layer output h (exact, via batch_jacobian)."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        h = forward(x)
        flat = tf.reshape(h, [tf.shape(h)[0], -1])  # (B, D)
    jac = tape.batch_jacobian(flat, x)  # (B, D, *input)
    return tf.reduce_mean(tf.reduce_sum(tf.reshape(tf.square(jac), [tf.shape(jac)[0], -1]), axis=1))
