"""How much of the exhaustive grid's hypervolume a search reaches with a share of its trials.

A completed exhaustive grid (benchmarks/studies/search_grid.yaml, 144 points on
scikit-learn digits, its results in benchmarks/data/search_grid.csv) is replayed
as a lookup table, so no training runs here.  In the same run, for several
seeds, each strategy visits ``share`` of the points:

  optuna-tpe / optuna-nsga2  robustgrid's own searcher (grid.launch.PointSearcher
                             around Ray Tune's OptunaSearch, duplicates told from
                             the table), one point at a time;
  random                     robustgrid's random strategy (distinct points);
  grid-order                 the grid's first points in file order.

Printed: the hypervolume each reaches as a share of the full grid's (mean, min
over seeds), and the ratios optuna / random.

    python benchmarks/search_efficiency.py [--share 0.3] [--seeds 5]
    python benchmarks/search_efficiency.py --export RESULTS/search-grid   # rebuild the table
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import tempfile
import time
from pathlib import Path

from grid import space
from grid.launch import StudyState, _optuna_searcher
from grid.spec import Study, load_study

HERE = Path(__file__).parent
STUDY = HERE / "studies" / "search_grid.yaml"
TABLE = HERE / "data" / "search_grid.csv"


def export(results: str, study: Study) -> None:
    """Write the lookup table from a completed run of the grid study."""
    state = StudyState(study, Path(results))
    values = state.point_values()
    if len(values) != study.points:
        raise SystemExit(
            f"{results}: {len(values)} of {study.points} points complete; finish the grid first"
        )
    TABLE.parent.mkdir(exist_ok=True)
    with TABLE.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*space.AXES, *state.obj.names, "params"])
        for p in space.points(study):
            w.writerow([*(p[a] for a in space.AXES), *values[space.point_label(p)], state.params])
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


def hv(study: Study, labels: list[str], table: dict[str, list[float]], params: int) -> float:
    return space.front({k: table[k] for k in labels}, space.objectives(study), params).hypervolume


def optuna_run(
    study: Study, sampler: str, seed: int, n: int, table: dict[str, list[float]]
) -> list[str]:
    """The points robustgrid's Optuna searcher visits, one at a time, answered from the table."""
    s = study.model_copy(
        update={
            "search": study.search.model_copy(
                update={"strategy": "optuna", "sampler": sampler, "seed": seed}
            )
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        state = StudyState(s, Path(tmp))
        searcher = _optuna_searcher(s, state)
        visited = []
        for i in range(n):
            config = searcher.suggest(f"t{i}")
            if not isinstance(config, dict):
                break
            label = config["unit"]["label"]
            result = dict(zip(state.obj.names, table[label], strict=True), status="complete")
            searcher.on_trial_complete(f"t{i}", result=result)
            visited.append(label)
    return visited


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--share", type=float, default=0.3, help="share of the grid's points each search visits"
    )
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument(
        "--export", metavar="RESULTS", help="rebuild the lookup table from a completed grid run"
    )
    args = ap.parse_args()
    study = load_study(STUDY)
    if args.export:
        export(args.export, study)
        return
    table, params = load_table()
    full = hv(study, list(table), table, params)
    n = math.ceil(args.share * study.points)
    order = [space.point_label(p) for p in space.points(study)]
    print(f"{study.points}-point grid replayed from {TABLE.name}; each search visits n = {n} points "
          f"({args.share:.0%}); hypervolume as a share of the full grid's, over {args.seeds} seeds")  # fmt: skip
    shares: dict[str, list[float]] = {}
    times: dict[str, float] = {}

    def visit(name: str, seed: int) -> list[str]:
        if name == "grid-order":
            return order[:n]
        if name == "random":
            return [space.point_label(p) for p in space.random_points(study, n, seed)]
        return optuna_run(study, name.removeprefix("optuna-"), seed, n, table)

    for seed in range(args.seeds):
        for name in ("grid-order", "random", "optuna-tpe", "optuna-nsga2"):
            t0 = time.perf_counter()
            visited = visit(name, seed)
            times[name] = times.get(name, 0.0) + time.perf_counter() - t0
            assert len(set(visited)) == len(visited) == n, (name, len(visited))
            shares.setdefault(name, []).append(hv(study, visited, table, params) / full)
    print(f"  {'strategy':<14} {'mean':>7} {'min':>7} {'max':>7}  ask+tell s/run")
    for name, xs in shares.items():
        print(f"  {name:<14} {statistics.mean(xs):>7.1%} {min(xs):>7.1%} {max(xs):>7.1%}  "
              f"{times[name] / args.seeds:8.2f}")  # fmt: skip
    rnd = statistics.mean(shares["random"])
    for name in ("optuna-tpe", "optuna-nsga2"):
        print(
            f"ratio {name} / random (mean hypervolume share): {statistics.mean(shares[name]) / rnd:.3f}"
        )
    best = max(("optuna-tpe", "optuna-nsga2"), key=lambda k: statistics.mean(shares[k]))
    goal = statistics.mean(shares[best]) >= 0.95
    print(f"goal (>= 95% of the grid's hypervolume with {args.share:.0%} of its trials): "
          f"{best} {'meets' if goal else 'misses'} it at {statistics.mean(shares[best]):.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
