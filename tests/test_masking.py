"""Gradient-masking diagnostics: they fire on a model built to mask gradients, not on an honest one."""

from __future__ import annotations

import numpy as np
import pytest

import trainables  # noqa: F401
from trainables.config import AttackSpec, TrialConfig

N = 100


@pytest.fixture(scope="module")
def honest():  # type: ignore[no-untyped-def]
    from trainables.data import trial_split
    from trainables.trial import train_compressed

    cfg = TrialConfig(bits="4", epochs=3)
    model, _ = train_compressed(cfg)
    split = trial_split(cfg)
    return model, split.x_test, split.y_test


def _rounding(model):  # type: ignore[no-untyped-def]
    """``model`` behind an input layer that rounds to quarters: TensorFlow has no gradient for
    Round (None), so the input gradient is zero everywhere while predictions barely change."""
    import tensorflow as tf
    import tf_keras

    inp = tf_keras.Input(model.input_shape[1:])
    return tf_keras.Model(inp, model(tf_keras.layers.Lambda(lambda t: tf.round(t * 4) / 4)(inp)))


# PGD with restarts: a single PGD-20 from the clean example on this 4-bit model leaves 3 of 100
# examples robust that Square breaks, and the check rightly calls that white-box weaker than
# black-box (more than max(2, 2%) examples); three random starts leave 1.
ATTACKS = (
    AttackSpec(name="pgd", eps=(0.15,), steps=20, restarts=3, samples=N),
    AttackSpec(name="square", eps=(0.15,), max_iter=200, samples=N),
    AttackSpec(name="transfer_pgd", eps=(0.15,), steps=20, samples=N),
)


def _diagnose(model, surrogate, x, y):  # type: ignore[no-untyped-def]
    from trainables.attacks import evaluate_attacks
    from trainables.masking import masking_diagnostics

    results = evaluate_attacks(model, x, y, 10, ATTACKS, surrogate=surrogate)
    return results, masking_diagnostics(model, x, y, 10, ATTACKS, results)


def test_no_flag_on_an_honest_model(honest) -> None:  # type: ignore[no-untyped-def]
    model, x, y = honest
    results, report = _diagnose(model, model, x, y)
    assert report.flags == () and report.flags_text == ""
    assert report.pgd_eps == 0.5 and report.samples == N
    assert report.pgd_acc <= 0.02  # PGD at eps 0.5 leaves (almost) nothing
    assert report.zero_grad_share == 0.0
    pgd = next(r for r in results if r.attack == "pgd")
    assert pgd.robust_acc < pgd.clean_acc  # the attack works at all


def test_every_flag_fires_on_a_masked_model(honest) -> None:  # type: ignore[no-untyped-def]
    from trainables.masking import MASKING_PGD_ACC_FLOOR
    from trainables.rows import wilson

    model, x, y = honest
    masked = _rounding(model)
    # The transfer source is the honest model: its gradients lead somewhere.
    results, report = _diagnose(masked, model, x, y)
    assert report.flags == (
        "pgd_large_eps",
        "zero_gradients",
        "white_above_black",
        "white_above_transfer",
    )
    assert (
        report.flags_text == "pgd_large_eps,zero_gradients,white_above_black,white_above_transfer"
    )
    assert report.zero_grad_share == 1.0
    assert wilson(round(report.pgd_acc * N), N)[0] > MASKING_PGD_ACC_FLOOR
    pgd = next(r for r in results if r.attack == "pgd")
    # sign(0) = 0: PGD only moves by its random starts, which rounding mostly undoes
    assert pgd.robust_acc > 0.5 * pgd.clean_acc


@pytest.mark.slow
def test_white_above_black_fires_with_the_standard_autoattack_in_the_study(honest) -> None:  # type: ignore[no-untyped-def]
    """The masked model with AutoAttack among its attacks (a real run of the ensemble): before,
    AutoAttack counted white-box as a whole and its Square part hid every black-box break."""
    from trainables.attacks import evaluate_attacks
    from trainables.masking import masking_diagnostics

    model, x, y = honest
    masked = _rounding(model)
    attacks = (
        AttackSpec(name="autoattack", eps=(0.15,), max_iter=10, samples=N),
        AttackSpec(name="square", eps=(0.15,), max_iter=200, samples=N),
    )
    results = evaluate_attacks(masked, x, y, 10, attacks)
    report = masking_diagnostics(masked, x, y, 10, attacks, results)
    assert "white_above_black" in report.flags
    aa = next(r for r in results if r.attack == "autoattack")
    assert list(aa.parts) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    # zero gradients: the gradient parts break (almost) nothing, the Square part does the work
    gradient_kills = int(aa.clean.sum() - aa.parts["fab-t"].sum())
    square_kills = int(aa.parts["fab-t"].sum() - aa.parts["square"].sum())
    assert square_kills > max(2, gradient_kills)


