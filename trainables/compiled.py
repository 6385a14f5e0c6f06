"""ART's TensorFlowV2Classifier with its gradients compiled by ``tf.function``.

ART's white-box attacks spend most of their time in the estimator's
``loss_gradient`` / ``class_gradient``, which ART runs eagerly (a Python
dispatch per layer and per op, every step).  This subclass traces each
gradient once per model into a graph and calls it with the whole batch, so an
attack's steps run at graph speed.  The attacks themselves are ART's,
untouched.  A disconnected input gradient (None in TensorFlow) comes back
as zeros.  Anything this fast path does not cover (training-mode gradients,
ART preprocessing or defences) falls back to ART's own code, so results are
the same either way (tests compare the two).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
from art.estimators.classification import TensorFlowV2Classifier
from art.utils import check_and_transform_label_format

# A model whose output does not depend differentiably on its input (an input
# layer that rounds: TF registers no gradient for Round, Floor, Cast, argmax)
# has a gradient of None; ART's attacks would fail on it.  It is a zero
# gradient, which is what gradient masking looks like: give ART zeros.
ZERO = tf.UnconnectedGradients.ZERO


class CompiledClassifier(TensorFlowV2Classifier):
    """A TensorFlowV2Classifier whose loss and class gradients run inside ``tf.function``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model, loss = self._model, self._loss_object
        x_spec = tf.TensorSpec([None, *self.input_shape], tf.float32)

        @tf.function(input_signature=[x_spec, tf.TensorSpec([None, self.nb_classes], tf.float32)])
        def loss_gradient(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = loss(y, model(x, training=False))
            return tape.gradient(value, x, unconnected_gradients=ZERO)

        @tf.function(input_signature=[x_spec, tf.TensorSpec([None], tf.int32)])
        def picked_gradient(x: tf.Tensor, label: tf.Tensor) -> tf.Tensor:
            # Inference mode: samples do not interact, so the gradient of the
            # sum of each sample's picked logit is each sample's own gradient.
            with tf.GradientTape() as tape:
                tape.watch(x)
                picked = tf.gather(model(x, training=False), label, axis=1, batch_dims=1)
            return tape.gradient(picked, x, unconnected_gradients=ZERO)

        @tf.function(input_signature=[x_spec])
        def all_gradients(x: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                tape.watch(x)
                logits = model(x, training=False)
            # (batch, classes, *input)
            return tape.batch_jacobian(logits, x, unconnected_gradients=ZERO)

        self._compiled_loss_gradient = loss_gradient
        self._picked_gradient = picked_gradient
        self._all_gradients = all_gradients

    def _fast(self, training_mode: bool) -> bool:
        """True when ART would apply nothing around the model (no preprocessing, no defences)."""
        return (
            not training_mode
            and all(_identity(op) for op in self.preprocessing_operations)
            and self._loss_object is not None
            and not self._reduce_labels
        )

    def loss_gradient(
        self, x: np.ndarray | tf.Tensor, y: np.ndarray | tf.Tensor, training_mode: bool = False,
        **kwargs: Any,
    ) -> np.ndarray | tf.Tensor:  # fmt: skip
        if not self._fast(training_mode):
            return super().loss_gradient(x, y, training_mode=training_mode, **kwargs)
        labels = check_and_transform_label_format(np.asarray(y), self.nb_classes)
        grad = self._compiled_loss_gradient(
            tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(labels, tf.float32)
        )
        return (
            grad.numpy().astype(np.asarray(x).dtype, copy=False)
            if isinstance(x, np.ndarray)
            else grad
        )

    def class_gradient(
        self, x: np.ndarray, label: int | list[int] | np.ndarray | None = None,
        training_mode: bool = False, **kwargs: Any,
    ) -> np.ndarray:  # fmt: skip
        if not self._fast(training_mode):
            return super().class_gradient(x, label=label, training_mode=training_mode, **kwargs)
        xt = tf.convert_to_tensor(x, tf.float32)
        if label is None:
            grads: np.ndarray = self._all_gradients(xt).numpy()
            return grads
        labels = np.broadcast_to(np.asarray(label, dtype=np.int32), (len(x),))
        return np.expand_dims(self._picked_gradient(xt, tf.constant(labels)).numpy(), axis=1)


def _identity(op: Any) -> bool:
    """ART's default preprocessing: standardisation with mean 0 and std 1 (does nothing)."""
    mean, std = getattr(op, "mean", None), getattr(op, "std", None)
    return (
        type(op).__name__.startswith("StandardisationMeanStd")
        and mean is not None
        and std is not None
        and bool(np.all(np.asarray(mean) == 0.0))
        and bool(np.all(np.asarray(std) == 1.0))
    )
