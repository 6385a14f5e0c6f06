"""Search strategies, the Pareto front's hypervolume and trial identity (no Ray, no training)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from optuna._hypervolume import compute_hypervolume  # Optuna's exact WFG: the cross-check

from analysis.pareto import hypervolume, nondominated
from grid import space
from grid.cli import main
from grid.launch import run_study
from grid.planning import plan
from grid.searcher import PointSearcher, optuna_searcher, optuna_study
from grid.spec import StudyError, parse_study
from grid.state import StudyState, live_driver
from grid.store import ParquetSink, write_json
from tests.helpers import brute_force_front, brute_force_hv, rows_for, stand_in_driver
from trainables.ray_adapter import TrialPayload

BASE: dict[str, Any] = {
    "name": "s",
    "axes": {"bits": ["float", 4, "ternary"], "sparsity": [0.0, 0.5], "clusters": [0, 4]},
    "attacks": [{"name": "fgsm", "eps": [0.1]}],
}


def test_hypervolume_hand_table() -> None:
    # robust up, bytes down; reference (0, 100).  Staircase: 0.9 x 60 + 0.5 x 20 + 0.3 x 10.
    pts = [[0.9, 40], [0.5, 20], [0.3, 10], [0.4, 30], [0.0, 5], [0.95, 150]]
    assert hypervolume(pts, [True, False], [0.0, 100]) == pytest.approx(
        0.9 * 60 + 0.5 * 20 + 0.3 * 10
    )
    assert list(nondominated(pts, [True, False])) == [True, True, True, False, True, True]
    assert hypervolume([], [True, False], [0.0, 100]) == 0.0


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_hypervolume_equals_brute_force_and_optuna(dims: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 25 if dims == 2 else 12
    # Discrete values: ties and duplicate points, as a grid's results have.
    v = rng.integers(0, 8, size=(n, dims)).astype(float) / 8
    maximize = [True, False, True][:dims]
    ref = [0.05, 0.95, 0.0][:dims]
    ours = hypervolume(v, maximize, ref)
    assert ours == pytest.approx(brute_force_hv(v, maximize, ref), rel=1e-12, abs=1e-12)
    sign = np.where(maximize, -1.0, 1.0)
    inside = (v * sign < np.array(ref) * sign).all(axis=1)
    theirs = compute_hypervolume(v[inside] * sign, np.array(ref) * sign) if inside.any() else 0.0
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-12)


def test_nondominated_equals_brute_force() -> None:
    rng = np.random.default_rng(7)
    pts = [(f"k{i}", float(rng.integers(0, 10)) / 10, int(rng.integers(1, 12))) for i in range(60)]
    mask = nondominated([[a, b] for _, a, b in pts], [True, False])
    assert {k for (k, _, _), m in zip(pts, mask, strict=True) if m} == brute_force_front(pts)


def test_front_normalised_by_the_reference_box() -> None:
    obj = space.objectives(parse_study(BASE))
    f = space.front({"a": [0.5, 0.0], "b": [0.25, 100.0]}, obj, params=1000)  # ref bytes 4400
    assert f.reference == (0.0, pytest.approx(4400.0))
    assert f.labels == ("a",)  # b is dominated
    assert f.normalized == pytest.approx(0.5)


def test_every_point_is_a_grid_point_with_the_grids_keys() -> None:
    study = parse_study(
        {
            **BASE,
            "folds": 2,
            "axes": {**BASE["axes"], "adversarial": ["none", {"method": "fgsm", "eps": 0.1}]},
        }
    )
    trials = study.trials()
    assert len(trials) == study.grid_size == 3 * 2 * 2 * 2 * 2
    assert len({t.key for t in trials}) == len(trials)
    assert {t.adversarial.method.value for t in trials} == {"none", "fgsm"}
    picked = space.random_points(study, 5, seed=3)
    assert picked == space.random_points(study, 5, seed=3)  # seeded
    labels = [space.point_label(p) for p in picked]
    assert len(set(labels)) == 5
    grid_keys = {t.key for t in trials}
    assert all(t.key in grid_keys for p in picked for t in study.point_trials(p))


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"budget": 5}, "budget: 5 points is a budget for strategy optuna or random"),
        (
            {"strategy": "optuna", "budget": 13},
            "search.budget: 13 is more than the 12 distinct points",
        ),
        ({"strategy": "bayes"}, "search.strategy = 'bayes'"),
        ({"strategy": "optuna", "sampler": "cmaes"}, "search.sampler = 'cmaes'"),
        ({"strategy": "optuna", "budget": 0}, "search.budget = 0"),
        (
            {"strategy": "random", "budgets": 3},
            "search.budgets: unknown key; did you mean 'budget'?",
        ),
    ],
)
def test_bad_search_section_named(search: dict[str, Any], message: str) -> None:
    with pytest.raises(StudyError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_study({**BASE, "search": search})


def _synthetic(label: str) -> list[float]:
    """A deterministic objective over the points (stands in for training, which is not under test)."""
    p = dict(part.split("=") for part in label.split("|"))
    bits = {"float": 32, "4": 4, "ternary": 2}[p["bits"]]
    nbytes = bits * (1 - float(p["sparsity"])) * 100 + (10 if p["clusters"] != "0" else 0)
    return [0.2 + 0.02 * bits + 0.1 * float(p["sparsity"]), nbytes]


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_searcher_proposes_each_point_once_and_finishes(sampler: str, tmp_path: Path) -> None:
    study = parse_study(
        {**BASE, "search": {"strategy": "optuna", "sampler": sampler, "population": 4}}
    )
    state = StudyState(study, tmp_path)
    searcher = optuna_searcher(study, state)
    seen = []
    for i in range(study.point_count + 3):
        config = searcher.suggest(f"t{i}")
        if not isinstance(config, dict):
            assert config == "FINISHED"
            break
        unit = config["payload"]
        assert unit["keys"] == [t.key for t in study.point_trials(unit["point"])]
        seen.append(unit["label"])
        result = dict(
            zip(state.obj.names, _synthetic(unit["label"]), strict=True), status="complete"
        )
        searcher.on_trial_complete(f"t{i}", result=result)
    assert len(seen) == len(set(seen)) == study.point_count  # every point once, then FINISHED
    assert (tmp_path / "optuna.journal").stat().st_size > 0


def test_resumed_search_learns_from_the_store(tmp_path: Path) -> None:
    """Points complete in the store join the Optuna study; trials a dead driver left running are failed."""
    study = parse_study({**BASE, "search": {"strategy": "optuna", "budget": 6}})
    state = StudyState(study, tmp_path)
    first = optuna_searcher(study, state)
    first.suggest("dead")  # asked, never told: the driver died
    sink = ParquetSink(str(tmp_path), study.name, "test")
    stored = space.points(study)[:3]
    for p in stored:
        key = study.point_trials(p)[0].key
        robust, nbytes = _synthetic(space.point_label(p))
        one = {("fgsm", 0.1): robust, ("worst", 0.1): robust}  # one attack: its worst row equals it
        sink(key, rows_for(key, one, clean=0.9, nbytes=int(nbytes)))
    state = StudyState(study, tmp_path)
    assert len(state.point_values()) == 3
    ostudy = optuna_study(study, state, first.inner._storage)
    states = [t.state.name for t in ostudy.trials]
    assert states.count("FAIL") == 1 and "RUNNING" not in states
    complete = {
        space.point_label(space.to_point(study, t.params))
        for t in ostudy.trials
        if t.state.name == "COMPLETE"
    }
    assert complete == {space.point_label(p) for p in stored}
    searcher = PointSearcher(first.inner, study, state)
    config = searcher.suggest("next")
    assert config["payload"]["label"] not in complete  # never a point the store already has


def test_optuna_sees_ordered_axes_as_ranks() -> None:
    study = parse_study(
        {
            **BASE,
            "axes": {
                "bits": [4, "float", "ternary", 8, "binary"],
                "clusters": [16, 0, 4],
                "jr_weight": [0.1, 0.0],
            },
        }
    )
    ordered = space.ordered_values(study)
    assert ordered["bits"] == ["float", "8", "4", "ternary", "binary"]  # by storage width
    assert ordered["clusters"] == [0, 16, 4]  # unclustered, then fewer values
    assert ordered["jr_weight"] == [0.0, 0.1]
    dists = space.distributions(study)
    for p in space.points(study):
        params = space.to_params(study, p)
        assert all(dists[k]._contains(dists[k].to_internal_repr(v)) for k, v in params.items())
        assert space.to_point(study, params) == p


def test_random_strategy_plans_a_seeded_sample_of_points_with_all_folds(tmp_path: Path) -> None:
    study = parse_study(
        {**BASE, "folds": 2, "search": {"strategy": "random", "budget": 4, "seed": 9}}
    )
    units, total, skipped = plan(study, StudyState(study, tmp_path))
    assert (total, skipped, len(units)) == (8, 0, 8)  # 4 points x 2 folds, one Tune trial each
    picked = space.random_points(study, 4, seed=9)
    assert {k for u in units for k in u.keys} == {
        t.key for p in picked for t in study.point_trials(p)
    }


def test_grid_plans_the_longest_trials_first_and_every_trial_once(tmp_path: Path) -> None:
    axes = {
        "bits": [4, "ternary"],
        "clusters": [0, 4],
        "jr_weight": [0.0, 0.1],
        "adversarial": ["none", {"method": "pgd", "eps": 0.1, "steps": 5, "ratio": 0.5}],
    }
    study = parse_study({**BASE, "train": {"epochs": 4, "fine_tune_epochs": 2}, "axes": axes})
    units, total, skipped = plan(study, StudyState(study, tmp_path))
    assert (total, skipped, len(units)) == (16, 0, 16)
    assert {u.keys[0] for u in units} == {t.key for t in study.trials()}

    def cost(u: TrialPayload) -> tuple[bool, bool, bool]:
        p = u.point  # adversarial PGD > JR > fine-tuning after clustering
        return (int(p["adversarial"]) > 0, float(p["jr_weight"]) > 0, int(p["clusters"]) > 0)

    costs = [cost(u) for u in units]
    assert costs[0] == (True, True, True) and costs[-1] == (False, False, False)
    for i, a in enumerate(costs):  # more work in every respect starts earlier
        for b in costs[i + 1 :]:
            assert not (a != b and all(x <= y for x, y in zip(a, b, strict=True)))
    # ties keep the file's order: 4-bit before ternary
    assert [str(u.point["bits"]) for u in units[:2]] == ["4", "ternary"]


def test_resume_and_status_need_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study_file = tmp_path / "s.yaml"
    study_file.write_text(yaml.safe_dump(BASE))
    assert main(["resume", str(study_file), "--results", str(tmp_path)]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["status", str(study_file), "--results", str(tmp_path)]) == 2
    assert "holds no results yet" in capsys.readouterr().err


def test_a_second_driver_on_the_same_results_is_refused(tmp_path: Path) -> None:
    study = parse_study(BASE)
    folder = study.results_dir(str(tmp_path))
    with stand_in_driver(60) as other:
        write_json(
            folder,
            "status.json",
            {"pid": other.pid, "host": socket.gethostname(), "running_driver": True},
        )
        with pytest.raises(StudyError, match=f"in use by a running driver \\(pid {other.pid}\\)"):
            run_study(study, results=str(tmp_path))
    assert live_driver(folder) is None  # dead: a resume may go ahead
