"""Property tests over study files: any input either validates or fails with a StudyError that names a field."""

from __future__ import annotations

import copy
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grid.spec import Study, StudyError, _parse_text, parse_study

VALID: dict[str, Any] = {
    "name": "prop",
    "dataset": "digits",
    "model": "digits_cnn",
    "seed": 3,
    "folds": 2,
    "train": {"epochs": 2, "batch_size": 32, "learning_rate": 0.01, "jr_layers": {"conv1": 0.1}},
    "axes": {"bits": ["float", 4], "sparsity": [0.0, 0.5], "clusters": [0, 4], "jr_weight": [0.0]},
    "attacks": [{"name": "fgsm", "eps": [0.05, 0.1]}, {"name": "pgd", "eps": [0.1], "steps": 3}],
    "objective": {"attack": "worst", "eps": 0.1, "clean": True},
    "search": {"strategy": "optuna", "sampler": "tpe", "budget": 4},
    "resources": {"cpus_per_trial": 1, "retries": 1},
    "results": "results",
}
PATHS: list[tuple[Any, ...]] = [
    ("name",), ("dataset",), ("model",), ("seed",), ("folds",), ("train",), ("train", "epochs"),
    ("train", "learning_rate"), ("train", "jr_layers"), ("axes", "bits"), ("axes", "bits", 0),
    ("axes", "sparsity", 1), ("axes", "clusters"), ("attacks",), ("attacks", 0, "eps"),
    ("attacks", 1, "name"), ("attacks", 1, "steps"), ("objective", "eps"), ("objective", "attack"),
    ("search", "strategy"), ("search", "budget"), ("resources", "cpus_per_trial"), ("results",),
]  # fmt: skip

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["float", "ternary", "fgsm", "cifar10", "resnet8", "1e3", "-1", "", "worst"]),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
KEYS = [*VALID, "bogus", "axis", "trails"]


def _check(data: Any) -> None:
    try:
        study = parse_study(data, "<prop>")
    except StudyError as err:
        text = str(err)
        assert text.startswith("<prop>"), text
        return
    assert isinstance(study, Study)
    if study.grid_size <= 64:
        assert len(study.trials()) == study.grid_size


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=8))
def test_arbitrary_mappings_validate_or_name_the_field(data: dict[str, Any]) -> None:
    _check(data)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PATHS), values)
def test_one_bad_field_in_a_valid_study_is_named(path: tuple[Any, ...], value: Any) -> None:
    data = copy.deepcopy(VALID)
    target = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    try:
        parse_study(data, "<prop>")
    except StudyError as err:
        # The message names the field: its top-level key at least, as a dotted path.
        assert str(path[0]) in str(err), (path, value, str(err))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_a_study_or_a_clear_error(text: str) -> None:
    try:
        _parse_text(text, "<prop>")
    except StudyError as err:
        assert str(err).startswith("<prop>")


def test_valid_base_study_validates() -> None:
    study = parse_study(copy.deepcopy(VALID))
    assert study.grid_size == 16 and len(study.trials()) == 16
    assert parse_study(yaml.safe_load(yaml.safe_dump(VALID))) == study
