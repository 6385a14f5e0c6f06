"""How much of the exhaustive grid's hypervolume a search reaches with a share of its trials.

A completed exhaustive grid (benchmarks/studies/search_grid.yaml, 144 points on
scikit-learn digits, its results in benchmarks/data/search_grid.csv) is replayed
as a lookup table, so no training runs here.  In the same run, for several
seeds, each strategy visits ``share`` of the points:

  optuna-tpe / optuna-nsga2  robustgrid's own searcher (grid.searcher.PointSearcher
                             around Ray Tune's OptunaSearch, duplicates told from
                             the table), one point at a time;
  random                     robustgrid's random strategy (distinct points);
  grid-order                 the grid's first points in file order.

Printed: the hypervolume each reaches as a share of the full grid's (mean, min
over seeds), and the ratios optuna / random.

    python benchmarks/search_efficiency.py [--share 0.3] [--seeds 5]
    python benchmarks/search_efficiency.py --export RESULTS/search-grid   # rebuild the table

``--busy`` measures something else, for real: whether an Optuna search keeps
every trial slot as busy as a random search does.  One run trains the same
16-point digits study (tests/studies/smoke.yaml's axes and attacks) with
``strategy: optuna`` and with ``strategy: random``, each with a budget of
``--budget`` points, through ``grid.launch.run_study`` on a fresh local Ray and a
fresh results folder; it prints each run's efficiency (the trials' own compute /
(Tune wall x slots)), its overhead per trial and the time to its first trial,
and the difference.  Goal: optuna within 0.05 of random.

    python benchmarks/search_efficiency.py --busy [--budget 5] [--repeats 1]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from grid import space
from grid.searcher import optuna_searcher
from grid.spec import SamplerName, Strategy, Study, load_study
from grid.state import StudyState

HERE = Path(__file__).parent
STUDY = HERE / "studies" / "search_grid.yaml"
TABLE = HERE / "data" / "search_grid.csv"


def export(results: str, study: Study) -> None:
    """Write the lookup table from a completed run of the grid study."""
    state = StudyState(study, Path(results))
    values = state.point_values()
    if len(values) != study.point_count:
        raise SystemExit(
            f"{results}: {len(values)} of {study.point_count} points complete; finish the grid first"
        )
    TABLE.parent.mkdir(exist_ok=True)
    with TABLE.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*space.AXIS_NAMES, *state.obj.names, "params"])
        for p in space.points(study):
            w.writerow(
                [
                    *(p.get(a, 0) for a in space.AXIS_NAMES),
                    *values[space.point_label(p)],
                    state.params,
                ]
            )
    print(f"wrote {TABLE}: {len(values)} points")


def load_table() -> tuple[dict[str, list[float]], int]:
    with TABLE.open() as f:
        rows = list(csv.DictReader(f))
    table, params = {}, int(rows[0]["params"])
    for r in rows:
        point = {
            "bits": r["bits"], "sparsity": float(r["sparsity"]), "clusters": int(r["clusters"]),
            "jr_weight": float(r["jr_weight"]), "adversarial": int(r["adversarial"]),
        }  # fmt: skip
        table[space.point_label(point)] = [float(r["robust_acc"]), float(r["bytes"])]
    return table, params


def hv(
    obj: space.Objectives, labels: list[str], table: dict[str, list[float]], params: int
) -> float:
    return space.front({k: table[k] for k in labels}, obj, params).hypervolume


def nadir_reference(
    obj: space.Objectives, table: dict[str, list[float]], params: int
) -> space.Objectives:
    """The usual benchmark reference: the full front's nadir, pushed out by 10% of its range."""
    f = space.front(table, obj, params)
    v = [table[k] for k in f.labels]
    ref = []
    for i, maximize in enumerate(obj.maximize):
        col = [x[i] for x in v]
        lo, hi = min(col), max(col)
        ref.append(lo - 0.1 * (hi - lo) if maximize else hi + 0.1 * (hi - lo))
    return dataclasses.replace(obj, reference=tuple(ref))


