"""Faults injected from outside the production code: wrapped trial functions, sinks and locations.

The production code takes what it runs as parameters (``trainables.ray_adapter.trainable``
takes the trial function, ``grid.launch.run_study`` the Tune trainable, ``grid.store.compact``
a :class:`grid.store.Location`); the tests and benchmarks wrap them here:

- :class:`FailFirstAttempt`: each trial key raises on its first attempt (a marker file records it).
- :class:`RandomFaults` / :class:`FaultySink`: each attempt of a fold raises with probability
  ``rate``, before it trains or after its rows are stored (the retry must then read them back,
  not add a second set); each fault leaves a marker file in ``folder``.
- :class:`KillingLocation`: compaction's storage, which SIGKILLs this process at a named step.

Run as a script it is ``grid`` with those faults::

    python -m tests.injected [--fail-first-attempt DIR] [--fault-rate R --faults DIR] -- run STUDY ...
    python -m tests.injected --kill-compact-at STEP --max-keys N RESULTS_FOLDER
    python -m tests.injected --count-store-reads FILE -- run STUDY ...

``--count-store-reads FILE`` counts what the driver reads back from the store (each key's
rows read, each scan) and writes them to FILE as JSON when the command ends.

Tune pickles the wrappers to its workers by reference: the workers import this module, which
Ray finds because it puts the driver's working directory (the repository root) on their path.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainables.config import TrialConfig

Row = dict[str, Any]
Artifacts = Callable[[str, dict[str, bytes]], Any] | None


def _real_trial(cfg: TrialConfig, artifacts: Artifacts = None) -> list[Row]:
    from trainables.trial import run_trial  # TensorFlow: in the worker only

    return run_trial(cfg, artifacts=artifacts)


class FailFirstAttempt:
    """The real trial, except that each key's first attempt raises (one marker file per key)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = str(folder)

    def __call__(self, cfg: TrialConfig, artifacts: Artifacts = None) -> list[Row]:
        marker = Path(self.folder) / cfg.key
        marker.parent.mkdir(parents=True, exist_ok=True)
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            return _real_trial(cfg, artifacts)
        raise RuntimeError(f"injected fault: first attempt of trial {cfg.key}")


# Trials seed the global generator: a fault drawn from it would repeat itself.
_RNG = random.SystemRandom()


def _random_fault(rate: float, folder: str, key: str, moment: str) -> None:
    if rate <= 0.0 or _RNG.random() >= rate:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"{key}.{moment}.{uuid.uuid4().hex[:8]}").touch()
    raise RuntimeError(f"injected fault: trial {key}, {moment}")


class RandomFaults:
    """The real trial, raising with probability ``rate`` before it trains."""

    def __init__(self, rate: float, folder: str | Path) -> None:
        self.rate, self.folder = rate, str(folder)

    def __call__(self, cfg: TrialConfig, artifacts: Artifacts = None) -> list[Row]:
        _random_fault(self.rate, self.folder, cfg.key, "before training")
        return _real_trial(cfg, artifacts)


class FaultySink:
    """A sink that stores a trial's rows, then raises with probability ``rate``."""

    def __init__(self, inner: Any, rate: float, folder: str | Path) -> None:
        self.inner, self.rate, self.folder = inner, rate, str(folder)

    def __call__(self, key: str, rows: list[Row]) -> Any:
        out = self.inner(key, rows)
        _random_fault(self.rate, self.folder, key, "after its rows were stored")
        return out

    def read(self, key: str) -> list[Row] | None:
        rows: list[Row] | None = self.inner.read(key)
        return rows


def faulty_trainable(
    config: dict[str, Any],
    sink: Any,
    objective: Any = ("worst", None),
    artifacts: Artifacts = None,
    *,
    fail_first: str | None = None,
    rate: float = 0.0,
    faults: str = ".",
) -> None:
    """trainables.ray_adapter.trainable with the faults named (bound with functools.partial)."""
    from trainables.ray_adapter import trainable

    if fail_first:
        trainable(config, sink, objective, artifacts, trial=FailFirstAttempt(fail_first))
    else:
        faulty = FaultySink(sink, rate, faults)
        trainable(config, faulty, objective, artifacts, trial=RandomFaults(rate, faults))


def trainable_with_faults(
    fail_first: str | None = None, rate: float = 0.0, faults: str = "."
) -> Callable[..., None]:
    """A Tune trainable for grid.launch.run_study(trainable_fn=...) that injects these faults."""
    fn = functools.partial(faulty_trainable, fail_first=fail_first, rate=rate, faults=faults)
    functools.update_wrapper(fn, faulty_trainable)  # Tune names the trainable after __name__
    return fn


