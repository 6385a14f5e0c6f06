"""Study-file fields renamed so that each word means one thing: the old spelling still reads,
with one warning line naming the old and the new field."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from grid.spec import RENAMED, RenamedField, StudyError, load_study, parse_study

OLD = {
    "name": "old",
    "dataset": "digits",
    "axes": {"bits": ["float", 4], "sparsity": [0.0, 0.5]},
    "search": {"strategy": "random", "trials": 3, "seed": 1},
}


def test_search_trials_reads_as_search_budget_with_a_warning() -> None:
    assert RENAMED == {("search", "trials"): "budget"}
    with pytest.warns(RenamedField, match=r"^x\.yaml: search\.trials is now search\.budget"):
        old = parse_study(OLD, "x.yaml")
    new = {**OLD, "search": {"strategy": "random", "budget": 3, "seed": 1}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spelling warns of nothing
        assert parse_study(new, "x.yaml") == old
    assert old.search.budget == old.budget == 3 and old.point_count == 4
    assert OLD["search"] == {"strategy": "random", "trials": 3, "seed": 1}  # input untouched


def test_both_spellings_at_once_is_an_error() -> None:
    both = {**OLD, "search": {"strategy": "random", "trials": 3, "budget": 3}}
    with pytest.raises(StudyError, match=r"search\.trials and search\.budget: give search\.budget"):
        parse_study(both, "x.yaml")


def test_grid_validate_warns_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from grid.cli import main
    from grid.study import Study

    f = tmp_path / "old.yaml"
    f.write_text(yaml.safe_dump(OLD))
    # validate without the models' build (TensorFlow): the warning is the file's
    monkeypatch.setattr(Study, "check_models", lambda self, builtin=False: [])
    assert main(["validate", str(f)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"grid validate: warning: {f}: search.trials is now search.budget "
        "(the old name still works; rename it)"
    ], err


def test_the_shipped_studies_use_the_new_spelling() -> None:
    from grid.spec import embedded_studies

    with warnings.catch_warnings():
        warnings.simplefilter("error", RenamedField)
        for name in embedded_studies():
            load_study(name)
