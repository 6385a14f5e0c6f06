"""The training loop: cross-entropy (+ Jacobian Regularization) in one
``tf.function`` step, fed by a batched, prefetched tf.data pipeline."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras
from qkeras import QActivation
from qkeras.quantizers import quantized_relu

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


def _exact_moments(
    inputs: tf.Tensor, reduction_axes: list[int], keep_dims: bool, mask: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    # Batch mean and (biased) variance as plain ops, the mean differentiable
    # inside the variance.  ``tf.nn.moments`` (what unfused Keras batch norm
    # calls) stops the mean's gradient there: exact for first derivatives,
    # wrong for the second ones double backprop takes.
    if mask is not None:
        raise ValueError("masked batch norm in a JR step is not supported")
    mean = tf.reduce_mean(inputs, reduction_axes, keepdims=True)
    variance = tf.reduce_mean(
        tf.math.squared_difference(inputs, mean), reduction_axes, keepdims=True
    )
    if not keep_dims:
        mean, variance = tf.squeeze(mean, reduction_axes), tf.squeeze(variance, reduction_axes)
    return mean, variance


def compact_batch_norm(
    x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, epsilon: float
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Training-mode batch norm over every axis but the last: (y, batch mean, biased variance).

    The same function as Keras' batch norm in training mode (statistics of
    this batch), with its first derivative written out in closed form,

        dx = gamma / sigma * (dy - mean(dy) - xhat * mean(dy * xhat)),
        dgamma = sum(dy * xhat),  dbeta = sum(dy)     (sums over B, H, W),

    from ops that are themselves differentiable: double backprop then
    differentiates these few ops (exactly: the mean stays inside the
    variance) instead of the autodiff graph of mean, variance and
    normalisation (a ResNet-8 io JR step runs 740 ops instead of 842).  Channels last; ``x`` (B, ..., C), ``gamma``/``beta`` (C,).
    Mean and variance come back without gradient (for the moving averages).
    """
    axes = list(range(x.shape.rank - 1))
    stats: list[tf.Tensor] = []

    @tf.custom_gradient
    def norm(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) -> Any:
        mean = tf.reduce_mean(x, axes, keepdims=True)  # (1, ..., C)
        centred = x - mean
        variance = tf.reduce_mean(tf.square(centred), axes, keepdims=True)
        rstd = tf.math.rsqrt(variance + epsilon)  # 1 / sigma
        xhat = centred * rstd
        stats.extend([mean, variance])

        def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            n = tf.cast(tf.size(x) // tf.size(gamma), x.dtype)  # examples per channel
            dbeta = tf.reduce_sum(dy, axes)  # (C,)
            dgamma = tf.reduce_sum(dy * xhat, axes)  # (C,)
            dx = (gamma * rstd) * (dy - dbeta / n - xhat * (dgamma / n))
            return dx, dgamma, dbeta

        return xhat * gamma + beta, grad

    y = norm(x, gamma, beta)
    mean, variance = (tf.stop_gradient(tf.reshape(t, [-1])) for t in stats)
    return y, mean, variance


def _compact_call(bn: tf_keras.layers.BatchNormalization) -> Callable[..., tf.Tensor]:
    """A replacement for ``bn._fused_batch_norm`` that trains through ``compact_batch_norm``.

    Outside training (``training`` not the constant True) it defers to the
    layer's own method.  The moving averages update as Keras' unfused path
    updates them (biased batch variance, ``_assign_moving_average``).
    """
    own = bn._fused_batch_norm

    def call(inputs: tf.Tensor, mask: tf.Tensor | None = None, training: Any = None) -> tf.Tensor:
        if training is not True:
            return own(inputs, mask=mask, training=training)
        if mask is not None:
            raise ValueError("masked batch norm in a JR step is not supported")
        c = inputs.shape[-1]
        gamma = tf.convert_to_tensor(bn.gamma) if bn.scale else tf.ones([c], inputs.dtype)
        beta = tf.convert_to_tensor(bn.beta) if bn.center else tf.zeros([c], inputs.dtype)
        y, mean, variance = compact_batch_norm(inputs, gamma, beta, bn.epsilon)
        momentum = tf.convert_to_tensor(bn.momentum)
        bn.add_update(lambda: bn._assign_moving_average(bn.moving_mean, mean, momentum, None))
        bn.add_update(
            lambda: bn._assign_moving_average(bn.moving_variance, variance, momentum, None)
        )
        return y

    return call


# How JR steps trace their batch norms; all three differentiate twice exactly
# (float64 finite differences, tests/test_defences.py):
#   "unfused"  Keras' unfused path with ``_exact_moments`` (the fastest
#              measured: io JR 2.27x / 2.22x a plain step on ResNet-8 /
#              DS-CNN, fused 2.40x / 2.70x, before issue 21);
#   "compact"  ``compact_batch_norm``: 12% fewer ops, but within the noise of
#              "unfused" in wall and CPU time (issue 21: CPU-time medians
#              2.26x against 2.22x on ResNet-8, 2.53x against 2.50x on
#              DS-CNN, 30 interleaved repeats; docs/performance.md), so not
#              the default: it would change the step's rounding for nothing;
#   "fused"    TensorFlow's fused kernel (float32 only).
JR_BATCH_NORM: str = "unfused"


def _compactable(bn: tf_keras.layers.BatchNormalization) -> bool:
    # compact_batch_norm covers the plain channels-last batch norm robustgrid builds
    spec = bn.input_spec
    return (
        spec is not None
        and spec.ndim is not None
        and list(bn.axis) == [spec.ndim - 1]
        and not bn.renorm
        and not bn.synchronized
        and bn.virtual_batch_size is None
        and bn.adjustment is None
    )


@contextlib.contextmanager
def _exact_batch_norm(
    model: tf_keras.Model, active: bool, kind: str | None = None
) -> Iterator[None]:
    """Batch norms that double backprop differentiates exactly, while a JR step traces.

    TensorFlow's fused batch norm (float32, 4-D inputs: every batch norm
    robustgrid builds) has exact second derivatives; Keras' unfused path
    (float64, or ``fused=False``) does not: ``tf.nn.moments`` holds the mean
    constant inside the variance (a JR gradient 2.7% off on a conv kernel,
    and non-zero on a conv bias feeding a batch norm, whose true gradient is
    0).  ``kind`` (default ``JR_BATCH_NORM``): "compact" trains every
    channels-last batch norm through ``compact_batch_norm`` (the others as
    "unfused"); "unfused" unfuses the fused ones and gives every batch norm
    ``_exact_moments``; "fused" keeps fused ones fused and gives the unfused
    ones ``_exact_moments``.  All is put back on exit (it matters only while
    a step traces).
    """
    kind = JR_BATCH_NORM if kind is None else kind
    if kind not in ("compact", "unfused", "fused"):
        raise ValueError(f"unknown batch norm kind {kind!r}")
    norms = [
        m for m in model.submodules if active and isinstance(m, tf_keras.layers.BatchNormalization)
    ]
    compact = [bn for bn in norms if kind == "compact" and _compactable(bn)]
    was_fused = {id(bn): bn.fused for bn in compact}
    for bn in compact:
        bn._fused_batch_norm = _compact_call(bn)
        bn.fused = True  # call() then goes to _fused_batch_norm, whatever the dtype
    unfused = [bn for bn in norms if bn not in compact and kind == "unfused" and bn.fused]
    for bn in unfused:
        bn.fused = False
    patched = [bn for bn in norms if bn not in compact and not bn.fused]
    for bn in patched:
        bn._calculate_mean_and_var = _exact_moments
    try:
        yield
    finally:
        for bn in compact:
            del bn._fused_batch_norm
            bn.fused = was_fused[id(bn)]
        for bn in patched:
            del bn._calculate_mean_and_var
        for bn in unfused:
            bn.fused = True


def _plain_quantized_relu(q: Any) -> bool:
    """QKeras' ``quantized_relu`` as robustgrid builds it (``activation``: bits, integer 0):
    straight-through, no sigmoid, no leak, no stochastic rounding, clipped at its top level."""
    return (
        type(q) is quantized_relu
        and not q.use_sigmoid
        and q.negative_slope == 0.0
        and not q.use_stochastic_rounding
        and q.relu_upper_bound is None
        and q.is_quantized_clip
        and q.use_ste
        and q.qnoise_factor == 1.0
        and not q.use_variables
    )


def _relu_ste(q: Any) -> Callable[[tf.Tensor], tf.Tensor]:
    """``q`` (a plain ``quantized_relu``) with the same values and the same gradient, cheaper.

    QKeras' straight-through output is ``x_u + stop_gradient(xq - x_u)`` with
    ``x_u = where(x <= top, relu(x), top)``: its gradient is ``dy`` where
    ``0 < x <= top`` and 0 elsewhere, which TensorFlow builds as a SelectV2 and
    a ReluGrad (and their own gradients again in a JR step's double backprop).
    Here the forward is ``q``'s own ops (the same values) and the gradient that
    mask applied in one select; the mask does not depend on anything
    differentiable, so the second derivatives are the original's (zero through
    x, the mask through dy).  Tested against the original op's gradients and
    a JR step's weights (tests/test_jacobian.py).
    """
    non_sign_bits = q.bits  # negative_slope == 0: no sign bit
    top = np.float32(2.0**q.integer) - np.float32(2.0 ** (q.integer - non_sign_bits))

    @tf.custom_gradient
    def relu_ste(x: tf.Tensor) -> Any:
        def grad(dy: tf.Tensor) -> tf.Tensor:
            return tf.where((x > 0.0) & (x <= top), dy, tf.zeros_like(dy))

        return q(x), grad

    return relu_ste


# Whether training steps trace plain quantized_relu activations as ``_relu_ste`` (the same
# values and gradients; benchmarks/jr_cost.py switches it off to time QKeras' own).
CHEAP_ACTIVATION_GRADIENTS: bool = True


@contextlib.contextmanager
def _cheap_activation_gradients(model: tf_keras.Model) -> Iterator[None]:
    """While a step traces, plain float32 ``quantized_relu`` activations take ``_relu_ste``."""
    layers = [
        m
        for m in model.submodules
        if CHEAP_ACTIVATION_GRADIENTS
        and isinstance(m, QActivation)
        and m.compute_dtype == "float32"
        and _plain_quantized_relu(m.quantizer)
    ]
    saved = [layer.quantizer for layer in layers]
    for layer, q in zip(layers, saved, strict=True):
        layer.quantizer = _relu_ste(q)
    try:
        yield
    finally:
        for layer, q in zip(layers, saved, strict=True):
            layer.quantizer = q


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
    projection (``jacobian.outputs_and_jr``).  JR steps differentiate the
    batch norms twice, exactly (``_exact_batch_norm``: never Keras'
    unfused ``tf.nn.moments``, whose second derivatives are wrong).
    ``hold_zeros`` (variable, keep mask) pairs stay zero where the mask is
    False after every step.
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
        with (
            tf.GradientTape() as tape,
            _training_phase(),
            _exact_batch_norm(model, jr),
            _cheap_activation_gradients(model),
        ):
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


def output_in(model: tf_keras.Model, layer: tf_keras.layers.Layer) -> Any:
    """``layer``'s output in ``model``'s graph.

    A layer shared by several models (compress.cluster clones a model around
    the very same non-weight layers, to keep their weights) has one output
    per model; ``layer.output`` is the first model's, disconnected from this one.
    """
    for i in range(len(layer._inbound_nodes)):
        if f"{layer.name}_ib-{i}" in model._network_nodes:  # tf_keras' node key
            return layer.get_output_at(i)
    return layer.output


def probe_model(model: tf_keras.Model, names: list[str]) -> tf_keras.Model:
    """Same layers, more outputs: [logits, output of each named layer]."""
    return tf_keras.Model(
        model.inputs, [model.output, *(output_in(model, find_layer(model, n)) for n in names)]
    )


def jr_layer_names(model: tf_keras.Model, spec: dict[str, float]) -> dict[str, float]:
    """Expand ``{"all": w}`` to every activation layer of the model (its hidden representations)."""
    if "all" not in spec:
        return dict(spec)
    from qkeras import QActivation

    w = spec["all"]
    return {layer.name: w for layer in model.layers if isinstance(layer, QActivation)}