def test_white_above_black_counts_examples_not_rates() -> None:
    """The rule on hand-made outcomes: white-box robust where black-box broke, on common examples."""
    from trainables.attacks import AttackResult
    from trainables.masking import _white_above

    def result(kind: str, positions: list[int], robust: list[bool], eps: float = 0.1):  # type: ignore[no-untyped-def]
        p = np.array(positions)
        return AttackResult(
            attack=kind, kind=kind, norm="inf", eps=eps, samples=len(p), clean_acc=1.0,
            robust_acc=float(np.mean(robust)), median_norm=None, seconds=0.0, positions=p,
            clean=np.ones(len(p), bool), robust=np.array(robust), subset_hash="",
        )  # fmt: skip

    white = result("white", list(range(100)), [True] * 100)
    # 3 of 100 broken by black-box only: above max(2, 2% of 100) -> fires
    assert _white_above(
        [white, result("black", list(range(100)), [False] * 3 + [True] * 97)], "black"
    )
    # 2 of 100: within the tolerance
    assert not _white_above(
        [white, result("black", list(range(100)), [False] * 2 + [True] * 98)], "black"
    )
    # only the common examples count: the black-box attack's 50 are a prefix of the white's 100
    black = result("black", list(range(50)), [False] * 3 + [True] * 47)
    assert _white_above([white, black], "black")
    # another eps: nothing to compare
    assert not _white_above(
        [white, result("black", list(range(100)), [False] * 10 + [True] * 90, eps=0.2)], "black"
    )
    # each white-box attack is compared on its own: a second one that breaks those examples
    # does not hide the first one's weakness (ANDing them first did, and AutoAttack's Square hid PGD)
    other = result("white", list(range(100)), [False] * 3 + [True] * 97)
    assert _white_above([white, other, black], "black")
    assert not _white_above([other, black], "black")  # the stronger one alone: no flag


def _aa(parts: dict[str, list[bool]], positions: list[int]):  # type: ignore[no-untyped-def]
    """An AutoAttack result with its parts' cumulative robust masks (clean everywhere)."""
    from trainables.attacks import AttackResult

    p = np.array(positions)
    masks = {k: np.array(v) for k, v in parts.items()}
    robust = masks[list(parts)[-1]]
    return AttackResult(
        attack="autoattack", kind="white", norm="inf", eps=0.1, samples=len(p), clean_acc=1.0,
        robust_acc=float(robust.mean()), median_norm=None, seconds=0.0, positions=p,
        clean=np.ones(len(p), bool), robust=robust, subset_hash="", parts=masks,
    )  # fmt: skip


def test_white_above_black_fires_where_autoattack_runs() -> None:
    """Shattered gradients, by hand: the gradient parts leave 40 of 100 robust, Square breaks them.

    AutoAttack's whole mask (Square included) is low, so ANDing every white-box attack could never
    fire; its gradient parts on their own against its Square part, or PGD against a Square
    attack, do."""
    from trainables.attacks import AttackResult
    from trainables.masking import _white_above

    pos = list(range(100))
    grad = [i < 40 for i in pos]  # robust after APGD-CE, APGD-T and FAB-T
    masked = _aa({"apgd-ce": [i < 60 for i in pos], "apgd-t": [i < 45 for i in pos],
                  "fab-t": grad, "square": [i < 5 for i in pos]}, pos)  # fmt: skip
    assert _white_above([masked], "black")  # Square's kills inside AutoAttack: 35 > max(2, 2)
    assert not _white_above([masked], "transfer")  # Square is black-box, not transfer
    honest = _aa({"apgd-ce": [i < 10 for i in pos], "apgd-t": [i < 6 for i in pos],
                  "fab-t": [i < 5 for i in pos], "square": [i < 4 for i in pos]}, pos)  # fmt: skip
    assert not _white_above([honest], "black")  # Square broke 1: attack noise
    # Without FAB-T the last APGD part is the gradient side.
    no_fab = _aa(
        {"apgd-ce": [i < 60 for i in pos], "apgd-t": grad, "square": [i < 5 for i in pos]}, pos
    )
    assert _white_above([no_fab], "black")

    def plain(attack: str, kind: str, robust: list[bool], n: int = 100):  # type: ignore[no-untyped-def]
        p = np.array(pos[:n])
        return AttackResult(
            attack=attack, kind=kind, norm="inf", eps=0.1, samples=n, clean_acc=1.0,
            robust_acc=float(np.mean(robust)), median_norm=None, seconds=0.0, positions=p,
            clean=np.ones(n, bool), robust=np.array(robust), subset_hash="",
        )  # fmt: skip

    # The case: PGD 0.85 against Square 0.46 (here on Square's 50), with an honest
    # AutoAttack (ART's, no parts recorded: its whole mask) in the study as well.
    pgd = plain("pgd", "white", [i < 85 for i in pos])
    square = plain("square", "black", [i < 23 for i in pos[:50]], n=50)
    strong = plain("autoattack", "white", [i < 20 for i in pos])
    assert _white_above([pgd, strong, square], "black")
    assert not _white_above([strong, square], "black")  # AutoAttack is not weaker than Square


def test_pgd_large_eps_counts_in_the_comment() -> None:
    """The robust counts at which `pgd_large_eps` starts to fire, as trainables/attacks.py states
    them (the analysis' own Wilson, an implementation independent of the trainable's)."""
    from analysis.inference import wilson
    from trainables.masking import MASKING_PGD_ACC_FLOOR

    for n, k in ((200, 8), (100, 5), (50, 3), (10, 2)):
        assert wilson(k, n)[0] > MASKING_PGD_ACC_FLOOR >= wilson(k - 1, n)[0], (n, k)
