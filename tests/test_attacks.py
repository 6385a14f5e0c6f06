"""The full ART attack suite: a row per attack and eps; black-box attacks never touch gradients."""

from __future__ import annotations

import numpy as np
import pytest

import trainables  # noqa: F401
from trainables.config import AttackName, AttackSpec, TrialConfig

SUITE = [
    ("fgsm", (0.05, 0.1), {}),
    ("pgd", (0.1,), {"steps": 3}),
    ("cw_l2", (0.5, 1.5), {"max_iter": 3}),
    ("cw_linf", (0.1,), {"max_iter": 1, "samples": 3}),
    ("deepfool", (0.5, 1.0), {"max_iter": 10}),
    ("square", (0.1,), {"max_iter": 10}),
    ("hopskipjump", (1.0, 2.0), {"max_iter": 2}),
    ("boundary", (2.0,), {"max_iter": 10}),
    ("transfer_fgsm", (0.1,), {}),
    ("transfer_pgd", (0.05, 0.1), {"steps": 3}),
]


def test_every_attack_gives_a_row_per_eps() -> None:
    from trainables.trial import run_trial

    attacks = tuple({"name": n, "eps": e, "samples": 8, **kw} for n, e, kw in SUITE)
    rows = run_trial(TrialConfig(bits="4", epochs=2, attacks=attacks))
    assert rows[0]["status"] == "complete", rows[0]["reason"]
    assert [(r["attack"], r["eps"]) for r in rows] == [(n, e) for n, eps, _ in SUITE for e in eps]
    assert {n.value for n in AttackName} == {n for n, _, _ in SUITE}  # the suite is the whole enum
    kinds = {r["attack"]: (r["attack_kind"], r["attack_norm"]) for r in rows}
    assert kinds["hopskipjump"] == ("black", "2") and kinds["square"] == ("black", "inf")
    assert kinds["transfer_pgd"] == ("transfer", "inf") and kinds["cw_l2"] == ("white", "2")
    for r in rows:
        assert 0.0 <= r["metric_robust_acc"] <= r["metric_attack_clean_acc"] <= 1.0
        if (
            r["metric_adv_norm_median"] is not None
            and r["attack_norm"] == "inf"
            and r["attack"] != "cw_linf"
        ):
            assert r["metric_adv_norm_median"] <= r["eps"] + 1e-6  # budget attacks stay in budget
    # Minimal-perturbation attacks: a larger radius never leaves more examples robust.
    for name in ("cw_l2", "deepfool", "hopskipjump"):
        accs = [r["metric_robust_acc"] for r in rows if r["attack"] == name]
        assert accs == sorted(accs, reverse=True)


def _poisoned(model):  # type: ignore[no-untyped-def]
    """The model behind a layer whose gradient raises: any gradient request fails loudly."""
    import tensorflow as tf
    import tf_keras

    class NoGradient(tf_keras.layers.Layer):
        def call(self, x):  # type: ignore[no-untyped-def]
            @tf.custom_gradient
            def ident(t):  # type: ignore[no-untyped-def]
                def grad(dy):  # type: ignore[no-untyped-def]
                    raise AssertionError("a gradient of the model was requested")

                return tf.identity(t), grad

            return ident(x)

    inp = tf_keras.Input(model.input_shape[1:])
    return tf_keras.Model(inp, model(NoGradient()(inp)))


@pytest.fixture(scope="module")
def trained():  # type: ignore[no-untyped-def]
    from trainables.trial import train_compressed, trial_split

    cfg = TrialConfig(bits="ternary", epochs=2)
    model, _ = train_compressed(cfg)
    split = trial_split(cfg)
    return _poisoned(model), split.x_test[:6], split.y_test[:6]


@pytest.mark.parametrize("name", ["square", "hopskipjump", "boundary"])
def test_black_box_attacks_never_ask_for_gradients(trained, name: str) -> None:  # type: ignore[no-untyped-def]
    from trainables.attacks import evaluate_attacks, make_attack, predictions_only

    model, x, y = trained
    spec = AttackSpec(name=name, eps=(0.1,) if name == "square" else (1.0,), max_iter=2)
    estimator = predictions_only(model, 10, x.shape[1:])
    assert not hasattr(estimator, "loss_gradient") and not hasattr(estimator, "class_gradient")
    assert make_attack(spec, estimator, 0.1).estimator is estimator
    (result,) = evaluate_attacks(model, x, y, 10, (spec,))  # would raise through the poisoned layer
    assert result.kind == "black" and result.samples == 6


def test_the_poison_catches_white_box_gradients(trained) -> None:  # type: ignore[no-untyped-def]
    from trainables.attacks import evaluate_attacks

    model, x, y = trained
    with pytest.raises(AssertionError, match="gradient of the model was requested"):
        evaluate_attacks(model, x, y, 10, (AttackSpec(name="fgsm", eps=(0.1,)),))


def test_transfer_attacks_need_and_use_the_surrogate(trained) -> None:  # type: ignore[no-untyped-def]
    from trainables.attacks import evaluate_attacks
    from trainables.models import build_model

    model, x, y = trained
    spec = AttackSpec(name="transfer_pgd", eps=(0.1,), steps=2)
    with pytest.raises(ValueError, match="needs a surrogate"):
        evaluate_attacks(model, x, y, 10, (spec,))
    surrogate = build_model(
        TrialConfig(bits="float"), x.shape[1:], 10
    )  # gradients flow here, not in `model`
    (result,) = evaluate_attacks(model, x, y, 10, (spec,), surrogate=surrogate)
    assert result.kind == "transfer"
    assert np.isfinite(result.robust_acc)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "pgd", "eps": (1.5,)}, "eps: 1.5 > 1 for an L-inf attack"),
        ({"name": "pgd", "eps": (0.1,), "norm": "2"}, "norm: '2' is not available for pgd"),
        ({"name": "hopskipjump", "eps": (0.1,), "norm": "1"}, "norm: '1' is not available"),
    ],
)
def test_bad_attack_specs(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AttackSpec.model_validate(spec)
