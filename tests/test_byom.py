"""Bring your own model: layer lists and import-path builders, validated before Ray; every axis applies."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import trainables  # noqa: F401
from grid.cli import main
from grid.space import distributions, point_label, points, to_params, to_point
from grid.spec import StudyError, parse_study
from tests.helpers import EVERY_LAYER, config_rows, write_builder_package
from trainables.config import TrialConfig

# Every layer type once; names left to the defaults except where `add` refers to one.
EVERY_LAYER_PARAMS = 80 + 32 + 80 + 72 + 108 + 130


def _study(**fields: Any) -> dict[str, Any]:
    return {"name": "byom", "train": {"epochs": 1, "batch_size": 128}, **fields}


# ---------------------------------------------------------------------------
# Keys


def test_golden_keys_unchanged() -> None:
    assert TrialConfig().key == "a6f03792212f1beb"
    cfg = TrialConfig(
        model="resnet8", dataset="cifar10", bits="stochastic_ternary",
        layer_bits={"conv1": "8"}, jr_layers={"all": 0.01},
    )  # fmt: skip
    assert cfg.key == "712a50faa22a49b2"
    assert TrialConfig(model="resnet8").identity()["model"] == "resnet8"
    assert "builder_digest" not in TrialConfig().identity()
    # A study's built-in model gives the same keys as ever (no 'model' in the point either).
    study = parse_study({"name": "x", "model": "digits_cnn"})
    assert [t.key for t in study.trials()] == ["a6f03792212f1beb"]
    assert point_label(points(study)[0]) == (
        "bits=float|sparsity=0.0|clusters=0|jr_weight=0.0|adversarial=0|jr_layers=0"
    )


def test_layer_list_names_resolve_and_the_key_ignores_spelling() -> None:
    short = {
        "layers": [
            {"type": "conv", "filters": 4, "kernel": 3},
            {"type": "flatten"},
            {"type": "dense"},
        ]
    }
    spelled = {
        "name": short_name(short),
        "layers": [
            {"type": "conv", "filters": 4, "kernel": [3, 3], "name": "conv1"},
            {"type": "flatten", "name": "flatten1"},
            {"type": "dense", "name": "logits"},
        ],
    }
    a, b = TrialConfig(model=short), TrialConfig(model=spelled)
    assert a.key == b.key
    assert [s.name for s in a.model.layers] == ["conv1", "flatten1", "logits"]  # type: ignore[union-attr]
    assert a.model_label == short_name(short)
    assert TrialConfig(model={**short, "name": "other"}).key != a.key  # the label is identity too
    wider = {"layers": [{"type": "conv", "filters": 5}, {"type": "flatten"}, {"type": "dense"}]}
    assert TrialConfig(model=wider).key != a.key


def short_name(spec: dict[str, Any]) -> str:
    from trainables.modelspec import LayerList

    return str(LayerList.model_validate(spec).name)


# ---------------------------------------------------------------------------
# Validation before Ray

BAD_LAYERS = [
    ([{"type": "conv", "filters": -2}, {"type": "dense"}], "model.layers[0].filters = -2:"),
    (
        [{"type": "flatten"}, {"type": "conv", "filter": 8}, {"type": "dense"}],
        "model.layers[1].filter: unknown key; did you mean 'filters'?",
    ),
    ([{"type": "convv", "filters": 8}, {"type": "dense"}], "model.layers[0].type = 'convv': unknown"),
    ([{"filters": 8}, {"type": "dense"}], "model.layers[0].type: missing"),
    ([{"type": "conv", "filters": 8, "kernel": [3, 3, 3]}, {"type": "dense"}], "model.layers[0].kernel"),
    ([{"type": "conv", "filters": 8, "padding": "full"}, {"type": "dense"}], "model.layers[0].padding = 'full'"),
    ([{"type": "dropout", "rate": 1.5}, {"type": "dense"}], "model.layers[0].rate = 1.5"),
    ([{"type": "conv", "filters": "8"}, {"type": "dense"}], "model.layers[0].filters = '8'"),
    (
        [{"type": "flatten"}, {"type": "add", "from": "conv9"}, {"type": "dense"}],
        "model.layers[1] (add1): from = 'conv9' names no earlier layer",
    ),
    (
        [{"type": "conv", "filters": 8, "name": "a"}, {"type": "conv", "filters": 8, "name": "a"}, {"type": "dense"}],
        "model.layers[1]: name 'a' is already the name of layers[0]",
    ),
    (
        [{"type": "flatten"}, {"type": "dense"}, {"type": "dense"}],
        "model.layers[1] (dense1): units is required",
    ),
    ([{"type": "flatten"}, {"type": "dense"}, {"type": "activation"}], "model.layers[2]: the last layer is a ReLU"),
    ([], "model.layers: give at least one layer"),
]  # fmt: skip


@pytest.mark.parametrize(("layers", "expected"), BAD_LAYERS, ids=[b[1][:40] for b in BAD_LAYERS])
def test_bad_layer_fields_name_index_and_field(layers: list[Any], expected: str) -> None:
    with pytest.raises(StudyError) as info:
        parse_study(_study(model={"layers": layers}), "s.yaml")
    assert expected in str(info.value)


def test_bad_layer_in_axes_model_names_its_model_and_layer() -> None:
    bad = {"layers": [{"type": "flatten"}, {"type": "dense", "units": 0}, {"type": "dense"}]}
    with pytest.raises(StudyError, match=r"axes\.model\[1\]\.layers\[1\]\.units = 0"):
        parse_study(_study(axes={"model": ["digits_cnn", bad]}))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"model": "resnet9"}, "model = 'resnet9': unknown model 'resnet9'"),
        ({"model": {"layer": []}}, "model: a model is a built-in name"),
        ({"model": "no_such_pkg.models:build"}, "model = 'no_such_pkg.models:build': no module named 'no_such_pkg'"),
        ({"model": "a-b:c"}, "is not an import path 'package.module:function'"),
        ({"model": "resnet8", "axes": {"model": ["digits_cnn"]}}, "model and axes.model: give the model in one place"),
        ({"axes": {"model": ["digits_cnn", "digits_cnn"]}}, "axes.model[1]: a second model labelled 'digits_cnn'"),
        ({"axes": {"model": []}}, "axes.model"),
    ],
)  # fmt: skip
def test_bad_model_values_name_the_field(fields: dict[str, Any], expected: str) -> None:
    with pytest.raises(StudyError) as info:
        parse_study(_study(**fields), "s.yaml")
    assert expected in str(info.value)


SHAPE_ERRORS = [
    (
        [{"type": "conv", "filters": 8}, {"type": "max_pool"}, {"type": "add", "from": "conv1"},
         {"type": "flatten"}, {"type": "dense"}],
        "model.layers[2] (add1): cannot add conv1's output (8, 8, 8) to this input (4, 4, 8)",
    ),
    (
        [{"type": "conv", "filters": 8}, {"type": "dense"}],
        "model.layers[1] (logits): the model's output is (B, 8, 8, 10), not the logits (B, 10)",
    ),
    (
        [{"type": "flatten"}, {"type": "conv", "filters": 8}, {"type": "dense"}],
        "model.layers[1] (conv1): conv needs a (B, H, W, C) input",
    ),
    (
        [{"type": "max_pool", "pool": 16}, {"type": "flatten"}, {"type": "dense"}],
        "model.layers[0] (maxpool1): Negative dimension size",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("layers", "expected"), SHAPE_ERRORS, ids=["add", "output", "rank", "pool"]
)
def test_shape_errors_are_named_before_ray(layers: list[Any], expected: str) -> None:
    study = parse_study(_study(model={"layers": layers}))  # the schema alone cannot see shapes
    with pytest.raises(StudyError) as info:
        study.check_models()
    assert expected in str(info.value)


def test_names_the_model_lacks_fail_before_ray() -> None:
    spec = {"name": "tiny", "layers": [{"type": "flatten"}, {"type": "dense"}]}
    study = parse_study(_study(model=spec, axes={"bits": [4]}, train={"layer_bits": {"conv1": 8}}))
    with pytest.raises(StudyError, match=r"train\.layer_bits: no layer named \['conv1'\] in tiny"):
        study.check_models()
    study = parse_study(_study(model=spec, axes={"jr_layers": ["none", {"act9": 0.1}]}))
    with pytest.raises(
        StudyError, match=r"axes\.jr_layers\[1\]: no layer named \['act9'\] in model tiny"
    ):
        study.check_models()


def test_cli_validate_fails_on_a_shape_error_without_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    f = tmp_path / "s.yaml"
    layers = [{"type": "conv", "filters": 8}, {"type": "dense"}]
    f.write_text(yaml.safe_dump(_study(model={"name": "flat", "layers": layers})))
    assert main(["validate", str(f)]) == 2
    assert (
        "model.layers[1] (logits): the model's output is (B, 8, 8, 10)" in capsys.readouterr().err
    )
    assert not ray.is_initialized()


# ---------------------------------------------------------------------------
# What grid validate prints


def test_validate_prints_layers_params_and_footprint_per_bits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hand-counted list: conv 3x3x1->4 (36 + 4 = 40 params), flatten 8*8*4 = 256, dense 256->10 (2,570).

    float: every weight and bias 32 bits, no encoding beats dense on distinct random
    floats: 4 B x 2,610 = 10,440 B.  binary: 1 bit a weight, 8 a bias, two distinct
    values (dense n bits beats clustered n*1 + 2 and sparse n + n):
    conv1 ceil((36 + 4*8)/8) = 9 B, logits ceil((2,560 + 10*8)/8) = 330 B: 339 B.
    """
    spec = {"name": "hand", "layers": [
        {"type": "conv", "filters": 4, "kernel": 3}, {"type": "activation"},
        {"type": "flatten"}, {"type": "dense"},
    ]}  # fmt: skip
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(_study(model=spec, axes={"bits": ["float", "binary"]})))
    assert main(["validate", str(f)]) == 0
    out = capsys.readouterr().out
    assert "model hand: 4 layers, 2,610 params, input 8x8x1 -> 10 classes" in out
    table = {
        line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")
    }
    assert table["conv1"] == ["conv", "8x8x4", "40", "32", "1"]
    assert table["act1"] == ["activation", "8x8x4", "0", "-", "-"]
    assert table["flatten1"] == ["flatten", "256", "0", "-", "-"]
    assert table["logits"] == ["dense", "10", "2,570", "32", "1"]
    assert table["total"] == ["2,610"]
    assert table["footprint"] == ["(B)", "10,440", "339"]
    assert "untrained" in out


