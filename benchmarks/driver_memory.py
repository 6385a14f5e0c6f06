"""The driver's resident memory against trials run: does `grid run` stay small at 10^4 trials?

Runs a study of ``--trials`` trivial trials (``trainables/trivial.py``: each
trial returns rows in the real schema at once, no training) through the real
path, ``grid.launch.run_study`` in this process as ``grid run`` calls it: Ray
Tune, the trainable, the Parquet sink, the store, the progress callback and the
driver's state files.  Every ``--every`` trials finished (counted from the
progress lines the driver prints) it records this process's resident memory
(VmRSS from /proc) and prints it; at the end the least-squares slope in MB per
10^4 trials, over the samples from ``--every`` on (the first trials carry
one-off start-up: Ray's client, imports).  Goal: under 50 MB per 10^4 trials.

``--tracemalloc A,B`` also takes Python heap snapshots at A and B trials finished
and prints the 15 allocation sites that grew most between them (slower: trace
only to find what holds memory).

    python benchmarks/driver_memory.py [--trials 10000] [--every 1000] [--tracemalloc 1000,5000]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import os
import pstats
import re
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

os.environ["TF_USE_LEGACY_KERAS"] = "1"

from grid import launch
from grid.launch import run_study
from grid.spec import Study, parse_study
from grid.store import key_status
from trainables.rows import STATUS_COMPLETE
from trainables.trivial import trivial_trainable

PROGRESS = re.compile(r"^\[\s*(\d+)/(\d+)\]")


def rss_mb() -> float:
    """This process's resident memory in MB (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def trivial_study(trials: int) -> Study:
    """A digits study of at least ``trials`` points (no attacks, one fold), four axes."""
    per_axis = max(2, math.ceil(trials ** (1 / 4)))
    bits = ["float", "ternary", "binary", *map(str, range(2, 17))]
    sparsity = [round(i / per_axis * 0.9, 4) for i in range(per_axis)]
    clusters = [0, *range(2, 1 + per_axis)]
    jr = [round(i * 0.01, 3) for i in range(per_axis)]
    axes: dict[str, Any] = {"bits": bits[: min(per_axis, trials)]}
    n = len(axes["bits"])
    for name, values in (("sparsity", sparsity), ("clusters", clusters), ("jr_weight", jr)):
        if n >= trials:
            break
        k = min(per_axis, -(-trials // n))
        axes[name] = values[:k]
        n *= k
    return parse_study(
        {
            "name": "trivial-driver-memory",
            "dataset": "digits",
            "model": "digits_cnn",
            "train": {"epochs": 1, "fine_tune_epochs": 0},
            "axes": axes,
            "search": {"strategy": "random", "budget": trials, "seed": 0},
            "resources": {"retries": 0},
            "artifacts": False,
        }
    )


class Sampler(io.TextIOBase):
    """The driver's output stream: counts progress lines, samples memory every ``every`` trials."""

    def __init__(self, every: int, snapshots: tuple[int, ...], verbose: bool) -> None:
        self.every, self.snapshots, self.verbose = every, snapshots, verbose
        self.samples: list[tuple[int, float, float]] = []  # (trials done, RSS MB, seconds)
        self.heaps: dict[int, tracemalloc.Snapshot] = {}
        self.t0 = time.perf_counter()
        self.buf = ""

    def write(self, s: str) -> int:
        self.buf += s
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            m = PROGRESS.match(line)
            if not m:
                if self.verbose:
                    sys.stderr.write(line + "\n")
                continue
            done = int(m.group(1))
            if done % self.every == 0:
                self.samples.append((done, rss_mb(), time.perf_counter() - self.t0))
                d, mb, t = self.samples[-1]
                print(f"  {d:>7,} trials  RSS {mb:8.1f} MB  {t:7.1f} s", flush=True)
            if self.snapshots and done == self.snapshots[0] // 2:
                tracemalloc.start(8)  # from here on only: tracing Tune's start-up takes minutes
            if done in self.snapshots:
                self.heaps[done] = tracemalloc.take_snapshot()
        return len(s)


def slope_per_10k(samples: list[tuple[int, float, float]]) -> float:
    """Least-squares slope of RSS (MB) against trials, per 10^4 trials."""
    xs, ys = [s[0] for s in samples], [s[1] for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx * 10_000


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--every", type=int, default=1000, help="sample RSS every N trials finished")
    ap.add_argument(
        "--tracemalloc",
        default="",
        metavar="A,B",
        help="heap diff between A and B (traced from A/2)",
    )
    ap.add_argument("--max-concurrent", type=int, default=None)
    ap.add_argument(
        "--tune-part", type=int, default=None,
        help="trials per Tuner (grid.launch.TUNE_PART; 0: one Tuner for the whole run)",
    )  # fmt: skip
    ap.add_argument("--profile", action="store_true", help="print the driver's top functions")
    ap.add_argument("--verbose", action="store_true", help="print the driver's other lines")
    args = ap.parse_args()
    snaps = tuple(int(x) for x in args.tracemalloc.split(",") if x)
    if args.tune_part is not None:
        launch.TUNE_PART = args.tune_part or 10**9
    study = trivial_study(args.trials)
    sampler = Sampler(args.every, snaps, args.verbose)
    print(f"{args.trials:,} trivial trials through grid.launch.run_study (pid {os.getpid()}), "
          f"Tune parts of {launch.TUNE_PART:,} trials, "
          f"RSS at start {rss_mb():.1f} MB", flush=True)  # fmt: skip
    profile = cProfile.Profile() if args.profile else None
    with tempfile.TemporaryDirectory() as tmp:
        if profile:
            profile.enable()
        summary = run_study(
            study, results=tmp, max_concurrent=args.max_concurrent, out=sampler,
            trainable_fn=trivial_trainable,  # each fold: trivial_trial in place of the real trial
        )  # fmt: skip
        if profile:
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        status = key_status(study.results_dir(tmp))
        stored = sum(1 for v in status.values() if v == STATUS_COMPLETE)
    print(
        f"{summary.completed:,} complete, {summary.failed} failed, {stored:,} complete keys in the store; "
        f"Tune wall {summary.wall_s:.1f} s on {summary.concurrency} slot(s) "
        f"({summary.wall_s / max(1, summary.ran) * 1000:.1f} ms per trial)"
    )
    fit = [s for s in sampler.samples if s[0] >= args.every]
    if len(fit) >= 2:
        first, last = fit[0], fit[-1]
        print(
            f"RSS {first[1]:.1f} MB at {first[0]:,} trials -> {last[1]:.1f} MB at {last[0]:,}; "
            f"least-squares slope {slope_per_10k(fit):.1f} MB per 10^4 trials (goal < 50)"
        )
    if len(snaps) == 2 and all(s in sampler.heaps for s in snaps):
        a, b = sampler.heaps[snaps[0]], sampler.heaps[snaps[1]]
        print(f"\nheap growth between {snaps[0]:,} and {snaps[1]:,} trials (top 15 sites):")
        for stat in b.compare_to(a, "traceback")[:15]:
            frames = [  # most recent first: the allocation, then its callers
                f"{f.filename.split('site-packages/')[-1]}:{f.lineno}"
                for f in reversed(stat.traceback)
            ]
            print(f"  {stat.size_diff / 1e6:+8.2f} MB {stat.count_diff:+8,} blocks  "
                  + " <- ".join(frames[:6]))  # fmt: skip


if __name__ == "__main__":
    main()
