"""The store at 10^5 keys: status reads and DuckDB queries before and after `grid compact`.

Populates a results folder with N trials' rows written one key at a time
through the real sink (``grid.store.ParquetSink``), each a copy of one real
trial's row set (a digits trial run here once, or ``--template FILE``) with
its key, bytes and accuracies changed.  Then times, best of ``--repeat``:

  key_status   every key's status (resume planning's store read)
  scan         statuses and each key's objectives (StudyState's and grid status's store read)
  pareto       analysis.connect + the Pareto front (worst attack, largest eps)
  curve        analysis.connect + the robustness curve by bits
  per-key      the code these replaced, a Parquet read per key (on --per-key-sample keys,
               scaled to N), for the ratio

before compaction, then runs ``grid.store.compact`` and times the same again;
the answers before and after are checked to be equal before any time is printed.

    python benchmarks/compact.py [--keys 100000] [--folder DIR] [--repeat 3]

At 10^5 per-key files the DuckDB queries before compaction grew past 13 GB here
(union_by_name over 10^5 footers): run the full sweep at 10^4, or with memory to spare.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from grid.store import ParquetSink, as_location, compact, key_status, list_rows, scan
from trainables.headline import Headline
from trainables.rows import summarize

HEADLINE = Headline("worst", None, "inf", "encoded")


def template_rows(folder: Path, given: str | None) -> list[dict[str, Any]]:
    """One real trial's rows: ``given``, or a digits trial run here once (kept in ``folder``)."""
    path = Path(given) if given else folder / "template.parquet"
    if not path.exists():
        from grid.spec import load_study

        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        from trainables.trial import run_trial

        study = load_study(Path(__file__).parents[1] / "tests" / "studies" / "smoke.yaml")
        rows = run_trial(study.trials()[0])
        assert rows[0]["status"] == "complete", rows[0]["reason"]
        ParquetSink(str(folder / "template"), study.name, "bench")(rows[0]["key"], rows)
        os.replace(folder / "template" / "rows" / f"{rows[0]['key']}.parquet", path)
    return pq.read_table(path).to_pylist()


def _write(args: tuple[str, list[dict[str, Any]], int, int]) -> None:
    where, template, start, stop = args
    sink = ParquetSink(where, "scale", "bench")
    for i in range(start, stop):
        key = f"{i:016x}"
        rows = [
            r
            | {
                "key": key,
                "cfg_bits": ("float", "8", "4", "2", "ternary")[i % 5],
                "metric_bytes": int(r["metric_bytes"] or 1000) + 7 * (i % 997),
                "metric_robust_acc": (r["metric_robust_acc"] or 0.5) * (0.5 + (i % 1009) / 2018),
            }
            for r in template
        ]
        if i % 50 == 7:  # a failed trial now and then: it stays per-key
            rows = [rows[0] | {"status": "failed", "reason": "boom"}]
        sink(key, rows)


def populate(where: str, template: list[dict[str, Any]], n: int) -> float:
    t0 = time.perf_counter()
    have = len(list_rows(where).per_key) + 0
    if have >= n:
        return 0.0
    procs = max(1, min(4, os.cpu_count() or 1))
    step = (n - have + procs - 1) // procs
    jobs = [(where, template, s, min(n, s + step)) for s in range(have, n, step)]
    with multiprocessing.Pool(procs) as pool:
        pool.map(_write, jobs)
    return time.perf_counter() - t0


def per_key_reference(where: str, sample: int) -> float:
    """Seconds for the code scan replaced (a read per key, twice) on ``sample`` keys."""
    loc = as_location(where)
    names = list_rows(loc).per_key
    t0 = time.perf_counter()
    for name in list(names.values())[:sample]:
        t = loc.read_table("rows", name, columns=["key", "status", "revision"])
        rows = loc.read_table("rows", name)
        if t is not None and rows is not None:
            summarize(rows.to_pylist(), HEADLINE)
    return time.perf_counter() - t0


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def measure(where: str, repeat: int) -> dict[str, tuple[float, Any]]:
    import warnings

    import analysis

    warnings.simplefilter("ignore")

    def pareto() -> Any:
        con = analysis.connect(where)
        return analysis.pareto_front(con, "worst")[["key", "bytes"]].sort_values("key")

    def curve() -> Any:
        con = analysis.connect(where)
        return analysis.robustness_curve(con, by=["cfg_bits"]).round(12)

    def summaries() -> Any:
        return scan(where, HEADLINE).summaries

    return {
        "key_status": best_of(lambda: key_status(where), repeat),
        "scan": best_of(summaries, repeat),
        "pareto": best_of(pareto, repeat),
        "curve": best_of(curve, repeat),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--folder", help="results folder to (re)use (default: a temporary one)")
    p.add_argument("--template", help="a real trial's rows (Parquet); default: run one here")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--per-key-sample", type=int, default=5_000)
    p.add_argument("--max-keys", type=int, default=20_000, help="keys per compacted file")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        template = template_rows(folder, args.template)
        where = str(folder / "scale")
        t_write = populate(where, template, args.keys)
        n = len(list_rows(where).per_key)
        print(f"{n:,} keys x {len(template)} rows ({t_write:.0f}s to write through the sink)")
        sample = min(args.per_key_sample, n)
        t_ref = per_key_reference(where, sample) * n / sample
        before = measure(where, args.repeat)
        report = compact(where, max_keys=args.max_keys)
        print(report.describe())
        after = measure(where, args.repeat)
        for name in before:  # same answers before and after, then the times
            b, a = before[name][1], after[name][1]
            same = b.equals(a) if hasattr(b, "equals") else b == a
            assert same, f"{name}: the answer changed with compaction"
        print(f"{'':12} {'per-key files':>14} {'compacted':>10} {'ratio':>7}")
        print(f"{'per-key ref':12} {t_ref:13.2f}s {'':>10} (a read per key, {sample:,} timed)")
        for name in before:
            b, a = before[name][0], after[name][0]
            print(f"{name:12} {b:13.2f}s {a:9.2f}s {b / a:6.1f}x")


if __name__ == "__main__":
    main()
