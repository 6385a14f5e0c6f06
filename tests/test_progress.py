"""The driver's state from the workers' summaries, and the one front ``grid run`` prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from grid import space
from grid import state as state_mod
from grid.progress import front_table
from grid.spec import Study, parse_study
from grid.state import StudyState
from trainables.rows import STATUS_COMPLETE, STATUS_FAILED


def two_fold_study(**objective: Any) -> Study:
    return parse_study(
        {
            "name": "progress-table",
            "dataset": "digits",
            "model": "digits_cnn",
            "folds": 2,
            "train": {"epochs": 1, "fine_tune_epochs": 0},
            "axes": {"bits": ["float", "4", "ternary"]},
            "attacks": [{"name": "fgsm", "eps": [0.05, 0.1], "samples": 20}],
            "artifacts": False,
            **({"objective": objective} if objective else {}),
        }
    )


def summary(key: str, robust: float, clean: float, nbytes: int, **more: Any) -> dict[str, Any]:
    """A fold's summary as trainables.rows.summarize makes it (what a worker reports)."""
    return {
        "key": key, "status": STATUS_COMPLETE, "reason": "", "clean_acc": clean,
        "robust_acc": robust, "bytes": nbytes, "params": 1000, "masking_flags": "",
        "train_s": 1.0, "total_s": 2.0, **more,
    }  # fmt: skip


def test_the_front_is_one_row_per_config_with_its_folds_aggregated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = two_fold_study()
    state = StudyState(study, tmp_path)

    def no_read(*args: Any) -> None:
        raise AssertionError("the state read a key back although its worker reported it")

    monkeypatch.setattr(state_mod, "read_rows", no_read)
    label = {str(p["bits"]): space.point_label(p) for p in state.points}
    folds = {  # bits -> per fold (robust, clean, bytes); chosen by hand
        "float": [(0.50, 0.90, 4000), (0.70, 0.94, 4002)],  # mean 0.600, 0.920, 4,001
        "4": [(0.40, 0.80, 1000), (0.44, 0.86, 1010)],  # mean 0.420, 0.830, 1,005
        "ternary": [(0.10, 0.70, 900), (0.30, 0.60, 1100)],  # mean 0.200, 0.650, 1,000
    }
    for bits, values in folds.items():
        for key, (r, c, b) in zip(state.keys[label[bits]], values, strict=True):
            assert state.take(summary(key, r, c, b))
    front = state.front()
    # ternary (0.200 at 1,000 B), 4 (0.420 at 1,005 B), float (0.600 at 4,001 B): none dominated
    assert set(front.labels) == set(label.values()) and front.points == 3
    lines = front_table(state, front).splitlines()
    assert lines[0] == front.describe(state.obj)
    assert lines[1] == (
        "per point (a config; mean over its folds [min, max]): "
        "robust = worst case over the attacks (L-inf) at eps 0.1; bytes: encoded"
    )
    want = [  # smallest first; whitespace aside
        "bytes robust [min, max] clean [min, max] folds point",
        "1,000 0.200 [0.100, 0.300] 0.650 [0.600, 0.700] 2 bits=ternary sparsity=0 clusters=0 jr=0",
        "1,005 0.420 [0.400, 0.440] 0.830 [0.800, 0.860] 2 bits=4 sparsity=0 clusters=0 jr=0",
        "4,001 0.600 [0.500, 0.700] 0.920 [0.900, 0.940] 2 bits=float sparsity=0 clusters=0 jr=0",
    ]
    assert [ln.split() for ln in lines[2:]] == [w.split() for w in want]
    # A fold that fails takes its point off the front, with its reason kept.
    key = state.keys[label["float"]][1]
    failed = {**summary(key, 0.0, 0.0, 0), "status": STATUS_FAILED, "reason": "OOM"}
    assert not state.take(failed)
    assert state.reasons[key] == "OOM" and state.point_value(label["float"]) is None
    assert label["float"] not in state.front().labels


def test_a_one_fold_front_shows_no_spread(tmp_path: Path) -> None:
    study = two_fold_study(attack="fgsm", eps=0.05).model_copy(update={"folds": 1})
    state = StudyState(study, tmp_path)
    first = state.points[0]
    (key,) = state.keys[space.point_label(first)]
    state.take(summary(key, 0.25, 0.5, 1234))
    lines = front_table(state, state.front()).splitlines()
    assert "fgsm (L-inf) at eps 0.05" in lines[1] and "one fold each" in lines[1]
    assert lines[2].split() == ["bytes", "robust", "clean", "folds", "point"]
    assert lines[3].split()[:4] == ["1,234", "0.250", "0.500", "1"]
