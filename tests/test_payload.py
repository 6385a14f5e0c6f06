"""The typed payload the driver hands a Tune trial (trainables.ray_adapter.TrialPayload); no Ray start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from ray.tune.search.variant_generator import generate_variants

from grid import space
from grid.planning import payload, plan
from grid.searcher import optuna_searcher
from grid.spec import parse_study
from grid.state import StudyState
from trainables.ray_adapter import CONFIG_KEY, TrialPayload

STUDY: dict[str, Any] = {
    "name": "p",
    "folds": 2,
    "axes": {"bits": ["float", 4], "sparsity": [0.0, 0.5], "clusters": [0, 4]},
    "attacks": [{"name": "fgsm", "eps": [0.1]}],
}


def test_a_grid_runs_payloads_through_tunes_param_space_as_plain_json(tmp_path: Path) -> None:
    study = parse_study(STUDY)
    units = plan(study, StudyState(study, tmp_path)).payloads
    assert len(units) == 16  # 8 points x 2 folds, one Tune trial each
    # Tune's own variant generator resolves the param_space into one config per trial.
    configs = [config for _, config in generate_variants(TrialPayload.param_space(units))]
    assert json.loads(json.dumps(configs)) == configs  # plain JSON: Tune stores and logs it
    back = [TrialPayload.of(c) for c in configs]
    assert sorted(back, key=lambda u: u.keys) == sorted(units, key=lambda u: u.keys)
    for u in back:  # what the trainable computes agrees with what the driver planned
        assert u.keys == tuple(t.key for t in u.trials)
        assert u.label == space.point_label(u.point)
        assert len(u.trials) == 1 and u.trials[0] in study.point_trials(u.point)


def test_a_searcher_suggests_a_payload_with_every_fold(tmp_path: Path) -> None:
    study = parse_study({**STUDY, "search": {"strategy": "optuna", "budget": 3}})
    config = optuna_searcher(study, StudyState(study, tmp_path)).suggest("t0")
    assert set(config) == {CONFIG_KEY} and json.loads(json.dumps(config)) == config
    unit = TrialPayload.of(config)
    assert [t.fold for t in unit.trials] == [0, 1]
    assert list(unit.keys) == [t.key for t in study.point_trials(unit.point)]


def test_a_payload_needs_one_key_per_trial(tmp_path: Path) -> None:
    study = parse_study(STUDY)
    point = space.points(study)[0]
    good = payload(point, study.point_trials(point)).model_dump(mode="json")
    with pytest.raises(ValidationError, match=r"keys: 1 key\(s\) for 2 trial\(s\)"):
        TrialPayload.model_validate({**good, "keys": good["keys"][:1]})
    with pytest.raises(ValidationError, match="trial"):
        TrialPayload.model_validate({**good, "keys": [], "trials": []})
    with pytest.raises(ValidationError, match="extra"):
        TrialPayload.model_validate({**good, "fold": 0})