def optuna_run(
    study: Study, sampler: str, seed: int, n: int, table: dict[str, list[float]]
) -> list[str]:
    """The points robustgrid's Optuna searcher visits, one at a time, answered from the table."""
    search = study.search.model_copy(
        update={"strategy": Strategy.optuna, "sampler": SamplerName(sampler), "seed": seed}
    )
    s = study.model_copy(update={"search": search})
    with tempfile.TemporaryDirectory() as tmp:
        state = StudyState(s, Path(tmp))
        searcher = optuna_searcher(s, state)
        visited = []
        for i in range(n):
            config = searcher.suggest(f"t{i}")
            if not isinstance(config, dict):
                break
            label = config["payload"]["label"]
            result = dict(zip(state.obj.names, table[label], strict=True), status="complete")
            searcher.on_trial_complete(f"t{i}", result=result)
            visited.append(label)
    return visited


BUSY_STUDY = HERE.parent / "tests" / "studies" / "smoke.yaml"


class _Clock(io.TextIOBase):
    """The driver's output: kept for the first progress line's time (the first trial's end)."""

    def __init__(self) -> None:
        self.t0, self.first = time.perf_counter(), None
        self.events: list[tuple[float, int]] = []  # (seconds, trials running) at each change

    def watching(self, write: Any) -> Any:
        """``grid.progress.write_status`` that also records how many trials run, and when."""

        def watch(results_dir: Any, **fields: Any) -> None:
            if "running" in fields:
                self.events.append((time.perf_counter() - self.t0, len(fields["running"])))
            write(results_dir, **fields)

        return watch

    def write(self, s: str) -> int:
        if self.first is None and s.startswith("["):
            self.first = time.perf_counter() - self.t0
        return len(s)


