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
Progress is printed by a Tune callback on the driver: one line per finished
trial, with the front's hypervolume and an ETA; ``search.json`` keeps the
front and hypervolume, ``status.json`` the driver's live state.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from grid import space
from grid.spec import Strategy, Study, StudyError
from grid.store import (
    STATUS_STALE,
    Location,
    ParquetSink,
    as_location,
    is_remote,
    key_status,
    read_json,
    read_rows,
    stale_revisions,
    write_json,
)
from trainables.config import RESULTS_REVISION, TrialConfig
from trainables.modelspec import model_label
from trainables.rows import STATUS_COMPLETE, STATUS_FAILED, failed_row, summarize

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
    total: int  # trials this run answers for: the grid, or the search budget x folds
    skipped: int  # already complete before this run
    completed: int = 0
    failed: int = 0
    wall_s: float = 0.0
    trial_s: float = 0.0  # sum of the trials' own compute time (run_trial wall time)
    concurrency: int = 1
    failures: list[str] = field(default_factory=list)
    missing: int = 0  # neither complete nor failed after the run (interrupted)
    strategy: str = "grid"
    front: space.Front | None = None

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


def stale_note(stale: dict[str, int]) -> str:
    """One line on rows of another results revision (see trainables.config.RESULTS_REVISION)."""
    revs = ", ".join(str(r) for r in sorted(set(stale.values())))
    return (
        f"stale: {len(stale)} stored trial(s) were computed under results revision {revs}, "
        f"now {RESULTS_REVISION}: not counted, their configs run again under new keys; "
        "analysis leaves them out (analysis.connect(..., stale=True) shows them)"
    )


