"""The standard AutoAttack here (trainables.autoattack, TensorFlow) against the reference itself.

The reference is fra31/auto-attack (``pyautoattack`` 0.2.0, PyTorch), run on the very same Keras
models through tests/reference_autoattack.py's bridge (forward and input gradients from
TensorFlow, every attack step from the reference's code).  On a float and a 4-bit digits CNN
trained as trials train them, and on the first 100 examples of the trials' seeded stratified attack
order, the two must give robust accuracies within one point (one example), for the whole standard
ensemble at an L-inf and an L2 eps and for each part alone; the per-example agreement and the 2x2
table are printed (``-s`` shows them).  Square alone is held to the reference's own spread over
three seeds instead (its test says why).  Both sides' masks are re-judged by the Keras model at
their own x_adv, inside the eps-ball (``compare``).

Skips, saying which, when torch and pyautoattack are not installed (tests/oracle-requirements.txt)
or when this branch has no trainables.autoattack.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import trainables  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from tests.reference_autoattack import (
    attack_subset,
    bridge_check,
    compare,
    digits_model,
    load_reference,
    reference_standard_autoattack,
)

pytestmark = pytest.mark.slow

N = 100  # attacked examples: one point of robust accuracy is one example
SEED = 0
# Where the 3-epoch models' robust accuracy is intermediate (neither ~clean nor ~0), so that the
# comparison has examples on both sides: measured float / 4-bit clean 0.96-0.97 on these examples.
CASES = [("inf", 0.1), ("2", 0.5)]
PARTS = ("apgd-ce", "apgd-t", "fab-t", "square")
TOLERANCE = 0.01 + 1e-9  # one point
SQUARE_SEEDS = (SEED, 1, 2)  # the reference's seeds that bound Square alone (see its test)


@pytest.fixture(scope="module")
def reference() -> tuple[Any, Any]:
    try:
        return load_reference()
    except ImportError as err:
        pytest.skip(f"the reference AutoAttack is not installed: {err}")


@pytest.fixture(scope="module")
def ours() -> Any:
    pytest.importorskip("trainables.fab", reason="trainables.fab (FAB-T) is missing")
    return pytest.importorskip(
        "trainables.autoattack", reason="trainables.autoattack (the standard AutoAttack) is missing"
    )


@pytest.fixture(scope="module", params=["float", "4"])
def trained(request: pytest.FixtureRequest, reference: Any) -> tuple[str, Any, Any, Any]:
    bits = request.param
    model, x, y = digits_model(bits, epochs=3, seed=SEED)
    xs, ys = attack_subset(x, y, N, seed=SEED)
    return bits, model, xs, ys


def test_the_bridge_is_the_keras_model(trained: tuple[str, Any, Any, Any]) -> None:
    """The reference sees the Keras model's own logits and input gradients (and, on the float
    model, gradients that finite differences confirm)."""
    bits, model, x, y = trained
    check = bridge_check(model, x[:32], y[:32], finite_diff=bits == "float")
    scale = float(np.abs(np.asarray(model(x[:32], training=False))).max())
    assert check.logits_err <= 1e-6 * scale, check
    assert check.grad_scale > 0, "zero input gradients: nothing to compare"
    assert check.grad_err <= 1e-5 * check.grad_scale, check
    if check.fd_rel_err is not None:
        assert check.fd_rel_err < 1e-2, check


def _check(comparison: Any) -> None:
    print("\n" + comparison.describe())
    # Guard against a vacuous pass: the eps must leave examples on both sides.
    assert 0 < comparison.reference_acc < comparison.clean_acc, comparison.describe()
    assert abs(comparison.difference) <= TOLERANCE, comparison.describe()


@pytest.mark.parametrize(("norm", "eps"), CASES)
def test_standard_autoattack_matches_the_reference(
    trained: tuple[str, Any, Any, Any], ours: Any, norm: str, eps: float
) -> None:
    bits, model, x, y = trained
    print(f"\n{bits} digits CNN, {norm}-norm eps {eps}")
    _check(compare(model, x, y, eps=eps, norm=norm, seed=SEED))


@pytest.mark.parametrize("part", PARTS)
def test_each_part_matches_the_reference(
    trained: tuple[str, Any, Any, Any], ours: Any, part: str
) -> None:
    """Each part alone (standard settings) on the clean-correct examples.

    Square alone is a random search whose outcome on a marginal example depends on the draws, and
    the two sides draw differently (torch's generator, TensorFlow's stateless one): on the 4-bit
    model at L-inf 0.1 the reference's own robust accuracy over seeds 0-4 was 0.58, 0.60, 0.55,
    0.58, 0.57 (ours 0.56, 0.55, 0.55, 0.58, 0.57).  One seed against one seed at one point would
    test the draws, so Square alone must land within the reference's range over SQUARE_SEEDS,
    widened by one point.  (In the ensemble Square only meets the survivors of the gradient parts,
    and the one-point bar holds there.)
    """
    bits, model, x, y = trained
    norm, eps = CASES[0]
    print(f"\n{bits} digits CNN, {norm}-norm eps {eps}, {part} alone")
    comparison = compare(model, x, y, eps=eps, norm=norm, seed=SEED, parts=(part,))
    if part != "square":
        _check(comparison)
        return
    print("\n" + comparison.describe())
    accs = [comparison.reference_acc] + [
        float(
            reference_standard_autoattack(model, x, y, eps=eps, norm=norm, seed=s, parts=(part,))[
                1
            ].mean()
        )
        for s in SQUARE_SEEDS[1:]
    ]
    print(f"reference square alone over seeds {SQUARE_SEEDS}: {accs}")
    assert min(accs) > 0 and max(accs) < comparison.clean_acc, accs
    assert min(accs) - TOLERANCE <= comparison.ours_acc <= max(accs) + TOLERANCE, (
        comparison.describe(),
        accs,
    )