def busy(budget: int, repeats: int, timeline: bool = False) -> None:
    """The same study as optuna and as random, same budget, in one run: efficiency of each."""
    import yaml

    from grid import progress
    from grid.launch import run_study
    from grid.spec import parse_study

    data = yaml.safe_load(BUSY_STUDY.read_text())
    base = parse_study(data)
    print(f"{base.name}: {base.point_count} points, budget {budget}, {os.cpu_count()} cores, "
          f"{repeats} run(s) each, alternating which goes first")  # fmt: skip
    eff: dict[str, list[float]] = {"optuna": [], "random": []}
    for r in range(repeats):
        order = ("optuna", "random") if r % 2 == 0 else ("random", "optuna")
        for strategy in order:
            search: dict[str, object] = {"strategy": strategy, "budget": budget, "seed": r}
            if strategy == "optuna":
                search.update(sampler="tpe", startup_trials=2)
            study = parse_study({**data, "search": search})
            clock = _Clock()
            real_write = progress.write_status
            watch = clock.watching(real_write)
            progress.write_status = watch  # type: ignore[assignment]
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                try:
                    summary = run_study(study, results=tmp, out=clock)
                finally:
                    progress.write_status = real_write  # type: ignore[assignment]
                total = time.perf_counter() - t0
            assert summary.completed == budget * study.folds, (strategy, summary)
            eff[strategy].append(summary.efficiency)
            print(
                f"  {strategy:<7} {summary.completed} trials on {summary.concurrency} slots: "
                f"Tune wall {summary.wall_s:5.1f} s (run {total:5.1f} s), compute "
                f"{summary.trial_s:5.1f} s, efficiency {summary.efficiency:.3f}, overhead "
                f"{summary.overhead_per_trial_s:4.1f} s per trial, first trial done at "
                f"{clock.first or 0:4.1f} s", flush=True,
            )  # fmt: skip
            if timeline:
                print("    running: " + ", ".join(f"{t:.0f}s:{n}" for t, n in clock.events))
    o, rnd = statistics.mean(eff["optuna"]), statistics.mean(eff["random"])
    print(f"efficiency optuna {o:.3f}, random {rnd:.3f}: difference {o - rnd:+.3f} "
          f"(goal: optuna within 0.05 of random: {'met' if rnd - o <= 0.05 else 'missed'})")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--share", type=float, default=0.3, help="share of the grid's points each search visits"
    )
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument(
        "--export", metavar="RESULTS", help="rebuild the lookup table from a completed grid run"
    )
    ap.add_argument("--busy", action="store_true", help="optuna vs random slot efficiency, trained")
    ap.add_argument("--budget", type=int, default=5, help="--busy: points each search runs")
    ap.add_argument("--repeats", type=int, default=1, help="--busy: runs of each strategy")
    ap.add_argument("--timeline", action="store_true", help="--busy: trials running over time")
    args = ap.parse_args()
    if args.busy:
        busy(args.budget, args.repeats, args.timeline)
        return
    study = load_study(STUDY)
    if args.export:
        export(args.export, study)
        return
    table, params = load_table()
    shares_at = sorted({0.1, 0.2, args.share, 0.5})
    n_max = math.ceil(max(shares_at) * study.point_count)
    order = [space.point_label(p) for p in space.points(study)]
    references = {
        "default reference (robust 0, 1.1 x float32 bytes)": space.objectives(study),
        "nadir reference (the full front's nadir + 10% of its range)": nadir_reference(
            space.objectives(study), table, params
        ),
    }

    def visit(name: str, seed: int) -> list[str]:
        if name == "grid-order":
            return order[:n_max]
        if name == "random":
            return [space.point_label(p) for p in space.random_points(study, n_max, seed)]
        return optuna_run(study, name.removeprefix("optuna-"), seed, n_max, table)

    names = ("grid-order", "random", "optuna-tpe", "optuna-nsga2")
    runs: dict[str, list[list[str]]] = {name: [] for name in names}
    times = dict.fromkeys(names, 0.0)
    for seed in range(args.seeds):
        for name in names:
            t0 = time.perf_counter()
            visited = visit(name, seed)
            times[name] += time.perf_counter() - t0
            assert len(set(visited)) == len(visited) == n_max, (name, len(visited))
            runs[name].append(visited)
    print(
        f"{study.point_count}-point grid replayed from {TABLE.name}; mean share of the full grid's "
        f"hypervolume after n points, over {args.seeds} seeds (a prefix of one run per seed: "
        "sequential ask/tell is deterministic, so it equals a run with that budget)"
    )
    goal_share: dict[str, dict[str, float]] = {}
    for title, obj in references.items():
        full = hv(obj, list(table), table, params)
        print(f"\n{title}: {', '.join(f'{r:,.4g}' for r in obj.resolve_reference(params))}")
        cols = [math.ceil(x * study.point_count) for x in shares_at]
        print(f"  {'strategy':<14}" + "".join(f"  n={c:<3} ({x:.0%})" for c, x in zip(cols, shares_at, strict=True))
              + f"   min @{args.share:.0%}")  # fmt: skip
        goal_share[title] = {}
        n_goal = math.ceil(args.share * study.point_count)
        for name in names:
            line = f"  {name:<14}"
            for c in cols:
                line += f"  {statistics.mean(hv(obj, r[:c], table, params) / full for r in runs[name]):>12.1%}"
            at_goal = [hv(obj, r[:n_goal], table, params) / full for r in runs[name]]
            goal_share[title][name] = statistics.mean(at_goal)
            print(line + f"   {min(at_goal):>6.1%}")
        rnd = goal_share[title]["random"]
        for name in ("optuna-tpe", "optuna-nsga2"):
            print(
                f"  ratio {name} / random at {args.share:.0%}: {goal_share[title][name] / rnd:.3f}"
            )
    print(f"\nask+tell time per run of {n_max} points: "
          + ", ".join(f"{k} {v / args.seeds:.2f}s" for k, v in times.items()))  # fmt: skip
    default = next(iter(references))
    best = max(("optuna-tpe", "optuna-nsga2"), key=lambda k: goal_share[default][k])
    met = goal_share[default][best] >= 0.95
    print(f"goal (>= 95% of the grid's hypervolume with {args.share:.0%} of its trials, default reference): "
          f"{best} {'meets' if met else 'misses'} it at {goal_share[default][best]:.1%}; "
          f"random {goal_share[default]['random']:.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
