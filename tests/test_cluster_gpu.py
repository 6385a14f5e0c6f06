"""Fractional GPUs: the study field's rule, the memory settings a shared GPU gets, and a GPU
study on a Ray without GPUs refused before any trial.

No GPU here: the functions that turn (share, GPU memory, mode) into TensorFlow's settings are
tested with figures worked out by hand; applying them (trainables.gpu.configure_gpus) is a
no-op without a GPU, and benchmarks/gpu_share.py measures it on a machine with one.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from grid.spec import StudyError, load_study
from tests.helpers import GRID, STUDIES
from trainables.gpu import (
    CUDA_CONTEXT_MB,
    GpuSettings,
    configure_gpus,
    gpu_settings,
    memory_limit_mb,
)


def study_with(tmp_path: Path, **resources: object) -> Path:
    spec = yaml.safe_load((STUDIES / "resume.yaml").read_text())
    spec["axes"] = {"bits": ["float"]}
    spec["resources"] = resources
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("gpus", [0, 0.125, 0.25, 0.5, 1, 2, 8])
def test_gpus_per_trial_takes_a_share_or_whole_gpus(tmp_path: Path, gpus: float) -> None:
    study = load_study(study_with(tmp_path, gpus_per_trial=gpus))
    assert study.resources.gpus_per_trial == gpus
    trial = study.trials()[0]
    assert trial.gpus == gpus
    # where a trial runs is not what it computes: the key does not change
    assert trial.key == load_study(study_with(tmp_path, gpus_per_trial=0)).trials()[0].key


@pytest.mark.parametrize(
    ("gpus", "message"),
    [
        (1.5, "resources.gpus_per_trial = 1.5: 1.5 GPUs: a trial takes a fraction of one GPU"),
        (-0.25, "resources.gpus_per_trial = -0.25"),
        (65, "resources.gpus_per_trial = 65"),
        ("half", "resources.gpus_per_trial = 'half'"),
    ],
)
def test_gpus_per_trial_rejects_what_ray_cannot_schedule(
    tmp_path: Path, gpus: object, message: str
) -> None:
    with pytest.raises(StudyError, match=re.escape(message)):
        load_study(study_with(tmp_path, gpus_per_trial=gpus))


def test_gpu_memory_names_its_choices(tmp_path: Path) -> None:
    assert load_study(study_with(tmp_path, gpu_memory="growth")).trials()[0].gpu_memory == "growth"
    with pytest.raises(StudyError, match=re.escape("resources.gpu_memory = 'grow'")):
        load_study(study_with(tmp_path, gpu_memory="grow"))


@pytest.mark.parametrize(
    ("gpus", "total_mb", "mode", "want"),
    [
        (0, 16_384, "limit", None),  # no GPU
        (1, 16_384, "limit", None),  # a whole GPU: TensorFlow's default, the trial owns it
        (2, 16_384, "growth", None),
        (0.25, 16_384, "limit", GpuSettings(False, 4096 - CUDA_CONTEXT_MB)),  # T4-class, 4 a GPU
        (0.125, 143_771, "limit", GpuSettings(False, 17_971 - CUDA_CONTEXT_MB)),  # H200, 8 a GPU
        (0.5, 81_920, "limit", GpuSettings(False, 40_960 - CUDA_CONTEXT_MB)),
        (0.25, 16_384, "growth", GpuSettings(True, None)),
        (0.25, None, "limit", GpuSettings(True, None)),  # total unknown: growth, not a guess
    ],
)
def test_gpu_settings(
    gpus: float, total_mb: int | None, mode: str, want: GpuSettings | None
) -> None:
    assert gpu_settings(gpus, total_mb, mode) == want


def test_a_share_too_small_to_train_is_refused() -> None:
    assert memory_limit_mb(0.125, 8_192) == 1024 - CUDA_CONTEXT_MB
    with pytest.raises(ValueError, match=r"gpus_per_trial: 0\.0625 of a 8,192 MB GPU leaves 0 MB"):
        memory_limit_mb(0.0625, 8_192)
    with pytest.raises(ValueError, match="not a fraction"):
        memory_limit_mb(1.5, 8_192)


def test_configure_gpus_without_a_gpu_changes_nothing() -> None:
    import tensorflow as tf

    assert not tf.config.list_physical_devices("GPU")  # this machine: no GPU
    assert configure_gpus(0.25, "limit") is None


@pytest.mark.slow
def test_a_gpu_study_on_a_ray_without_gpus_is_refused_before_any_trial(tmp_path: Path) -> None:
    """A local Ray on this CPU machine: before this check Tune left the trial pending forever
    (\"insufficient resources\" warnings); now the run stops at once with one line."""
    study = study_with(tmp_path, gpus_per_trial=0.25)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.run(
        [*GRID, "run", str(study), "--results", str(tmp_path / "results")],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("grid run: error: resources.gpus_per_trial: 0.25 GPU(s) per trial"), last
    assert "0 GPU(s)" in last
    assert not list((tmp_path / "results").rglob("*.parquet"))