def test_layer_bits_show_in_the_report() -> None:
    spec = {
        "name": "hand",
        "layers": [{"type": "conv", "filters": 4}, {"type": "flatten"}, {"type": "dense"}],
    }
    study = parse_study(
        _study(model=spec, axes={"bits": ["float", "ternary"]}, train={"layer_bits": {"conv1": 8}})
    )
    (report,) = study.check_models()
    widths = {info.name: info.weight_bits for info in report.layers}
    assert widths["conv1"] == {"float": 32, "ternary": 8}  # a float point stays float throughout
    assert widths["logits"] == {"float": 32, "ternary": 2}
    assert report.params == 40 + 256 * 10 + 10


# ---------------------------------------------------------------------------
# Every axis applies to a layer list


def test_layer_list_builds_every_layer_type_with_the_axes_quantizers() -> None:
    from qkeras import QActivation

    from trainables import compress
    from trainables.models import (
        CQConv2D,
        CQDense,
        CQDepthwiseConv2D,
        build_model,
        kernel_quantizer_of,
    )
    from trainables.train import jr_layer_names

    cfg = TrialConfig(model=EVERY_LAYER, bits="4", layer_bits={"conv1": 8, "logits": 8})
    model = build_model(cfg, (8, 8, 1), 10)
    kinds = {layer.name: type(layer) for layer in model.layers}
    assert kinds["conv1"] is CQConv2D and kinds["conv2"] is CQConv2D
    assert kinds["dw1"] is CQDepthwiseConv2D
    assert kinds["dense1"] is CQDense and kinds["logits"] is CQDense
    assert model.count_params() == EVERY_LAYER_PARAMS
    assert model.output_shape == (None, 10)
    bits = {
        n: kernel_quantizer_of(model.get_layer(n)).bits
        for n in ("conv1", "dw1", "conv2", "dense1", "logits")
    }
    assert bits == {"conv1": 8, "dw1": 4, "conv2": 4, "dense1": 4, "logits": 8}
    acts = [layer for layer in model.layers if isinstance(layer, QActivation)]
    assert [a.name for a in acts] == ["act1", "act2", "act3"]
    assert all(a.quantizer.bits == 4 for a in acts)  # the trial's activation width
    assert jr_layer_names(model, {"all": 0.1}) == {"act1": 0.1, "act2": 0.1, "act3": 0.1}
    pruned = compress.prune(model, 0.5, total_steps=4)
    wrapped = {layer.name for layer in pruned.layers if type(layer).__name__ == "PruneLowMagnitude"}
    assert {
        "prune_low_magnitude_" + n for n in ("conv1", "dw1", "conv2", "dense1", "logits")
    } <= wrapped
    clustered = compress.cluster(model, 4, preserve_sparsity=False)
    wrapped = {layer.name for layer in clustered.layers if type(layer).__name__ == "ClusterWeights"}
    assert {"cluster_" + n for n in ("conv1", "dw1", "conv2", "dense1", "logits")} <= wrapped


