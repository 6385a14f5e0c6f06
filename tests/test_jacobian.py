"""The JR estimator against the exact Jacobian from batch_jacobian."""

from __future__ import annotations

import numpy as np
import pytest

import trainables  # noqa: F401
from trainables.config import TrialConfig


@pytest.mark.parametrize("bits", ["float", "4"])
def test_estimator_mean_matches_exact_frobenius(bits: str) -> None:
    import tensorflow as tf

    from trainables.data import load_split
    from trainables.jacobian import exact_jacobian_sq_norm, logits_and_jr
    from trainables.models import build_model

    split = load_split("digits", 0, 0.2)
    tf.random.set_seed(0)
    model = build_model(TrialConfig(bits=bits), split.input_shape, split.num_classes)
    x = tf.constant(split.x_test[:32])

    def fwd(t: tf.Tensor) -> tf.Tensor:
        return model(t, training=False)

    exact = float(exact_jacobian_sq_norm(fwd, x))
    estimates = [float(logits_and_jr(fwd, x, n_proj=16)[1]) for _ in range(25)]  # 400 projections
    assert exact > 0
    assert abs(np.mean(estimates) - exact) / exact < 0.10
    # One projection is noisy but unbiased: the spread shrinks with more projections.
    single = [float(logits_and_jr(fwd, x, n_proj=1)[1]) for _ in range(25)]
    assert np.std(single) > np.std(estimates)


def test_rademacher_signs_are_fair_and_independent() -> None:
    """Every entry +-scale; each of the 32 bit positions of a word fair; neighbours uncorrelated."""
    import tensorflow as tf

    from trainables.jacobian import rademacher

    tf.random.set_seed(0)
    odd = rademacher(
        tf.constant([7, 13, 11]), tf.float32, 0.5
    ).numpy()  # 1001: not a multiple of 32
    assert odd.shape == (7, 13, 11) and set(np.unique(odd)) == {-0.5, 0.5}
    n = 32 * 20_000
    signs = rademacher(tf.constant([n]), tf.float64).numpy()
    assert set(np.unique(signs)) == {-1.0, 1.0}
    # per bit position j (entries 32 i + j): 20,000 fair signs, sd of the mean 0.0071
    assert np.abs(signs.reshape(-1, 32).mean(axis=0)).max() < 0.03
    # neighbours within a word and across words: sd of the mean product 0.00125
    assert abs(np.mean(signs[:-1] * signs[1:])) < 0.006
    assert abs(np.mean(signs[:-32] * signs[32:])) < 0.006


def test_cheap_quantized_relu_gradient_is_the_original_ops() -> None:
    """``train._relu_ste`` against QKeras' own quantized_relu: values, first derivatives and the
    second derivatives double backprop takes (through the upstream gradient), at the kinks too."""
    import tensorflow as tf
    from qkeras.quantizers import quantized_relu

    import trainables.train as train

    for bits in (2, 4, 8):
        q = quantized_relu(bits, 0)
        top = 1.0 - 2.0**-bits
        x = tf.constant(
            np.concatenate([np.linspace(-1.0, 2.0, 601), [0.0, top, np.nextafter(top, 2.0), 1.0]]),
            tf.float32,
        )
        dy0 = np.random.default_rng(bits).normal(size=x.shape).astype(np.float32)
        results = []
        for fn in (q, train._relu_ste(q)):
            dy = tf.Variable(dy0)
            with tf.GradientTape(persistent=True) as outer:
                with tf.GradientTape() as inner:
                    inner.watch(x)
                    outer.watch(x)
                    y = fn(x)
                g = inner.gradient(y, x, output_gradients=dy.read_value())
                s = tf.reduce_sum(g**2)
            second_dy = outer.gradient(s, dy)
            second_x = outer.gradient(s, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            results.append([np.asarray(t) for t in (y, g, second_dy, second_x)])
        for original, cheap in zip(*results, strict=True):
            assert np.array_equal(original, cheap)
        assert results[0][1].any() and not results[0][1].all()  # the mask is neither 0 nor 1


@pytest.mark.parametrize("model", ["digits_cnn", pytest.param("ds_cnn", marks=pytest.mark.slow)])
def test_training_steps_are_unchanged_by_the_cheap_activation_gradient(
    model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain, input-output JR and per-layer JR steps (8-bit activations; DS-CNN's batch norms):
    the same losses and weights, bit for bit, with QKeras' activation gradient and with ours."""
    import tensorflow as tf
    import tf_keras

    import trainables.train as train
    from trainables.models import build_model

    shape, classes = {"digits_cnn": ((8, 8, 1), 10), "ds_cnn": ((49, 10, 1), 12)}[model]
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((8, *shape), dtype=np.float32))
    y = tf.constant(rng.integers(0, classes, 8))
    for kind in ("plain", "io", "layer"):
        runs = []
        for cheap in (False, True):
            monkeypatch.setattr(train, "CHEAP_ACTIVATION_GRADIENTS", cheap)
            tf_keras.utils.set_random_seed(0)
            m = build_model(TrialConfig(model=model, bits="4", activation_bits=8), shape, classes)
            assert any(train._plain_quantized_relu(getattr(k, "quantizer", None)) for k in m.layers)
            kw: dict = {} if kind == "plain" else {"jr_weight": 0.05}
            if kind == "layer":
                kw["jr_layers"] = train.jr_layer_names(m, {"all": 0.01})
            tf.random.set_seed(1)
            step = train.training_step(m, 1e-3, **kw)
            losses = [float(step(x, y)) for _ in range(2)]
            runs.append((losses, m.get_weights()))
        assert runs[0][0] == runs[1][0], kind
        for a, b in zip(runs[0][1], runs[1][1], strict=True):
            assert np.array_equal(a, b), kind
