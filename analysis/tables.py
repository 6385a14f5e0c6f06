"""The papers' comparisons as text: terminal tables, CSV and LaTeX (``grid compare``'s output)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from analysis.paper1 import Paper1
from analysis.variants import _KIND_MARK, ALPHA, KIND_NAMES, KINDS, _json_map

# ---- terminal tables -----------------------------------------------------------------------


def _align(
    header: list[str], rows: list[list[str]], left: int = 1, last_left: bool = False
) -> list[str]:
    """Columns padded to their widest entry; the first ``left`` columns (and the last) left-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    n = len(widths)

    def line(cells: list[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i < left or (last_left and i == n - 1) else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return ["  " + line(header), "  " + "  ".join("-" * w for w in widths)] + [
        "  " + line(r) for r in rows
    ]


def _f(v: object, spec: str = ".3f") -> str:
    return "n/a" if v is None or pd.isna(v) else format(v, spec)


def _bytes(v: object) -> str:
    return "n/a" if v is None or pd.isna(v) else f"{float(v):,.0f}"  # type: ignore[arg-type]


def format_paper1(p: Paper1) -> str:
    """The first paper's tables as aligned plain text."""
    out = [
        "Paper 1: robust accuracy per variant and attack (fold mean ± sd; n folds where it "
        "differs from the variant's); clean accuracy; footprint (encoded bytes, TFLite bytes)"
    ]
    v = p.variants
    for ds, g in v.groupby("dataset", sort=True):
        cells = (
            g[["kind", "attack", "norm", "eps", "cell"]].drop_duplicates()
            .assign(_k=lambda d: d.kind.map(KINDS.index))
            .sort_values(["_k", "attack", "norm", "eps"])
        )  # fmt: skip
        header = ["variant", "role", "n", "clean", "bytes", "tflite"] + [
            f"{_KIND_MARK[k]}{c}" for k, c in zip(cells.kind, cells.cell, strict=True)
        ]
        rows = []
        for name, vg in g.groupby("variant", sort=True):
            first = vg.iloc[0]
            n = int(vg.n.max())
            role = first.role + (" (ref)" if first.reference else "")
            row = [str(name), role.strip(), str(n), _f(first.clean_mean), _bytes(first.bytes),
                   _bytes(first.tflite_bytes)]  # fmt: skip
            at = vg.set_index("cell")
            for c in cells.cell:
                if c not in at.index:
                    row.append("-")
                    continue
                r = at.loc[c]
                text = f"{r.robust_mean:.3f}±{_f(r.robust_sd)}"
                row.append(text + (f" (n={int(r.n)})" if int(r.n) != n else ""))
            rows.append(row)
        out += [
            "",
            f"dataset {ds}  (kinds: w white-box, b black-box, t transfer; worst: per "
            "example, robust under every attack of its norm and eps)",
        ]
        out += _align(header, rows, left=2)
    out += ["", format_gain(p)]
    if p.notes:
        out += ["", "Notes:"] + [f"  - {n}" for n in p.notes]
    return "\n".join(out)


def format_gain(p: Paper1) -> str:
    title = (
        "Paper 1: relative gain of A over B per attack kind = mean over the kind's (attack, eps) "
        "cells both have of (acc_A - acc_B) / acc_B on fold means (cells with acc_B = 0 "
        "skipped); abs diff = mean of acc_A - acc_B over the shared cells, in points"
    )
    if p.gain.empty:
        return title + "\n  (no gain could be computed: see the notes)"
    rows = [
        [r.dataset, r.kind, r.variant, r.versus, str(r.cells), str(r.skipped), _f(r.acc_a),
         _f(r.acc_b), "n/a" if pd.isna(r.gain) else f"{100 * r.gain:+.1f}%",
         f"{100 * r.abs_diff:+.1f}"]
        for r in p.gain.itertuples()
    ]  # fmt: skip
    header = ["dataset", "kind", "A (--variant)", "B (--versus)", "cells", "skipped", "acc A",
              "acc B", "gain", "abs diff"]  # fmt: skip
    return "\n".join([title, *_align(header, rows, left=4)])


def format_paper2(df: pd.DataFrame, alpha: float = ALPHA) -> str:
    """The second paper's table as aligned plain text, one block per dataset, model and cell."""
    out = [
        "Paper 2: each reduction alone and combined (fold mean ± sd); Δ vs the uncompressed "
        "config of the same adversarial training (corrected t, Holm-adjusted p); a combination "
        f"against its worst single reduction (Δ, Holm-adjusted p, verdict at alpha {alpha:g})"
    ]
    for (ds, model, cell), g in df.groupby(["dataset", "model", "cell"], sort=False):
        rows = []
        for r in g.itertuples():
            setting = f"bits {r.bits} sp {r.sparsity:g} cl {int(r.clusters)}"
            jr = _json_map(r.jr_layers)
            if r.jr_weight or jr:
                setting += " JR"
            combo = "+" in str(r.reductions)
            worst = (
                [r.worst_single or "-", _f(r.worst_single_robust), _f(r.delta_vs_worst, "+.3f"),
                 _f(r.p_vs_worst_adjusted)]
                if combo else ["", "", "", ""]
            )  # fmt: skip
            rows.append(
                [str(r.adv_training), str(r.reductions), setting, str(int(r.folds)),
                 f"{r.robust_mean:.3f}±{_f(r.robust_sd)}", _f(r.uncompressed_robust),
                 f"{r.delta:+.3f}", _f(r.p_adjusted), *worst, r.verdict]
            )  # fmt: skip
        header = ["adv", "reductions", "setting", "n", "robust", "uncompr.", "Δ", "p_adj",
                  "worst single", "its robust", "Δ worst", "p_adj", "verdict"]  # fmt: skip
        out += ["", f"dataset {ds}, model {model}, attack {cell} ({KIND_NAMES[g.kind.iloc[0]]})"]
        out += _align(header, rows, left=3, last_left=True)
    return "\n".join(out)


def write_csvs(out: str | Path, p1: Paper1 | None, p2: pd.DataFrame | None) -> list[Path]:
    """One CSV per table: paper1_variants, paper1_kinds, paper1_gain, paper2 (those made)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    tables: dict[str, pd.DataFrame] = {}
    if p1 is not None:
        tables |= {"paper1_variants": p1.variants, "paper1_kinds": p1.kinds, "paper1_gain": p1.gain}
    if p2 is not None:
        tables["paper2"] = p2
    written = []
    for name, df in tables.items():
        path = folder / f"{name}.csv"
        df.to_csv(path, index=False)
        written.append(path)
    return written


# ---- LaTeX -----------------------------------------------------------------------------------

_BYTE_COLUMNS = ("bytes", "tflite_bytes", "params", "nonzero", "tflite", "uncompressed_bytes")


def latex_table(df: pd.DataFrame, caption: str | None = None) -> str:
    """``df`` as a booktabs ``tabular`` (``\\usepackage{booktabs}``), ready to paste into a paper.

    Numbers as the terminal shows them (fractions to 3 decimals, bytes with
    thousands separators, NaN as n/a); text, column names included, is
    escaped for LaTeX (``_``, ``%``, ``&``, ``#``, ...).  With ``caption``,
    a ``table`` environment around it.  Pandas' Styler.to_latex (jinja2).
    """
    fmt: dict[str, Any] = {}
    for c in df.columns:
        if pd.api.types.is_bool_dtype(df[c]):
            continue
        if pd.api.types.is_float_dtype(df[c]):
            fmt[c] = (
                "{:,.0f}"
                if c in _BYTE_COLUMNS
                else "{:.3g}"
                if str(c).startswith("p_")
                else "{:.3f}"
            )
        elif pd.api.types.is_integer_dtype(df[c]):
            fmt[c] = "{:,d}" if c in _BYTE_COLUMNS else "{:d}"
    align = "".join("r" if c in fmt else "l" for c in df.columns)
    styler = (
        df.style.hide(axis="index")
        .format(fmt, na_rep="n/a", escape="latex")
        .format_index(escape="latex", axis=1)
    )
    if caption is None:
        return str(styler.to_latex(hrules=True, column_format=align))
    return str(
        styler.to_latex(
            hrules=True, column_format=align, caption=caption, position_float="centering"
        )
    )


def paper1_wide(p: Paper1, dataset: str) -> pd.DataFrame:
    """The first paper's table of one dataset as the terminal prints it: a row per variant,
    clean accuracy, bytes, and per (kind, cell) the robust accuracy 'mean ± sd' over folds."""
    g = p.variants[p.variants.dataset == dataset]
    cells = (
        g[["kind", "attack", "norm", "eps", "cell"]].drop_duplicates()
        .assign(_k=lambda d: d.kind.map(KINDS.index))
        .sort_values(["_k", "attack", "norm", "eps"])
    )  # fmt: skip
    rows = []
    for name, vg in g.groupby("variant", sort=True):
        first = vg.iloc[0]
        row: dict[str, Any] = {
            "variant": name,
            "role": (first.role + (" (ref)" if first.reference else "")).strip(),
            "n": int(vg.n.max()),
            "clean": first.clean_mean,
            "bytes": first.bytes,
            "tflite": first.tflite_bytes,
        }
        at = vg.set_index("cell")
        for kind, cell in zip(cells.kind, cells.cell, strict=True):
            r = at.loc[cell] if cell in at.index else None
            row[f"{kind[0]}:{cell}"] = (
                "-" if r is None else f"{r.robust_mean:.3f} ± {_f(r.robust_sd)}"
            )
        rows.append(row)
    return pd.DataFrame(rows)


def paper1_gain_table(p: Paper1) -> pd.DataFrame:
    """The gain table as printed: the gain in percent, the absolute difference in points."""
    g = p.gain
    return pd.DataFrame(
        {
            "dataset": g.dataset, "kind": g.kind, "A": g.variant, "B": g.versus,
            "cells": g.cells, "skipped": g.skipped, "acc A": g.acc_a, "acc B": g.acc_b,
            "gain": [f"{100 * x:+.1f}%" if pd.notna(x) else "n/a" for x in g.gain],
            "abs diff (points)": [f"{100 * x:+.1f}" if pd.notna(x) else "n/a" for x in g.abs_diff],
        }
    )  # fmt: skip


PAPER2_LATEX_COLUMNS = [
    "dataset", "model", "cell", "adv_training", "reductions", "bits", "sparsity", "clusters",
    "folds", "robust_mean", "robust_sd", "uncompressed_robust", "delta", "p_adjusted",
    "worst_single", "worst_single_robust", "delta_vs_worst", "p_vs_worst_adjusted", "verdict",
]  # fmt: skip


def write_latex(out: str | Path, p1: Paper1 | None, p2: pd.DataFrame | None) -> list[Path]:
    """One ``.tex`` per table: paper1_<dataset> (variants x attacks), paper1_gain, paper2."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    tables: dict[str, tuple[pd.DataFrame, str]] = {}
    if p1 is not None:
        for ds in sorted(p1.variants.dataset.unique()):
            tables[f"paper1_{ds}"] = (
                paper1_wide(p1, ds),
                f"{ds}: robust accuracy per variant and attack (fold mean ± sd), clean accuracy, "
                "bytes (encoded, TFLite)",
            )
        if not p1.gain.empty:
            tables["paper1_gain"] = (
                paper1_gain_table(p1),
                "Relative gain of A over B per attack kind (mean over the kind's cells of "
                "(acc A - acc B) / acc B)",
            )
    if p2 is not None:
        cols = [c for c in PAPER2_LATEX_COLUMNS if c in p2.columns]
        tables["paper2"] = (
            p2[cols],
            "Each reduction alone and combined: robust accuracy, the difference to the "
            "uncompressed config and to the worst single reduction (Holm-adjusted p)",
        )
    written = []
    for name, (df, caption) in tables.items():
        path = folder / f"{name}.tex"
        path.write_text(latex_table(df, caption))
        written.append(path)
    return written