# ---------------------------------------------------------------------------
# Compaction killed between its steps


def _keys_in(data: bytes) -> int:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    return len(pc.unique(pq.read_table(pa.BufferReader(data), columns=["key"]).column("key")))


def _location_class() -> type:
    from grid.store import Location

    class KillingLocation(Location):
        """A results folder whose writes and deletes SIGKILL this process at ``step``.

        Steps, as compaction (grid.store.compact) takes them: ``written`` (its first compacted
        file written, nothing deleted yet), ``finished-N`` (the N-th per-key file deleted that an
        earlier, interrupted compaction had merged), ``deleted-N`` (the N-th per-key file
        deleted after this run's first compacted file), ``deleted-all`` (every per-key file of
        this run's first compacted file deleted).
        """

        def __init__(self, where: str | Path, step: str) -> None:
            super().__init__(where)
            self.step = step
            self.writes = 0  # compacted files written by this run
            self.finished = 0  # deletes before this run's first compacted file
            self.deleted = 0  # deletes after it
            self.merged = 0  # keys in this run's first compacted file

        def write_bytes(self, data: bytes, *parts: str) -> str:
            out = super().write_bytes(data, *parts)
            if parts and parts[-1].startswith("compacted-"):
                self.writes += 1
                if self.writes == 1:
                    self.merged = _keys_in(data)
                self._at("written" if self.writes == 1 else "")
            return out

        def delete(self, *parts: str) -> None:
            super().delete(*parts)
            if not self.writes:
                self.finished += 1
                self._at(f"finished-{self.finished}")
                return
            self.deleted += 1
            self._at(f"deleted-{self.deleted}")
            if self.writes == 1 and self.deleted == self.merged:
                self._at("deleted-all")

        def _at(self, step: str) -> None:
            if step == self.step:
                os.kill(os.getpid(), signal.SIGKILL)

    return KillingLocation


def kill_compaction(where: str, step: str, max_keys: int) -> None:
    """Compact ``where`` (grid.store.compact), dying by SIGKILL at ``step``."""
    from grid.store import compact

    compact(_location_class()(where, step), max_keys=max_keys)


def count_store_reads(out: str, run: Callable[[], int]) -> int:
    """``run()`` with the driver's store reads counted (``grid.state``'s ``read_rows`` and
    ``scan``, the real ones underneath); the counts go to ``out`` as JSON."""
    import json

    from grid import state, store

    read: list[str] = []
    scans: list[str] = []

    def read_rows(results_dir: Any, key: str) -> Any:
        read.append(key)
        return store.read_rows(results_dir, key)

    def scan(results_dir: Any, *a: Any, **kw: Any) -> Any:
        scans.append(str(results_dir))
        return store.scan(results_dir, *a, **kw)

    state.read_rows = read_rows  # type: ignore[assignment]
    state.scan = scan  # type: ignore[assignment]
    try:
        return run()
    finally:
        Path(out).write_text(json.dumps({"read": read, "scans": scans}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.injected", description=__doc__)
    ap.add_argument("--fail-first-attempt", metavar="DIR")
    ap.add_argument("--fault-rate", type=float, default=0.0)
    ap.add_argument("--faults", metavar="DIR", default=".")
    ap.add_argument("--kill-compact-at", metavar="STEP")
    ap.add_argument("--max-keys", type=int, default=20_000)
    ap.add_argument("--count-store-reads", metavar="FILE")
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="-- and the grid command line")
    args = ap.parse_args(argv)
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    if args.kill_compact_at:
        (where,) = rest
        kill_compaction(where, args.kill_compact_at, args.max_keys)
        return 0
    import grid.launch
    from grid.cli import main as grid_main

    if args.count_store_reads:
        return count_store_reads(args.count_store_reads, lambda: grid_main(rest))

    # `grid run` / `grid resume` as a user runs them, with the faulty trainable: the CLI
    # imports run_study from grid.launch when it runs.
    grid.launch.run_study = functools.partial(  # type: ignore[assignment]
        grid.launch.run_study,
        trainable_fn=trainable_with_faults(args.fail_first_attempt, args.fault_rate, args.faults),
    )
    return grid_main(rest)


if __name__ == "__main__":
    # Run from the module as `tests.injected`, not `__main__`: the wrappers then pickle by
    # reference (the workers import them) instead of by value.
    from tests.injected import main as injected_main

    sys.exit(injected_main())
