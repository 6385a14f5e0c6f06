"""Defences: per-layer Jacobian Regularization and adversarial training (ART)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import trainables  # noqa: F401
from trainables.config import TrialConfig


def _layer_norms(cfg: TrialConfig, names: list[str]) -> list[float]:
    import tensorflow as tf
    import tf_keras

    from trainables.data import trial_split
    from trainables.jacobian import layer_jacobian_sq_norm
    from trainables.train import find_layer
    from trainables.trial import train_compressed

    model, _ = train_compressed(cfg)
    x = tf.constant(trial_split(cfg).x_test[:32])
    out = []
    for name in names:
        sub = tf_keras.Model(model.input, find_layer(model, name).output)
        out.append(float(layer_jacobian_sq_norm(lambda t, sub=sub: sub(t, training=False), x)))
    return out


@pytest.mark.slow
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


@pytest.mark.slow
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


_TINY_PICKS = {
    "conv/kernel": [0, 7, 19, 40],
    "conv/bias": [0, 1, 2],  # feeds the batch norm: true gradient 0
    "bn/gamma": [0, 1, 2],
    "bn/beta": [0, 1, 2],
    "dense/kernel": [3, 50],
}


def _bn_model(dtype: str, activation: str) -> Any:
    """conv (with a bias) -> training-mode batch norm -> activation -> dense, in ``dtype``."""
    import tf_keras

    tf_keras.backend.set_floatx(dtype)
    try:
        inp = tf_keras.Input((4, 4, 2))
        h = tf_keras.layers.Conv2D(3, 3, padding="same", name="conv")(inp)
        h = tf_keras.layers.BatchNormalization(name="bn")(h)
        h = tf_keras.layers.Activation(activation)(h)
        out = tf_keras.layers.Dense(5, name="dense")(tf_keras.layers.Flatten()(h))
        return tf_keras.Model(inp, out)
    finally:
        tf_keras.backend.set_floatx("float32")


def _entries(model: Any, picks: dict[str, list[int]]) -> list[tuple[Any, int]]:
    """(variable, flat index) for each variable whose name starts with a key of ``picks``."""
    out = []
    for prefix, indices in picks.items():
        (var,) = [v for v in model.trainable_variables if v.name.startswith(prefix + ":")]
        out += [(var, i) for i in indices]
    return out


def _finite_differences(
    loss: Callable[[], float], entries: list[tuple[Any, int]], h: float = 1e-6
) -> np.ndarray:
    """Central differences of the loss *value* (float64) along each (variable, flat index)."""
    fd = []
    for var, i in entries:
        base = var.numpy()
        step = np.zeros(base.size)
        step[i] = h
        var.assign(base + step.reshape(base.shape))
        up = loss()
        var.assign(base - step.reshape(base.shape))
        down = loss()
        var.assign(base)
        fd.append((up - down) / (2 * h))
    return np.array(fd)


def _at(grads: dict[str, np.ndarray], entries: list[tuple[Any, int]]) -> np.ndarray:
    """The entries of gradients keyed by variable name (a missing gradient is zero)."""
    return np.array(
        [grads[var.name].ravel()[i] if var.name in grads else 0.0 for var, i in entries]
    )


def _jr_grads(model: Any, x: np.ndarray, kind: str | None) -> dict[str, np.ndarray]:
    """Gradient of the exact squared Jacobian norm (training mode) w.r.t. the weights.

    ``kind``: None leaves the batch norms as built (Keras unfused in
    float64, TensorFlow's fused kernel in float32); else inside the JR
    steps' ``_exact_batch_norm`` scope of that kind ("compact": the closed-form
    ``compact_batch_norm``; "unfused": unfused with exact moments; "fused":
    fused ones kept, unfused ones with exact moments).
    """
    import contextlib

    import tensorflow as tf

    from trainables.jacobian import exact_jacobian_sq_norm
    from trainables.train import _exact_batch_norm

    scope = contextlib.nullcontext() if kind is None else _exact_batch_norm(model, True, kind=kind)
    with scope, tf.GradientTape() as tape:
        jr = exact_jacobian_sq_norm(lambda t: model(t, training=True), tf.constant(x))
    grads = tape.gradient(jr, model.trainable_variables)
    pairs = zip(model.trainable_variables, grads, strict=True)
    return {v.name: g.numpy() for v, g in pairs if g is not None}


def _errors(got: np.ndarray, fd: np.ndarray, entries: list[tuple[Any, int]]) -> dict[str, float]:
    """Per variable: largest |got - fd| over its entries, relative to its largest |fd|
    (to the largest |fd| of all entries where the true gradient is 0)."""
    names = [var.name for var, _ in entries]
    out = {}
    for name in dict.fromkeys(names):
        mine = np.array([n == name for n in names])
        scale = np.abs(fd[mine]).max()
        if scale < 1e-6 * np.abs(fd).max():  # a true gradient of 0 (differences: rounding)
            scale = np.abs(fd).max()
        out[name] = float(np.abs(got[mine] - fd[mine]).max() / scale)
    return out


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_jr_gradients_through_batch_norm_match_finite_differences(activation: str) -> None:
    """The oracle: float64 central differences of the squared Jacobian norm's value.

    conv -> BN -> activation -> dense, 4 images of 4x4x2, training-mode batch
    norm.  The loss value needs first derivatives only, where every path is
    exact (checked: the Jacobian against differences of the logits).  Judged:
    TensorFlow's fused batch norm (float32: FusedBatchNormV3 has no float64),
    Keras' unfused one (tf.nn.moments stops the mean's gradient in the
    variance: wrong second derivatives), and the JR steps' exact batch norms.
    """
    import tensorflow as tf
    import tf_keras

    from trainables.jacobian import exact_jacobian_sq_norm

    tf_keras.utils.set_random_seed(0)
    m64, m32 = _bn_model("float64", activation), _bn_model("float32", activation)
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=w.shape) for w in m64.get_weights()]  # a non-zero conv bias too
    m64.set_weights(weights)
    m32.set_weights([w.astype(np.float32) for w in weights])
    assert not m64.get_layer("bn").fused and m32.get_layer("bn").fused
    x = rng.random((4, 4, 4, 2))

    jr = tf.function(
        lambda: exact_jacobian_sq_norm(lambda t: m64(t, training=True), tf.constant(x))
    )

    def loss() -> float:
        return float(jr())

    # The loss value from differences of the logits alone.  batch_jacobian's
    # row b is d(sum_b' logits_b') / d x_b: training-mode batch norm couples
    # the examples (see jacobian.exact_jacobian_sq_norm).
    forward = tf.function(lambda t: tf.reduce_sum(m64(t, training=True), axis=0))

    def summed_logits(xx: np.ndarray) -> np.ndarray:
        return forward(tf.constant(xx)).numpy()

    jac = np.zeros((4, 5, 32))
    for k in range(x.size):
        dx = np.zeros(x.size)
        dx[k] = 1e-6
        up, down = summed_logits(x + dx.reshape(x.shape)), summed_logits(x - dx.reshape(x.shape))
        jac[k // 32, :, k % 32] = (up - down) / 2e-6
    assert abs(np.mean(np.sum(jac**2, axis=(1, 2))) / loss() - 1) < 1e-6

    entries = _entries(m64, _TINY_PICKS)
    fd = _finite_differences(loss, entries)
    bias = np.array([var.name == "conv/bias:0" for var, _ in entries])
    assert np.abs(fd[bias]).max() < 1e-6 * np.abs(fd).max()  # a bias feeding a batch norm: 0
    if activation == "tanh":  # beta's gradient: non-zero through a curved activation only
        assert np.abs(fd[[var.name == "bn/beta:0" for var, _ in entries]]).min() > 1e-3

    keras_unfused = _errors(_at(_jr_grads(m64, x, None), entries), fd, entries)
    fused = _errors(_at(_jr_grads(m32, x.astype(np.float32), None), entries), fd, entries)
    exact64 = _errors(_at(_jr_grads(m64, x, "fused"), entries), fd, entries)
    unfused32 = _errors(_at(_jr_grads(m32, x.astype(np.float32), "unfused"), entries), fd, entries)
    compact64 = _errors(_at(_jr_grads(m64, x, "compact"), entries), fd, entries)
    compact32 = _errors(_at(_jr_grads(m32, x.astype(np.float32), "compact"), entries), fd, entries)
    assert max(exact64.values()) < 1e-6, exact64
    assert max(compact64.values()) < 1e-6, compact64
    assert max(fused.values()) < 1e-4, fused
    assert max(unfused32.values()) < 1e-4, unfused32
    assert max(compact32.values()) < 1e-4, compact32
    assert m32.get_layer("bn").fused and not m64.get_layer("bn").fused  # put back after tracing
    assert "_fused_batch_norm" not in vars(m64.get_layer("bn"))
    # Keras' unfused batch norm is what the oracle catches
    assert keras_unfused["conv/kernel:0"] > 1e-2 and keras_unfused["conv/bias:0"] > 1e-2


@pytest.mark.slow
def test_jr_training_step_follows_finite_differences_through_batch_norm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``training_step``'s JR path, as trials run it (float32) and in float64.

    The step's own optimiser becomes SGD with learning rate 1 and its JR
    estimator the exact squared Jacobian norm (the estimator's randomness is
    tested above), so one step moves every weight by minus its gradient of
    cross-entropy + jr_weight x JR; that is judged against differences of
    that loss's value in float64.
    """
    import tensorflow as tf
    import tf_keras

    import trainables.train as train
    from trainables.jacobian import exact_jacobian_sq_norm

    def exact_jr(forward: Any, x: Any, n_proj: int = 1) -> tuple[Any, Any]:
        return forward(x), exact_jacobian_sq_norm(forward, x)

    monkeypatch.setattr(train, "logits_and_jr", exact_jr)
    monkeypatch.setattr(train.tf_keras.optimizers, "Adam", tf_keras.optimizers.SGD)
    tf_keras.utils.set_random_seed(1)
    m64 = _bn_model("float64", "relu")
    rng = np.random.default_rng(1)
    weights = [rng.normal(size=w.shape) for w in m64.get_weights()]
    m64.set_weights(weights)
    x, y, jr_weight = rng.random((4, 4, 4, 2)), np.array([0, 3, 1, 4]), 0.5
    ce = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def loss() -> float:
        forward = lambda t: m64(t, training=True)  # noqa: E731
        jr = exact_jacobian_sq_norm(forward, tf.constant(x))
        return float(ce(y, forward(tf.constant(x))) + jr_weight * jr)

    entries = _entries(m64, _TINY_PICKS)
    fd = _finite_differences(loss, entries)

    def step_grads(model: Any, dtype: Any) -> np.ndarray:
        before = {v.name: v.numpy() for v in model.trainable_variables}
        step = train.training_step(model, 1.0, jr_weight=jr_weight)
        step(tf.constant(x, dtype), tf.constant(y))
        return np.array(
            [
                before[v.name].ravel()[i] - v.numpy().ravel()[i]
                for v, i in _entries(model, _TINY_PICKS)
            ]
        )

    m32 = _bn_model("float32", "relu")
    m32.set_weights([w.astype(np.float32) for w in weights])
    as_trained = _errors(step_grads(m32, tf.float32), fd, entries)  # as trials train
    in_float64 = _errors(step_grads(m64, tf.float64), fd, entries)
    # and through the closed-form batch norm (train.compact_batch_norm)
    monkeypatch.setattr(train, "JR_BATCH_NORM", "compact")
    m32c = _bn_model("float32", "relu")
    m32c.set_weights([w.astype(np.float32) for w in weights])
    m64c = _bn_model("float64", "relu")
    m64c.set_weights(weights)
    compact32 = _errors(step_grads(m32c, tf.float32), fd, entries)
    compact64 = _errors(step_grads(m64c, tf.float64), fd, entries)
    assert max(compact32.values()) < 1e-4, compact32
    assert max(compact64.values()) < 1e-6, compact64
    assert max(as_trained.values()) < 1e-4, as_trained
    assert max(in_float64.values()) < 1e-6, in_float64
    assert m32.get_layer("bn").fused and not m64.get_layer("bn").fused
    assert not {"_calculate_mean_and_var", "_fused_batch_norm"} & set(vars(m64.get_layer("bn")))


