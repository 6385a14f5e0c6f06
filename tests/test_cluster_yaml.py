"""cluster.yaml passes Ray's own launcher schema; a broken copy does not."""

from __future__ import annotations

import copy
import re
import shlex
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


RAYJOB = Path(__file__).parent.parent / "deploy" / "rayjob.yaml"
SECRET = re.compile(r"secret|password|passwd|access_key|accesskey|token|credential", re.I)


def _keys_and_values(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [str(k) for k in node] + [s for v in node.values() for s in _keys_and_values(v)]
    if isinstance(node, list):
        return [s for v in node for s in _keys_and_values(v)]
    return [str(node)]


@pytest.mark.parametrize("path", [CLUSTER, RAYJOB])
def test_no_credentials_in_deployment_files(path: Path) -> None:
    found = [s for s in _keys_and_values(yaml.safe_load(path.read_text())) if SECRET.search(s)]
    assert not found, f"{path.name}: {found}"


def test_cluster_yaml_autoscales_from_zero_and_keeps_the_dashboard_local() -> None:
    cfg = yaml.safe_load(CLUSTER.read_text())
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    assert {k: v["min_workers"] for k, v in workers.items()} == {"cpu_worker": 0, "gpu_worker": 0}
    assert workers["gpu_worker"]["resources"]["GPU"] == 1
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert any("constraints.txt" in c for c in cfg["setup_commands"])  # the pinned versions


def test_rayjob_manifest_runs_a_valid_study() -> None:
    from grid.cli import build_parser
    from grid.spec import load_study

    job = yaml.safe_load(RAYJOB.read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["rayClusterSpec"]["rayVersion"] == __import__("ray").__version__
    assert spec["rayClusterSpec"]["enableInTreeAutoscaling"] is True
    groups = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert all(g["minReplicas"] == 0 and g["maxReplicas"] >= 1 for g in groups)
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "grid"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.results.startswith("s3://")
    load_study(args.study)  # an embedded study: it exists and validates
    dockerfile = (RAYJOB.parent / "Dockerfile").read_text()
    assert f"rayproject/ray:{spec['rayClusterSpec']['rayVersion']}-py311" in dockerfile
    assert "constraints.txt" in dockerfile
