"""Defences: per-layer Jacobian Regularization and adversarial training (ART)."""

from __future__ import annotations

import numpy as np
import pytest

import trainables  # noqa: F401
from trainables.config import TrialConfig


def _layer_norms(cfg: TrialConfig, names: list[str]) -> list[float]:
    import tensorflow as tf
    import tf_keras

    from trainables.jacobian import layer_jacobian_sq_norm
    from trainables.train import find_layer
    from trainables.trial import train_compressed, trial_split

    model, _ = train_compressed(cfg)
    x = tf.constant(trial_split(cfg).x_test[:32])
    out = []
    for name in names:
        sub = tf_keras.Model(model.input, find_layer(model, name).output)
        out.append(float(layer_jacobian_sq_norm(lambda t, sub=sub: sub(t, training=False), x)))
    return out


def test_per_layer_jr_lowers_the_regularized_layers_jacobian() -> None:
    base = TrialConfig(bits="float", epochs=3, seed=4)
    plain = _layer_norms(base, ["act1", "act2"])
    only_act1 = _layer_norms(
        base.model_copy(update={"jr_layers": {"act1": 0.05}}), ["act1", "act2"]
    )
    every = _layer_norms(base.model_copy(update={"jr_layers": {"all": 0.05}}), ["act1", "act2"])
    assert only_act1[0] < 0.8 * plain[0]  # the regularized layer
    assert every[0] < 0.8 * plain[0] and every[1] < 0.8 * plain[1]


def test_per_layer_estimator_matches_exact_hidden_jacobian() -> None:
    import tensorflow as tf
    import tf_keras

    from trainables.data import load_split
    from trainables.jacobian import layer_jacobian_sq_norm, outputs_and_jr
    from trainables.models import build_model
    from trainables.train import probe_model

    split = load_split("digits", 0, 0.2)
    tf.random.set_seed(1)
    model = build_model(TrialConfig(bits="4"), split.input_shape, split.num_classes)
    probe = probe_model(model, ["act2"])
    x = tf.constant(split.x_test[:16])
    exact = float(
        layer_jacobian_sq_norm(
            lambda t: tf_keras.Model(model.input, model.get_layer("act2").output)(t), x
        )
    )
    est = np.mean(
        [float(outputs_and_jr(lambda t: probe(t), x, [0.0, 1.0], n_proj=16)[1]) for _ in range(25)]
    )
    assert abs(est - exact) / exact < 0.10


def test_per_layer_estimator_sums_every_weighted_output_in_one_pass() -> None:
    import tensorflow as tf
    import tf_keras

    from trainables.data import load_split
    from trainables.jacobian import exact_jacobian_sq_norm, layer_jacobian_sq_norm, outputs_and_jr
    from trainables.models import build_model
    from trainables.train import probe_model

    split = load_split("digits", 0, 0.2)
    tf.random.set_seed(2)
    model = build_model(TrialConfig(bits="4"), split.input_shape, split.num_classes)
    probe = probe_model(model, ["act1", "act2"])
    x = tf.constant(split.x_test[:16])
    weights = [0.5, 1.0, 2.0]  # logits, act1, act2
    exact = 0.5 * float(exact_jacobian_sq_norm(lambda t: model(t), x))
    for w, name in zip(weights[1:], ["act1", "act2"], strict=True):
        sub = tf_keras.Model(model.input, model.get_layer(name).output)
        exact += w * float(layer_jacobian_sq_norm(lambda t, sub=sub: sub(t), x))
    est = np.mean(
        [float(outputs_and_jr(lambda t: probe(t), x, weights, n_proj=16)[1]) for _ in range(40)]
    )
    assert abs(est - exact) / exact < 0.10
    # a zero weight drops its output: only act2 is left
    only = 2.0 * float(
        layer_jacobian_sq_norm(
            lambda t: tf_keras.Model(model.input, model.get_layer("act2").output)(t), x
        )
    )
    est2 = np.mean(
        [
            float(outputs_and_jr(lambda t: probe(t), x, [0.0, 0.0, 2.0], n_proj=16)[1])
            for _ in range(25)
        ]
    )
    assert abs(est2 - only) / only < 0.10
    assert float(outputs_and_jr(lambda t: probe(t), x, [0.0, 0.0, 0.0])[1]) == 0.0


