"""``grid pareto``, ``report``, ``compare`` and ``export``: the commands that read a results
folder (and ``grid run``'s closing front).  They read Parquet through ``analysis``; no
study file is needed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from grid.errors import ResultsError, StudyError
from trainables.headline import SIZES


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
    return None if max_bytes is None else f"{SIZES[size]} <= {int(max_bytes)}"


def print_front(
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
            f"SELECT count(DISTINCT key) FILTER (WHERE {SIZES[size]} > {int(max_bytes)}), "
            "count(DISTINCT key) FROM rows WHERE status = 'complete'"
        ).fetchone()
        over, n = got if got is not None else (0, 0)
        print(
            f"budget {max_bytes:,} B ({size}): {over} of {n} complete trial(s) over it, off the front"
        )
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    budget = args.max_bytes if args.max_bytes is not None else study_budget(args.results)
    attack, size = args.attack, args.size
    if args.model == "deployed":  # the int8 flatbuffer: its routes' worst case and its bytes
        from trainables.headline import Headline

        h = Headline.of(attack, args.eps, args.norm, model="deployed")
        attack, size = h.row_attack, h.size
    return print_front(args.results, attack, args.eps, args.norm, size, args.stale, budget or None)


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from analysis.report import write_report
    from analysis.report_html import Export

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
        raise ResultsError("no comparison could be made: " + "; ".join(failed))
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
        raise ResultsError(
            f"results: {root} holds no artifacts (expected {root.display('artifacts')}/<key>/)"
        )
    keys = root.folders("artifacts")
    hits = [k for k in keys if k.startswith(args.key)]
    if len(hits) != 1:
        what = "no trial" if not hits else f"{len(hits)} trials ({', '.join(hits[:5])})"
        raise StudyError(f"key: {args.key!r} matches {what} in {root.display('artifacts')}")
    out = Path(args.out or hits[0])
    if out.exists() and any(out.iterdir()):
        raise StudyError(f"--out: {out} exists and is not empty")
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
