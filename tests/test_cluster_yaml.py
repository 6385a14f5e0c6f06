"""cluster.yaml passes Ray's own launcher schema; a broken copy does not."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

CLUSTER = Path(__file__).parent.parent / "cluster.yaml"


def _validate(cfg: dict[str, Any]) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))


def test_cluster_yaml_is_valid() -> None:
    _validate(yaml.safe_load(CLUSTER.read_text()))


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c["available_node_types"]["cpu_worker"].__setitem__("resources", {"CPU": 7.5}),
        lambda c: c.__setitem__("head_node_type", 7),
        lambda c: c["available_node_types"]["cpu_worker"].__setitem__("min_workerz", 0),
    ],
)
def test_broken_copy_fails(breakage: Any) -> None:
    cfg = yaml.safe_load(CLUSTER.read_text())
    breakage(cfg)
    with pytest.raises(Exception):  # noqa: B017 - Ray raises jsonschema or ValueError depending on the field
        _validate(cfg)