class StudyState:
    """What the store says about a study's points, kept current as trials finish."""

    def __init__(self, study: Study, results_dir: str | Path | Location) -> None:
        self.study, self.results_dir = study, as_location(results_dir)
        self.obj = space.objectives(study)
        self.status = key_status(self.results_dir)
        self.stale = (
            stale_revisions(self.results_dir) if STATUS_STALE in self.status.values() else {}
        )
        self.values: dict[str, list[float]] = {}  # complete key -> objective values
        self.flags: dict[str, str] = {}  # complete key -> masking diagnostics that fired
        self.params: int | None = None
        self.points = space.points(study)
        self.trials = {space.point_label(p): study.point_trials(p) for p in self.points}
        self.keys = {label: [t.key for t in ts] for label, ts in self.trials.items()}
        ours = {k for ks in self.keys.values() for k in ks}
        for key, st in self.status.items():
            if st == STATUS_COMPLETE and key in ours:
                self.refresh(key)
        previous = read_json(self.results_dir, "search.json") or {}
        self.history: list[list[float]] = previous.get("history", [])

    def refresh(self, key: str) -> bool:
        """Re-read ``key``'s rows from the store; True when it is complete."""
        rows = read_rows(self.results_dir, key)
        if not rows:
            self.status.pop(key, None)
            return False
        s = summarize(rows, self.study.headline)
        self.status[key] = s["status"]
        if s["status"] != STATUS_COMPLETE:
            self.values.pop(key, None)
            return False
        self.values[key] = [float(s[n]) for n in self.obj.names]
        self.flags[key] = s["masking_flags"]
        self.params = max(self.params or 0, int(s["params"] or 0)) or None
        return True

    def point_values(self) -> dict[str, list[float]]:
        """Complete points (every fold complete): the mean over folds of each objective."""
        out = {}
        for label, keys in self.keys.items():
            if all(k in self.values for k in keys):
                vals = [self.values[k] for k in keys]
                out[label] = [sum(col) / len(col) for col in zip(*vals, strict=True)]
        return out

    def front(self) -> space.Front:
        return space.front(self.point_values(), self.obj, self.params)

    def save(self, strategy: str) -> space.Front:
        """Recompute the front and store it (with the hypervolume's history) in search.json."""
        f = self.front()
        if not self.history or self.history[-1][0] != f.points:
            self.history.append([f.points, f.normalized])
        s = self.study.search
        values = self.point_values()
        data = {
            "study": self.study.name,
            "strategy": strategy,
            "sampler": s.sampler.value if strategy == "optuna" else None,
            "objectives": list(self.obj.names),
            "maximize": list(self.obj.maximize),
            "headline": dict(
                zip(("attack", "eps", "norm", "size"), self.study.headline, strict=True)
            ),
            "reference": list(f.reference),
            "hypervolume": f.hypervolume,
            "hypervolume_normalized": f.normalized,
            "points_complete": f.points,
            "front": [
                {"point": label, "keys": self.keys[label], "values": values[label]}
                for label in f.labels
            ],
            "history": self.history,  # [points complete, normalised hypervolume]
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        loc = self.results_dir
        _best_effort(loc.display("search.json"), lambda: write_json(loc, "search.json", data))
        if strategy == Strategy.optuna.value:  # object storage: the journal goes along
            _best_effort(loc.display("optuna.journal"), lambda: loc.push("optuna.journal"))
        return f


_warned: set[str] = set()


def _best_effort(what: str, fn: Callable[..., Any], *args: Any) -> None:
    """Run a write of the driver's own state; a failure (full disk, lost bucket) is
    reported once and the study goes on: the rows are the results, not these files."""
    try:
        fn(*args)
    except OSError as err:
        msg = f"[warning] cannot write {what}: {err}"
        if msg not in _warned:
            _warned.add(msg)
            print(msg, file=sys.stderr, flush=True)


def write_status(results_dir: Location, **fields: Any) -> None:
    """The driver's live state, for ``grid status`` (and to refuse a second driver)."""
    state = read_json(results_dir, "status.json") or {}
    state.update(fields, updated_at=time.time())
    _best_effort(
        results_dir.display("status.json"), lambda: write_json(results_dir, "status.json", state)
    )


def live_driver(results_dir: str | Path | Location) -> int | None:
    """The pid of a driver still running this study on this host, if any."""
    state = read_json(results_dir, "status.json") or {}
    pid, host = state.get("pid"), state.get("host")
    if not state.get("running_driver") or not isinstance(pid, int) or host != socket.gethostname():
        return None
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    try:  # a recycled pid is not our driver
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid
    return pid if b"grid" in cmdline else None


def progress_callback(summary: RunSummary, state: StudyState, out: TextIO, t0: float) -> Any:
    from ray.tune import Callback

    todo = summary.total - summary.skipped
    width = len(str(todo))

    def unit_of(trial: Any) -> dict[str, Any]:
        return dict(trial.config["unit"])

    def running(trials: list[Any]) -> list[str]:
        return [k for t in trials if t.status == "RUNNING" for k in unit_of(t)["keys"]]

    class Progress(Callback):
        def on_trial_start(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            write_status(state.results_dir, running=running(trials))

        def on_trial_result(
            self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
        ) -> None:
            unit = unit_of(trial)
            summary.completed += len(unit["keys"])
            summary.trial_s += float(result.get("total_s") or 0.0)
            for key in unit["keys"]:
                state.refresh(key)
            front = state.save(summary.strategy)
            summary.front = front
            p = unit["point"]
            adv = state.study.axes.adversarial[int(p["adversarial"])]
            extra = f" adv={adv.method.value}@{adv.eps:g}" if adv.method.value != "none" else ""
            if "model" in p:
                extra += f" model={model_label(state.study.models[int(p['model'])])}"
            layered = state.study.axes.jr_layers[int(p.get("jr_layers", 0))]
            if layered:
                extra += " jr_layers=" + ",".join(f"{k}:{v:g}" for k, v in layered.items())
            if len(unit["keys"]) == 1 and state.study.folds > 1:
                fold = unit["trials"][0]["fold"]
                extra += f" fold={fold + 1}/{state.study.folds}"
            elif state.study.folds > 1:
                extra += f" folds={len(unit['keys'])}"
            done = summary.ran
            elapsed = time.perf_counter() - t0
            eta = elapsed / done * (todo - done) if done else 0.0
            out.write(
                f"[{done:>{width}}/{todo}] bits={p['bits']:<7} sparsity={p['sparsity']:<4g} "
                f"clusters={p['clusters']:<3} jr={p['jr_weight']:<6g}{extra} | "
                f"clean {result['clean_acc']:.3f}  robust {result['robust_acc']:.3f}  "
                f"{result['bytes']:>9,.0f} B | {result.get('total_s') or 0:5.1f}s | "
                f"HV {front.normalized:.4f} front {len(front.labels)} "
                f"(running {len(running(trials)) - len(unit['keys'])}, ETA {_fmt_s(eta)})"
                + (f" | MASKING? {result['masking_flags']}" if result.get("masking_flags") else "")
                + "\n"
            )
            out.flush()
            write_status(state.results_dir, running=running(trials))

        def on_trial_recover(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            out.write(f"[retry] {', '.join(unit_of(trial)['keys'])}: {_last_error(trial)}\n")
            out.flush()

        def on_trial_error(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            # Failed for good, after Tune's retries.  The trainable stored a failed
            # row for the fold that raised; a worker that died stored nothing.
            unit = unit_of(trial)
            reason = _last_error(trial)
            for item in unit["trials"]:
                cfg = TrialConfig.from_dict(item)
                if not state.refresh(cfg.key):
                    if cfg.key not in state.status:
                        started = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
                        sink = ParquetSink(str(state.results_dir), state.study.name, git_revision())
                        row = failed_row(cfg, reason, started)
                        _best_effort(f"the failed row of {cfg.key}", sink, cfg.key, [row])
                        state.status[cfg.key] = "failed"
                    summary.failed += 1
                    summary.failures.append(f"{cfg.key}: {reason[:300]}")
                else:
                    summary.completed += 1
            out.write(f"[failed] {', '.join(unit['keys'])}: {reason[:200]}\n")
            out.flush()
            write_status(state.results_dir, running=running(trials))

    return Progress()


def _last_error(trial: Any) -> str:
    """The last line of a Tune trial's error (the exception and its message)."""
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line or "injected" in line:
            return line[:1000]
    return lines[-1][:1000] if lines else "the trial's worker failed"


def check_writable(results_dir: Location) -> None:
    """Prove a file can be written (and removed) in the rows folder, before anything runs."""
    name = f".write-check-{uuid.uuid4().hex}"
    try:
        results_dir.write_bytes(b"robustgrid", "rows", name)
        results_dir.delete("rows", name)
    except OSError as err:
        what = getattr(err, "strerror", None) or str(err).splitlines()[0]
        raise StudyError(
            f"results: cannot write to {results_dir.display('rows')}: {what}"
        ) from None


def check_dataset(study: Study, local: bool) -> None:
    """The study's dataset is there and readable, before any trial starts.

    A local run reads it here once (the decoded arrays land in this node's
    cache, where the workers find them); on a cluster a local path names the
    workers' disks, not this one, so only an object-storage path is checked.
    """
    d = study.dataset
    path = study._common()["data_path"]  # resolved as the trials get it
    if d.name.value == "digits" or d.download:
        return  # ships with scikit-learn / fetched (with its checksum) by the workers
    from trainables.datasets import DatasetError

    try:
        if path and is_remote(path):
            import pyarrow.fs as pafs

            try:
                fs, inner = pafs.FileSystem.from_uri(path)
                missing = fs.get_file_info(inner).type == pafs.FileType.NotFound
            except (OSError, ValueError) as err:
                raise DatasetError(f"{path}: {str(err).splitlines()[0]}") from None
            if missing:
                raise DatasetError(f"{path}: not found")
        elif local:
            from trainables.data import load_pool

            load_pool(d.name.value, path, False, d.md5)
            load_pool.cache_clear()  # the driver keeps no copy
    except DatasetError as err:
        raise StudyError(f"dataset.path: {err}") from None


def shipped_modules(study: Study) -> list[str]:
    """The local folders (or files) of the study's builder packages that Ray must ship.

    A builder's top-level package reaches every worker through the Ray runtime
    environment's ``py_modules``, unless it is installed in site-packages (then
    each node is expected to have it installed, like robustgrid itself).
    """
    import site
    import sysconfig

    from trainables.modelspec import ImportedModel, source_files

    installed = {
        Path(p).resolve()
        for p in [*site.getsitepackages(), site.getusersitepackages(),
                  sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
        if p
    }  # fmt: skip
    out: list[str] = []
    for m in study.models:
        if not isinstance(m, ImportedModel):
            continue
        root, _ = source_files(m.builder)
        resolved = root.resolve()
        if any(resolved.is_relative_to(p) for p in installed) or str(resolved) in out:
            continue
        out.append(str(resolved))
    return out


def init_ray(address: str | None, py_modules: list[str] | None = None) -> None:
    import ray

    runtime_env: dict[str, Any] = {"env_vars": WORKER_ENV}
    if (
        py_modules
    ):  # the study's builder packages, uploaded to the cluster and put on the workers' path
        runtime_env["py_modules"] = list(py_modules)
    kwargs: dict[str, Any] = {
        "runtime_env": runtime_env,
        "logging_level": logging.ERROR,
        "log_to_driver": False,  # trial output goes to each trial's log, not over the progress lines
    }
    if address:
        ray.init(address=address, **kwargs)
    else:
        # A new local Ray of our own ("local": never join a cluster that happens to
        # run on this machine); dashboard off (and never on 0.0.0.0).
        ray.init(address="local", include_dashboard=False, **kwargs)


def concurrency(
    study: Study,
    units: list[dict[str, Any]],
    todo: int,
    cluster: bool,
    max_concurrent: int | None = None,
) -> int:
    """Trials in flight at once: the study's (or --max-concurrent's) cap, else what fits.

    On a local Ray, what fits is the CPUs free now.  On a cluster it is every
    trial there is: an autoscaling cluster may start with no workers at all,
    and only trials waiting for resources make it add nodes.
    """
    import ray

    res = study.resources
    want = len(units) if study.search.strategy != Strategy.optuna else todo // study.folds
    cap = max_concurrent or res.max_concurrent
    if cap is None:
        cpus = int(ray.available_resources().get("CPU", 0))
        cap = want if cluster else max(1, cpus // res.cpus_per_trial)
    return max(1, min(cap, want))


def unit(study: Study, point: space.Point, trials: list[TrialConfig]) -> dict[str, Any]:
    return {
        "point": point,
        "label": space.point_label(point),
        "keys": [t.key for t in trials],
        "trials": [t.model_dump(mode="json") for t in trials],
    }


def expected_cost(cfg: TrialConfig) -> float:
    """A trial's training cost in plain-step units, to start the longest trials first.

    Rough by design, only the order matters: a JR step costs about 1.5-2.1
    plain steps (benchmarks/jr_cost.py), adversarial examples about one step
    per attack step per batch share; pruning wrappers and QKeras quantizers
    add to every step (on the default study pruned trials took 1.4-2.3x,
    quantized ones about 1.5x the time of the same float trial).
    """
    step = 1.0 + (1.0 if cfg.jr_weight > 0 or cfg.jr_layers else 0.0)
    step += (0.5 if cfg.sparsity > 0 else 0.0) + (0.3 if cfg.bits != "float" else 0.0)
    adv = cfg.adversarial
    if adv.method.value != "none":
        step += adv.ratio * (adv.steps if adv.method.value == "pgd" else 1)
    epochs = cfg.epochs + (cfg.fine_tune_epochs if cfg.clusters else 0)
    return epochs * step


def plan(study: Study, state: StudyState) -> tuple[list[dict[str, Any]], int, int]:
    """(units for a grid/random run, trials this run answers for, of which already complete)."""
    strategy = study.search.strategy
    done = {k for k, v in state.status.items() if v == STATUS_COMPLETE}
    if strategy == Strategy.optuna:
        complete_points = len(state.point_values())
        total = study.budget * study.folds
        return [], total, min(complete_points, study.budget) * study.folds
    pts = (
        state.points
        if strategy == Strategy.grid
        else space.random_points(study, study.budget, study.search_seed)
    )
    todo: list[tuple[float, dict[str, Any]]] = []
    total, skipped = 0, 0
    for p in pts:
        for t in state.trials[space.point_label(p)]:  # one Tune trial per fold: more parallelism
            total += 1
            if t.key in done:
                skipped += 1
            else:
                todo.append((-expected_cost(t), unit(study, p, [t])))
    # Longest first (LPT): the last trials to start are the short ones, so no
    # slot idles long at the end waiting for one slow trial.  Stable: equal
    # costs keep the file's order.
    todo.sort(key=lambda item: item[0])
    return [u for _, u in todo], total, skipped


def run_study(
    study: Study,
    results: str | None = None,
    address: str | None = None,
    max_concurrent: int | None = None,
    out: TextIO = sys.stdout,
) -> RunSummary:
    """Run what is missing of ``study``; write rows (and search state) under its results folder."""
    results_dir = study.results_dir(results)
    check_writable(results_dir)  # before Ray starts: a bad location fails in a second
    other = live_driver(results_dir)
    if other is not None:
        raise StudyError(
            f"results: {results_dir} is in use by a running driver (pid {other}); "
            "wait for it or stop it first"
        )
    state = StudyState(study, results_dir)
    strategy = study.search.strategy
    units, total, skipped = plan(study, state)
    if total > skipped:
        check_dataset(study, local=not (address or os.environ.get("RAY_ADDRESS")))
        study.check_models()  # a custom model that cannot be built fails here, not in every trial
    summary = RunSummary(total=total, skipped=skipped, strategy=strategy.value)
    todo = total - skipped
    if state.stale:
        out.write(stale_note(state.stale) + "\n")
    what = f": {study.budget} of {study.points} points" if strategy != Strategy.grid else ""
    out.write(
        f"study {study.name} ({strategy.value}{what}): {total} trials, {skipped} already complete, "
        f"{todo} to run -> {results_dir}\n"
    )
    summary.front = state.save(strategy.value)
    if summary.front.points:
        out.write(summary.front.describe(state.obj) + "\n")
    out.flush()
    if todo <= 0:
        return summary

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune

    from grid import loggers
    from trainables.ray_adapter import trainable

    ray_address = address or os.environ.get("RAY_ADDRESS")
    auth_mode = os.environ.get("RAY_AUTH_MODE")  # a local ray.init sets it, and leaves it set
    shipped = shipped_modules(study)
    for path in shipped:
        out.write(f"shipping {path} to the workers (Ray runtime_env py_modules)\n")
    init_ray(ray_address, shipped)
    write_status(
        results_dir, pid=os.getpid(), host=socket.gethostname(), running_driver=True,
        started_at=time.time(), strategy=strategy.value, total=total, skipped=skipped, running=[],
    )  # fmt: skip
    try:
        res = study.resources
        summary.concurrency = concurrency(
            study, units, todo, cluster=bool(ray_address), max_concurrent=max_concurrent
        )
        sink = ParquetSink(str(results_dir), study.name, git_revision())
        fn: Callable[..., Any] = tune.with_parameters(
            trainable, sink=sink, objective=study.headline,
            artifacts=sink.write_artifacts if study.artifacts else None,
        )  # fmt: skip
        fn = tune.with_resources(fn, {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
        if strategy == Strategy.optuna:
            param_space: dict[str, Any] = {}
            from grid.searcher import optuna_searcher

            search_alg, samples = optuna_searcher(study, state), todo // study.folds
        else:
            param_space, search_alg, samples = {"unit": tune.grid_search(units)}, None, 1
        tuner = tune.Tuner(
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
                storage_path=str(results_dir.local or results_dir.mirror_path("tune").parent),
                verbose=0,
                callbacks=[
                    progress_callback(summary, state, out, time.perf_counter()),
                    *loggers.callbacks(study, results_dir, out),  # the study's `loggers:`
                ],
                failure_config=tune.FailureConfig(max_failures=res.retries),
            ),
        )
        t0 = time.perf_counter()
        tuner.fit()
        summary.wall_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
        if auth_mode is None:  # so that a later Ray in this process starts as the user asked
            os.environ.pop("RAY_AUTH_MODE", None)
        write_status(results_dir, running_driver=False, running=[], finished_at=time.time())
    # The store is the truth: a trial that wrote its rows just before an
    # interruption counts, one that did not is still to do.
    final = StudyState(study, results_dir)
    summary.front = final.save(strategy.value)
    units_after, total_after, skipped_after = plan(study, final)
    failed_now = sum(1 for v in final.status.values() if v == STATUS_FAILED)
    if strategy == Strategy.optuna:
        exhausted = len(final.point_values()) >= study.points
        summary.missing = 0 if exhausted else max(0, total_after - skipped_after - failed_now)
    else:
        summary.missing = max(0, len(units_after) - failed_now)
    return summary
