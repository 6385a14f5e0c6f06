"""Per-layer mixed precision (issue 22): per-layer sparsity, clusters, activation widths and
float layers in a quantized model, from the config to the trained model and its rows."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
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


# ---------------------------------------------------------------------------
# Building: per-layer activation widths, float layers, names checked, layer kinds


def _levels(layer: Any, top: float = 1.0) -> int:
    """Distinct outputs of an activation layer on a fine ramp over [0, top): its quantization levels."""
    import tensorflow as tf

    x = tf.constant(np.linspace(0.0, top, 4001, endpoint=False, dtype=np.float32)[None, :])
    return int(np.unique(np.asarray(layer(x))).size)


def test_activation_width_per_layer_and_float_layer_in_a_quantized_model() -> None:
    from trainables.models import build_model, kernel_quantizer_of

    cfg = TrialConfig(bits="4", layer_activation_bits={"act1": 3}, layer_bits={"conv1": "float"})
    model = build_model(cfg, (8, 8, 1), 10)
    # a b-bit unsigned ReLU with no integer bits has 2^b levels in [0, 1): 8 for act1, 16 for act2
    assert _levels(model.get_layer("act1")) == 8
    assert _levels(model.get_layer("act2")) == 16
    conv1, conv2 = model.get_layer("conv1"), model.get_layer("conv2")
    assert kernel_quantizer_of(conv1) is None and conv1.bias_quantizer_internal is None
    assert kernel_quantizer_of(conv2) is not None and conv2.bias_quantizer_internal is not None
    # the default width follows int bits: without the override act1 has 16 levels too
    assert _levels(build_model(TrialConfig(bits="4"), (8, 8, 1), 10).get_layer("act1")) == 16


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("layer_bits", {"conv9": 8}, "layer_bits: no layer named ['conv9'] in digits_cnn (layers: ['conv1', 'conv2', 'logits'])"),
        ("layer_sparsity", {"conv9": 0.5}, "layer_sparsity: no weight layer named ['conv9'] in digits_cnn (layers: ['conv1', 'conv2', 'logits'])"),
        ("layer_clusters", {"act1": 4}, "layer_clusters: no weight layer named ['act1'] in digits_cnn (layers: ['conv1', 'conv2', 'logits'])"),
        ("layer_activation_bits", {"conv1": 4}, "layer_activation_bits: no activation layer named ['conv1'] in digits_cnn (activation layers: ['act1', 'act2'])"),
    ],
)  # fmt: skip
def test_unknown_layer_names_raise_naming_the_field(
    field: str, value: object, message: str
) -> None:
    from trainables.models import build_model

    with pytest.raises(ValueError) as err:
        build_model(TrialConfig(bits="4", **{field: value}), (8, 8, 1), 10)
    assert str(err.value) == message


def test_unknown_name_in_a_trial_is_a_failed_row_naming_the_field() -> None:
    from trainables.trial import run_trial

    rows = run_trial(TrialConfig(bits="4", epochs=1, layer_clusters={"dense9": 4}))
    assert len(rows) == 1 and rows[0]["status"] == "failed"
    assert rows[0]["reason"].startswith("ValueError: layer_clusters: no weight layer named")
    assert rows[0]["cfg_layer_clusters"] == '{"dense9": 4}'


def test_layer_kinds_of_built_in_list_and_imported_models(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    from pathlib import Path

    from tests.helpers import EVERY_LAYER, write_builder_package
    from trainables.models import layer_kinds, model_report

    assert layer_kinds(TrialConfig(), (8, 8, 1), 10) == {
        "conv1": "conv2d", "act1": "activation", "conv2": "conv2d", "act2": "activation",
        "logits": "dense",
    }  # fmt: skip
    ds = layer_kinds(TrialConfig(dataset="speech_commands", model="ds_cnn"), (49, 10, 1), 12)
    assert (
        ds["dw1"] == "depthwiseconv2d" and ds["pw1"] == "conv2d" and ds["dw1_act"] == "activation"
    )
    assert len(ds) == 1 + 4 * 4 + 1 + 1  # conv1 + act1, 4 x (dw, act, pw, act), logits
    assert list(layer_kinds(TrialConfig(model=EVERY_LAYER), (8, 8, 1), 10).items()) == [
        ("conv1", "conv2d"), ("act1", "activation"), ("dw1", "depthwiseconv2d"),
        ("act2", "activation"), ("conv2", "conv2d"), ("dense1", "dense"), ("act3", "activation"),
        ("logits", "dense"),
    ]  # fmt: skip
    root = Path(str(tmp_path)) / "src"
    write_builder_package(root, "layerwise_pkg")
    monkeypatch.syspath_prepend(str(root))
    try:
        cfg = TrialConfig(model="layerwise_pkg.models:build", bits="4")
        assert layer_kinds(cfg, (8, 8, 1), 10) == {
            "conv1": "conv2d", "act1": "activation", "logits": "dense",
        }  # fmt: skip
        report = model_report([cfg], (8, 8, 1), 10)
        assert {i.name: i.spec_kind for i in report.layers}["conv1"] == "conv2d"
        assert {i.name: i.spec_kind for i in report.layers}["flatten"] == "flatten"
    finally:
        for mod in [m for m in sys.modules if m.startswith("layerwise_pkg")]:
            del sys.modules[mod]


# ---------------------------------------------------------------------------
# Rows


def test_rows_carry_the_per_layer_config_columns() -> None:
    from trainables.rows import COLUMNS, base_row, failed_row
    from trainables.trivial import trivial_trial

    cfg = TrialConfig(
        bits="4",
        layer_sparsity={"conv2": 0.75},
        layer_clusters={"conv2": 4, "logits": 0},
        layer_activation_bits={"act1": 3},
    )
    for row in (base_row(cfg, "t"), failed_row(cfg, "x", "t"), *trivial_trial(cfg)):
        assert set(row) == set(COLUMNS)
        assert row["cfg_layer_sparsity"] == '{"conv2": 0.75}'
        assert row["cfg_layer_clusters"] == '{"conv2": 4, "logits": 0}'
        assert row["cfg_layer_activation_bits"] == '{"act1": 3}'
    plain = base_row(TrialConfig(), "t")
    assert (plain["cfg_layer_sparsity"], plain["cfg_layer_clusters"]) == ("{}", "{}")
    assert plain["cfg_layer_activation_bits"] == "{}"
    assert trivial_trial(cfg)[0]["meta_layer_sparsity_json"] == "{}"


# ---------------------------------------------------------------------------
# Training: a real tiny trial with a per-layer assignment

MIXED: dict[str, Any] = {
    "bits": "4",
    "epochs": 1,
    "fine_tune_epochs": 1,
    "batch_size": 128,
    "layer_bits": {"conv1": "float"},
    "layer_sparsity": {"conv1": 0.0, "conv2": 0.75, "logits": 0.5},
    "layer_clusters": {"conv2": 4},
    "layer_activation_bits": {"act1": 3},
}
# He-init scale of each 4-bit layer's quantizer: po2(2 sqrt(2 / fan_in)), by hand:
# conv2 fan_in 3*3*16 = 144 -> 0.2357 -> 2^-2; logits fan_in 4*4*32 = 512 -> 0.125 = 2^-3.
ALPHA = {"conv2": 0.25, "logits": 0.125}


@pytest.fixture(scope="module")
def mixed_model() -> Any:
    from trainables.trial import train_compressed

    model, _ = train_compressed(TrialConfig(**MIXED))
    return model


def _kernels(model: Any) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """weight layer -> (stored kernel, deployed kernel, deployed bias) as numpy arrays."""

    from trainables.models import WEIGHT_LAYERS, kernel_of, kernel_quantizer_of

    out = {}
    for layer in model.layers:
        if not isinstance(layer, WEIGHT_LAYERS):
            continue
        k = kernel_of(layer)
        kq, bq = kernel_quantizer_of(layer), layer.bias_quantizer_internal
        deployed = k.numpy() if kq is None else np.asarray(kq(k), np.float32)
        bias = layer.bias.numpy() if bq is None else np.asarray(bq(layer.bias), np.float32)
        out[layer.name] = (k.numpy(), deployed, bias)
    return out


@pytest.mark.slow
def test_each_layer_is_pruned_clustered_and_quantized_to_its_own_setting(
    mixed_model: Any,
) -> None:

    k = _kernels(mixed_model)
    assert [type(layer).__name__ for layer in mixed_model.layers if layer.name in k] == [
        "CQConv2D",
        "CQConv2D",
        "CQDense",
    ]  # fmt: skip  (every wrapper stripped)
    for name, target in MIXED["layer_sparsity"].items():
        stored = k[name][0]
        zeros = float(np.mean(stored == 0))
        assert abs(zeros - target) <= 1.0 / stored.size + 1e-9, (name, zeros, target)
    # conv2: 4 clusters (zero among them); conv1 and logits unclustered: many values
    assert np.unique(k["conv2"][0]).size <= 4
    assert np.unique(k["conv1"][0]).size == k["conv1"][0].size
    assert np.unique(k["logits"][0]).size > 100
    # conv1 float: deployed as stored; conv2 and logits on the 4-bit grid alpha * j / 8, j in -8..7
    assert np.array_equal(k["conv1"][1], k["conv1"][0])
    for name, alpha in ALPHA.items():
        j = np.asarray(k[name][1]) * 8 / alpha
        assert np.allclose(j, np.round(j), atol=1e-5) and j.min() >= -8 and j.max() <= 7, name
        assert not np.array_equal(k[name][1], k[name][0])
    # the activations: act1 at 3 bits (8 levels), act2 at the model's 4 (16 levels)
    assert _levels(mixed_model.get_layer("act1")) == 8
    assert _levels(mixed_model.get_layer("act2")) == 16


def _hand_layer_bytes(deployed: np.ndarray, bias: np.ndarray, width: int, bias_width: int) -> int:
    """The smallest of the four kernel encodings of the footprint's definition, plus the bias,
    written out here: dense n b; sparse n + nz b; clustered n ceil(log2 d) + d b; both
    n + nz ceil(log2 d0) + d0 b (d distinct values, d0 distinct non-zero ones)."""
    import math

    values = np.asarray(deployed).ravel()
    n, nz = values.size, int(np.count_nonzero(values))
    d, d0 = np.unique(values).size, np.unique(values[values != 0]).size

    def idx(m: int) -> int:
        return math.ceil(math.log2(m)) if m > 1 else 0

    kernel = min(n * width, n + nz * width, n * idx(d) + d * width, n + nz * idx(d0) + d0 * width)
    return math.ceil((kernel + np.asarray(bias).size * bias_width) / 8)


@pytest.mark.slow
def test_footprint_of_a_mixed_model_is_the_sum_of_each_layers_own_encoding(
    mixed_model: Any,
) -> None:
    from trainables.footprint import model_footprint
    from trainables.models import BIAS_BITS

    k = _kernels(mixed_model)
    # conv1 float: 32-bit weights and biases; conv2 and logits: 4-bit weights, 8-bit biases
    widths = {"conv1": (32, 32), "conv2": (4, 8), "logits": (4, 8)}
    hand = {n: _hand_layer_bytes(k[n][1], k[n][2], *widths[n]) for n in widths}
    fp = model_footprint(mixed_model, BIAS_BITS)
    assert {lf.name: lf.bytes for lf in fp.layers} == hand
    assert fp.bytes == sum(hand.values())
    # conv1 dense in float: 144 x 32 bits + 16 x 32 bits = 640 bytes
    assert hand["conv1"] == (144 * 32 + 16 * 32) // 8


@pytest.mark.slow
def test_a_mixed_trial_records_its_assignment_in_its_rows() -> None:
    from trainables.rows import COLUMNS
    from trainables.trial import run_trial

    rows = run_trial(TrialConfig(**MIXED))
    assert len(rows) == 1 and rows[0]["status"] == "complete", rows[0]["reason"]
    row = rows[0]
    assert set(row) == set(COLUMNS)
    assert json.loads(row["cfg_layer_sparsity"]) == MIXED["layer_sparsity"]
    assert json.loads(row["cfg_layer_clusters"]) == {"conv2": 4}
    assert json.loads(row["cfg_layer_activation_bits"]) == {"act1": 3}
    assert json.loads(row["cfg_layer_bits"]) == {"conv1": "float"}
    assert json.loads(row["meta_layer_sparsity_json"]) == {
        "conv1": 0.0,
        "conv2": 0.75,
        "logits": 0.5,
    }
    assert json.loads(row["meta_layer_clusters_json"]) == {"conv1": 0, "conv2": 4, "logits": 0}
    assert json.loads(row["meta_layer_bits_json"]) == {
        "conv1": "float",
        "conv2": "4",
        "logits": "4",
    }
    layers = {d["name"]: d for d in json.loads(row["meta_layers_json"])}
    assert layers["conv1"]["weight_bits"] == 32 and layers["conv2"]["weight_bits"] == 4
    assert abs(layers["conv2"]["zero_fraction_stored"] - 0.75) <= 1 / 4608 + 1e-9
    assert layers["conv1"]["zero_fraction_stored"] == 0.0
    assert row["metric_tflite_bytes"] is not None  # a float layer still exports to int8 TFLite


def test_expected_cost_counts_per_layer_pruning_and_clustering() -> None:
    from grid.planning import expected_cost

    # 8 epochs at 1.3 (quantized) plain-step units; + 0.5 a step when a layer is pruned;
    # + 2 fine-tune epochs when a layer is clustered
    assert expected_cost(TrialConfig(bits="4")) == pytest.approx(8 * 1.3)
    assert expected_cost(TrialConfig(bits="4", layer_sparsity={"conv2": 0.5})) == pytest.approx(
        8 * 1.8
    )
    assert expected_cost(TrialConfig(bits="4", layer_clusters={"conv2": 4})) == pytest.approx(
        10 * 1.3
    )
    assert expected_cost(TrialConfig(bits="4", layer_clusters={"conv2": 0})) == pytest.approx(
        8 * 1.3
    )


# ---------------------------------------------------------------------------
# Analysis: per-layer variants are configs of their own, and pair with their baseline


def test_analysis_keeps_per_layer_variants_apart_and_reads_old_files(tmp_path: Any) -> None:
    import warnings

    import pyarrow as pa
    import pyarrow.parquet as pq

    import analysis
    from analysis.query import AXIS_COLUMNS
    from grid.store import SCHEMA, ParquetSink
    from tests.helpers import config_rows

    base = TrialConfig()
    variants = {
        "base": (base, 0.50),
        "conv2@0.5": (TrialConfig(layer_sparsity={"conv2": 0.5}), 0.45),
        "conv2@0.75": (TrialConfig(layer_sparsity={"conv2": 0.75}), 0.40),
        "uniform@0.5": (TrialConfig(sparsity=0.5), 0.35),
        "conv2k4": (TrialConfig(layer_clusters={"conv2": 4}), 0.30),
    }
    sink = ParquetSink(str(tmp_path / "new"), "new", "r")
    for cfg, robust in variants.values():
        sink(cfg.key, config_rows(cfg, robust, 1000, study="new"))
    # the same default config in a file written before the per-layer columns existed
    old = [
        {k: v for k, v in r.items() if not k.startswith(("cfg_layer_", "meta_layer_"))}
        for r in config_rows(base, 0.50, 1000, study="old")
    ]
    fields = [f for f in SCHEMA if f.name in old[0]]
    (tmp_path / "old" / "rows").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(old, schema=pa.schema(fields)),
        tmp_path / "old" / "rows" / f"{base.key}.parquet",
    )
    con = analysis.connect(tmp_path)
    by_study = con.execute(
        f"SELECT meta_study, cfg_layer_sparsity, cfg_layer_clusters, cfg_layer_activation_bits, "
        f"{analysis.query.CONFIG_ID} FROM rows WHERE key = '{base.key}' AND attack = 'pgd' "
        "ORDER BY meta_study"
    ).fetchall()
    # the old file's columns read as '{}' (it had no overrides), and its config is the same one
    assert [r[:4] for r in by_study] == [("new", "{}", "{}", "{}"), ("old", "{}", "{}", "{}")]
    assert by_study[0][4] == by_study[1][4]
    ids = con.execute(
        f"SELECT count(DISTINCT {analysis.query.CONFIG_ID}) FROM rows WHERE meta_study = 'new'"
    ).fetchone()
    assert ids == (len(variants),)
    # grouping by the axes' columns (the default "each config") keeps the variants apart too
    groups = con.execute(
        f"SELECT count(*) FROM (SELECT DISTINCT {', '.join(AXIS_COLUMNS)} FROM rows "
        "WHERE meta_study = 'new')"
    ).fetchone()
    assert groups == (len(variants),)
    # each per-layer variant is a reduction paired with the float, unpruned baseline
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        eff = analysis.reduction_effects(con, "pgd", 0.1, where="meta_study = 'new'")
    got = {
        (r.reductions, r.layer_sparsity, r.layer_clusters): round(r.delta, 9)
        for r in eff.itertuples()
    }
    assert got == {
        ("pruning", '{"conv2": 0.5}', "{}"): -0.05,
        ("pruning", '{"conv2": 0.75}', "{}"): -0.10,
        ("pruning", "{}", "{}"): -0.15,
        ("clustering", "{}", '{"conv2": 4}'): -0.20,
    }


def test_variant_labels_name_per_layer_settings() -> None:
    from analysis.compare import variant_label

    assert variant_label("digits_cnn", "4") == "digits_cnn 4"
    assert (
        variant_label(
            "digits_cnn",
            "4",
            layer_bits='{"conv1": "float"}',
            layer_sparsity='{"conv2": 0.75}',
            layer_clusters='{"conv2": 4}',
            layer_activation_bits='{"act1": 3}',
        )
        == "digits_cnn 4 bits{conv1:float} act{act1:3} sparsity{conv2:0.75} clusters{conv2:4}"
    )


@pytest.mark.slow
def test_equal_per_layer_targets_train_exactly_as_the_uniform_config() -> None:
    """Per-layer wrapping (clone_model, one schedule per layer) is tfmot's whole-model wrapping
    when every layer has the same target: the same weights, bit for bit."""
    from trainables.trial import train_compressed

    common: dict[str, Any] = {
        "bits": "4", "sparsity": 0.5, "clusters": 4, "epochs": 1, "fine_tune_epochs": 1,
        "batch_size": 128,
    }  # fmt: skip
    uniform, _ = train_compressed(TrialConfig(**common))
    per_layer, _ = train_compressed(
        TrialConfig(**common, layer_sparsity={"conv1": 0.5, "conv2": 0.5, "logits": 0.5})
    )
    a, b = uniform.get_weights(), per_layer.get_weights()
    assert len(a) == len(b) == 6  # kernel and bias of conv1, conv2, logits
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
