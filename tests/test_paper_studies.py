"""The papers' study files validate, and each smoke variant runs end to end on Ray
over small files written in the dataset's real format."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.query import connect
from grid.spec import load_study
from tests.helpers import cifar_batches, grid_cli, write_cifar_bin, write_kws, write_svhn

STUDIES = Path(__file__).parent.parent / "grid" / "studies"
PAPER = ["stq_jr_cifar10", "stq_jr_svhn", "stq_jr_kws", "compounded_cifar10"]
WRITERS = {
    "cifar10": lambda root: write_cifar_bin(root, cifar_batches(n=12)),
    "svhn": lambda root: write_svhn(root, n_train=30, n_test=10),
    "speech_commands": write_kws,
}


@pytest.mark.parametrize("name", PAPER)
def test_paper_study_and_its_smoke_variant_agree(name: str) -> None:
    full, smoke = (
        load_study(STUDIES / f"{name}.yaml"),
        load_study(STUDIES / "smoke" / f"{name}.yaml"),
    )
    assert full.folds == 5 and full.grid_size >= 60
    assert (smoke.dataset.name, smoke.models) == (full.dataset.name, full.models)
    assert {a.name for a in smoke.attacks} <= {a.name for a in full.attacks} | {"transfer_fgsm"}
    assert smoke.grid_size == 2 * len(full.models)
    if name.startswith("stq"):  # the first paper's variants, and its reference model's own trials
        assert set(full.axes.bits) == {
            "float",
            "stochastic_binary",
            "ternary",
            "stochastic_ternary",
            "ans_hybrid",
        }
        assert [str(m) for m in full.models] == [
            "stq_cnn",
            "ds_cnn" if "kws" in name else "resnet8",
        ]
        assert {} in full.axes.jr_layers and len(full.axes.jr_layers) > 1


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_embedded_study_loads_by_name(path: Path) -> None:
    study = load_study(path.stem)  # as `grid run NAME` finds it
    assert study == load_study(path) and study.grid_size > 0


def test_showcases_run_on_data_that_ships_with_five_folds() -> None:
    stq, compound = load_study("stq_showcase"), load_study("compound_showcase")
    assert {stq.dataset.name.value, compound.dataset.name.value} == {"digits"}
    assert stq.folds == compound.folds == 5
    # the first paper's variants, with and without per-layer JR, and the reference's own trials
    assert set(stq.axes.bits) == {
        "float",
        "stochastic_binary",
        "ternary",
        "stochastic_ternary",
        "ans_hybrid",
    }
    assert {} in stq.axes.jr_layers and len(stq.axes.jr_layers) == 2 and len(stq.models) == 2
    assert {"fgsm", "pgd", "square"} <= {a.name for a in stq.attacks}  # white-box and black-box
    # each reduction alone and every combination
    assert (
        len(compound.axes.bits) == len(compound.axes.sparsity) == len(compound.axes.clusters) == 2
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER)
def test_smoke_variant_runs_on_real_format_files(tmp_path: Path, name: str, ray_head: str) -> None:
    study = load_study(STUDIES / "smoke" / f"{name}.yaml")
    data = tmp_path / "data"
    data.mkdir()
    WRITERS[study.dataset.name.value](data)
    proc = grid_cli(
        "run",
        str(STUDIES / "smoke" / f"{name}.yaml"),
        "--data",
        str(data),
        "--results",
        str(tmp_path / "r"),
        "--address",  # the session's Ray: this test is about the study, not Ray's start
        ray_head,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    con = connect(tmp_path / "r" / study.name)
    rows = con.execute(
        "SELECT key, fold, attack, eps, status, reason FROM rows ORDER BY fold, attack, eps"
    ).fetchall()
    assert {r[4] for r in rows} == {"complete"}, {r[5] for r in rows}
    assert sorted({r[1] for r in rows}) == [0, 1]  # both folds
    expected = {(a.name.value, e) for a in study.attacks for e in a.eps}
    expected |= {("worst", e) for a in study.attacks for e in a.eps}  # one per (norm, eps) run
    for fold in (0, 1):
        assert {(r[2], r[3]) for r in rows if r[1] == fold} == expected
    folders = list((tmp_path / "r" / study.name / "artifacts").iterdir())
    assert len(folders) == study.grid_size
    if study.dataset.name.value == "speech_commands":  # MFCC scaling a deployment must apply
        import json

        for folder in folders:
            lo, hi = json.loads((folder / "manifest.json").read_text())["feature_range"]
            assert lo < hi


def test_per_layer_studies_search_each_layer_under_a_flash_budget() -> None:
    """mixed_showcase (digits) and the first paper's per-layer variant: one model, a per-layer
    space, a budget, the worst case at one L-inf eps; the paper's variant searches each layer's
    weight quantizer and each activation's JR weight, 5 folds, on the STQ-class model."""
    show, paper = load_study("mixed_showcase"), load_study("stq_jr_cifar10_mixed")
    assert show.dataset.name.value == "digits" and [str(m) for m in show.models] == ["digits_cnn"]
    assert show.search.layers is not None and show.search.budget <= 60
    every = show.search.layers["all"]
    assert (every.bits, every.sparsity, every.clusters) == (
        ["8", "4", "ternary"], [0.0, 0.5, 0.75], [0, 8],
    )  # fmt: skip
    assert show.objective.max_bytes and show.objective.attack == "worst"
    assert {a.name for a in show.attacks} >= {"autoattack"}
    assert {e for a in show.attacks for e in a.eps} == {show.objective.eps}
    assert [str(m) for m in paper.models] == ["stq_cnn"] and paper.folds == 5
    assert paper.dataset.name.value == "cifar10" and paper.objective.max_bytes == 410_000
    layers = paper.search.layers or {}
    assert len(set(layers["all"].bits or [])) >= 4  # per-layer weight quantizer
    assert layers["activation"].jr_weight and 0.0 in layers["activation"].jr_weight
    assert paper.layer_space().size > 10**6  # searched, never enumerated


def test_the_mixed_precision_benchmark_writes_valid_studies_of_equal_budgets() -> None:
    """benchmarks/mixed_precision.py's four methods per model: the same data, model, training,
    attack and budget; per-layer and random search the same per-layer choices."""
    import argparse

    from benchmarks.mixed_precision import METHODS, SETUPS, method_study
    from grid.spec import parse_study

    args = argparse.Namespace(trials=5, epochs=1, sampler="tpe", model_tag="m")
    for name, setup in SETUPS.items():
        studies = {m: parse_study(method_study(m, setup, 0, args, 4000.0), m) for m in METHODS}
        assert {s.dataset.name.value for s in studies.values()} == {setup.dataset}, name
        assert {s.objective.max_bytes for s in studies.values()} == {4000}
        assert {(s.objective.attack, s.objective.eps) for s in studies.values()} == {
            ("worst", setup.eps)
        }
        pl, rnd = studies["per-layer"].search, studies["random"].search
        assert pl.layers == rnd.layers and pl.budget == rnd.budget == 5
        assert pl.seeds and not rnd.seeds
        assert studies["uniform"].budget <= 5 and studies["ans_hybrid"].axes.bits == ["ans_hybrid"]