@pytest.mark.slow
def test_jr_gradients_through_resnet8_batch_norms_match_finite_differences() -> None:
    """The same oracle on the real ResNet-8 (8x8x3 inputs, 4 images): a handful of entries.

    Judged: TensorFlow's fused batch norms, the JR steps' (float32, as
    trials train) and in float64, and Keras' unfused ones (off)."""
    import tensorflow as tf
    import tf_keras

    import trainables.train as train
    from trainables.jacobian import exact_jacobian_sq_norm
    from trainables.models import build_model

    cfg = TrialConfig(model="resnet8", bits="float")
    tf_keras.utils.set_random_seed(0)
    model = build_model(cfg, (8, 8, 3), 10)
    tf_keras.backend.set_floatx("float64")
    try:
        reference = build_model(cfg, (8, 8, 3), 10)
    finally:
        tf_keras.backend.set_floatx("float32")
    reference.set_weights([w.astype(np.float64) for w in model.get_weights()])
    x = np.random.default_rng(0).random((4, 8, 8, 3))
    jr = tf.function(
        lambda: exact_jacobian_sq_norm(lambda t: reference(t, training=True), tf.constant(x))
    )
    entries = _entries(
        reference,
        {
            "conv1/kernel": [0, 200],
            "conv1/bias": [0, 5],  # feeds bn1: true gradient 0
            "bn1/gamma": [3],
            "bn1/beta": [3],
            "s2_conv2/kernel": [1000],
            "s3_bn2/gamma": [10],
            "logits/kernel": [7],
        },
    )
    fd = _finite_differences(lambda: float(jr()), entries)
    x32 = x.astype(np.float32)
    fused = _errors(_at(_jr_grads(model, x32, None), entries), fd, entries)
    jr_step = _errors(_at(_jr_grads(model, x32, train.JR_BATCH_NORM), entries), fd, entries)
    exact64 = _errors(_at(_jr_grads(reference, x, "fused"), entries), fd, entries)
    compact64 = _errors(_at(_jr_grads(reference, x, "compact"), entries), fd, entries)
    keras_unfused = _errors(_at(_jr_grads(reference, x, None), entries), fd, entries)
    assert max(fused.values()) < 1e-3, fused
    assert max(jr_step.values()) < 1e-3, jr_step
    assert max(exact64.values()) < 1e-6, exact64
    assert max(compact64.values()) < 1e-6, compact64
    assert max(keras_unfused.values()) > 1e-2, keras_unfused


