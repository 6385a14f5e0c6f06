"""Per-trial orchestration overhead of `grid run`, against a plain loop.

Runs a study twice, in this one process and run:
  1. through robustgrid: local Ray, Tune trials, Parquet rows (fresh results folder);
  2. the peer: the same trials with ``run_trial`` in a sequential Python loop in
     this process, writing the same rows and artifacts.
Prints the study's wall time against the sum of its trials' own compute
time (efficiency = compute / (wall x slots)), the overhead per trial, and
the ratio of the grid's wall time to the sequential loop's.

    python benchmarks/orchestration.py [STUDY]        # default: the embedded default study
    python benchmarks/orchestration.py --grid-only    # efficiency alone, without the loop
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"

from grid.launch import run_study
from grid.spec import load_study


class _Tee(io.TextIOBase):
    def write(self, s: str) -> int:
        sys.stderr.write(s)
        return len(s)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("study", nargs="?", default=None)
    ap.add_argument("--grid-only", action="store_true", help="skip the sequential loop (the peer)")
    args = ap.parse_args()
    study = load_study(args.study)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = run_study(study, results=tmp, out=_Tee())
        grid_wall = time.perf_counter() - t0  # includes Ray start and shutdown

    if args.grid_only:
        print(f"study {study.name}: {summary.total} trials, {summary.concurrency} slots, "
              f"grid wall {grid_wall:.1f}s (Tune {summary.wall_s:.1f}s), compute {summary.trial_s:.1f}s")  # fmt: skip
        print(f"efficiency (compute / (Tune wall x slots))      : {summary.efficiency:.3f}")
        return
    from grid.store import ParquetSink
    from trainables.trial import run_trial

    t0 = time.perf_counter()
    loop_compute = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        sink = ParquetSink(
            tmp, study.name, "benchmark"
        )  # the same writes as the grid: rows + artifacts
        for cfg in study.trials():
            rows = run_trial(cfg, artifacts=sink.write_artifacts if study.artifacts else None)
            sink(cfg.key, rows)
            loop_compute += rows[0]["meta_total_s"]
    loop_wall = time.perf_counter() - t0  # includes TF import on first trial

    print(
        f"study {study.name}: {summary.total} trials, {os.cpu_count()} cores, {summary.concurrency} slots"
    )
    print(
        f"grid run   : wall {grid_wall:7.1f}s (Tune {summary.wall_s:.1f}s), trials' compute {summary.trial_s:7.1f}s"
    )
    print(f"plain loop : wall {loop_wall:7.1f}s, trials' compute {loop_compute:7.1f}s")
    print(f"efficiency (compute / (Tune wall x slots))      : {summary.efficiency:.3f}")
    print(
        f"overhead per trial (Tune wall x slots - compute) / n : {summary.overhead_per_trial_s:.2f}s"
    )
    print(f"ratio grid wall / sequential loop wall         : {grid_wall / loop_wall:.3f}")


if __name__ == "__main__":
    main()
