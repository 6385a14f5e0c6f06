"""One trial, without Ray: compression properties of the stripped model and its rows."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import trainables  # noqa: F401
from trainables.config import TrialConfig
from trainables.rows import COLUMNS

ATTACKS = (
    {"name": "fgsm", "eps": (0.05, 0.1), "samples": 120},
    {"name": "pgd", "eps": (0.1,), "steps": 3, "samples": 120},
)

# (bits, sparsity, clusters, most distinct quantized values per layer [per channel])
CASES = [
    ("4", 0.5, 8, 16),
    ("2", 0.0, 0, 4),
    ("ternary", 0.6, 0, 3),
    ("ternary", 0.5, 4, 3),
    ("binary", 0.0, 4, 2),
    ("stochastic_ternary", 0.3, 0, 3),
    ("float", 0.7, 6, None),
    ("float", 0.9, 16, None),  # conv1 keeps 14 of 144 weights: fewer than 16 centroids
    ("8", 0.25, 0, 256),
]


@pytest.mark.parametrize(
    ("bits", "sparsity", "clusters", "max_values"),
    CASES,
    ids=[f"{c[0]}-s{c[1]}-k{c[2]}" for c in CASES],
)
def test_stripped_model_obeys_every_axis(
    bits: str, sparsity: float, clusters: int, max_values: int | None
) -> None:
    from trainables.models import WEIGHT_LAYERS
    from trainables.trial import train_compressed

    cfg = TrialConfig(
        bits=bits,
        sparsity=sparsity,
        clusters=clusters,
        epochs=2,
        fine_tune_epochs=1,
        batch_size=128,
        jr_weight=0.01,
    )
    model, _ = train_compressed(cfg)
    layers = [layer for layer in model.layers if isinstance(layer, WEIGHT_LAYERS)]
    assert [type(layer).__name__ for layer in layers] == [
        "CQConv2D",
        "CQConv2D",
        "CQDense",
    ]  # wrappers stripped
    for layer in layers:
        kernel = layer.kernel.numpy()
        if sparsity:
            assert abs(np.mean(kernel == 0) - sparsity) <= 0.01, layer.name
        if clusters:
            assert np.unique(kernel).size <= clusters, layer.name
        if max_values is not None:
            q = np.asarray(layer.kernel_quantizer_internal(layer.kernel))
            if bits == "stochastic_ternary":  # per-output-channel scale: <= 3 values per channel
                per_channel = q.reshape(-1, q.shape[-1])
                assert max(np.unique(per_channel[:, c]).size for c in range(q.shape[-1])) <= 3
            else:
                assert np.unique(q).size <= max_values, layer.name


@pytest.mark.slow
def test_rows_cover_every_attack_and_eps_and_respect_clean() -> None:
    from trainables.trial import run_trial

    cfg = TrialConfig(
        bits="4",
        sparsity=0.5,
        clusters=4,
        jr_weight=0.05,
        epochs=2,
        batch_size=128,
        attacks=ATTACKS,
    )
    rows = run_trial(cfg)
    assert [r["status"] for r in rows] == ["complete"] * 5, rows[0]["reason"]
    assert [(r["attack"], r["eps"]) for r in rows] == [
        ("fgsm", 0.05), ("fgsm", 0.1), ("pgd", 0.1), ("worst", 0.05), ("worst", 0.1)
    ]  # fmt: skip
    # The worst rows: per example, the AND of the attacks' masks (all on the same 120 here).
    assert _mask(rows[3]).tolist() == _mask(rows[0]).tolist()  # fgsm alone at 0.05
    assert (_mask(rows[4]) == (_mask(rows[1]) & _mask(rows[2]))).all()
    assert rows[4]["meta_attack_subset"] == rows[1]["meta_attack_subset"]
    assert {r["attack_kind"] for r in rows[3:]} == {"worst"}
    for r in rows:
        assert set(r) == set(COLUMNS)
        assert r["key"] == cfg.key
        assert r["metric_samples"] == 120
        assert 0.0 <= r["metric_robust_acc"] <= r["metric_attack_clean_acc"] <= 1.0
        # 4 clusters: 2-bit indices into a codebook beat 4-bit dense codes (the chosen
        # encoding being the smallest is the footprint's own min(), not checked here).
        assert r["metric_bytes"] < r["metric_bytes_dense"]
        assert abs(r["metric_sparsity"] - 0.5) <= 0.01
        assert r["metric_max_distinct"] <= 4
        assert r["meta_train_s"] > 0 and r["meta_total_s"] >= r["meta_train_s"]
        assert json.loads(r["meta_config_json"])["sparsity"] == 0.5
        _check_honest_numbers(r, n_test=360)
    assert [r["cfg_attack_restarts"] for r in rows] == [None, None, 0, None, None]
    assert [r["cfg_attack_steps"] for r in rows] == [None, None, 3, None, None]
    assert len({r["meta_attack_subset"] for r in rows}) == 1  # same seed and samples
    # Same config, same rows: training, attacks, sampling and the masking check are seeded.
    again = run_trial(cfg)
    for col in ("metric_robust_acc", "metric_robust_mask", "meta_attack_subset",
                "metric_masking_pgd_acc", "metric_tflite_acc"):  # fmt: skip
        assert [r[col] for r in again] == [r[col] for r in rows], col


def _mask(row: dict) -> np.ndarray:
    """The row's robust bit per attacked example (subset order)."""
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(row["metric_robust_mask"]), np.uint8))
    assert len(bits) == 8 * -(-row["metric_samples"] // 8)
    assert not bits[row["metric_samples"] :].any()  # packbits pads with zeros
    return bits[: row["metric_samples"]].astype(bool)


def _check_honest_numbers(r: dict, n_test: int) -> None:
    """Sample counts, Wilson intervals, per-example masks, masking and deployable columns."""
    from trainables.rows import wilson

    n = r["metric_samples"]
    assert r["metric_test_samples"] == n_test
    for col, count in (("metric_clean_acc", n_test), ("metric_attack_clean_acc", n),
                       ("metric_robust_acc", n)):  # fmt: skip
        lo, hi = r[f"{col}_lo"], r[f"{col}_hi"]
        assert (lo, hi) == wilson(round(r[col] * count), count)
        assert lo <= r[col] <= hi
    assert 0.01 < r["metric_robust_acc_hi"] - r["metric_robust_acc_lo"] < 0.25
    assert _mask(r).sum() == round(r["metric_robust_acc"] * n)
    assert re.fullmatch(r"[0-9a-f]{16}", r["meta_attack_subset"])  # 16 hex digits of a SHA-256
    assert r["metric_masking_pgd_eps"] == 0.5
    assert 0.0 <= r["metric_masking_pgd_acc"] <= 0.05  # an honest model: ~0
    assert r["metric_zero_grad_share"] == 0.0
    assert r["metric_masking_flags"] == ""
    assert r["metric_tflite_bytes"] > 1000  # the int8 flatbuffer: weights and graph
    assert abs(r["metric_tflite_acc"] - r["metric_clean_acc"]) < 0.15


def test_clean_only_trial_has_honest_numbers_too() -> None:
    from trainables.rows import wilson
    from trainables.trial import run_trial

    (row,) = run_trial(TrialConfig(bits="4", epochs=1))
    assert row["status"] == "complete", row["reason"]
    assert row["attack"] == "none" and row["metric_samples"] == row["metric_test_samples"] == 360
    interval = wilson(round(row["metric_clean_acc"] * 360), 360)
    for col in ("metric_clean_acc", "metric_attack_clean_acc", "metric_robust_acc"):
        assert (row[f"{col}_lo"], row[f"{col}_hi"]) == interval
    assert row["metric_tflite_bytes"] > 1000 and 0.0 <= row["metric_tflite_acc"] <= 1.0
    # no attacks, no attacked examples: no masks and no masking check
    assert row["metric_robust_mask"] is None and row["meta_attack_subset"] is None
    assert row["metric_masking_flags"] is None and row["metric_masking_pgd_acc"] is None


def test_an_independent_pgd_reproduces_the_stored_robust_examples(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Our own L-inf PGD (no random start, sign steps, clip to [0, 1], project on the eps ball,
    as ART's TF2 PGD does), on the model reloaded from the trial's artifact, leaves robust
    exactly the examples the row's mask says, on the examples the row's subset digest names."""
    import hashlib

    import tensorflow as tf

    from trainables.artifacts import MODEL_FILE, load_model
    from trainables.attacks import stratified_order
    from trainables.data import trial_split
    from trainables.trial import run_trial

    steps, ratio, samples, seed = 7, 0.25, 150, 11
    cfg = TrialConfig(
        bits="4",
        epochs=2,
        attacks=({"name": "pgd", "eps": (0.05, 0.1), "steps": steps, "step_ratio": ratio,
                  "samples": samples, "seed": seed},),
    )  # fmt: skip
    files: dict[str, bytes] = {}
    rows = run_trial(cfg, artifacts=lambda key, f: files.update(f))  # a sink that keeps the bytes
    assert rows[0]["status"] == "complete", rows[0]["reason"]
    (tmp_path / MODEL_FILE).write_bytes(files[MODEL_FILE])
    model = load_model(tmp_path)

    split = trial_split(cfg)
    subset = stratified_order(split.y_test, seed)[:samples]
    pool = split.test_index[subset].astype("<i8").tobytes()
    assert hashlib.sha256(pool).hexdigest()[:16] == rows[0]["meta_attack_subset"]
    x, y = split.x_test[subset], split.y_test[subset]
    onehot = np.eye(10, dtype=np.float32)[y]

    def predict(t: np.ndarray) -> np.ndarray:
        return np.argmax(model(t, training=False).numpy(), axis=1)

    def gradient(t: np.ndarray) -> np.ndarray:
        t = tf.constant(t)
        with tf.GradientTape() as tape:
            tape.watch(t)
            loss = tf.reduce_sum(
                tf.nn.softmax_cross_entropy_with_logits(onehot, model(t, training=False))
            )
        return tape.gradient(loss, t).numpy()

    clean = predict(x) == y
    pgd = [r for r in rows if r["attack"] == "pgd"]
    worst = [r for r in rows if r["attack"] == "worst"]  # one attack: the same examples
    assert [_mask(w).tolist() for w in worst] == [_mask(r).tolist() for r in pgd]
    for row, eps in zip(pgd, (0.05, 0.1), strict=True):
        e, step = np.float32(eps), np.float32(ratio * eps)
        adv = x.copy()
        for _ in range(steps):
            adv = np.clip(adv + step * np.sign(gradient(adv)), 0.0, 1.0)
            adv = x + np.clip(adv - x, -e, e)
        robust = clean & (predict(adv) == y)
        assert int(robust.sum()) == round(row["metric_robust_acc"] * samples)
        assert np.array_equal(robust, _mask(row))
        assert int(clean.sum()) == round(row["metric_attack_clean_acc"] * samples)


def test_full_test_split_robust_not_above_clean() -> None:
    from trainables.trial import run_trial

    rows = run_trial(
        TrialConfig(
            bits="ternary", epochs=1, attacks=({"name": "pgd", "eps": (0.05, 0.2), "steps": 2},)
        )
    )
    for r in rows:
        assert r["metric_samples"] == 360  # 20% of 1,797
        assert r["metric_attack_clean_acc"] == r["metric_clean_acc"]
        assert r["metric_robust_acc"] <= r["metric_clean_acc"]


def test_failure_becomes_a_failed_row() -> None:
    from trainables.trial import run_trial

    # A test split of 2 examples cannot hold all 10 classes: sklearn refuses to
    # stratify.  The trial must record that as a failed row, not crash the study.
    rows = run_trial(TrialConfig(bits="float", epochs=1, test_fraction=0.001))
    assert len(rows) == 1
    assert rows[0]["status"] == "failed"
    assert "ValueError" in rows[0]["reason"] and "number of classes" in rows[0]["reason"]
    assert rows[0]["metric_bytes"] is None