def test_unknown_jr_layer_is_named() -> None:
    from trainables.trial import run_trial

    rows = run_trial(TrialConfig(epochs=1, jr_layers={"act9": 0.1}))
    assert rows[0]["status"] == "failed" and "jr_layers: no layer named 'act9'" in rows[0]["reason"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_adversarial_training_raises_robust_accuracy(method: str) -> None:
    from trainables.trial import run_trial

    attack = ({"name": "pgd", "eps": (0.1,), "steps": 10, "samples": 200},)
    base = TrialConfig(bits="4", epochs=4, attacks=attack)
    adversarial = {"method": method, "eps": 0.1, "steps": 3, "ratio": 0.5}
    trained = TrialConfig.model_validate({**base.model_dump(), "adversarial": adversarial})
    # one pgd row and its worst-case row (equal: one attack) per trial
    (plain,), (adv,) = ([r for r in run_trial(c) if r["attack"] == "pgd"] for c in (base, trained))
    assert adv["status"] == "complete", adv["reason"]
    assert (adv["cfg_adv_training"], adv["cfg_adv_eps"], adv["cfg_adv_ratio"]) == (method, 0.1, 0.5)
    assert plain["cfg_adv_training"] == "none" and plain["cfg_adv_eps"] is None
    assert adv["key"] != plain["key"]
    assert adv["metric_robust_acc"] > plain["metric_robust_acc"] + 0.02