def test_jr_gradients_through_batch_norms_match_float64() -> None:
    """JR's double backprop through training-mode batch norms: unfused is right, fused is not.

    TensorFlow differentiates FusedBatchNormGradV3 as if the batch mean and
    variance were constants (tensorflow/tensorflow#20407), so the weights'
    gradients of a Jacobian penalty come out wrong; JR steps trace the batch
    norms unfused.  Reference: the same model in float64, where Keras never fuses.
    """
    import tensorflow as tf
    import tf_keras

    from trainables.jacobian import exact_jacobian_sq_norm
    from trainables.models import build_model
    from trainables.train import _unfused_batch_norm, training_step

    tf_keras.utils.set_random_seed(0)
    model = build_model(TrialConfig(model="resnet8", bits="float"), (8, 8, 3), 10)
    norms = [m for m in model.submodules if isinstance(m, tf_keras.layers.BatchNormalization)]
    assert norms and all(bn.fused for bn in norms)
    tf_keras.backend.set_floatx("float64")
    try:
        reference = build_model(TrialConfig(model="resnet8", bits="float"), (8, 8, 3), 10)
    finally:
        tf_keras.backend.set_floatx("float32")
    reference.set_weights([w.astype(np.float64) for w in model.get_weights()])
    x = np.random.default_rng(0).random((4, 8, 8, 3))

    def grads(net: tf_keras.Model, x: np.ndarray, unfuse: bool) -> list[np.ndarray]:
        with _unfused_batch_norm(net, unfuse), tf.GradientTape() as tape:
            jr = exact_jacobian_sq_norm(lambda t: net(t, training=True), tf.constant(x))
        return [g.numpy() for g in tape.gradient(jr, net.trainable_variables) if g is not None]

    exact = grads(reference, x, False)
    fused = grads(model, x.astype(np.float32), False)
    unfused = grads(model, x.astype(np.float32), True)
    assert all(bn.fused for bn in norms)  # put back after tracing

    def error(got: list[np.ndarray]) -> float:
        """Largest error relative to each variable's largest exact gradient."""
        pairs = list(zip(got, exact, strict=True))
        for g, e in pairs:  # an exactly zero gradient (a bias before a batch norm) stays ~zero
            if not np.abs(e).max():
                assert np.abs(g).max() < 1e-6
        return max(
            float(np.abs(g - e).max() / np.abs(e).max()) for g, e in pairs if np.abs(e).max()
        )

    assert error(unfused) < 1e-3
    assert error(fused) > 1e-2  # TensorFlow's fused second derivative (why JR unfuses)
    step = training_step(model, 1e-3, jr_weight=0.1)
    assert np.isfinite(float(step(tf.constant(x, tf.float32), tf.zeros(4, tf.int64))))
    assert all(bn.fused for bn in norms)  # the step traced unfused and put them back


def test_unknown_jr_layer_is_named() -> None:
    from trainables.trial import run_trial

    rows = run_trial(TrialConfig(epochs=1, jr_layers={"act9": 0.1}))
    assert rows[0]["status"] == "failed" and "jr_layers: no layer named 'act9'" in rows[0]["reason"]


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_adversarial_training_raises_robust_accuracy(method: str) -> None:
    from trainables.trial import run_trial

    attack = ({"name": "pgd", "eps": (0.1,), "steps": 10, "samples": 200},)
    base = TrialConfig(bits="4", epochs=4, attacks=attack)
    adversarial = {"method": method, "eps": 0.1, "steps": 3, "ratio": 0.5}
    trained = TrialConfig.model_validate({**base.model_dump(), "adversarial": adversarial})
    (plain,), (adv,) = run_trial(base), run_trial(trained)
    assert adv["status"] == "complete", adv["reason"]
    assert (adv["cfg_adv_training"], adv["cfg_adv_eps"], adv["cfg_adv_ratio"]) == (method, 0.1, 0.5)
    assert plain["cfg_adv_training"] == "none" and plain["cfg_adv_eps"] is None
    assert adv["key"] != plain["key"]
    assert adv["metric_robust_acc"] > plain["metric_robust_acc"] + 0.02
