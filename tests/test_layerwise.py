"""Per-layer mixed precision (issue 22): per-layer sparsity, clusters, activation widths and
float layers in a quantized model, from the config to the trained model and its rows."""

from __future__ import annotations

import hashlib
import json

import pytest

import trainables  # noqa: F401
from trainables.config import RESULTS_REVISION, TrialConfig

# The identity fields every config had before issue 22 (results revision 3): a default
# config's identity must hold exactly these, so its key is unchanged.
PRE_ISSUE22_FIELDS = {
    "activation_bits", "adversarial", "attacks", "batch_size", "bits", "clusters", "dataset",
    "epochs", "fine_tune_epochs", "fold", "folds", "jr_layers", "jr_projections", "jr_weight",
    "layer_bits", "learning_rate", "model", "revision", "seed", "sparsity", "test_fraction",
}  # fmt: skip


def _hand_key(fields: dict[str, object]) -> str:
    """The trial key as the project defines it: 16 hex digits of SHA-256 over sorted compact JSON."""
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _default_fields(**changes: object) -> dict[str, object]:
    """A default digits_cnn config's identity written out by hand (values as the JSON dump has them)."""
    fields: dict[str, object] = {
        "activation_bits": None, "adversarial": {"eps": 0.1, "method": "none", "ratio": 0.5, "steps": 7},
        "attacks": [], "batch_size": 64, "bits": "float", "clusters": 0, "dataset": "digits",
        "epochs": 8, "fine_tune_epochs": 2, "fold": 0, "folds": 1, "jr_layers": {},
        "jr_projections": 1, "jr_weight": 0.0, "layer_bits": {}, "learning_rate": 0.003,
        "model": "digits_cnn", "revision": RESULTS_REVISION, "seed": 0, "sparsity": 0.0,
        "test_fraction": 0.2,
    }  # fmt: skip
    fields.update(changes)
    return fields


def test_keys_of_configs_without_per_layer_overrides_are_unchanged() -> None:
    plain = TrialConfig()
    mixed = TrialConfig(bits="4", layer_bits={"conv1": 8, "logits": 8})
    assert set(plain.identity()) == PRE_ISSUE22_FIELDS
    assert set(mixed.identity()) == PRE_ISSUE22_FIELDS
    assert plain.key == _hand_key(_default_fields())
    assert mixed.key == _hand_key(
        _default_fields(bits="4", layer_bits={"conv1": "8", "logits": "8"})
    )
    # The same keys main computed before the fields existed (commit 5f5f9b5, revision 3).
    assert RESULTS_REVISION == 3
    assert (plain.key, mixed.key) == ("a6f03792212f1beb", "f62edbf98dfbfa42")


def test_per_layer_overrides_enter_the_key_only_when_set() -> None:
    cfg = TrialConfig(bits="4", layer_sparsity={"conv2": 0.75})
    assert set(cfg.identity()) == PRE_ISSUE22_FIELDS | {"layer_sparsity"}
    assert cfg.key == _hand_key(_default_fields(bits="4", layer_sparsity={"conv2": 0.75}))
    others = [
        TrialConfig(bits="4"),
        TrialConfig(bits="4", layer_sparsity={"conv2": 0.5}),
        TrialConfig(bits="4", layer_clusters={"conv2": 4}),
        TrialConfig(bits="4", layer_activation_bits={"act1": 4}),
        TrialConfig(bits="4", layer_bits={"conv1": "float"}),
    ]
    assert len({c.key for c in [cfg, *others]}) == 1 + len(others)
    # A stored identity rebuilds the same config (and key).
    assert TrialConfig.model_validate(cfg.identity()).key == cfg.key


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("layer_sparsity", {"conv2": 1.0}, "less than 1"),
        ("layer_sparsity", {"conv2": -0.1}, "greater than or equal to 0"),
        ("layer_clusters", {"conv2": 1}, "clusters must be 0 (off) or 2-65536"),
        ("layer_activation_bits", {"act1": 1}, "greater than or equal to 2"),
        ("layer_activation_bits", {"act1": 17}, "less than or equal to 16"),
    ],
)
def test_per_layer_values_use_the_axes_validators(field: str, value: object, words: str) -> None:
    with pytest.raises(ValueError, match=field) as err:
        TrialConfig(bits="4", **{field: value})
    assert words in str(err.value)


def test_float_layers_and_float_models() -> None:
    # a float layer in a quantized model is allowed; a float model refuses quantized overrides
    TrialConfig(bits="4", layer_bits={"conv1": "float"})
    with pytest.raises(ValueError, match=r"layer_bits: .*bits 'float' is float in every layer"):
        TrialConfig(bits="float", layer_bits={"conv1": 8})
    with pytest.raises(ValueError, match=r"layer_activation_bits: .*float activations"):
        TrialConfig(bits="float", layer_activation_bits={"act1": 4})


def test_per_layer_helpers() -> None:
    cfg = TrialConfig(
        bits="4",
        sparsity=0.5,
        clusters=8,
        layer_sparsity={"conv1": 0.0},
        layer_clusters={"logits": 0},
        layer_activation_bits={"act2": 6},
    )
    assert (cfg.sparsity_of("conv1"), cfg.sparsity_of("conv2")) == (0.0, 0.5)
    assert (cfg.clusters_of("logits"), cfg.clusters_of("conv2")) == (0, 8)
    assert (cfg.act_bits_of("act1"), cfg.act_bits_of("act2")) == (4, 6)
    assert cfg.pruned and cfg.clustered
    only = TrialConfig(bits="8", layer_sparsity={"conv2": 0.5}, layer_clusters={"conv1": 4})
    assert only.pruned and only.clustered
    none = TrialConfig(
        bits="8", sparsity=0.0, layer_sparsity={"conv2": 0.0}, layer_clusters={"a": 0}
    )
    assert not none.pruned and not none.clustered
    assert TrialConfig().act_bits_of("act1") is None
