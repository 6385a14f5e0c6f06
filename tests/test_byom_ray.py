"""Bring your own model on Ray: a YAML layer list through `grid run`, and an import-path
builder whose package Ray ships to the workers of a two-node cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from analysis.query import connect
from grid.spec import load_study
from tests.helpers import GRID, STUDIES, grid_cli, write_builder_package

ROOT = Path(__file__).resolve().parent.parent
STUDY = STUDIES / "byom.yaml"


@pytest.mark.slow
def test_layer_list_and_axes_model_study_runs_end_to_end(tmp_path: Path) -> None:
    study = load_study(STUDY)
    proc = grid_cli("run", str(STUDY), "--results", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    con = connect(tmp_path / "byom")
    rows = con.execute(
        "SELECT key, status, cfg_model, cfg_model_spec, meta_layers_json FROM rows "
        "WHERE attack IS DISTINCT FROM 'worst' ORDER BY cfg_model"
    ).fetchall()
    assert {r[0] for r in rows} == {t.key for t in study.trials()}
    assert all(r[1] == "complete" for r in rows)
    assert [r[2] for r in rows] == ["digits_cnn", "my_cnn"]
    assert json.loads(rows[0][3]) == "digits_cnn"
    listed = study.models[0].model_dump(mode="json")
    assert json.loads(rows[1][3]) == listed
    layers = {lf["name"]: lf["weight_bits"] for lf in json.loads(rows[1][4]) if lf["kernel_params"]}
    assert layers == {"conv1": 8, "dw1": 4, "logits": 4}  # train.layer_bits on the list's conv1
    assert "model=my_cnn" in proc.stdout and "model=digits_cnn" in proc.stdout


PROBE = textwrap.dedent(
    """
    import sys

    import ray

    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)


    @ray.remote(num_cpus=1)
    def probe():
        try:
            import byom_cluster_pkg  # noqa: F401
        except ImportError:
            return "ImportError"
        return "imported"


    print(ray.get([probe.remote() for _ in range(4)]))
    """
)


@pytest.mark.slow
@pytest.mark.cluster
def test_import_path_builder_reaches_the_workers_of_a_two_node_cluster(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    src = tmp_path / "src"  # the user's code: on the driver's path only
    pkg = write_builder_package(src, "byom_cluster_pkg")
    driver_cwd = tmp_path / "elsewhere"  # Ray puts the driver's cwd on the workers' path
    driver_cwd.mkdir()
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "name": "byom_cluster", "model": "byom_cluster_pkg.models:build", "seed": 1,
        "train": {"epochs": 1, "batch_size": 128}, "axes": {"bits": [4, 8]},
    }))  # fmt: skip
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(src)]),
    }
    # Two nodes, one trial slot each; their workers see robustgrid but not the user's package.
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        c.add_node(num_cpus=1)
        c.wait_for_nodes()
        probe = subprocess.run(
            [sys.executable, "-c", PROBE, c.address], capture_output=True, text=True,
            env=env, cwd=driver_cwd, timeout=300,
        )  # fmt: skip
        assert probe.returncode == 0, probe.stderr[-3000:]
        assert probe.stdout.strip().endswith(
            "['ImportError', 'ImportError', 'ImportError', 'ImportError']"
        )
        proc = subprocess.run(
            [*GRID, "run", str(study), "--results", str(tmp_path / "results"), "--address", c.address],
            capture_output=True, text=True, env=env, cwd=driver_cwd, timeout=600,
        )  # fmt: skip
    finally:
        c.shutdown()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"shipping {pkg.resolve()} to the workers (Ray runtime_env py_modules)" in proc.stdout
    con = connect(tmp_path / "results" / "byom_cluster")
    rows = con.execute(
        "SELECT status, reason, cfg_model, cfg_bits, cfg_model_spec FROM rows"
    ).fetchall()
    assert sorted(r[3] for r in rows) == ["4", "8"]
    assert all(r[0] == "complete" for r in rows), [r[1] for r in rows]
    assert {r[2] for r in rows} == {"byom_cluster_pkg.models:build"}
    sys.path.insert(0, str(src))
    try:
        from trainables.modelspec import source_digest

        digest = source_digest("byom_cluster_pkg.models:build")
    finally:
        sys.path.remove(str(src))
    assert all(json.loads(r[4])["digest"] == digest for r in rows)
