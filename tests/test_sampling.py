"""Attacked examples: a seeded, stratified subset of the test split, the same for every trial."""

from __future__ import annotations

import numpy as np
import pytest

import trainables  # noqa: F401
from trainables.config import AttackSpec, TrialConfig

# Class sizes: balanced, tiny classes, one dominant class, digits' test split.
COUNTS = [[36] * 10, [1, 1, 50, 3], [100, 7, 7, 2, 300, 1], [3, 40, 9, 17, 2, 61, 5]]


@pytest.mark.parametrize("counts", COUNTS, ids=[f"k{len(c)}-n{sum(c)}" for c in COUNTS])
def test_every_prefix_of_the_order_is_stratified(counts: list[int]) -> None:
    from trainables.attacks import stratified_order

    y = np.random.default_rng(7).permutation(np.repeat(np.arange(len(counts)), counts))
    order = stratified_order(y, seed=3)
    assert sorted(order.tolist()) == list(range(len(y)))  # a permutation of the split
    # Oracle: class counts of every prefix against n * share, by plain counting.
    share = np.array(counts) / len(y)
    for n in range(1, len(y) + 1):
        held = np.bincount(y[order[:n]], minlength=len(counts))
        assert np.all(np.abs(held - n * share) < 1.0), (n, held, n * share)
    assert np.array_equal(order, stratified_order(y, seed=3))  # seeded
    assert not np.array_equal(order, stratified_order(y, seed=4))


def _class_sorted_digits() -> tuple[np.ndarray, np.ndarray]:
    """Digits test examples grouped by class, as a class-grouped pool delivers them."""
    from trainables.data import trial_split

    split = trial_split(TrialConfig())
    idx = np.argsort(split.y_test, kind="stable")
    return split.x_test[idx], split.y_test[idx]


def _always(cls: int, num_classes: int = 10):  # type: ignore[no-untyped-def]
    """A model that predicts ``cls`` for every input (but still has input gradients)."""
    import tf_keras

    inp = tf_keras.Input((8, 8, 1))
    dense = tf_keras.layers.Dense(num_classes)
    out = dense(tf_keras.layers.Flatten()(inp))
    dense.set_weights(
        [
            np.full((64, num_classes), 1e-3, np.float32),
            np.eye(num_classes, dtype=np.float32)[cls] * 10,
        ]
    )
    return tf_keras.Model(inp, out)


def test_attacked_subset_keeps_the_class_shares_of_the_test_split() -> None:
    from trainables.attacks import evaluate_attacks

    x, y = _class_sorted_digits()
    n = 50
    share = np.bincount(y, minlength=10) / len(y)
    (result,) = evaluate_attacks(
        _always(0), x, y, 10, (AttackSpec(name="fgsm", eps=(0.1,), samples=n, seed=5),)
    )
    # Independent of how the subset is drawn: a model that always says 0 is right
    # exactly on the class-0 examples, so the attacked clean accuracy is their share.
    # (The first 50 of a class-sorted split are all class 0: accuracy 1.0.)
    assert abs(result.clean_acc * n - n * share[0]) < 1.0
    held = np.bincount(y[result.positions], minlength=10)
    assert np.all(np.abs(held - n * share) < 1.0), held
    assert len(set(result.positions.tolist())) == n


@pytest.mark.slow
def test_same_examples_for_every_trial_of_a_study_and_nested_across_attacks() -> None:
    from trainables.attacks import stratified_order, subset_digest
    from trainables.data import trial_split
    from trainables.trial import run_trial

    attacks = (
        {"name": "fgsm", "eps": (0.1,), "samples": 40, "seed": 0},
        {"name": "fgsm", "eps": (0.1,), "samples": 20, "seed": 0},
        {"name": "fgsm", "eps": (0.1,), "samples": 40, "seed": 1},
    )
    a = run_trial(TrialConfig(bits="4", epochs=1, attacks=attacks))
    b = run_trial(TrialConfig(bits="float", sparsity=0.5, epochs=1, attacks=attacks))
    assert [r["status"] for r in a + b] == ["complete"] * 8, a[0]["reason"] + b[0]["reason"]
    assert [r["attack"] for r in a] == ["fgsm", "fgsm", "fgsm", "worst"]  # one per (norm, eps)
    assert a[0]["key"] != b[0]["key"]
    subsets = [r["meta_attack_subset"] for r in a]
    assert subsets == [r["meta_attack_subset"] for r in b]  # different configs, same examples
    assert subsets[0] != subsets[2]  # another seed, other examples
    assert subsets[0] != subsets[1]  # 20 of them: a prefix of the 40, not the same list
    # The digest is of the attacked examples' positions in the dataset pool, in subset order.
    split = trial_split(TrialConfig())
    order = stratified_order(split.y_test, 0)
    assert subsets[0] == subset_digest(split.test_index[order[:40]])
    assert subsets[1] == subset_digest(split.test_index[order[:20]])
    # Nested: FGSM treats examples independently, so the 20 share the 40's first outcomes.
    for rows in (a, b):
        m40 = np.unpackbits(np.frombuffer(bytes.fromhex(rows[0]["metric_robust_mask"]), np.uint8))
        m20 = np.unpackbits(np.frombuffer(bytes.fromhex(rows[1]["metric_robust_mask"]), np.uint8))
        assert np.array_equal(m40[:20], m20[:20])
        assert m40[:40].sum() == round(rows[0]["metric_robust_acc"] * 40)
        # The worst row, by hand: the 20's positions that seed 1's 40 also holds (seed 0's order),
        # robust where each of the three rows' masks says robust at that position.
        subsets_pos = [order[:40], order[:20], stratified_order(split.y_test, 1)[:40]]
        masks = [
            np.unpackbits(np.frombuffer(bytes.fromhex(r["metric_robust_mask"]), np.uint8))
            for r in rows[:3]
        ]
        common = [p for p in order[:20] if p in set(subsets_pos[2].tolist())]
        expected = [
            all(m[list(pos).index(p)] for m, pos in zip(masks, subsets_pos, strict=True))
            for p in common
        ]
        worst = rows[3]
        got = np.unpackbits(np.frombuffer(bytes.fromhex(worst["metric_robust_mask"]), np.uint8))
        assert worst["metric_samples"] == len(common) and 0 < len(common) < 20
        assert got[: len(common)].astype(bool).tolist() == expected
        assert worst["meta_attack_subset"] == subset_digest(split.test_index[common])
