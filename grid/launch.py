"""Run a study's trials as Ray Tune trials on a local Ray (or a cluster).

The Parquet store is the truth.  A trial's key is the hash of its resolved
config (fold and seed included); keys complete in the store are skipped,
failed and unfinished ones run again, so running a study again (or
``grid resume`` after the driver died, kill -9 included) only does what is
missing, and a key never gets a second row set.

Strategies (``search.strategy``): ``grid`` runs every point, ``random`` a
seeded sample of distinct points, ``optuna`` a multi-objective search
through Tune's OptunaSearch whose Optuna study lives in
``<results>/optuna.journal``, so a resumed search continues where it was.

:func:`run_study` reads top to bottom; each step lives in a module of its own:
``grid.preflight`` (checks before Ray starts), ``grid.state`` (the study's state
over the store, ``search.json``, ``status.json``), ``grid.planning`` (the Tune trials,
longest first, and how many at once), ``grid.progress`` (the live lines and the
run's summary), ``grid.ray_start`` (Ray for the run), ``grid.searcher`` (the Optuna
search).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from grid import preflight
from grid.planning import RunPlan, concurrency, missing, plan
from grid.progress import RunSummary, announce, front_table, progress_callback
from grid.ray_start import ray_driver
from grid.spec import Strategy, Study
from grid.state import StudyState
from grid.store import Location, ParquetSink
from trainables.ray_adapter import TrialPayload, trainable
from trainables.rows import STATUS_COMPLETE


def run_study(
    study: Study,
    results: str | None = None,
    address: str | None = None,
    max_concurrent: int | None = None,
    out: TextIO | None = None,
    trainable_fn: Callable[..., None] = trainable,
) -> RunSummary:
    """Run what is missing of ``study``; write rows (and search state) under its results folder.

    Prints to ``out`` (default: ``sys.stdout`` as it is when called, so a captured stdout
    captures it); the summary's ``table`` is the front at the end.  ``trainable_fn`` is the
    Tune trainable (trainables.ray_adapter.trainable's signature): tests and benchmarks wrap
    the real one (tests/injected.py, trainables/trivial.py).
    """
    out = out if out is not None else sys.stdout
    results_dir = study.results_dir(results)
    preflight.check_results(results_dir)  # before Ray starts: a bad location fails in a second
    state = StudyState(study, results_dir)
    planned = plan(study, state)
    ray_address = address or os.environ.get("RAY_ADDRESS")
    if planned.todo > 0:
        preflight.check_inputs(study, local=not ray_address)
    summary = announce(study, state, planned, results_dir, out)
    if planned.todo <= 0:
        summary.table = front_table(state, summary.front or state.front())
        compact_loose(results_dir, state, out)
        return summary
    searcher = None
    if study.search.strategy == Strategy.optuna:
        # Built before Ray starts (Optuna's imports, the journal's replay): none of it
        # holds a trial slot, and the first trial starts as soon as Tune does.
        from grid.searcher import optuna_searcher

        searcher = optuna_searcher(study, state)
    with ray_driver(study, results_dir, ray_address, planned, out) as free_cpus:
        summary.concurrency = concurrency(study, planned, free_cpus, max_concurrent)
        sink = ParquetSink(str(results_dir), study.name, git_revision())
        t0 = time.perf_counter()
        todo = parts(planned, summary.concurrency)
        # The parts hold the payloads now (about 1 KB a trial): the plan's list goes, and
        # each part's once it has run, so later parts reuse that memory (the driver's
        # memory per trial run, benchmarks/driver_memory.py).
        planned.payloads.clear()
        while todo:
            part = todo.pop(0)
            before = summary.ran
            make_tuner(study, state, part, summary, sink, out, t0, searcher, trainable_fn).fit()
            if part.payloads and summary.ran - before < sum(len(p.keys) for p in part.payloads):
                break  # interrupted (Ctrl-C, a lost cluster): the store says what is left
        summary.wall_s = time.perf_counter() - t0
    # The state was built once, at the start, and kept current from the workers' reports.
    # The store is the truth: a trial that wrote its rows just before an interruption
    # counts (one listing finds such keys; only they are read), one that did not is to do.
    state.settle()
    summary.front = state.save(study.search.strategy.value)
    summary.table = front_table(state, summary.front)
    summary.missing = missing(study, state)
    compact_loose(results_dir, state, out)
    return summary


# A run that ends with at least this many complete keys in per-key files compacts them
# (`grid compact`): past ~10^4 per-key files every reader slows down (docs/performance.md).
AUTO_COMPACT_KEYS = 1000


def compact_loose(results_dir: Location, state: StudyState, out: TextIO) -> None:
    """Merge the complete keys' per-key files into compacted files once there are many.

    Only when no trial runs (a run's end, or a run with nothing to do): compaction
    merges complete keys only, which no trial rewrites, and readers take a key once
    at every step (grid.store.compact).  One listing decides; a failure is a warning:
    the per-key files are results as they are.
    """
    from grid.store import STATUS_STALE, compact, list_rows

    failed = sum(1 for v in state.status.values() if v not in (STATUS_COMPLETE, STATUS_STALE))
    try:
        loose = len(list_rows(results_dir).per_key) - failed
        if loose < AUTO_COMPACT_KEYS:
            return
        report = compact(results_dir)
    except OSError as err:
        out.write(f"[warning] compaction of {results_dir.display('rows')} failed: {err}\n")
        return
    out.write(f"{report.describe()} (grid compact: the same rows in fewer files)\n")


# A grid or random run hands Tune its trials in parts of at most this many (at least
# TUNE_PART_PER_SLOT per trial slot), one Tuner each: Tune keeps every trial of a run
# (its Trial objects and their JSON state for the experiment checkpoint, about 20 KB a
# trial), so a single Tuner's driver grows with the trials run; parts bound it.  A part's
# end costs each slot about half a trial and a worker start (benchmarks/driver_memory.py).
TUNE_PART, TUNE_PART_PER_SLOT = 1000, 50


def parts(planned: RunPlan, slots: int) -> list[RunPlan]:
    """The run as Tune runs: the whole plan for a search, else parts of its trials in order,
    each with a list of its own."""
    size = max(TUNE_PART, TUNE_PART_PER_SLOT * slots)
    if not planned.payloads:
        return [planned]
    return [
        planned._replace(payloads=planned.payloads[i : i + size])
        for i in range(0, len(planned.payloads), size)
    ]


def make_tuner(
    study: Study, state: StudyState, planned: RunPlan, summary: RunSummary, sink: ParquetSink,
    out: TextIO, t0: float | None = None, searcher: Any = None,
    trainable_fn: Callable[..., None] = trainable,
) -> Any:  # fmt: skip
    """The Tune run: the trainable with its sink and resources, the trials (or the searcher)."""
    from ray import tune

    from grid import loggers  # imports MLflow / tensorboardX only when the study asks

    res = study.resources
    fn: Callable[..., Any] = tune.with_parameters(
        trainable_fn, sink=sink, objective=study.headline,
        artifacts=sink.write_artifacts if study.artifacts else None,
    )  # fmt: skip
    fn = tune.with_resources(fn, {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
    if study.search.strategy == Strategy.optuna:
        from grid.searcher import optuna_searcher  # imports Optuna

        param_space: dict[str, Any] = {}
        search_alg = searcher or optuna_searcher(study, state)
        samples = planned.todo // study.folds
    else:
        param_space, search_alg, samples = TrialPayload.param_space(planned.payloads), None, 1
    return tune.Tuner(
        fn,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            num_samples=samples,
            reuse_actors=True,  # TF + QKeras import once per worker, not once per trial
            # A custom searcher keeps one trial pending without it (stalls autoscaling).
            max_concurrent_trials=summary.concurrency,
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name="tune",
            # Tune's own state stays with the driver when results go to object storage.
            storage_path=str(
                state.results_dir.local or state.results_dir.mirror_path("tune").parent
            ),
            verbose=0,
            callbacks=[
                progress_callback(summary, state, sink, out, t0 or time.perf_counter()),
                *loggers.callbacks(study, state.results_dir, out),  # the study's `loggers:`
            ],
            failure_config=tune.FailureConfig(max_failures=res.retries),
        ),
    )


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