@pytest.mark.slow
def test_a_layer_list_trial_prunes_clusters_quantizes_and_records_its_model() -> None:
    """One real trial (no Ray) with every axis on: the rows show each one took effect."""
    from trainables.trial import run_trial

    spec = {"name": "small", "layers": [
        {"type": "conv", "filters": 8, "kernel": 3}, {"type": "batch_norm"}, {"type": "activation"},
        {"type": "conv", "filters": 8, "kernel": 3, "strides": 2}, {"type": "activation"},
        {"type": "flatten"}, {"type": "dense"},
    ]}  # fmt: skip
    cfg = TrialConfig(
        model=spec, bits="4", layer_bits={"conv1": 8}, sparsity=0.5, clusters=4, jr_weight=0.01,
        jr_layers={"all": 0.01}, epochs=3, fine_tune_epochs=1, batch_size=64,
    )  # fmt: skip
    rows = run_trial(cfg)
    assert len(rows) == 1 and rows[0]["status"] == "complete", rows[0]["reason"]
    r = rows[0]
    assert r["cfg_model"] == "small"
    assert json.loads(r["cfg_model_spec"]) == cfg.model_dump(mode="json")["model"]
    assert json.loads(r["meta_config_json"])["model"]["layers"][0]["name"] == "conv1"
    layers = {lf["name"]: lf for lf in json.loads(r["meta_layers_json"])}
    assert layers["conv1"]["weight_bits"] == 8 and layers["conv2"]["weight_bits"] == 4
    assert layers["logits"]["weight_bits"] == 4
    weight = [lf for lf in layers.values() if lf["kernel_params"]]
    assert all(abs(lf["zero_fraction_stored"] - 0.5) < 0.05 for lf in weight)  # pruned to 50%
    assert all(lf["distinct"] <= 4 for lf in weight)  # 4 clusters (zero among them)
    assert r["metric_clean_acc"] > 0.3  # it learned (chance: 0.1)


