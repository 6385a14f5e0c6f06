"""``grid``: run, validate and read robustgrid studies.

grid run [STUDY]        run a study (the embedded default when none is given)
grid resume [STUDY]     finish a study whose driver stopped or died (kill -9 included)
grid status [STUDY]     trials done / running / failed / skipped, the front and its hypervolume
grid compact [STUDY]    merge complete trials' per-key files into large Parquet files (or a RESULTS folder)
grid validate [STUDY]   check a study file without running anything
grid schema             the study file's JSON Schema (editors complete and check study files)
  STUDY: a study file, an embedded study's file name (stq_showcase) or its name (stq-showcase)
grid pareto RESULTS     print the Pareto front from the Parquet files alone
grid report RESULTS     write a self-contained HTML report (tables and figures)
grid export RESULTS KEY write a trial's model, weights and TFLite out for deployment
grid compare RESULTS    the two papers' comparisons (variants and gain; reductions combined)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grid.spec import Study, StudyError, load_study

EXIT_BAD_INPUT = 2


SIZE_COLUMNS = {"encoded": "metric_bytes", "tflite": "metric_tflite_bytes"}


def study_budget(results: str) -> int | None:
    """The flash budget (objective.max_bytes) a study's results folder was run under, from
    its search.json; None for no budget, or a folder that is not one study's."""
    from grid.store import Location, read_json

    try:
        saved = read_json(Location(results), "search.json") or {}
    except (OSError, ValueError):
        return None
    budget = saved.get("max_bytes")
    return int(budget) if isinstance(budget, int) and budget > 0 else None


def budget_where(max_bytes: int | None, size: str) -> str | None:
    """The row predicate that keeps a front within a flash budget (None: no budget)."""
    return None if max_bytes is None else f"{SIZE_COLUMNS[size]} <= {int(max_bytes)}"


