"""Per-study operations at scale: the fast paths give the slow paths' answers, and reading a
study's state from object storage makes no request per key (benchmarks/scale.py measures the times).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from analysis.pareto import nondominated
from grid import space
from grid.spec import load_study
from tests.helpers import brute_force_front
from trainables.config import TrialConfig

STUDIES = sorted(p.stem for p in (Path(space.__file__).parent / "studies").glob("*.yaml"))


@pytest.mark.parametrize("name", STUDIES)
def test_grid_trials_and_keys_are_those_of_each_trial_validated_and_keyed_alone(name: str) -> None:
    study = load_study(name)  # models, ans_hybrid, per-layer JR, adversarial training, folds
    pts = space.points(study)
    trials, keys = space.grid_trials(study, pts)
    assert list(trials) == [space.point_label(p) for p in pts]
    for label, ts in trials.items():
        assert [t.fold for t in ts] == list(range(study.folds))
        for t, key in zip(ts, keys[label], strict=True):
            # A fold's copy is the config validation gives, and its key the hash of its identity.
            assert TrialConfig.model_validate(t.model_dump()) == t
            blob = json.dumps(t.identity(), sort_keys=True, separators=(",", ":"))
            assert key == t.key == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert len({k for ks in keys.values() for k in ks}) == study.grid_size


@pytest.mark.parametrize("seed", range(40))
def test_two_objective_front_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 80))
    acc = rng.integers(0, 6, n) / 5  # few values: ties on one and both objectives
    size = rng.integers(0, 6, n).astype(float)
    if seed % 4 == 0:
        size[rng.random(n) < 0.2] = np.inf
    keys = [f"k{i}" for i in range(n)]
    got = {k for k, m in zip(keys, nondominated(np.c_[acc, size], [True, False]), strict=True) if m}
    assert got == brute_force_front(list(zip(keys, acc, size, strict=True)))