# ---------------------------------------------------------------------------
# Import-path builders


@pytest.fixture
def builder_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "src"
    pkg = write_builder_package(root, "byom_unit_pkg")
    monkeypatch.syspath_prepend(str(root))
    yield pkg
    for mod in [m for m in sys.modules if m.startswith("byom_unit_pkg")]:
        del sys.modules[mod]


def test_builder_digest_is_in_the_key_and_changes_with_the_source(builder_pkg: Path) -> None:
    from trainables.modelspec import source_digest

    a = TrialConfig(model="byom_unit_pkg.models:build", bits="4")
    assert a.builder_digest == source_digest("byom_unit_pkg.models:build")
    assert a.identity()["builder_digest"] == a.builder_digest
    assert a.model_label == "byom_unit_pkg.models:build"
    same = TrialConfig.from_dict(a.model_dump(mode="json"))  # what a worker rebuilds
    assert same.key == a.key
    (builder_pkg / "models.py").write_text((builder_pkg / "models.py").read_text() + "\n# edited\n")
    b = TrialConfig(model="byom_unit_pkg.models:build", bits="4")
    assert b.builder_digest != a.builder_digest and b.key != a.key
    (builder_pkg / "helpers.py").write_text("X = 1\n")  # any file of the package counts
    assert TrialConfig(model="byom_unit_pkg.models:build", bits="4").key != b.key
    with pytest.raises(ValueError, match="builder_digest"):
        TrialConfig(model="digits_cnn", builder_digest="0123456789abcdef")


def test_builder_model_builds_with_the_trials_quantizers(builder_pkg: Path) -> None:
    from trainables.models import build_model, kernel_quantizer_of

    study = parse_study(
        _study(
            model="byom_unit_pkg.models:build",
            axes={"bits": ["float", 4]},
            train={"layer_bits": {"logits": 8}},
        )
    )
    (report,) = study.check_models()
    assert report.params == (9 * 4 + 4) + (8 * 8 * 4 * 10 + 10)
    cfg = study.trials()[1]
    model = build_model(cfg, (8, 8, 1), 10)
    assert kernel_quantizer_of(model.get_layer("conv1")).bits == 4
    assert kernel_quantizer_of(model.get_layer("logits")).bits == 8


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "byom_unit_pkg.models:nope",
            "model: module 'byom_unit_pkg.models' has no function 'nope'",
        ),
        ("byom_unit_pkg.nomodule:build", "model: cannot import module 'byom_unit_pkg.nomodule'"),
        ("byom_unit_pkg.models:wrong_output", "outputs (None, 11), not the logits (None, 10)"),
        (
            "byom_unit_pkg.models:plain_dense",
            "layer 'head' (Dense) holds weights but is not one of",
        ),
    ],
)
def test_bad_builders_fail_before_ray(builder_pkg: Path, path: str, expected: str) -> None:
    study = parse_study(_study(model=path, axes={"bits": [4]}))
    with pytest.raises(StudyError) as info:
        study.check_models()
    assert expected in str(info.value)


