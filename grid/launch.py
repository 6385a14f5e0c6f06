"""Run a study's trials as Ray Tune trials on a local Ray (or a cluster).

Trials already complete in the Parquet store are skipped, so running a
study again only does what is missing.  Progress is printed by a Tune
callback on the driver: one line per finished trial, with an ETA.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from grid.spec import Study, StudyError
from grid.store import ParquetSink, completed_keys, rows_dir

# Every Ray worker needs Keras 2 before its first TensorFlow import.
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}


def git_revision() -> str:
    """The project's git revision, '+dirty' when the tree has changes; 'unknown' outside git."""
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()  # fmt: skip

    try:
        rev = git("rev-parse", "--short=12", "HEAD")
        return rev + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class RunSummary:
    total: int  # trials in the study
    skipped: int  # already complete before this run
    completed: int = 0
    failed: int = 0
    wall_s: float = 0.0
    trial_s: float = 0.0  # sum of the trials' own compute time (run_trial wall time)
    concurrency: int = 1
    failures: list[str] = field(default_factory=list)
    missing: int = 0  # neither complete nor failed after the run (interrupted)

    @property
    def ran(self) -> int:
        return self.completed + self.failed

    @property
    def efficiency(self) -> float:
        """Trial compute / (wall time x concurrent trial slots)."""
        return self.trial_s / (self.wall_s * self.concurrency) if self.wall_s > 0 else 0.0

    @property
    def overhead_per_trial_s(self) -> float:
        return (
            max(0.0, self.wall_s * self.concurrency - self.trial_s) / self.ran if self.ran else 0.0
        )


def _fmt_s(s: float) -> str:
    return f"{s:.0f}s" if s < 90 else f"{s // 60:.0f}m{s % 60:02.0f}s"


def progress_callback(summary: RunSummary, out: TextIO, t0: float) -> Any:
    from ray.tune import Callback

    todo = summary.total - summary.skipped

    class Progress(Callback):
        def on_trial_result(
            self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
        ) -> None:
            cfg = trial.config["trial"]
            if result.get("status") == "complete":
                summary.completed += 1
                verdict = (
                    f"clean {result['clean_acc']:.3f}  robust {result['robust_acc']:.3f}  "
                    f"{result['bytes']:>7,} B"
                )
            else:
                summary.failed += 1
                summary.failures.append(f"{result.get('key')}: {result.get('reason')}")
                verdict = f"FAILED: {str(result.get('reason'))[:120]}"
            summary.trial_s += float(result.get("total_s") or 0.0)
            done = summary.ran
            elapsed = time.perf_counter() - t0
            eta = elapsed / done * (todo - done)
            running = sum(1 for t in trials if t.status == "RUNNING")
            fold = f" fold={cfg['fold']}/{cfg['folds']}" if cfg.get("folds", 1) > 1 else ""
            adv = cfg.get("adversarial", {}).get("method", "none")
            fold += f" adv={adv}@{cfg['adversarial']['eps']:g}" if adv != "none" else ""
            out.write(
                f"[{done:>{len(str(todo))}}/{todo}] bits={cfg['bits']:<7} sparsity={cfg['sparsity']:<4g} "
                f"clusters={cfg['clusters']:<3} jr={cfg['jr_weight']:<6g}{fold} | {verdict} | "
                f"{result.get('total_s') or 0:5.1f}s  (running {running}, ETA {_fmt_s(eta)})\n"
            )
            out.flush()

        def on_trial_error(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            # The trainable records its own failures as rows; this is a crash of
            # the worker itself (after Tune's retries).
            summary.failed += 1
            summary.failures.append(
                f"{trial.config['trial'].get('bits')}: worker error, see {trial.local_path}"
            )
            out.write(f"[trial error] {trial} (see {trial.local_path})\n")
            out.flush()

    return Progress()


def check_writable(results_dir: Path) -> None:
    """Create the rows folder and prove a file can be written there."""
    folder = rows_dir(results_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as err:
        raise StudyError(f"results: cannot write to {folder}: {err.strerror or err}") from None


def init_ray(address: str | None) -> None:
    import ray

    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": WORKER_ENV},
        "logging_level": logging.ERROR,
        "log_to_driver": False,  # trial output goes to each trial's log, not over the progress lines
    }
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Local Ray: dashboard off (and never on 0.0.0.0) unless asked for.
        ray.init(include_dashboard=False, **kwargs)


def run_study(
    study: Study,
    results: str | None = None,
    address: str | None = None,
    max_concurrent: int | None = None,
    out: TextIO = sys.stdout,
) -> RunSummary:
    """Run every trial of ``study`` not yet complete; write rows under its results folder."""
    results_dir = study.results_dir(results)
    check_writable(
        results_dir
    )  # before Ray starts: a bad location fails in a second, not after a trial
    configs = study.trials()
    done = completed_keys(results_dir)
    todo = [c for c in configs if c.key not in done]
    summary = RunSummary(total=len(configs), skipped=len(configs) - len(todo))
    out.write(
        f"study {study.name}: {len(configs)} trials, {summary.skipped} already complete, "
        f"{len(todo)} to run -> {results_dir}\n"
    )
    out.flush()
    if not todo:
        return summary

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune

    from trainables.ray_adapter import trainable

    init_ray(address or os.environ.get("RAY_ADDRESS"))
    try:
        cpus = int(ray.available_resources().get("CPU", 1))
        res = study.resources
        slots = max(1, cpus // res.cpus_per_trial)
        summary.concurrency = min(slots, len(todo), max_concurrent or res.max_concurrent or slots)
        sink = ParquetSink(str(results_dir), study.name, git_revision())
        fn: Callable[..., Any] = tune.with_parameters(
            trainable, sink=sink, objective=study.headline,
            artifacts=sink.write_artifacts if study.artifacts else None,
        )  # fmt: skip
        fn = tune.with_resources(fn, {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
        tuner = tune.Tuner(
            fn,
            param_space={"trial": tune.grid_search([c.model_dump(mode="json") for c in todo])},
            tune_config=tune.TuneConfig(
                reuse_actors=True,  # TF + QKeras import once per worker, not once per trial
                max_concurrent_trials=summary.concurrency,
                trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(results_dir),
                verbose=0,
                callbacks=[progress_callback(summary, out, time.perf_counter())],
                failure_config=tune.FailureConfig(max_failures=2),
            ),
        )
        t0 = time.perf_counter()
        tuner.fit()
        summary.wall_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    # The store is the truth: a trial that wrote its rows just before an
    # interruption counts, one that did not is still to do.
    keys = {c.key for c in configs}
    summary.missing = len(keys - completed_keys(results_dir)) - summary.failed
    return summary
