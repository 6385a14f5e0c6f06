"""The driver under many trials: what it keeps per trial stays bounded (issue 16).

The slow test runs 200 trivial trials (trainables/trivial.py: rows in the real
schema, no training) through the real run path (Ray Tune in parts, the sink,
the Parquet store, the progress callback) and checks the driver's own per-trial
structures against what it ran; the fast ones check the pieces that keep them
bounded against independent full recomputations.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import pytest

from grid import launch, space
from grid import state as state_mod
from grid.planning import plan
from grid.progress import LiveFront
from grid.spec import Study, parse_study
from grid.state import StudyState
from grid.store import key_status
from trainables.config import AttackSpec
from trainables.rows import STATUS_COMPLETE
from trainables.trivial import trivial_trainable, trivial_trial


def trivial_study(bits: int = 5, sparsity: int = 5, clusters: int = 8, **search: Any) -> Study:
    return parse_study(
        {
            "name": "trivial-driver",
            "dataset": "digits",
            "model": "digits_cnn",
            "train": {"epochs": 1, "fine_tune_epochs": 0},
            "axes": {
                "bits": ["float", "ternary", "binary", "2", "4", "8"][:bits],
                "sparsity": [0.0, 0.2, 0.4, 0.6, 0.8][:sparsity],
                "clusters": [0, 2, 3, 4, 5, 6, 7, 8][:clusters],
            },
            "resources": {"retries": 0},
            "artifacts": False,
            **({"search": search} if search else {}),
        }
    )


def complete(state: StudyState, label: str, values: list[float]) -> None:
    for key in state.keys[label]:
        state.values[key] = values


def test_live_front_equals_the_front_of_every_point(tmp_path: Path) -> None:
    """Points completing one by one: the kept front is the front recomputed from every point."""
    study = trivial_study()
    state = StudyState(study, tmp_path)
    state.params = 1000
    rng = random.Random(7)
    labels = [space.point_label(p) for p in state.points]
    rng.shuffle(labels)
    live = LiveFront(state, state.front())
    for i, label in enumerate(labels, 1):
        # coarse values: ties and duplicates happen, as with real accuracies
        complete(state, label, [rng.randint(0, 20) / 20, float(rng.randint(1, 40) * 100)])
        got = live.add(label)
        assert got == live.add(label)  # a point reported twice counts once
        want = state.front()  # the oracle: every complete point, from scratch
        assert (got.labels, got.points) == (want.labels, want.points) == (got.labels, i)
        assert got.hypervolume == pytest.approx(want.hypervolume, rel=1e-12)
        assert got.normalized == pytest.approx(want.normalized, rel=1e-12)


def test_live_front_ignores_incomplete_points_and_starts_over_when_a_front_point_is_lost(
    tmp_path: Path,
) -> None:
    study = trivial_study()
    state = StudyState(study, tmp_path)
    state.params = 1000
    a, b, c = (space.point_label(p) for p in state.points[:3])
    live = LiveFront(state, state.front())
    assert live.add(a).points == 0  # not complete yet
    complete(state, a, [0.9, 100.0])
    complete(state, b, [0.5, 50.0])
    live.add(a)
    assert live.add(b).labels == tuple(sorted([a, b]))
    for key in state.keys[a]:  # a's rows went away (a retry replaced them)
        del state.values[key]
    complete(state, c, [0.1, 4000.0])
    f = live.add(c)
    assert f == state.front() and a not in f.labels and f.points == 2


def test_search_history_is_thinned_keeping_the_first_and_the_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_mod, "HISTORY_MAX", 16)
    study = trivial_study()
    state = StudyState(study, tmp_path)
    state.params = 1000
    for i, p in enumerate(state.points[:100], 1):
        complete(state, space.point_label(p), [0.5 + i / 1000, 1000.0 - i])
        state.save("grid")
        assert len(state.history) <= 17
        assert state.history[0][0] == 1 and state.history[-1][0] == i
    saved = json.loads((tmp_path / "search.json").read_text())["history"]
    points = [h[0] for h in saved]
    assert points == sorted(set(points)) and points[-1] == 100 and len(points) >= 8


def test_parts_cover_the_plan_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = trivial_study()  # 200 points
    planned = plan(study, StudyState(study, tmp_path))
    monkeypatch.setattr(launch, "TUNE_PART", 64)
    got = launch.parts(planned, slots=1)
    assert [len(p.payloads) for p in got] == [64, 64, 64, 8]
    assert [u for p in got for u in p.payloads] == planned.payloads
    assert all((p.total, p.skipped) == (planned.total, planned.skipped) for p in got)
    assert [len(p.payloads) for p in launch.parts(planned, slots=4)] == [200]  # 50 a slot: 200
    optuna = trivial_study(strategy="optuna", budget=10)
    searched = plan(optuna, StudyState(optuna, tmp_path / "o"))
    assert launch.parts(searched, slots=1) == [searched]  # a search is one Tuner


def test_trivial_rows_are_complete_rows_of_the_real_schema() -> None:
    from trainables.headline import Headline
    from trainables.rows import COLUMNS, summarize

    cfg = trivial_study().trials()[0]
    rows = trivial_trial(cfg)
    assert len(rows) == 1 and set(rows[0]) == set(COLUMNS)
    s = summarize(rows, Headline())
    assert s["status"] == STATUS_COMPLETE and 0.5 <= s["clean_acc"] <= 1
    assert trivial_trial(cfg)[0]["metric_bytes"] == rows[0]["metric_bytes"]  # from the key
    # With attacks: one worst row per (norm, eps), as a real trial writes, never above its attacks'.
    attacked = cfg.model_copy(update={"attacks": (
        AttackSpec(name="fgsm", eps=(0.05, 0.1)), AttackSpec(name="pgd", eps=(0.1,)),
        AttackSpec(name="square", eps=(0.5,), norm="2"),
    )})  # fmt: skip
    rows = trivial_trial(attacked)
    got = {(r["attack"], r["attack_norm"], r["eps"]): r["metric_robust_acc"] for r in rows}
    worst = {k: v for k, v in got.items() if k[0] == "worst"}
    assert set(worst) == {("worst", "inf", 0.05), ("worst", "inf", 0.1), ("worst", "2", 0.5)}
    assert worst[("worst", "inf", 0.1)] <= min(got[("fgsm", "inf", 0.1)], got[("pgd", "inf", 0.1)])
    assert summarize(rows, Headline())["robust_acc"] == worst[("worst", "inf", 0.1)]


@pytest.mark.slow
def test_many_trivial_trials_keep_the_drivers_state_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 trials through Tune in parts of 64: every key stored once, the callback ends empty,
    the kept front is the store's, the history bounded."""
    monkeypatch.setattr(launch, "TUNE_PART", 64)
    monkeypatch.setattr(launch, "TUNE_PART_PER_SLOT", 1)
    monkeypatch.setattr(state_mod, "HISTORY_MAX", 32)
    callbacks: list[Any] = []
    real = launch.progress_callback

    def keep(*args: Any) -> Any:
        callbacks.append(real(*args))
        return callbacks[-1]

    monkeypatch.setattr(launch, "progress_callback", keep)
    study = trivial_study()
    summary = launch.run_study(
        study, results=str(tmp_path), out=io.StringIO(), trainable_fn=trivial_trainable
    )
    results = study.results_dir(str(tmp_path))
    status = key_status(results)
    assert summary.completed == 200 and summary.failed == 0 and summary.missing == 0
    assert len(status) == 200 and set(status.values()) == {STATUS_COMPLETE}
    assert len(callbacks) == 4  # 64 + 64 + 64 + 8 trials: one Tuner each
    assert all(cb.live == {} for cb in callbacks)  # nothing of an ended trial is kept
    final = StudyState(study, results).front()  # the oracle: recomputed from the store
    assert summary.front is not None
    assert (summary.front.labels, summary.front.points) == (final.labels, 200)
    assert summary.front.hypervolume == pytest.approx(final.hypervolume, rel=1e-12)
    history = json.loads(Path(results.local, "search.json").read_text())["history"]
    assert len(history) <= 33 and history[-1][0] == 200


def test_trivial_rows_never_reach_a_real_study(tmp_path: Path) -> None:
    """A benchmark's trivial trainable handed a real study must not store made-up rows as its
    results: the store refuses them."""
    from grid.store import ParquetSink

    real = trivial_study().model_copy(update={"name": "digits-default"})
    cfg = real.trials()[0]
    with pytest.raises(
        ValueError, match="made-up rows of a trivial trial for study 'digits-default'"
    ):
        ParquetSink(str(tmp_path), real.name, "r")(cfg.key, trivial_trial(cfg))
    assert not (tmp_path / "rows").exists()
    ParquetSink(str(tmp_path), trivial_study().name, "r")(cfg.key, trivial_trial(cfg))
    assert len(list((tmp_path / "rows").iterdir())) == 1
