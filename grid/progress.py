"""What the driver prints and counts while a study runs.

:func:`announce` prints what a run is about to do; :func:`progress_callback`
is a Tune callback on the driver that prints one line per finished Tune trial
(with the front's hypervolume and an ETA), takes the summaries the trial's
worker reported into the study's state (it never reads the trial's rows back
from the store), keeps ``status.json`` and ``search.json`` current, and counts
into the :class:`RunSummary` that ``grid run`` reports at the end, with the
front as :func:`front_table` prints it: one row per point (a config, its folds
aggregated).

A Tune trial runs one :class:`~trainables.ray_adapter.TrialPayload` (a payload):
a point and the trial config of each of its folds that it runs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from grid import space
from grid.spec import Strategy, Study
from grid.state import StudyState, stale_note, write_status
from grid.store import Location, ParquetSink
from trainables.modelspec import model_label
from trainables.ray_adapter import TrialPayload

if TYPE_CHECKING:
    from grid.planning import RunPlan


@dataclass
class RunSummary:
    total: int  # trials this run answers for: the grid, or the search budget x folds
    skipped: int  # already complete before this run
    completed: int = 0
    failed: int = 0
    wall_s: float = 0.0
    trial_s: float = 0.0  # sum of the trials' own compute time (run_trial wall time)
    concurrency: int = 1  # trials Tune may run at once (the cap it was given)
    # Trials the Ray cluster's nodes could hold at once at the run's peak (None: not sampled).
    # On a cluster ``concurrency`` is every trial (queued trials make an autoscaler add
    # nodes), so the slots the summary reports are the fewer of the two.
    held: int | None = None
    failures: list[str] = field(default_factory=list)
    missing: int = 0  # neither complete nor failed after the run (interrupted)
    strategy: str = "grid"
    front: space.Front | None = None
    table: str = ""  # the front at the run's end, as front_table prints it

    @property
    def ran(self) -> int:
        return self.completed + self.failed

    @property
    def slots(self) -> int:
        """Trials that could run at once: Tune's cap, or what the cluster held, the fewer."""
        if self.held is None or self.held <= 0:
            return self.concurrency
        return min(self.concurrency, self.held)

    @property
    def efficiency(self) -> float:
        """Trial compute / (wall time x concurrent trial slots)."""
        return self.trial_s / (self.wall_s * self.slots) if self.wall_s > 0 else 0.0

    @property
    def overhead_per_trial_s(self) -> float:
        return max(0.0, self.wall_s * self.slots - self.trial_s) / self.ran if self.ran else 0.0

    def sample_slots(self, cpus_per_trial: float, gpus_per_trial: float) -> None:
        """Record the trials the Ray cluster's alive nodes hold now, keeping the peak."""
        import ray

        nodes = [n.get("Resources") or {} for n in ray.nodes() if n.get("Alive")]
        now = slots_held(nodes, cpus_per_trial, gpus_per_trial)
        self.held = now if self.held is None else max(self.held, now)


def slots_held(
    nodes: list[dict[str, float]], cpus_per_trial: float, gpus_per_trial: float = 0.0
) -> int:
    """Trials that fit at once on these nodes (each node's total resources, as Ray counts them).

    A trial runs on one node, so each node holds ``floor(CPUs / cpus_per_trial)`` trials
    (and, with GPUs, no more than ``floor(GPUs / gpus_per_trial)``); the cluster holds their sum.
    """
    eps = 1e-9  # 1 / 0.1 * 0.1 and the like: fractions that divide exactly count as whole
    total = 0
    for res in nodes:
        fit = math.floor(res.get("CPU", 0.0) / cpus_per_trial + eps) if cpus_per_trial > 0 else None
        if gpus_per_trial > 0:
            by_gpu = math.floor(res.get("GPU", 0.0) / gpus_per_trial + eps)
            fit = by_gpu if fit is None else min(fit, by_gpu)
        total += fit or 0
    return total


SLOT_SAMPLE_S = 2.0  # how often the driver reads the cluster's nodes during a run


def _fmt_s(s: float) -> str:
    return f"{s:.0f}s" if s < 90 else f"{s // 60:.0f}m{s % 60:02.0f}s"


def announce(
    study: Study, state: StudyState, planned: RunPlan, results_dir: Location, out: TextIO
) -> RunSummary:
    """Print what this run does (and the front so far, saved to search.json); its summary."""
    strategy = study.search.strategy
    summary = RunSummary(total=planned.total, skipped=planned.skipped, strategy=strategy.value)
    if state.stale:
        out.write(stale_note(state.stale) + "\n")
    what = f": {study.budget} of {study.point_count} points" if strategy != Strategy.grid else ""
    out.write(
        f"study {study.name} ({strategy.value}{what}): {planned.total} trials, "
        f"{planned.skipped} already complete, {planned.todo} to run -> {results_dir}\n"
    )
    summary.front = state.save(strategy.value)
    if summary.front.points and planned.todo > 0:  # with nothing to run, the end prints it
        out.write(summary.front.describe(state.obj) + "\n")
    budget = state.budget_line()
    if budget:
        out.write(budget + "\n")
    out.flush()
    return summary


