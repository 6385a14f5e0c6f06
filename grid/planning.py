"""What a run does and in which order: the Tune trials to run, longest first, and how many at once.

A grid or random run plans one Tune trial per fold still missing from the
store (more parallelism than a point at a time), ordered by a rough cost model
so that the slow trials start first.  An Optuna search plans no trials ahead:
its searcher proposes points as it learns, within the study's budget.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from grid import space
from grid.reads import STATUS_STALE
from grid.spec import Strategy, Study
from trainables.config import TrialConfig
from trainables.ray_adapter import TrialPayload
from trainables.rows import STATUS_COMPLETE, STATUS_FAILED

if TYPE_CHECKING:
    from grid.state import StudyState


RUNNING = "running"
TODO = "todo"


def key_class(status: str | None, running: bool = False) -> str:
    """What a trial key counts as, from its stored status (``grid.reads.key_state``: None
    when the store has no readable rows) and whether a live driver runs it now.

    'complete' (every row complete, this results revision): done, never run again;
    'failed': ran and failed (a run retries it); 'running': in flight, not yet stored;
    'stale' (rows of another revision) and 'todo' (no rows): to run.
    """
    if status in (STATUS_COMPLETE, STATUS_FAILED):
        return status
    if running:
        return RUNNING
    return STATUS_STALE if status == STATUS_STALE else TODO


@dataclass(frozen=True)
class KeyTally:
    """A set of trial keys counted by :func:`key_class`."""

    complete: int = 0
    failed: int = 0
    stale: int = 0
    running: int = 0
    todo: int = 0  # never run (stale ones are counted apart)

    @property
    def total(self) -> int:
        return self.complete + self.failed + self.stale + self.running + self.todo


def tally(
    keys: Iterable[str], status: Mapping[str, str], running: Collection[str] = ()
) -> KeyTally:
    """Count ``keys`` (each once) by :func:`key_class` over the store's ``status`` and the
    keys a live driver runs: the one rule ``plan``, ``missing`` and ``grid status`` use."""
    counts = dict.fromkeys((STATUS_COMPLETE, STATUS_FAILED, STATUS_STALE, RUNNING, TODO), 0)
    for key in dict.fromkeys(keys):
        counts[key_class(status.get(key), key in running)] += 1
    return KeyTally(
        counts[STATUS_COMPLETE], counts[STATUS_FAILED], counts[STATUS_STALE], counts[RUNNING],
        counts[TODO],
    )  # fmt: skip


class RunPlan(NamedTuple):
    """A run's work: its Tune trials (grid/random) and how many trials it answers for."""

    # One payload per Tune trial of a grid/random run, longest first (none for optuna)
    payloads: list[TrialPayload]
    total: int  # trials this run answers for: the grid, or the search budget x folds
    skipped: int  # of which already complete in the store

    @property
    def todo(self) -> int:
        return self.total - self.skipped


def payload(
    point: space.Point, trials: Sequence[TrialConfig], keys: Sequence[str] | None = None
) -> TrialPayload:
    """One Tune trial's payload: ``point`` and the trial config of each fold it runs
    (``keys``: their keys, when the caller has them already)."""
    if keys is None:
        return TrialPayload.build(point, space.point_label(point), trials)
    return TrialPayload(
        point=dict(point), label=space.point_label(point), keys=tuple(keys), trials=tuple(trials)
    )


def expected_cost(cfg: TrialConfig) -> float:
    """A trial's training cost in plain-step units, to start the longest trials first.

    Rough by design, only the order matters: a JR step costs about 1.5-2.1
    plain steps (benchmarks/jr_cost.py), adversarial examples about one step
    per attack step per batch share; pruning wrappers and QKeras quantizers
    add to every step (on the default study pruned trials took 1.4-2.3x,
    quantized ones about 1.5x the time of the same float trial).
    """
    step = 1.0 + (1.0 if cfg.jr_weight > 0 or cfg.jr_layers else 0.0)
    # per-layer targets count: any pruned layer wraps the model, any clustered one fine-tunes it
    step += (0.5 if cfg.pruned else 0.0) + (0.3 if cfg.bits != "float" else 0.0)
    adv = cfg.adversarial
    if adv.method.value != "none":
        step += adv.ratio * (adv.steps if adv.method.value == "pgd" else 1)
    epochs = cfg.epochs + (cfg.fine_tune_epochs if cfg.clustered else 0)
    return epochs * step


def plan(study: Study, state: StudyState) -> RunPlan:
    """The Tune trials of a grid/random run, the trials this run answers for, and those complete."""
    strategy = study.search.strategy
    if strategy == Strategy.optuna:
        complete_points = len(state.point_values())
        total = study.budget * study.folds
        return RunPlan([], total, min(complete_points, study.budget) * study.folds)
    pts = (
        state.points
        if strategy == Strategy.grid
        else space.random_points(study, study.budget, study.search_seed)
    )
    todo: list[tuple[float, TrialPayload]] = []
    total, skipped = 0, 0
    for p in pts:
        label = state.meet(p)  # a random per-layer point's trials are computed as met
        # One Tune trial per fold: more parallelism.
        for t, key in zip(state.trials[label], state.keys[label], strict=True):
            total += 1
            if key_class(state.status.get(key)) == STATUS_COMPLETE:
                skipped += 1
            else:
                todo.append((-expected_cost(t), payload(p, [t], [key])))
    # Longest first (LPT): the last trials to start are the short ones, so no
    # slot idles long at the end waiting for one slow trial.  Stable: equal
    # costs keep the file's order.
    todo.sort(key=lambda item: item[0])
    return RunPlan([u for _, u in todo], total, skipped)


def concurrency(
    study: Study, planned: RunPlan, free_cpus: int | None, max_concurrent: int | None = None
) -> int:
    """Trials in flight at once: the study's (or --max-concurrent's) cap, else what fits.

    On a local Ray (``free_cpus``: its CPUs free now), what fits is those CPUs.  On a
    cluster (``free_cpus`` None) it is every trial there is: an autoscaling cluster may
    start with no workers at all, and only trials waiting for resources make it add nodes.
    """
    res = study.resources
    want = (
        len(planned.payloads)
        if study.search.strategy != Strategy.optuna
        else planned.todo // study.folds
    )
    cap = max_concurrent or res.max_concurrent
    if cap is None:
        cap = want if free_cpus is None else max(1, free_cpus // res.cpus_per_trial)
    return max(1, min(cap, want))


def missing(study: Study, final: StudyState) -> int:
    """Trials neither complete nor failed once a run is over (it was interrupted)."""
    after = plan(study, final)
    if study.search.strategy == Strategy.optuna:
        exhausted = len(final.point_values()) >= study.point_count
        failed_now = tally(final.status, final.status).failed
        return 0 if exhausted else max(0, after.todo - failed_now)
    left = tally((k for u in after.payloads for k in u.keys), final.status)
    return left.stale + left.todo
