"""A study's state over its results folder: what the store says, and the driver's own files.

The Parquet rows are the truth: :class:`StudyState` reads which trial keys are
complete, failed or stale, each complete point's objectives (the mean over its
folds) and the front once, when a run starts, and keeps them current from the
summaries the workers report as trials finish (:meth:`StudyState.take`: a key a
worker has just written and summarized is not read back).  Two files are
the driver's own, written best-effort (the rows are the results, not these):
``search.json`` (objectives, reference, hypervolume and its history, the front)
and ``status.json`` (the live driver: pid, host, running trial keys), which
:func:`live_driver` reads to refuse a second driver on the same results.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grid import space
from grid.spec import Strategy, Study
from grid.store import (
    Location,
    ParquetSink,
    as_location,
    read_json,
    read_rows,
    scan,
    write_json,
)
from trainables.config import RESULTS_REVISION, TrialConfig
from trainables.rows import STATUS_COMPLETE, STATUS_FAILED, failed_row, summarize


def stale_note(stale: dict[str, int]) -> str:
    """One line on rows of another results revision (see trainables.config.RESULTS_REVISION)."""
    revs = ", ".join(str(r) for r in sorted(set(stale.values())))
    return (
        f"stale: {len(stale)} stored trial(s) were computed under results revision {revs}, "
        f"now {RESULTS_REVISION}: not counted, their configs run again under new keys; "
        "analysis leaves them out (analysis.connect(..., stale=True) shows them)"
    )


HISTORY_MAX = 1000  # search.json's hypervolume history: thinned past this many entries


class StudyState:
    """What the store says about a study's points, kept current as trials finish."""

    def __init__(self, study: Study, results_dir: str | Path | Location) -> None:
        self.study, self.results_dir = study, as_location(results_dir)
        self.obj = space.objectives(study)
        # One listing and a few dataset reads, however many keys (no per-key read at start).
        stored = scan(self.results_dir, study.headline)
        self.status = stored.status
        self.stale = stored.stale
        self.reasons = stored.reasons  # key -> its first row's reason (failed keys say why)
        self.values: dict[str, list[float]] = {}  # complete key -> objective values (obj order)
        # complete key -> clean accuracy, when it is not an objective (the front's table shows it)
        self.clean: dict[str, float] = {}
        self.flags: dict[str, str] = {}  # complete key -> masking diagnostics that fired (if any)
        self.params: int | None = None
        self.max_bytes = study.objective.max_bytes  # the flash budget (None: no constraint)
        self.summaries = stored.summaries  # stored key -> its summary, for points met later
        self.by_label: dict[str, space.Point] = {}
        if study.search.layers is None:
            # A plain study's space is enumerated: every point, its trials and keys at once
            # (10^5 trials in seconds: tests/test_scale.py).
            self.points = space.points(study)
            self.trials, self.keys = space.grid_trials(study, self.points)
            ours = {k for ks in self.keys.values() for k in ks}
            for key, st in list(self.status.items()):
                if st == STATUS_COMPLETE and key in ours:
                    self._apply(key, stored.summaries[key])
            # Every point is met already: nothing reads the stored summaries again (at 10^5
            # stored keys they are about 0.1 GB of dicts, kept for the whole run otherwise).
            self.summaries = {}
        else:
            # A per-layer space is never enumerated: the state holds the points it meets
            # (seeds or the random sample, the store's; the searcher's proposals and the
            # journal's as it meets them), their trials and keys computed as they come.
            self.points, self.trials, self.keys = [], {}, {}
            self.seeds, self.ans = space.seed_points(study)
            first = (
                space.random_points(study, study.budget, study.search_seed)
                if study.search.strategy == Strategy.random
                else [*self.seeds, *([self.ans] if self.ans else [])]
                if study.search.seeds
                else []
            )
            for p in first:
                self.meet(p)
            self._meet_stored()
        previous = read_json(self.results_dir, "search.json") or {}
        self.history: list[list[float]] = previous.get("history", [])
        self.journal_pushed_at: float | None = None  # perf_counter of the last upload

    def meet(self, point: space.Point) -> str:
        """Take ``point`` into the state (its trials, keys and stored results); its label."""
        label = space.point_label(point)
        if label in self.keys:
            return label
        trials = self.study.point_trials(dict(point))
        keys = trials[0].fold_keys(t.fold for t in trials)
        self.points.append(dict(point))
        self.by_label[label] = dict(point)
        self.trials[label], self.keys[label] = trials, keys
        for key in keys:
            if self.status.get(key) == STATUS_COMPLETE and key in self.summaries:
                self._apply(key, self.summaries[key])
        return label

    def point_of(self, label: str) -> space.Point:
        """The point of a label the state knows."""
        if not self.by_label:
            self.by_label = {space.point_label(p): p for p in self.points}
        return self.by_label[label]

    def _meet_stored(self) -> None:
        """Meet the points of the store's trials that belong to this per-layer study:
        each stored config mapped back to its canonical point, kept when that point is in the
        space (or the ans_hybrid seed) and its trial key is the stored one."""
        import json

        from grid.store import read_many

        # complete and failed ones (``grid status`` lists a point's failures too)
        done = {k for k, v in self.status.items() if v in (STATUS_COMPLETE, STATUS_FAILED)}
        if not done:
            return
        table = read_many(self.results_dir, ["meta_config_json"])
        seen = {k for ks in self.keys.values() for k in ks}  # ours already
        ans = space.point_label(self.ans) if self.ans else None
        for key, blob in zip(
            table.column("key").to_pylist(),
            table.column("meta_config_json").to_pylist(),
            strict=True,
        ):
            if key in seen or key not in done or not blob:
                continue
            seen.add(key)
            try:
                cfg = TrialConfig.from_dict(json.loads(blob))
                point = space.config_point(self.study, cfg)
            except ValueError:
                continue  # another study's config
            if point is None:
                continue
            label = space.point_label(point)
            if label != ans and not space.in_space(self.study, point):
                continue
            trials = self.study.point_trials(point)
            if trials[0].fold_keys([cfg.fold])[0] == key:
                self.meet(point)

    def feasible(self, values: list[float]) -> bool:
        """Whether a point's objectives are within the flash budget (always, without one)."""
        return self.max_bytes is None or values[self.obj.names.index("bytes")] <= self.max_bytes

    def infeasible(self) -> int:
        """Complete points over the flash budget."""
        return sum(1 for v in self.point_values().values() if not self.feasible(v))

    def budget_line(self) -> str | None:
        """``budget 4,096 B (encoded): 7 of 31 complete points over it, off the front``."""
        if self.max_bytes is None:
            return None
        n, over = len(self.point_values()), self.infeasible()
        return (
            f"budget {self.max_bytes:,} B ({self.study.headline.size}): {over} of {n} complete "
            "point(s) over it, off the front"
        )

    def take(self, summary: dict[str, Any]) -> bool:
        """Take a key's summary as its worker reported it (``trainables.rows.summarize``'s
        dict, from the rows the worker has just stored): True when the key is complete."""
        return self._apply(summary["key"], summary)

    def refresh(self, key: str) -> bool:
        """Re-read ``key``'s rows from the store; True when it is complete.

        Only where no worker reported them: a trial that failed for good (its worker may
        have died after storing its rows), or one whose report an interruption lost.
        """
        rows = read_rows(self.results_dir, key)
        if not rows:
            self.status.pop(key, None)
            self.reasons.pop(key, None)
            return False
        return self._apply(key, summarize(rows, self.study.headline))

    def settle(self) -> list[str]:
        """After a run: re-read the keys stored under ``rows/`` that the state does not hold as
        complete (a trial that stored its rows just before an interruption, whose report never
        reached the driver; a failed key's retry likewise).  One listing, and a read of those
        keys only (complete keys are never re-read); the keys read."""
        from grid.store import list_rows

        unknown = [
            k for k in list_rows(self.results_dir).per_key if self.status.get(k) != STATUS_COMPLETE
        ]
        for key in unknown:
            self.refresh(key)
        return unknown

    def _apply(self, key: str, s: dict[str, Any]) -> bool:
        """Take ``key``'s summary (``trainables.rows.summarize``'s) into the state."""
        self.status[key] = s["status"]
        if s["status"] != STATUS_COMPLETE:
            self.reasons[key] = s["reason"] or ""
            self.values.pop(key, None)
            self.clean.pop(key, None)
            self.flags.pop(key, None)
            return False
        # Per complete key only what the front and the status need: at 10^4 keys each
        # entry kept is a few hundred bytes of the driver's memory.
        self.reasons.pop(key, None)
        self.values[key] = [float(s[n]) for n in self.obj.names]
        if "clean_acc" not in self.obj.names:
            self.clean[key] = float(s["clean_acc"])
        if s["masking_flags"]:
            self.flags[key] = s["masking_flags"]
        else:
            self.flags.pop(key, None)
        self.params = max(self.params or 0, int(s["params"] or 0)) or None
        return True

    def settle_failed(self, cfg: TrialConfig, reason: str, sink: ParquetSink) -> bool:
        """After a Tune trial failed for good: True when ``cfg``'s rows are complete after all.

        The trainable stores a failed row for the fold that raised; a worker that died
        stored nothing, so a failed row with ``reason`` is written here.
        """
        if self.refresh(cfg.key):
            return True
        if cfg.key not in self.status:
            started = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
            row = failed_row(cfg, reason, started)
            best_effort(f"the failed row of {cfg.key}", sink, cfg.key, [row])
            self.status[cfg.key] = STATUS_FAILED
        return False

    def point_values(self) -> dict[str, list[float]]:
        """Complete points (every fold complete): the mean over folds of each objective."""
        out = {}
        for label in self.keys:
            v = self.point_value(label)
            if v is not None:
                out[label] = v
        return out

    def point_value(self, label: str) -> list[float] | None:
        """One point's objectives (the mean over its folds); None until every fold is complete."""
        keys = self.keys[label]
        if not all(k in self.values for k in keys):
            return None
        vals = [self.values[k] for k in keys]
        return [sum(col) / len(col) for col in zip(*vals, strict=True)]

    def folds(self, label: str) -> dict[str, list[float]] | None:
        """One complete point's per-fold values (robust_acc, bytes, clean_acc, in key order);
        None until every fold is complete."""
        keys = self.keys[label]
        if not all(k in self.values for k in keys):
            return None
        names = self.obj.names
        out = {n: [self.values[k][names.index(n)] for k in keys] for n in ("robust_acc", "bytes")}
        out["clean_acc"] = [
            self.values[k][names.index("clean_acc")] if "clean_acc" in names else self.clean[k]
            for k in keys
        ]
        return out

    def front(self) -> space.Front:
        """The front of the complete points within the flash budget."""
        values = {k: v for k, v in self.point_values().items() if self.feasible(v)}
        return space.front(values, self.obj, self.params)

    def save(self, strategy: str, front: space.Front | None = None) -> space.Front:
        """Store the front (recomputed unless given) with the hypervolume's history in search.json.

        The history keeps at most about HISTORY_MAX entries: past that, every other one
        is dropped (the first and the latest stay), so a search of 10^5 points does not
        write a growing file after each trial.
        """
        f = front if front is not None else self.front()
        if not self.history or self.history[-1][0] != f.points:
            self.history.append([f.points, f.normalized])
            if len(self.history) > HISTORY_MAX:
                self.history = [*self.history[:-1:2], self.history[-1]]
        s = self.study.search
        data = {
            "study": self.study.name,
            "strategy": strategy,
            "sampler": s.sampler.value if strategy == "optuna" else None,
            "objectives": list(self.obj.names),
            "maximize": list(self.obj.maximize),
            "headline": dataclasses.asdict(self.study.headline),
            "reference": list(f.reference),
            "hypervolume": f.hypervolume,
            "hypervolume_normalized": f.normalized,
            "points_complete": f.points,  # within the budget, when there is one
            "max_bytes": self.max_bytes,
            "points_infeasible": self.infeasible() if self.max_bytes is not None else 0,
            "front": [
                {"point": label, "keys": self.keys[label], "values": self.point_value(label)}
                for label in f.labels
            ],
            "history": self.history,  # [points complete, normalised hypervolume]
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        loc = self.results_dir
        best_effort(loc.display("search.json"), lambda: write_json(loc, "search.json", data))
        if strategy == Strategy.optuna.value and self.journal_due():
            # Object storage: the journal goes along, whole (13.5 MB at 10^4 Optuna trials),
            # so at most every JOURNAL_PUSH_S and at the run's end (a new state's first save).
            # A driver killed in between loses only the searcher's latest lines: the rows
            # are the results, and a resumed search is told every stored point again.
            best_effort(loc.display("optuna.journal"), lambda: loc.push("optuna.journal"))
        return f

    def journal_due(self) -> bool:
        """True when the Optuna journal should be uploaded now (and note that it is)."""
        now = time.perf_counter()
        if self.journal_pushed_at is not None and now - self.journal_pushed_at < JOURNAL_PUSH_S:
            return False
        self.journal_pushed_at = now
        return True


JOURNAL_PUSH_S = 30.0  # seconds between uploads of optuna.journal to object storage

_warned: set[str] = set()


def best_effort(what: str, fn: Callable[..., Any], *args: Any) -> None:
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
    best_effort(
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
