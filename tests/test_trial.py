"""One trial, without Ray: compression properties of the stripped model and its rows."""

from __future__ import annotations

import json

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
    assert [r["status"] for r in rows] == ["complete"] * 3, rows[0]["reason"]
    assert [(r["attack"], r["eps"]) for r in rows] == [("fgsm", 0.05), ("fgsm", 0.1), ("pgd", 0.1)]
    for r in rows:
        assert set(r) == set(COLUMNS) - {"meta_study", "meta_git_rev"} | {
            "meta_study",
            "meta_git_rev",
        }
        assert r["key"] == cfg.key
        assert r["metric_samples"] == 120
        assert 0.0 <= r["metric_robust_acc"] <= r["metric_attack_clean_acc"] <= 1.0
        assert r["metric_bytes"] <= min(
            r["metric_bytes_dense"], r["metric_bytes_sparse"], r["metric_bytes_clustered"]
        )
        assert abs(r["metric_sparsity"] - 0.5) <= 0.01
        assert r["metric_max_distinct"] <= 4
        assert r["meta_train_s"] > 0 and r["meta_total_s"] >= r["meta_train_s"]
        assert json.loads(r["meta_config_json"])["sparsity"] == 0.5
    # Same config, same rows: training and attacks are seeded.
    again = run_trial(cfg)
    assert [r["metric_robust_acc"] for r in again] == [r["metric_robust_acc"] for r in rows]


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
