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

grid --verbose ...      TensorFlow's C++ log lines too; exit codes 0 ok, 1 bug (traceback), 2 user error, 130 interrupted
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any, TextIO

from grid.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USER, is_user_error
from grid.results_commands import cmd_compare, cmd_export, cmd_pareto, cmd_report
from grid.study_commands import (
    cmd_compact,
    cmd_resume,
    cmd_run,
    cmd_schema,
    cmd_status,
    cmd_validate,
)

EXIT_CODES = f"""exit codes:
  {EXIT_OK:<4}done
  {EXIT_INTERNAL:<4}an internal error (a bug: the traceback is printed), or every trial of a run failed
  {EXIT_USER:<4}a user error: the study file, a command-line value, the results folder or the
      cluster connection; one line on stderr says what to fix
  {EXIT_INTERRUPTED:<4}interrupted (Ctrl-C, or a run stopped before its trials were done)

TensorFlow's C++ log lines (cudart_stub, oneDNN, cuInit) are hidden unless --verbose,
ROBUSTGRID_TF_LOGS=1 or your own TF_CPP_MIN_LOG_LEVEL asks for them."""


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
        prog="grid",
        description="robustgrid: TinyML robustness studies on Ray Tune.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show TensorFlow's C++ log lines (also ROBUSTGRID_TF_LOGS=1); hidden by default",
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


def _one_line_warnings(command: str, show: Any) -> Any:
    """``warnings.showwarning`` that prints a study file's renamed field as one line
    (``grid run: warning: ...``) and leaves every other warning to ``show``."""
    from grid.spec import RenamedField

    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, RenamedField):
            print(f"grid {command}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``grid`` command; its exit code (:data:`EXIT_CODES`).

    A user error (:class:`grid.errors.UserError`, or an analysis input error) is one line
    on stderr and exit 2; anything else is a bug: its traceback and exit 1."""
    args = build_parser().parse_args(argv)
    from trainables import tflogs

    tflogs.configure(verbose=args.verbose)  # before any command imports TensorFlow
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(args.command, warnings.showwarning)
            return int(args.func(args))
    except KeyboardInterrupt:
        print(
            "\ninterrupted: finished trials are saved; `grid run` again to do the rest",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except Exception as err:
        if is_user_error(err):
            print(f"grid {args.command}: error: {err}", file=sys.stderr)
            return EXIT_USER
        traceback.print_exc()
        print(
            f"grid {args.command}: internal error ({type(err).__name__}): a bug, not your input; "
            "the traceback above says where",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