def point_text(study: Study, p: Mapping[str, Any]) -> str:
    """A point's axis values (adversarial training, model and per-layer JR only where they
    say something)."""
    adv = study.axes.adversarial[int(p["adversarial"])]
    extra = f" adv={adv.method.value}@{adv.eps:g}" if adv.method.value != "none" else ""
    if "model" in p:
        extra += f" model={model_label(study.models[int(p['model'])])}"
    layered = study.axes.jr_layers[int(p.get("jr_layers", 0))]
    if layered:
        extra += " jr_layers=" + ",".join(f"{k}:{v:g}" for k, v in layered.items())
    if p.get("layers"):  # a per-layer point: its overrides of the base values
        extra += " layers " + " ".join(
            f"{f}:"
            + ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in o.items())
            for f, o in p["layers"].items()
        )
    return (
        f"bits={p['bits']:<7} sparsity={p['sparsity']:<4g} "
        f"clusters={p['clusters']:<3} jr={p['jr_weight']:<6g}{extra}"
    )


def payload_line(study: Study, payload: TrialPayload) -> str:
    """A progress line's account of what a Tune trial ran: its point, and which folds."""
    extra = ""
    if len(payload.keys) == 1 and study.folds > 1:
        extra = f" fold={payload.trials[0].fold + 1}/{study.folds}"
    elif study.folds > 1:
        extra = f" folds={len(payload.keys)}"
    return point_text(study, payload.point) + extra


def headline_text(study: Study) -> str:
    """What ``robust`` and ``bytes`` hold: ``robust = worst case over the attacks (L-inf) at
    eps 0.1; bytes: encoded`` (the study's headline, its eps and norm resolved)."""
    h = study.headline
    attack, eps, norm, size = h.attack, h.eps, h.norm, h.size
    if eps is None:  # no attacks: a trial's robust accuracy is its clean accuracy
        return f"robust = clean accuracy (no attacks); bytes: {size}"
    who = "worst case over the attacks" if attack == "worst" else attack
    if h.model == "deployed":
        who = (
            f"the int8 flatbuffer's {'worst case over its routes' if attack == 'worst' else attack}"
        )
    return (
        f"robust = {who} ({'L-inf' if norm == 'inf' else f'L{norm}'}) at eps {eps:g}; bytes: {size}"
    )


def front_table(state: StudyState, front: space.Front) -> str:
    """The front, one row per point (a config: its folds aggregated), smallest first.

    Each figure is the mean over the point's folds, ``[min, max]`` their spread (shown
    when a point has several folds), ``folds`` how many; the point's front and hypervolume
    are the state's (the means), as ``grid status`` and ``search.json`` have them.
    """
    study = state.study
    rows = []
    for label in front.labels:
        folds = state.folds(label)
        assert folds is not None  # a point on the front is complete
        rows.append((label, folds))
    spread = any(len(f["bytes"]) > 1 for _, f in rows)

    def cell(values: list[float]) -> str:
        mean = f"{sum(values) / len(values):>6.3f}"
        return mean + (f"  [{min(values):.3f}, {max(values):.3f}]" if spread else "")

    how = "mean over its folds [min, max]" if spread else "one fold each"
    lines = [
        front.describe(state.obj),
        f"per point (a config; {how}): {headline_text(study)}",
        f"  {'bytes':>9}  {'robust':>6}{'  [min, max]     ' if spread else ''}"
        f"  {'clean':>6}{'  [min, max]     ' if spread else ''}  {'folds':>5}  point",
    ]
    budget = state.budget_line()  # points over a flash budget are never on the front
    if budget:
        lines.insert(1, budget)
    if not rows:
        lines.append("  (no complete points)")
    for label, f in sorted(
        rows,
        key=lambda r: (sum(r[1]["bytes"]) / len(r[1]["bytes"]), -sum(r[1]["robust_acc"]), r[0]),
    ):
        nbytes = sum(f["bytes"]) / len(f["bytes"])
        lines.append(
            f"  {nbytes:>9,.0f}  {cell(f['robust_acc'])}  {cell(f['clean_acc'])}  "
            f"{len(f['bytes']):>5}  {point_text(study, state.point_of(label)).rstrip()}"
        )
    return "\n".join(lines)


