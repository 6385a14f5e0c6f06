"""The compiled ART classifier gives ART's own gradients and attacks, only faster."""

from __future__ import annotations

import numpy as np
import pytest

import trainables  # noqa: F401


@pytest.fixture(scope="module")
def pair():  # type: ignore[no-untyped-def]
    import tf_keras
    from art.estimators.classification import TensorFlowV2Classifier

    from trainables.compiled import CompiledClassifier
    from trainables.config import TrialConfig
    from trainables.models import build_model

    tf_keras.utils.set_random_seed(3)
    model = build_model(TrialConfig(bits="4"), (8, 8, 1), 10)

    def make(cls, **kw):  # type: ignore[no-untyped-def]
        return cls(
            model=model, nb_classes=10, input_shape=(8, 8, 1), clip_values=(0.0, 1.0),
            loss_object=tf_keras.losses.CategoricalCrossentropy(from_logits=True), **kw,
        )  # fmt: skip

    return make(TensorFlowV2Classifier), make(CompiledClassifier), make


def _data(n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, n)


def test_gradients_equal_arts(pair) -> None:  # type: ignore[no-untyped-def]
    import tensorflow as tf

    art, fast, _ = pair
    x, labels = _data()
    onehot = np.eye(10, dtype=np.float32)[labels]
    want = art.loss_gradient(x, onehot)
    for y in (onehot, labels):  # indices too (ART's own needs one-hot here)
        np.testing.assert_allclose(fast.loss_gradient(x, y), want, atol=1e-6)
    as_tensor = fast.loss_gradient(tf.constant(x), tf.constant(onehot))
    assert isinstance(as_tensor, tf.Tensor)  # ART's TF attacks pass tensors and expect tensors
    np.testing.assert_allclose(as_tensor.numpy(), art.loss_gradient(x, onehot), atol=1e-6)
    for label in (None, 3, labels):
        want = art.class_gradient(x, label=label)
        got = fast.class_gradient(x, label=label)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.slow
def test_art_attacks_give_the_same_examples(pair) -> None:  # type: ignore[no-untyped-def]
    from art.attacks.evasion import DeepFool, FastGradientMethod, ProjectedGradientDescent

    art, fast, _ = pair
    x, labels = _data()
    y = np.eye(10, dtype=np.float32)[labels]
    for make in (
        lambda c: FastGradientMethod(c, eps=0.1),
        lambda c: ProjectedGradientDescent(
            c, eps=0.1, eps_step=0.02, max_iter=5, num_random_init=0, verbose=False
        ),
        lambda c: DeepFool(c, max_iter=5, verbose=False),  # class gradients
    ):
        np.testing.assert_allclose(make(fast).generate(x, y), make(art).generate(x, y), atol=1e-5)


def test_preprocessing_falls_back_to_arts_code(pair) -> None:  # type: ignore[no-untyped-def]
    from art.estimators.classification import TensorFlowV2Classifier

    from trainables.compiled import CompiledClassifier

    *_, make = pair
    art = make(TensorFlowV2Classifier, preprocessing=(0.5, 0.25))
    fast = make(CompiledClassifier, preprocessing=(0.5, 0.25))
    assert not fast._fast(False) and not fast._fast(True)
    x, labels = _data()
    onehot = np.eye(10, dtype=np.float32)[labels]
    np.testing.assert_allclose(
        fast.loss_gradient(x, onehot), art.loss_gradient(x, onehot), atol=1e-6
    )


def test_a_disconnected_input_gradient_is_zero_not_an_error(pair) -> None:  # type: ignore[no-untyped-def]
    """TensorFlow has no gradient for Round: the tape gives None, which ART cannot use.
    The compiled classifier gives zeros (what gradient masking looks like to an attack)."""
    import tensorflow as tf
    import tf_keras
    from art.attacks.evasion import ProjectedGradientDescent

    from trainables.compiled import CompiledClassifier

    art, *_ = pair
    inp = tf_keras.Input((8, 8, 1))
    rounding = tf_keras.Model(
        inp, art.model(tf_keras.layers.Lambda(lambda t: tf.round(t * 4) / 4)(inp))
    )
    with tf.GradientTape() as tape:
        x = tf.constant(_data(2)[0])
        tape.watch(x)
        out = tf.reduce_sum(rounding(x, training=False))
    assert tape.gradient(out, x) is None  # the fact this guards against
    fast = CompiledClassifier(
        model=rounding, nb_classes=10, input_shape=(8, 8, 1), clip_values=(0.0, 1.0),
        loss_object=tf_keras.losses.CategoricalCrossentropy(from_logits=True),
    )  # fmt: skip
    x, labels = _data()
    onehot = np.eye(10, dtype=np.float32)[labels]
    assert np.array_equal(fast.loss_gradient(x, onehot), np.zeros_like(x))
    assert np.array_equal(fast.class_gradient(x, label=3), np.zeros((16, 1, 8, 8, 1), np.float32))
    assert np.array_equal(fast.class_gradient(x), np.zeros((16, 10, 8, 8, 1), np.float32))
    adv = ProjectedGradientDescent(fast, eps=0.1, eps_step=0.02, max_iter=3, verbose=False)
    np.testing.assert_array_equal(adv.generate(x, onehot), x)  # no step without a gradient