def _print_front(
    results: str,
    attack: str,
    eps: float | None,
    norm: str | None = None,
    size: str = "encoded",
    stale: bool = False,
    max_bytes: int | None = None,
) -> int:
    from analysis.pareto import format_front, pareto_front, resolve
    from analysis.query import connect

    con = connect(results, stale=stale)
    eps, norm = resolve(con, attack, eps, norm)
    front = pareto_front(
        con, attack, eps, norm=norm, size=size, where=budget_where(max_bytes, size)
    )
    print(format_front(front, attack, eps, norm, size))
    if max_bytes is not None:  # points over a flash budget are never on the front
        got = con.execute(
            f"SELECT count(DISTINCT key) FILTER (WHERE {SIZE_COLUMNS[size]} > {int(max_bytes)}), "
            "count(DISTINCT key) FROM rows WHERE status = 'complete'"
        ).fetchone()
        over, n = got if got is not None else (0, 0)
        print(
            f"budget {max_bytes:,} B ({size}): {over} of {n} complete trial(s) over it, off the front"
        )
    return 0


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
            f"{study.budget} of {study.points:,} points x {study.folds} fold(s)) on "
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
        raise StudyError(
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
    if summary.front is not None and summary.front.points:
        from grid.space import objectives

        print(summary.front.describe(objectives(study)))
    if summary.missing > 0:
        print(
            f"\ninterrupted: {summary.missing} of {summary.total} trials not done; "
            f"`grid resume` to finish them (complete trials are kept)"
        )
    print()
    attack, eps, norm, size = study.headline
    if summary.completed or summary.skipped:
        _print_front(str(results_dir), attack, eps, norm, size, max_bytes=study.objective.max_bytes)
    print(f"\nrows: {results_dir.display('rows')}/*.parquet  (grid pareto {results_dir})")
    if summary.missing > 0:
        return 130
    return 1 if summary.failed and not summary.completed else 0


def cmd_status(args: argparse.Namespace) -> int:
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
        raise StudyError(f"results: {folder} holds no results yet (`{run}`)")
    state = StudyState(study, folder)
    s = study.search
    if s.strategy == Strategy.random:
        picked = random_points(study, study.budget, study.search_seed)
        keys = [k for p in picked for k in state.keys[state.meet(p)]]
    else:
        keys = [k for ks in state.keys.values() for k in ks]
    total = study.budget * study.folds
    done = sum(1 for k in keys if state.status.get(k) == "complete")
    failed = sum(1 for k in keys if state.status.get(k) == "failed")
    live = read_json(folder, "status.json") or {}
    pid = live_driver(folder)
    running = len(live.get("running") or []) if pid else 0
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
        raise StudyError(f"results: {folder} holds no rows to compact")
    pid = live_driver(folder)
    if pid:
        raise StudyError(
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
            f"flash budget: {study.objective.max_bytes:,} B ({study.headline[3]}), "
            "a constraint: points over it are kept off the front"
        )
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    budget = args.max_bytes if args.max_bytes is not None else study_budget(args.results)
    attack, size = args.attack, args.size
    if args.model == "deployed":  # the int8 flatbuffer: its routes' worst case and its bytes
        from trainables.rows import DEPLOYED_WORST

        attack, size = (DEPLOYED_WORST if attack == "worst" else attack), "tflite"
    return _print_front(args.results, attack, args.eps, args.norm, size, args.stale, budget or None)


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from analysis.report import Export, write_report

    export = None
    if args.csv or args.latex or args.figures:
        export = Export(
            csv=Path(args.csv) if args.csv else None,
            latex=Path(args.latex) if args.latex else None,
            figures=Path(args.figures) if args.figures else None,
            formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
        )
    budget = args.max_bytes if args.max_bytes is not None else study_budget(args.results)
    out = write_report(
        args.results,
        args.out,
        args.attack,
        args.eps,
        norm=args.norm,
        size=args.size,
        stale=args.stale,
        export=export,
        max_bytes=budget or None,
    )
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    for path in export.written if export else []:
        print(f"wrote {path}")
    return 0


def _per_layer_text(args: argparse.Namespace, con: Any) -> list[Any]:
    """Print each (dataset, model)'s per-layer assignments section (analysis.assignments) when
    the rows hold per-layer assignments; the sections (none: an empty list, nothing printed)."""
    from analysis.assignments import budget_from, format_per_layer, per_layer

    try:
        found = per_layer(con, where=args.where, max_bytes=budget_from(args.results))
    except ValueError as err:  # no worst rows to rank by: say so, the papers' tables stand
        print(f"\nPer-layer assignments: none: {err}")
        return []
    for a in found:
        print()
        print(format_per_layer(a))
    return found


def cmd_compare(args: argparse.Namespace) -> int:
    from analysis.compare import (
        CompareError,
        check_where,
        format_paper1,
        format_paper2,
        paper1,
        paper2,
        write_csvs,
        write_latex,
    )
    from analysis.query import connect

    con = connect(args.results, stale=args.stale)
    check_where(con, args.where)  # a bad predicate is an error, not a missing table
    wanted = ["1", "2"] if args.paper == "both" else [args.paper]
    p1 = p2 = None
    failed = []
    if "1" in wanted:
        try:
            p1 = paper1(con, args.variant, args.versus, args.where)
            print(format_paper1(p1))
        except CompareError as err:
            if args.variant or args.versus or args.paper == "1":
                raise  # the user asked for this table, or named a variant: an error
            failed.append(str(err))
            print(f"Paper 1: no table: {err}")
    if "2" in wanted:
        if p1 is not None:
            print()
        try:
            p2 = paper2(con, args.where)
            print(format_paper2(p2))
        except CompareError as err:
            if args.paper == "2":
                raise
            failed.append(str(err))
            print(f"Paper 2: no table: {err}")
    layered = _per_layer_text(args, con) if args.paper == "both" else []
    if p1 is None and p2 is None and not layered:
        raise ValueError("no comparison could be made: " + "; ".join(failed))
    if args.csv:
        for path in write_csvs(args.csv, p1, p2):
            print(f"wrote {path}")
        for a in layered:
            from analysis.assignments import front_table

            path = Path(args.csv) / f"per_layer_{a.dataset}_{a.model}.csv"
            front_table(a).to_csv(path, index=False)
            print(f"wrote {path}")
    if args.latex:
        for path in write_latex(args.latex, p1, p2):
            print(f"wrote {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import pyarrow.fs as pafs

    from grid.store import Location

    root = Location(args.results)
    if not root.is_dir("artifacts"):
        raise FileNotFoundError(
            f"results: {root} holds no artifacts (expected {root.display('artifacts')}/<key>/)"
        )
    keys = root.folders("artifacts")
    hits = [k for k in keys if k.startswith(args.key)]
    if len(hits) != 1:
        what = "no trial" if not hits else f"{len(hits)} trials ({', '.join(hits[:5])})"
        raise ValueError(f"key: {args.key!r} matches {what} in {root.display('artifacts')}")
    out = Path(args.out or hits[0])
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out: {out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(
        root.path("artifacts", hits[0]), str(out.resolve()),
        source_filesystem=root.fs, destination_filesystem=pafs.LocalFileSystem(),
    )  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"exported trial {hits[0]} to {out}/")
    for name, info in sorted(manifest["files"].items()):
        print(f"  {name:<20} {info['bytes']:>10,} B  sha256 {info['sha256'][:16]}")
    tfl = manifest.get("tflite_test_acc")
    print(
        f"  footprint {manifest['bytes']:,} B (smallest encoding); clean accuracy {manifest['clean_acc']:.3f}"
        + (
            f"; int8 TFLite {tfl:.3f}"
            if tfl is not None
            else f"; no TFLite: {manifest.get('tflite_error')}"
        )
    )
    return 0


def selection_options(cmd: argparse.ArgumentParser) -> None:
    """--norm, --size and --stale of the commands that read results."""
    cmd.add_argument(
        "--norm",
        choices=["inf", "2"],
        help="norm of the attacks ('worst' never mixes norms; default: inf, or the named attack's)",
    )
    cmd.add_argument(
        "--size",
        choices=["encoded", "tflite"],
        default="encoded",
        help="bytes objective: the smallest encoding of the weights (default) or the int8 TFLite file",
    )
    cmd.add_argument(
        "--stale",
        action="store_true",
        help="include rows of another results revision (left out by default)",
    )
    cmd.add_argument(
        "--max-bytes",
        type=int,
        help="flash budget: points over it are left off the front (default: the study's "
        "objective.max_bytes, from its search.json; 0: none)",
    )


STUDY_HELP = (
    "study YAML file, or an embedded study by file name (stq_showcase) or by its name "
    "(stq-showcase); default: the embedded default study"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="grid", description="robustgrid: TinyML robustness studies on Ray Tune."
    )
    sub = p.add_subparsers(dest="command", required=True)

    def run_options(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("--results", help="results folder (overrides the study's `results`)")
        cmd.add_argument(
            "--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)"
        )
        cmd.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
        cmd.add_argument("--data", help="dataset location (overrides the study's dataset.path)")

    run = sub.add_parser("run", help="run a study (the embedded default when none is given)")
    run.add_argument("study", nargs="?", default=None, help=STUDY_HELP)
    run_options(run)
    run.set_defaults(func=cmd_run)

    res = sub.add_parser(
        "resume", help="finish a study whose driver stopped or died (complete trials are kept)"
    )
    res.add_argument("study", nargs="?", default=None, help=STUDY_HELP)
    run_options(res)
    res.set_defaults(func=cmd_resume)

    st = sub.add_parser("status", help="trials done / running / failed, the front and hypervolume")
    st.add_argument("study", nargs="?", default=None, help=STUDY_HELP)
    st.add_argument("--results", help="results folder (overrides the study's `results`)")
    st.set_defaults(func=cmd_status)

    com = sub.add_parser(
        "compact",
        help="merge complete trials' per-key Parquet files into large ones (readers see the same rows)",
    )
    com.add_argument(
        "study", nargs="?", default=None, help=STUDY_HELP + "; or a study's results folder or URI"
    )
    com.add_argument("--results", help="results folder (overrides the study's `results`)")
    com.add_argument(
        "--max-keys", type=int, default=20_000, help="keys per compacted file (default 20,000)"
    )
    com.set_defaults(func=cmd_compact)

    val = sub.add_parser("validate", help="check a study file; starts nothing")
    val.add_argument("study", nargs="?", default=None, help=STUDY_HELP)
    val.set_defaults(func=cmd_validate)

    sch = sub.add_parser(
        "schema", help="print the study file's JSON Schema (for editors: completion and checks)"
    )
    sch.add_argument("--out", help="write it to this file instead of standard output")
    sch.add_argument(
        "--reference",
        action="store_true",
        help="the study-file reference in Markdown instead (docs/study-file.md)",
    )
    sch.set_defaults(func=cmd_schema)

    par = sub.add_parser(
        "pareto", help="print the Pareto front from a results folder's Parquet files"
    )
    par.add_argument(
        "results", help="a study's results folder, a parent of several, or a Parquet glob"
    )
    par.add_argument(
        "--attack",
        default="worst",
        help="attack name, or 'worst' (per example: robust under every attack; default)",
    )
    par.add_argument(
        "--eps", type=float, help="eps of the robust accuracy (default: the largest in the results)"
    )
    par.add_argument(
        "--model",
        choices=["keras", "deployed"],
        default="keras",
        help="keras (default): the QKeras model's rows; deployed: the int8 TFLite flatbuffer's "
        "(a `deployed: true` study): robustness 'deployed_worst', size its bytes (--size tflite)",
    )
    selection_options(par)
    par.set_defaults(func=cmd_pareto)

    rep = sub.add_parser("report", help="write a self-contained HTML report of a study's results")
    rep.add_argument(
        "results", help="a study's results folder, a parent of several, a glob or a URI"
    )
    rep.add_argument(
        "--out", default="report.html", help="the HTML file to write (default report.html)"
    )
    rep.add_argument("--attack", default="worst", help="attack name, or 'worst' (default)")
    rep.add_argument("--eps", type=float, help="eps of the robust accuracy (default: the largest)")
    rep.add_argument("--csv", metavar="DIR", help="also write each table as a CSV into DIR")
    rep.add_argument(
        "--latex", metavar="DIR", help="also write each table as a LaTeX (booktabs) table into DIR"
    )
    rep.add_argument("--figures", metavar="DIR", help="also write each figure into DIR")
    rep.add_argument(
        "--formats",
        default="png",
        help="the figures' formats with --figures, comma-separated: png, svg, pdf (default png)",
    )
    selection_options(rep)
    rep.set_defaults(func=cmd_report)

    cmp = sub.add_parser(
        "compare",
        help="the papers' comparisons: variants against attacks with the gain of one over "
        "another; each reduction alone and combined",
    )
    cmp.add_argument(
        "results", help="a study's results folder, a parent of several, a glob or a URI"
    )
    cmp.add_argument(
        "--paper",
        choices=["1", "2", "both"],
        default="both",
        help="1: variants x attacks and the gain; 2: reductions alone and combined; "
        "both (default): each that the results allow",
    )
    cmp.add_argument(
        "--variant",
        help="A of the gain, a variant label (e.g. 'stq_cnn stochastic_ternary +JR(all=0.01)'; "
        "a unique part will do); default: stochastic_ternary with per-layer JR",
    )
    cmp.add_argument(
        "--versus",
        help="B of the gain, a variant label; default: the dataset's reference model "
        "(resnet8, ds_cnn, digits_cnn) in float without defences",
    )
    cmp.add_argument("--where", help='a DuckDB predicate over the rows, e.g. "cfg_seed = 0"')
    cmp.add_argument("--csv", metavar="DIR", help="also write one CSV per table into DIR")
    cmp.add_argument(
        "--latex", metavar="DIR", help="also write one LaTeX (booktabs) table per table into DIR"
    )
    cmp.add_argument(
        "--stale",
        action="store_true",
        help="include rows of another results revision (left out by default)",
    )
    cmp.set_defaults(func=cmd_compare)

    exp = sub.add_parser(
        "export", help="write a trial's model, weights and TFLite out for deployment"
    )
    exp.add_argument("results", help="a study's results folder")
    exp.add_argument("key", help="the trial key (a unique prefix will do)")
    exp.add_argument("--out", help="folder to write (default: ./KEY)")
    exp.set_defaults(func=cmd_export)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (StudyError, FileNotFoundError, ValueError) as err:
        print(f"grid {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(
            "\ninterrupted: finished trials are saved; `grid run` again to do the rest",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
