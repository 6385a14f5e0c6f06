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
