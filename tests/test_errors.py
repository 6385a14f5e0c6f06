"""Errors a user can read, bugs a developer can see: ``grid``'s exit codes (0, 1, 2, 130) and
TensorFlow's C++ log lines kept out of its output unless asked for."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import grid.study_commands
from grid.cli import build_parser, main
from grid.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USER,
    ClusterError,
    ResultsError,
    StudyError,
    UserError,
    is_user_error,
)
from tests.helpers import GRID

ROOT = Path(__file__).resolve().parent.parent

# What TensorFlow's C++ core writes on a machine without a GPU (and what it writes anywhere
# at import): absl's pre-init banner, the INFO/WARNING/ERROR lines, the cuInit error.
TF_NOISE = re.compile(
    r"cuInit|cudart_stub|oneDNN|absl::InitializeLog|cpu_feature_guard|^[IWE]\d{4} ", re.M
)


def plain_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: none of the test session's TensorFlow settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TF_CPP_MIN_LOG_LEVEL", "ROBUSTGRID_TF_LOGS", "TF_USE_LEGACY_KERAS")
    }
    return {**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra}


def test_the_family_and_the_old_import_path() -> None:
    from grid.spec import StudyError as FromSpec

    assert FromSpec is StudyError
    for cls in (StudyError, ResultsError, ClusterError):
        assert issubclass(cls, UserError)
    assert issubclass(StudyError, ValueError)  # callers that caught ValueError still do


def test_a_bad_study_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndataset: digits\ntrain: {epoch: 3}\n")
    proc = subprocess.run(
        [*GRID, "validate", str(bad)],
        capture_output=True,
        text=True,
        timeout=300,
        env=plain_env(),
    )
    assert proc.returncode == EXIT_USER, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"grid validate: error: {bad}: train.epoch: unknown key; did you mean 'epochs'?"
    ], proc.stderr
    assert proc.stdout == ""


def test_an_internal_error_is_a_traceback_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A ValueError raised by grid's own code is a bug, not a bad study file (before the
    # UserError family, grid printed it as an input error and exited 2).
    def broken(path: object = None) -> object:
        raise ValueError("internal: a bug in the loader")

    monkeypatch.setattr(grid.study_commands, "load_study", broken)
    assert main(["validate"]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err
    assert "ValueError: internal: a bug in the loader" in err
    assert "in broken" in err  # the frame that raised, as a developer needs it
    assert "grid validate: internal error (ValueError)" in err


def test_ctrl_c_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(path: object = None) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(grid.study_commands, "load_study", interrupted)
    assert main(["validate"]) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err


def test_an_analysis_input_error_is_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # analysis cannot import grid: its own ValueError / FileNotFoundError about the input
    # is told apart by where it was raised.
    assert main(["pareto", str(tmp_path / "none")]) == EXIT_USER
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("grid pareto: error: results: no such folder"), err


def _raise_in(module: str, code: str) -> BaseException:
    """The exception ``code`` raises when run as the body of a function of ``module``."""
    scope: dict[str, object] = {"__name__": module, "ResultsError": ResultsError}
    exec(f"def f():\n    {code}\n", scope)  # a frame with that module name
    try:
        scope["f"]()  # type: ignore[operator]
    except Exception as err:
        return err
    raise AssertionError("no exception")


def test_what_counts_as_a_user_error() -> None:
    assert is_user_error(_raise_in("analysis.pareto", "raise ValueError('eps: 9 not found')"))
    assert is_user_error(_raise_in("analysis.query", "raise FileNotFoundError('results')"))
    # the same types from grid's own code, or from a library analysis calls, are bugs
    assert not is_user_error(_raise_in("grid.state", "raise ValueError('bad state')"))
    assert not is_user_error(_raise_in("analysis.pareto", "import json; json.loads('{')"))
    assert not is_user_error(_raise_in("analysis.pareto", "raise KeyError('x')"))
    assert is_user_error(_raise_in("grid.state", "raise ResultsError('results: none')"))


def test_help_lists_the_exit_codes_and_verbose() -> None:
    text = build_parser().format_help()
    assert "exit codes:" in text and "130" in text and "--verbose" in text


def _modes(env: dict[str, str], *args: str) -> list[str]:
    code = (
        "import sys; from trainables import tflogs; "
        "print(tflogs.configure(verbose='-v' in sys.argv), sorted(tflogs.worker_env().items()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    )
    return out.stdout.split(" ", 1)


def test_the_tf_log_mode_and_what_workers_inherit() -> None:
    mode, worker = _modes(plain_env())
    assert mode == "quiet"
    assert "('ROBUSTGRID_TF_LOGS', '0')" in worker and "('TF_CPP_MIN_LOG_LEVEL', '3')" in worker
    mode, worker = _modes(plain_env(), "-v")  # grid --verbose
    assert mode == "verbose" and "TF_CPP_MIN_LOG_LEVEL" not in worker
    assert _modes(plain_env(ROBUSTGRID_TF_LOGS="1"))[0] == "verbose"
    mode, worker = _modes(plain_env(TF_CPP_MIN_LOG_LEVEL="1"))  # the user's level wins
    assert mode == "user" and "('TF_CPP_MIN_LOG_LEVEL', '1')" in worker


def test_the_import_notices_are_recognised() -> None:
    from trainables.tflogs import drop_noise

    # as TensorFlow 2.21 writes them on a CPU machine (seconds since the epoch in the time)
    text = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1796341010.835191   14004 port.cc:153] oneDNN custom operations are on.\n"
        "I0000 00:00:1796341010.835502   14004 cudart_stub.cc:31] Could not find cuda drivers\n"
        "W0000 00:00:1796341010.9   14004 other.cc:1] a warning stays\n"
        "a Python line stays\n"
    )
    assert drop_noise(text) == (
        "W0000 00:00:1796341010.9   14004 other.cc:1] a warning stays\na Python line stays\n"
    )


@pytest.mark.slow
def test_grid_validate_shows_tensorflow_logs_only_when_asked() -> None:
    quiet = subprocess.run(
        [*GRID, "validate"], capture_output=True, text=True, timeout=600, env=plain_env()
    )
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "ok: study digits-default" in quiet.stdout
    assert not TF_NOISE.search(quiet.stdout + quiet.stderr), quiet.stderr[-3000:]
    # Asked for: TensorFlow's own lines are back (so the quiet run above did hide some).
    loud = subprocess.run(
        [*GRID, "--verbose", "validate"],
        capture_output=True,
        text=True,
        timeout=600,
        env=plain_env(),
    )
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert TF_NOISE.search(loud.stdout + loud.stderr), loud.stderr[-3000:]
