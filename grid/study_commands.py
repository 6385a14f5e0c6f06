"""``grid run``, ``resume``, ``status``, ``compact``, ``validate`` and ``schema``: the commands
that start from a study file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from grid.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, ResultsError, StudyError
from grid.spec import Study, load_study


def _describe(study: Study) -> str:
    a = study.axes
    attacks = ", ".join(f"{x.name.value} eps={list(x.eps)}" for x in study.attacks) or "none"
    adv = [
        x.method.value if x.method.value == "none" else f"{x.method.value}@{x.eps:g}"
        for x in a.adversarial
    ]
    from trainables.modelspec import model_label

    labels = [model_label(m) for m in study.models]
    models = f"models {labels} x " if len(labels) > 1 else ""
    jr = [", ".join(f"{k}:{v:g}" for k, v in m.items()) or "none" for m in a.jr_layers]
    layers_jr = f"x jr_layers {jr} " if len(jr) > 1 else ""
    if study.search.layers is not None:
        return (
            f"study {study.name}: per-layer search ({study.search.strategy.value}, "
            f"{study.budget} of {study.point_count:,} points x {study.folds} fold(s)) on "
            f"{study.dataset.name.value}/{'+'.join(labels)}; attacks: {attacks}; "
            f"results -> {study.results_dir()}"
        )
    return (
        f"study {study.name}: {study.grid_size} trials = {models}bits {list(a.bits)} x sparsity {list(a.sparsity)} "
        f"x clusters {list(a.clusters)} x jr_weight {list(a.jr_weight)} x adversarial {adv} {layers_jr}x {study.folds} fold(s) "
        f"on {study.dataset.name.value}/{'+'.join(labels)}; attacks: {attacks}; results -> {study.results_dir()}"
    )


def _load(args: argparse.Namespace) -> Study:
    study = load_study(args.study)  # validated before anything starts
    if args.data:
        study = study.model_copy(
            update={"dataset": study.dataset.model_copy(update={"path": args.data})}
        )
    return study


def cmd_resume(args: argparse.Namespace) -> int:
    study = _load(args)
    folder = study.results_dir(args.results)
    if not any(folder.exists(name) for name in ("rows", "status.json", "optuna.journal")):
        raise ResultsError(
            f"results: nothing to resume in {folder} (no rows, no driver state); "
            "`grid run` starts a study"
        )
    return _run(study, args)


def cmd_run(args: argparse.Namespace) -> int:
    return _run(_load(args), args)


def _run(study: Study, args: argparse.Namespace) -> int:
    from grid.launch import run_study

    t0 = time.perf_counter()
    summary = run_study(
        study, results=args.results, address=args.address, max_concurrent=args.max_concurrent
    )
    results_dir = study.results_dir(args.results)
    if summary.ran:
        print(
            f"\n{summary.completed} complete, {summary.failed} failed, {summary.skipped} skipped "
            f"in {summary.wall_s:.1f}s of Tune time ({time.perf_counter() - t0:.1f}s in all); "
            f"trials' own compute {summary.trial_s:.1f}s on {summary.slots} slot(s): "
            f"efficiency {summary.efficiency:.2f}, overhead {summary.overhead_per_trial_s:.2f}s per trial"
        )
        for failure in summary.failures:
            print(f"  failed {failure}")
    if summary.missing > 0:
        print(
            f"\ninterrupted: {summary.missing} of {summary.total} trials not done; "
            f"`grid resume` to finish them (complete trials are kept)"
        )
    print()
    print(summary.table)  # the one front: per point (config), folds aggregated
    print(f"\nrows: {results_dir.display('rows')}/*.parquet  (grid pareto {results_dir})")
    if summary.missing > 0:
        return EXIT_INTERRUPTED
    return EXIT_INTERNAL if summary.failed and not summary.completed else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from grid.planning import tally
    from grid.space import (
        describe_point,
        describe_values,
        objectives,
        random_points,
    )
    from grid.spec import Strategy
    from grid.state import StudyState, live_driver, stale_note
    from grid.store import read_json

    study = load_study(args.study)
    folder = study.results_dir(args.results)
    if not folder.is_dir("rows"):
        run = f"grid run {args.study}" if args.study else "grid run"
        raise ResultsError(f"results: {folder} holds no results yet (`{run}`)")
    state = StudyState(study, folder)
    s = study.search
    if s.strategy == Strategy.random:
        picked = random_points(study, study.budget, study.search_seed)
        keys = [k for p in picked for k in state.keys[state.meet(p)]]
    else:
        keys = [k for ks in state.keys.values() for k in ks]
    total = study.budget * study.folds
    live = read_json(folder, "status.json") or {}
    pid = live_driver(folder)
    now = list(live.get("running") or []) if pid else []  # a search's new points: not in keys
    tallied = tally([*keys, *now], state.status, set(now))
    done, failed, running = tallied.complete, tallied.failed, tallied.running
    if s.strategy == Strategy.optuna:
        done = min(done, total)  # the store may hold more points than this budget
    todo = max(0, total - done - failed - running)
    driver = f"driver running (pid {pid})" if pid else "no driver running"
    print(
        f"study {study.name} ({s.strategy.value}, {total} trials): {done} done, {running} running, "
        f"{failed} failed, {todo} to do; {live.get('skipped', 0)} skipped as complete at the last start; "
        f"{driver}"
    )
    if state.stale:
        print(stale_note(state.stale))
    budget = state.budget_line()
    if budget:
        print(budget)
    front = state.front()
    obj = objectives(study)
    print(front.describe(obj))
    values = state.point_values()
    by_bytes = obj.names.index("bytes")  # smallest first, as `grid pareto` lists a front
    for label in sorted(front.labels, key=lambda lb: (values[lb][by_bytes], lb)):
        print(f"  {describe_values(obj, values[label])}  {describe_point(study, label)}")
    flagged = {k: state.flags[k] for k in keys if state.flags.get(k)}
    if flagged:
        counts: dict[str, int] = {}
        for names in flagged.values():
            for name in names.split(","):
                counts[name] = counts.get(name, 0) + 1
        print(
            f"gradient masking suspected in {len(flagged)} trial(s): "
            + ", ".join(f"{n} x{c}" for n, c in sorted(counts.items()))
            + " (see docs/guide.md, gradient-masking diagnostics; these robust accuracies may be overstated)"
        )
        for key, names in flagged.items():
            print(f"  masking {key}: {names}")
    for key in keys:
        if state.status.get(key) == "failed":
            reason = state.reasons.get(key, "")
            print(f"  failed {key}: {str(reason)[:200]}")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from grid.state import live_driver
    from grid.store import Location, compact, is_remote

    where = args.study
    if where and (is_remote(where) or os.path.isdir(os.path.join(where, "rows"))):
        if args.results:
            raise StudyError(f"compact: give a study or a results folder, not both ({where!r})")
        folder = Location(where)  # a study's results folder (holding rows/) or its URI
    else:
        folder = load_study(where).results_dir(args.results)
    if not folder.is_dir("rows") and not folder.files("rows"):
        raise ResultsError(f"results: {folder} holds no rows to compact")
    pid = live_driver(folder)
    if pid:
        raise ResultsError(
            f"compact: a driver (pid {pid}) is running on {folder}; compact when it has stopped"
        )
    report = compact(folder, max_keys=args.max_keys)
    print(f"{folder.display('rows')}: {report.describe()}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from grid.spec import study_json_schema

    if args.reference:
        from grid.docs import study_reference

        text = study_reference()
    else:
        text = json.dumps(study_json_schema(), indent=2) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    study = load_study(args.study)
    # Each model built for the dataset at each bit-width (TensorFlow, no Ray): shape errors
    # fail here, and the layers, parameters and footprints are shown before anything runs.
    reports = study.check_models(builtin=True)
    print("ok: " + _describe(study))
    for report in reports:
        print()
        print(report.table())
    ls = study.layer_space()  # the model's layers against search.layers (did-you-mean)
    if ls is not None:
        axes = f" x {ls.axes_size:,} axes point(s)" if ls.axes_size > 1 else ""
        seeds = ""
        if study.search.strategy.value == "optuna" and study.search.seeds:
            from grid.space import seed_points

            uniform, ans = seed_points(study)
            seeds = f"; seeds: {len(uniform)} uniform" + (" + ans_hybrid" if ans else "")
        print(
            f"\nper-layer space of {study.name} ({ls.model}): {ls.size:,} distinct points "
            f"(the layers' choices{axes}); budget {study.budget} trials{seeds}"
        )
        print(ls.table())
    if study.objective.max_bytes is not None:
        print(
            f"flash budget: {study.objective.max_bytes:,} B ({study.headline.size}), "
            "a constraint: points over it are kept off the front"
        )
    return 0
