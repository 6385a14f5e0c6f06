"""A self-contained HTML report of a study's results: tables and figures, no server needed.

    grid report RESULTS [--out report.html] [--attack NAME] [--eps E]

Figures are embedded as PNG (base64), so the file can be mailed or archived.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from pathlib import Path

import duckdb
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from analysis import plots
from analysis.effects import compare_to_baseline, reduction_effects, robustness_curve
from analysis.pareto import headline_eps, pareto_front, trial_points
from analysis.query import connect

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; }
.note { color: #555; font-size: 0.9em; }
"""


def _img(fig: Figure, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(df: pd.DataFrame, floats: str = "{:.3f}") -> str:
    fmt = {c: (lambda v: f"{v:,.0f}") if c in ("bytes", "params", "nonzero") else floats.format
           for c in df.columns if pd.api.types.is_float_dtype(df[c])}  # fmt: skip
    return df.to_html(index=False, formatters=fmt, na_rep="n/a", border=0, escape=True)


def _varying(points: pd.DataFrame) -> list[str]:
    return [
        c
        for c in ("bits", "sparsity", "clusters", "jr_weight", "adv_training")
        if points[c].nunique() > 1
    ]


def build_report(
    con: duckdb.DuckDBPyConnection, title: str, attack: str = "worst", eps: float | None = None
) -> str:
    """The report's HTML for the results behind ``con``."""
    eps = headline_eps(con, attack) if eps is None else eps
    counts = con.execute(
        "SELECT count(DISTINCT key) FILTER (WHERE status = 'complete'), "
        "count(DISTINCT key) FILTER (WHERE status <> 'complete'), string_agg(DISTINCT meta_study, ', ') "
        "FROM rows"
    ).fetchone()
    assert counts is not None
    complete, failed, studies = counts
    points = trial_points(con, attack, eps, per="config")
    front = pareto_front(con, attack, eps, per="config")
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">studies: {html.escape(str(studies))}; {complete} complete trials, {failed} failed; '
        f"robust accuracy under {html.escape(attack)} at eps {eps:g} (input scale 0-1); "
        f"points are configs, the mean over their folds; generated "
        f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}</p>",
        "<h2>Pareto front</h2>",
        _img(
            plots.pareto_scatter(
                points, front, title=f"robust accuracy ({attack} @ {eps:g}) against bytes"
            ),
            "Pareto scatter",
        ),
        _table(front.drop(columns=["config_id"])),
        "<h2>Robustness against eps</h2>",
    ]
    axes = _varying(points)
    # One line per value of the first axis that varies (the mean over the others): readable.
    curve = robustness_curve(con, by=[f"cfg_{axes[0]}"] if axes else [])
    parts.append(_img(plots.robustness_curves(curve), "robustness curves"))
    if len(axes) >= 2:
        x, y = ("bits", "sparsity") if {"bits", "sparsity"} <= set(axes) else (axes[0], axes[1])
        parts += [
            f"<h2>{html.escape(x)} x {html.escape(y)}</h2>",
            _img(plots.heatmap(points, x, y, "robust_acc"), "heatmap of robust accuracy"),
            _img(plots.heatmap(points, x, y, "bytes"), "heatmap of bytes"),
        ]
    parts.append("<h2>Each reduction alone and combined, against the uncompressed baseline</h2>")
    try:
        eff = reduction_effects(con, attack, eps, summary=True)
        parts.append(
            '<p class="note">Paired over folds with the float, unpruned, unclustered trial of the same '
            "config otherwise; delta = robust accuracy minus the baseline's; p-values of a paired "
            "t-test and a Wilcoxon signed-rank test (n/a below two pairs).</p>"
        )
        parts.append(_table(eff))
        ref = compare_to_baseline(con, attack, eps)
        parts += [
            "<h2>Reference model against the best robust point at equal or smaller size</h2>",
            _table(ref),
        ]
    except ValueError as err:
        parts.append(f'<p class="note">{html.escape(str(err))}</p>')
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_report(
    results: str | Path, out: str | Path, attack: str = "worst", eps: float | None = None
) -> Path:
    con = connect(results)
    out = Path(out)
    text = build_report(con, f"robustgrid report: {Path(str(results)).name}", attack, eps)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return out
