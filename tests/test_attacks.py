"""The full ART attack suite: a row per attack and eps; black-box attacks never touch gradients."""

from __future__ import annotations

import itertools

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
    ("transfer_pgd", (0.05, 0.1), {"steps": 3, "restarts": 2}),
    ("autoattack", (0.1,), {"max_iter": 2}),
    ("autoattack_art", (0.1,), {"max_iter": 2}),
]


@pytest.mark.slow
def test_every_attack_gives_a_row_per_eps() -> None:
    from trainables.trial import run_trial

    attacks = tuple({"name": n, "eps": e, "samples": 8, **kw} for n, e, kw in SUITE)
    rows = run_trial(TrialConfig(bits="4", epochs=2, attacks=attacks))
    assert rows[0]["status"] == "complete", rows[0]["reason"]
    worst = [r for r in rows if r["attack"] == "worst"]
    rows = [r for r in rows if r["attack"] != "worst"]
    assert [(r["attack"], r["eps"]) for r in rows] == [(n, e) for n, eps, _ in SUITE for e in eps]
    # one per-example worst case per (norm, eps) at which attacks ran
    assert sorted((r["attack_norm"], r["eps"]) for r in worst) == sorted(
        {(r["attack_norm"], r["eps"]) for r in rows}
    )
    assert {n.value for n in AttackName} == {n for n, _, _ in SUITE}  # the suite is the whole enum
    kinds = {r["attack"]: (r["attack_kind"], r["attack_norm"]) for r in rows}
    assert kinds["autoattack"] == ("white", "inf")
    restarts = {r["attack"]: r["cfg_attack_restarts"] for r in rows}
    assert restarts["pgd"] == 0 and restarts["transfer_pgd"] == 2 and restarts["autoattack"] == 1
    assert kinds["autoattack_art"] == ("white", "inf") and restarts["autoattack_art"] == 1
    assert restarts["fgsm"] is None and restarts["square"] is None
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
    from trainables.data import trial_split
    from trainables.trial import train_compressed

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
        ({"name": "autoattack", "eps": (0.1,), "restarts": 5}, "restarts: 5 for autoattack"),
    ],
)
def test_bad_attack_specs(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AttackSpec.model_validate(spec)


@pytest.fixture(scope="module")
def honest():  # type: ignore[no-untyped-def]
    from trainables.data import trial_split
    from trainables.trial import train_compressed

    cfg = TrialConfig(bits="4", epochs=2)
    model, _ = train_compressed(cfg)
    split = trial_split(cfg)
    return model, split.x_test, split.y_test


def test_pgd_restarts_keep_every_success(honest) -> None:  # type: ignore[no-untyped-def]
    """ART's TF2 PGD keeps a later random start's example where it succeeds, so r starts leave
    robust only what survives all r: with one batch and the same seed the first start is the
    same draw, and 3 starts leave robust a subset of what 1 start does."""
    from trainables.attacks import evaluate_attacks

    model, x, y = honest
    specs = tuple(
        AttackSpec(name="pgd", eps=(0.15,), steps=5, restarts=r, samples=120) for r in (1, 3)
    )
    one, three = evaluate_attacks(model, x, y, 10, specs)
    assert (one.restarts, three.restarts) == (1, 3)
    assert np.all(one.robust | ~three.robust)  # robust under 3 starts => robust under the first
    assert three.robust_acc <= one.robust_acc


def test_autoattack_art_runs_arts_untargeted_parts_on_logits(honest) -> None:  # type: ignore[no-untyped-def]
    """``autoattack_art`` (the ensemble of results revision <= 2) keeps ART's parts; the standard
    ``autoattack`` is at least as strong as PGD on the same examples."""
    from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack

    from trainables.attacks import classifier, evaluate_attacks, make_attack

    model, x, y = honest
    spec = AttackSpec(name="autoattack_art", eps=(0.1,), max_iter=3, samples=40)
    clf = classifier(model, 10, x.shape[1:])
    attack = make_attack(spec, clf, 0.1)
    parts = attack.attacks
    assert [type(p) for p in parts] == [AutoProjectedGradientDescent] * 2 + [SquareAttack]
    assert [getattr(p, "loss_type", None) for p in parts] == [
        "cross_entropy",
        "difference_logits_ratio",
        None,
    ]
    assert all(p.norm == np.inf and p.eps == 0.1 for p in parts)
    assert parts[0].max_iter == 3 and parts[2].max_iter == 150  # 50 Square queries per APGD step
    assert attack.norm == np.inf and attack.eps == 0.1 and not attack.targeted
    # The estimator predicts logits (APGD-DLR and Square's margin need them)
    scores = clf.predict(x[:5])
    np.testing.assert_allclose(scores, model(x[:5], training=False).numpy(), rtol=1e-6)
    (art,) = evaluate_attacks(model, x, y, 10, (spec,))
    standard = AttackSpec(name="autoattack", eps=(0.1,), max_iter=3, samples=40)
    (aa,) = evaluate_attacks(model, x, y, 10, (standard,))
    (pgd,) = evaluate_attacks(model, x, y, 10, (AttackSpec(name="pgd", eps=(0.1,), samples=40),))
    assert aa.robust_acc <= pgd.robust_acc <= aa.clean_acc
    assert art.robust_acc <= art.clean_acc == aa.clean_acc
    assert list(aa.parts) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    masks = list(aa.parts.values())  # cumulative: each part only removes survivors
    assert all(np.all(b <= a) for a, b in itertools.pairwise(masks))
    np.testing.assert_array_equal(masks[-1], aa.robust)


def test_score_based_attacks_see_logits_not_saturated_probabilities(honest) -> None:  # type: ignore[no-untyped-def]
    """A very confident model (logits x 100): its softmax is exactly 1.0 / 0.0 in float32 for most
    examples, where Square's margin is flat and the attack stalls; on logits the attack does not
    care about the scale (it compares margins), so it breaks what it breaks on the plain model."""
    import tf_keras
    from art.estimators.classification.blackbox import BlackBoxClassifierNeuralNetwork

    from trainables.attacks import make_attack, predictions_only

    model, x, y = honest
    inp = tf_keras.Input(x.shape[1:])
    confident = tf_keras.Model(inp, model(inp) * 100.0)
    xs, ys = x[:40], y[:40]
    logits = confident(xs, training=False).numpy()
    est = predictions_only(confident, 10, x.shape[1:])
    np.testing.assert_array_equal(est.predict(xs), logits)  # raw logits, no softmax

    def softmax(t: np.ndarray) -> np.ndarray:
        z = confident(t.astype(np.float32), training=False).numpy()
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    assert np.mean(softmax(xs).max(axis=1) == 1.0) > 0.5  # saturated
    probs = BlackBoxClassifierNeuralNetwork(
        softmax, x.shape[1:], 10, channels_first=False, clip_values=(0.0, 1.0)
    )
    spec = AttackSpec(name="square", eps=(0.2,), max_iter=100)
    eye = np.eye(10, dtype=np.float32)

    def broken(estimator) -> int:  # type: ignore[no-untyped-def]
        np.random.seed(0)
        adv = make_attack(spec, estimator, 0.2).generate(x=xs, y=eye[ys])
        after = np.argmax(confident(adv, training=False).numpy(), axis=1)
        return int(np.sum((np.argmax(logits, axis=1) == ys) & (after != ys)))

    on_logits = broken(est)
    assert on_logits == broken(predictions_only(model, 10, x.shape[1:]))  # scale-free
    assert on_logits > broken(probs)


@pytest.mark.parametrize(
    ("shape", "norm", "p_init", "tile"),
    [
        ((8, 8, 1), "inf", 0.8, 7),  # fits already: unchanged
        ((49, 10, 1), "inf", 0.8, 9),  # MFCCs: 20-wide -> 9-wide
        ((49, 10, 1), "2", 0.8, 9),  # odd L2 tiles
        ((32, 32, 3), "inf", 0.8, 29),
        ((49, 10, 1), "inf", 0.05, 5),  # a small p_init is kept
    ],
)
def test_square_first_tile_fits_the_input(shape, norm, p_init, tile) -> None:  # type: ignore[no-untyped-def]
    """By hand: ART's first tile is round(sqrt(p x h x w)) wide and needs tile < min(h, w)."""
    import math

    from trainables.attacks import square_p_init

    p = square_p_init(p_init, shape, norm)
    assert p <= p_init
    assert round(math.sqrt(p * shape[0] * shape[1])) == tile
    assert tile < min(shape[0], shape[1])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "norm"), [("square", "inf"), ("autoattack", "inf"), ("autoattack", "2")]
)
def test_square_and_autoattack_on_mfcc_shaped_inputs(name: str, norm: str) -> None:
    """49 x 10 x 1 inputs (Speech Commands MFCCs): ART's Square with p_init 0.8 raised there.
    (ART's L2 Square cannot run on them at all: the study refuses it, tests/test_spec.py.)"""
    import tf_keras

    from trainables.attacks import evaluate_attacks

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (24, 49, 10, 1)).astype(np.float32)
    y = np.arange(24) % 12
    model = tf_keras.Sequential(
        [tf_keras.layers.Input((49, 10, 1)), tf_keras.layers.Conv2D(4, 3),
         tf_keras.layers.Flatten(), tf_keras.layers.Dense(12)]
    )  # fmt: skip
    y = np.argmax(model(x, training=False).numpy(), axis=1)  # every example clean-correct
    eps = 0.05 if norm == "inf" else 0.5
    spec = AttackSpec(name=name, eps=(eps,), norm=norm, max_iter=3, samples=24)
    (result,) = evaluate_attacks(model, x, y, 12, (spec,))
    assert result.clean_acc == 1.0 and 0.0 <= result.robust_acc <= 1.0