class LiveFront:
    """The front as points complete, kept from the front so far and each new point.

    The front of all complete points is the front of (the previous front + the new
    point), so each trial costs the size of the front, not of the study: at 10^4
    points recomputing it from every point after every trial made a run quadratic.
    """

    def __init__(self, state: StudyState, start: space.Front) -> None:
        self.state, self.front = state, start
        # complete points so far within the flash budget (points over it are never on the front)
        self.counted = {k for k, v in state.point_values().items() if state.feasible(v)}

    def add(self, label: str) -> space.Front:
        """The front once ``label``'s point may have completed (unchanged if it has not)."""
        st = self.state
        value = st.point_value(label)
        if value is None or label in self.counted or not st.feasible(value):
            return self.front
        self.counted.add(label)
        members = {k: st.point_value(k) for k in self.front.labels}
        if any(v is None for v in members.values()):  # a front point lost its rows: start over
            self.front = st.front()
            self.counted = {k for k, v in st.point_values().items() if st.feasible(v)}
            return self.front
        members[label] = value
        f = space.front(members, st.obj, st.params)  # type: ignore[arg-type]  # None excluded
        self.front = dataclasses.replace(f, points=len(self.counted))
        return self.front


def progress_callback(
    summary: RunSummary, state: StudyState, sink: ParquetSink, out: TextIO, t0: float
) -> Any:
    """A Tune callback that prints, counts and records each trial as it finishes or fails.

    What it keeps per trial is bounded by the trials in flight (``live``); each event
    costs the front's size and the trials in flight, not the trials run so far.
    """
    from ray.tune import Callback

    todo = summary.total - summary.skipped
    width = len(str(todo))
    live: dict[Any, TrialPayload] = {}  # Tune trials started and not yet ended -> payloads
    fronts = LiveFront(state, summary.front or state.front())

    def running(plus: Any = None, minus: Any = None) -> list[str]:
        """Keys of the running trials.  Tune calls on_trial_start before it marks the trial
        RUNNING, and on_trial_result/on_trial_error while the ending trial still is: ``plus``
        and ``minus`` correct for the trial the callback is about."""
        out = [
            k
            for t, payload in live.items()
            if (t.status == "RUNNING" or t is plus) and t is not minus
            for k in payload.keys
        ]
        return list(dict.fromkeys(out))

    def payload_of(trial: Any) -> TrialPayload:
        got = live.get(trial)
        return got if got is not None else TrialPayload.of(trial.config)

    res = state.study.resources
    sampled = [0.0]  # when the cluster's slots were last sampled (perf_counter)

    def sample(force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - sampled[0] >= SLOT_SAMPLE_S:
            sampled[0] = now
            summary.sample_slots(res.cpus_per_trial, res.gpus_per_trial)

    class Progress(Callback):
        def on_step(self, iteration: int, trials: list[Any], **info: Any) -> None:
            sample()  # an autoscaler adds nodes while trials wait: keep the peak

        def on_trial_start(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            live[trial] = TrialPayload.of(trial.config)
            write_status(state.results_dir, running=running(plus=trial))
            sample(force=summary.held is None)

        def on_trial_result(
            self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
        ) -> None:
            payload = payload_of(trial)
            summary.completed += len(payload.keys)
            summary.trial_s += float(result.get("total_s") or 0.0)
            # The worker's own summary of each fold (trainables.ray_adapter.run_payload),
            # made from the rows it has just stored: the driver trusts it, no read back.
            for fold in result["folds"]:
                state.take(fold)
            front = fronts.add(payload.label)
            state.save(summary.strategy, front)
            summary.front = front
            done = summary.ran
            elapsed = time.perf_counter() - t0
            eta = elapsed / done * (todo - done) if done else 0.0
            now = running(minus=trial)
            live.pop(trial, None)
            out.write(
                f"[{done:>{width}}/{todo}] {payload_line(state.study, payload)} | "
                f"clean {result['clean_acc']:.3f}  robust {result['robust_acc']:.3f}  "
                f"{result['bytes']:>9,.0f} B | {result.get('total_s') or 0:5.1f}s | "
                f"HV {front.normalized:.4f} front {len(front.labels)} "
                f"(running {len(now)}, ETA {_fmt_s(eta)})"
                + (f" | MASKING? {result['masking_flags']}" if result.get("masking_flags") else "")
                + "\n"
            )
            out.flush()
            write_status(state.results_dir, running=now)

        def on_trial_recover(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            keys = payload_of(trial).keys
            out.write(f"[retry] {', '.join(keys)}: {last_error(trial)}\n")
            out.flush()

        def on_trial_error(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            # Failed for good, after Tune's retries.
            payload = payload_of(trial)
            reason = last_error(trial)
            for cfg in payload.trials:
                if state.settle_failed(cfg, reason, sink):
                    summary.completed += 1
                else:
                    summary.failed += 1
                    summary.failures.append(f"{cfg.key}: {reason[:300]}")
            out.write(f"[failed] {', '.join(payload.keys)}: {reason[:200]}\n")
            out.flush()
            now = running(minus=trial)
            live.pop(trial, None)
            write_status(state.results_dir, running=now)

        def on_trial_complete(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            live.pop(trial, None)

    progress = Progress()
    progress.live = live  # type: ignore[attr-defined]  # for tests/test_driver.py
    return progress


def last_error(trial: Any) -> str:
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
