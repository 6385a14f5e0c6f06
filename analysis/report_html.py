"""The report's HTML pieces: its style, tables and inline figures, and where tables and
figures also go as files (:class:`Export`: CSV, LaTeX, PNG/SVG/PDF).  Used by
:mod:`analysis.report`."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from analysis import plots
from trainables.config import AXES

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
.table { max-width: 100%; overflow-x: auto; margin: 0.5em 0; }  /* wide tables scroll inside the page */
table { border-collapse: collapse; font-size: 0.8em; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; }
.note { color: #555; font-size: 0.9em; }
"""


FIGURE_FORMATS = ("png", "svg", "pdf")  # what matplotlib writes without a display


@dataclass
class Export:
    """Where the report's tables and figures also go as files; ``written`` lists them."""

    csv: Path | None = None  # one CSV per table
    latex: Path | None = None  # one booktabs .tex per table
    figures: Path | None = None  # each figure in each of ``formats``
    formats: tuple[str, ...] = ("png",)
    written: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FIGURE_FORMATS]
        if bad or not self.formats:
            raise ValueError(
                f"formats: {','.join(bad) or '(none)'}: figures are written as "
                f"{', '.join(FIGURE_FORMATS)} (comma-separated)"
            )
        for folder in (self.csv, self.latex, self.figures):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)

    def table(self, name: str, df: pd.DataFrame, caption: str) -> None:
        from analysis.compare import latex_table

        if self.csv is not None:
            self.written.append(self.csv / f"{name}.csv")
            df.to_csv(self.written[-1], index=False)
        if self.latex is not None:
            self.written.append(self.latex / f"{name}.tex")
            self.written[-1].write_text(latex_table(df, caption))

    def figure(self, name: str, fig: Figure) -> None:
        if self.figures is not None:
            self.written += plots.save_formats(fig, self.figures / name, self.formats)


def img(fig: Figure, alt: str, export: Export | None = None, name: str = "") -> str:
    if export is not None:
        export.figure(name, fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def html_table(df: pd.DataFrame, floats: str = "{:.3f}") -> str:
    fmt = {c: (lambda v: f"{v:,.0f}") if c in ("bytes", "params", "nonzero") else floats.format
           for c in df.columns if pd.api.types.is_float_dtype(df[c])}  # fmt: skip
    out = df.to_html(index=False, formatters=fmt, na_rep="n/a", border=0, escape=True)
    return f'<div class="table">{out}</div>'


def varying_axes(points: pd.DataFrame) -> list[str]:
    """The axes whose values differ among the points (their first column, as the points name it)."""
    names = [a.columns[0].removeprefix("cfg_") for a in AXES]
    return [c for c in names if c in points and points[c].nunique() > 1]


def with_ci(df: pd.DataFrame) -> pd.DataFrame:
    """Tables show a point's robust accuracy with its interval: 'robust 95% CI' = '[lo, hi]'."""
    df = df.copy()
    if {"robust_lo", "robust_hi"} <= set(df.columns):
        pos = list(df.columns).index("robust_lo")
        text = [
            f"[{lo:.3f}, {hi:.3f}]" if pd.notna(lo) else "n/a"
            for lo, hi in zip(df.robust_lo, df.robust_hi, strict=True)
        ]
        df = df.drop(columns=["robust_lo", "robust_hi"])
        df.insert(pos, "robust 95% CI", text)
    drop = ["config_id", "robust_k", "samples", "clean_k", "test_samples", "clean_lo", "clean_hi"]
    return df.drop(columns=[c for c in drop if c in df.columns])
