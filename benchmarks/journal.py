"""`grid resume` start-up of an Optuna search against the size of its journal.

For each size N, a fresh results folder gets an Optuna journal of N complete
trials written with Optuna's own API (``study.add_trials``) to the backend
robustgrid uses (``JournalStorage(JournalFileBackend(<results>/optuna.journal))``),
with the study's real distributions, metric names and user attributes, on a
study of at least 2N points (benchmarks/driver_memory.py's axes).
Then it times what ``grid resume`` does before its first trial, in the order it
does it: the study's state over the (empty) store, the searcher's construction
(``grid.searcher.optuna_searcher``: the journal's replay, the stale-trial check,
OptunaSearch's own study load) and the first suggestion (the sampler over N
trials).  With ``--sqlite`` the same journal copied to SQLite (``optuna.copy_study``;
Optuna's RDB storage; the copy alone took 2 minutes at N = 1,000) is timed the same
way for comparison.  Prints each step against N and the growth exponent between sizes.

    python benchmarks/journal.py [--sizes 1000,10000] [--sampler tpe] [--sqlite]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from driver_memory import trivial_study

from grid import space
from grid.loggers import payload_attrs
from grid.planning import payload
from grid.searcher import PointSearcher, optuna_searcher
from grid.spec import SamplerName, Strategy, Study
from grid.state import StudyState


def search_study(sampler: str, n: int) -> Study:
    base = trivial_study(2 * n)
    search = base.search.model_copy(
        update={
            "strategy": Strategy.optuna,
            "sampler": SamplerName(sampler),
            "budget": base.point_count,
        }
    )
    return base.model_copy(update={"search": search, "name": "journal"})


def write_journal(study: Study, state: StudyState, n: int) -> float:
    """N complete Optuna trials of distinct points, through Optuna's API; seconds it took."""
    import optuna
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    storage = optuna.storages.JournalStorage(
        JournalFileBackend(str(state.results_dir.mirror("optuna.journal")))
    )
    directions = ["maximize" if m else "minimize" for m in state.obj.maximize]
    ostudy = optuna.create_study(storage=storage, study_name=study.name, directions=directions)
    ostudy.set_metric_names(list(state.obj.names))
    dists = space.distributions(study)
    rng = random.Random(n)
    trials = []
    for point in rng.sample(state.points, n):
        sent = payload(point, state.trials[space.point_label(point)]).config()["payload"]
        values = [rng.random(), float(rng.randint(100, 4000))]
        trials.append(
            create_trial(
                params=space.to_params(study, point), distributions=dists, values=values,
                user_attrs={**payload_attrs(study, sent), "answered": "trained"},
            )
        )  # fmt: skip
    ostudy.add_trials(trials)
    return time.perf_counter() - t0


def startup(study: Study, results: Path, storage: Any = None) -> dict[str, float]:
    """What `grid resume` does before the first trial, timed step by step."""
    t0 = time.perf_counter()
    state = StudyState(study, results)
    t1 = time.perf_counter()
    if storage is None:
        searcher = optuna_searcher(study, state)
    else:  # the same construction on another Optuna storage
        from ray.tune.search.optuna import OptunaSearch

        from grid.searcher import optuna_study

        optuna_study(study, state, storage)
        inner = OptunaSearch(
            space=space.distributions(study), metric=list(state.obj.names), mode=state.obj.modes,
            sampler=space.make_sampler(study.search, study.search_seed), study_name=study.name,
            storage=storage,
        )  # fmt: skip
        searcher = PointSearcher(inner, study, state)
    t2 = time.perf_counter()
    config = searcher.suggest("first")
    t3 = time.perf_counter()
    assert isinstance(config, dict), config
    return {"state": t1 - t0, "searcher": t2 - t1, "suggest": t3 - t2, "total": t3 - t0}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--sampler", default="tpe", choices=["tpe", "nsga2"])
    ap.add_argument("--sqlite", action="store_true", help="also time Optuna's SQLite storage")
    args = ap.parse_args()
    import optuna

    sizes = [int(x) for x in args.sizes.split(",")]
    study = search_study(args.sampler, max(sizes))
    if max(sizes) >= study.point_count:
        sys.exit(f"--sizes: at most {study.point_count - 1} trials (the study's points)")
    rows: dict[str, dict[int, float]] = {}
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            results = Path(tmp)
            wrote = write_journal(study, StudyState(study, results), n)
            size_mb = (results / "optuna.journal").stat().st_size / 1e6
            journal = startup(study, results)
            line = (
                f"N={n:>6,}: journal {size_mb:5.1f} MB written in {wrote:5.1f} s | state "
                f"{journal['state']:.2f} s, searcher (journal replay) {journal['searcher']:.2f} s, "
                f"first suggest {journal['suggest']:.2f} s, total {journal['total']:.2f} s"
            )
            rdb: dict[str, float] = {}
            if args.sqlite:
                t0 = time.perf_counter()
                optuna.copy_study(
                    from_study_name=study.name,
                    from_storage=optuna.storages.JournalStorage(
                        optuna.storages.journal.JournalFileBackend(str(results / "optuna.journal"))
                    ),
                    to_storage=f"sqlite:///{tmp}/optuna.db",
                )
                copy_s = time.perf_counter() - t0
                sqlite = optuna.storages.RDBStorage(f"sqlite:///{tmp}/optuna.db")
                rdb = startup(study, results, sqlite)
                line += (
                    f" | sqlite (copy {copy_s:.1f} s): searcher {rdb['searcher']:.2f} s, first "
                    f"suggest {rdb['suggest']:.2f} s, total {rdb['total']:.2f} s"
                )
        print(line, flush=True)
        for k, v in journal.items():
            rows.setdefault(f"journal {k}", {})[n] = v
        for k, v in rdb.items():
            rows.setdefault(f"sqlite {k}", {})[n] = v
    if len(sizes) >= 2:
        a, b = sizes[0], sizes[-1]
        print(f"growth exponent between N={a:,} and N={b:,} (1 = linear):")
        for name, by_n in rows.items():
            if by_n[a] > 0 and by_n[b] > 0:
                print(f"  {name:<18} {math.log(by_n[b] / by_n[a]) / math.log(b / a):5.2f}")


if __name__ == "__main__":
    main()