def test_a_worker_with_other_builder_code_refuses_with_a_failed_row(builder_pkg: Path) -> None:
    from trainables.trial import run_trial

    cfg = TrialConfig(
        model="byom_unit_pkg.models:build", epochs=1, builder_digest="0123456789abcdef"
    )
    rows = run_trial(cfg)
    assert len(rows) == 1 and rows[0]["status"] == "failed"
    reason = rows[0]["reason"]
    assert "ModelError" in reason and "the driver's has 0123456789abcdef" in reason
    assert "ship or install the same code on every node" in reason


# ---------------------------------------------------------------------------
# axes.model


def test_axes_model_crosses_models_with_the_other_axes() -> None:
    spec = {"name": "tiny", "layers": [{"type": "flatten"}, {"type": "dense"}]}
    single = parse_study(_study(axes={"bits": [4, 8], "jr_weight": [0.0, 0.1]}))
    both = parse_study(
        _study(axes={"model": ["digits_cnn", spec], "bits": [4, 8], "jr_weight": [0.0, 0.1]})
    )
    assert both.point_count == 2 * single.point_count == 8
    trials = both.trials()
    assert [t.model_label for t in trials] == ["digits_cnn"] * 4 + ["tiny"] * 4
    assert len({t.key for t in trials}) == 8
    # The digits_cnn half are the single-model study's own trials, with the same keys.
    assert [t.key for t in trials[:4]] == [t.key for t in single.trials()]
    labels = [point_label(p) for p in points(both)]
    assert len(set(labels)) == 8 and all(lbl.endswith(("|model=0", "|model=1")) for lbl in labels)
    assert "model" not in distributions(single) and "model" in distributions(both)
    for p in points(both):
        assert to_point(both, to_params(both, p)) == p


# ---------------------------------------------------------------------------
# Analysis keeps models apart


def test_two_specs_under_one_label_are_told_apart_in_the_analysis(tmp_path: Path) -> None:
    import analysis
    from grid.store import ParquetSink

    a = {"name": "my_cnn", "layers": [{"type": "flatten"}, {"type": "dense"}]}
    b = {
        "name": "my_cnn",
        "layers": [{"type": "flatten"}, {"type": "dense", "units": 16}, {"type": "dense"}],
    }
    other = {"name": "solo", "layers": [{"type": "flatten"}, {"type": "dense"}]}
    sink = ParquetSink(str(tmp_path), "t", "r")
    for spec, acc in ((a, 0.3), (b, 0.6), (other, 0.5)):
        cfg = TrialConfig(model=spec, bits="4")
        sink(cfg.key, config_rows(cfg, acc, 1000))
    con = analysis.connect(tmp_path)
    labels = sorted(r[0] for r in con.execute("SELECT DISTINCT model FROM trials").fetchall())
    assert labels[-1] == "solo"  # a label with one spec stays as it is
    assert len(labels) == 3 and all(lbl.startswith("my_cnn#") for lbl in labels[:2])
    by_model = dict(
        con.execute(
            "SELECT model, robust_pgd@0.1 FROM trials".replace("robust_pgd@0.1", '"robust_pgd@0.1"')
        ).fetchall()
    )
    assert sorted(v for k, v in by_model.items() if k.startswith("my_cnn")) == [0.3, 0.6]
    assert np.isclose(by_model["solo"], 0.5)


def test_per_layer_jr_runs_through_cluster_fine_tuning() -> None:
    """Regression: cluster fine-tuning with per-layer JR probed the shared layers' first graph
    ("Graph disconnected") for every model; train.output_in takes the clustered model's."""
    from trainables.trial import train_compressed

    cfg = TrialConfig(
        bits="4", clusters=4, jr_layers={"all": 0.01}, epochs=1, fine_tune_epochs=1, batch_size=256
    )
    model, _ = train_compressed(cfg)
    assert model.count_params() == 9_930
