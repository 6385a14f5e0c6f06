"""Figures for analysts (matplotlib, no screen needed): Pareto scatter, robustness curves, heatmaps.

Colours are the Okabe-Ito palette and the cividis colour map, both readable
with the common colour-vision deficiencies; every axis names its unit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only: safe on servers, in tests and in the report

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from trainables.config import weight_bits

if TYPE_CHECKING:
    from analysis.assignments import LayerAssignments

OKABE_ITO = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
]  # fmt: skip
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
CMAP = "cividis"
# Figures with an element per variant or config stay readable (and within Agg's 2^16 pixels a
# side) past these: a study of 10^4 trials has ~2,000 variants.  Below them a figure shows
# everything; above, a named selection, and its title says which (the tables keep every row).
MAX_BARS = 24  # variants per panel of variant_bars
MAX_ROWS = 60  # configs in jr_on_off
MAX_CURVES = 16  # lines per panel of robustness_curves (a front of thousands of configs)


def _save(fig: Figure, path: str | Path | None) -> Figure:
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def save_formats(fig: Figure, stem: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """``fig`` as ``stem.<format>`` for each format (png, svg, pdf: vector for papers); the paths."""
    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        fig.savefig(path, format=fmt, dpi=120)
        paths.append(path)
    return paths


def pareto_scatter(
    points: pd.DataFrame,
    front: pd.DataFrame,
    title: str = "",
    colour_by: str = "bits",
    path: str | Path | None = None,
) -> Figure:
    """Every point (robust accuracy against bytes, log scale), coloured by ``colour_by``; the front drawn.

    Error bars: the 95% Wilson interval of each point (``robust_lo``/``robust_hi``,
    where the counts are known).  The size axis says which bytes (``points.attrs['size']``).
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (value, g) in enumerate(points.groupby(colour_by, sort=True)):
        colour = OKABE_ITO[i % len(OKABE_ITO)]
        if {"robust_lo", "robust_hi"} <= set(g.columns) and g["robust_lo"].notna().any():
            ok = g[g["robust_lo"].notna()]
            yerr = np.vstack(
                [ok["robust_acc"] - ok["robust_lo"], ok["robust_hi"] - ok["robust_acc"]]
            ).clip(min=0)
            ax.errorbar(
                ok["bytes"], ok["robust_acc"], yerr=yerr, fmt="none", ecolor=colour,
                alpha=0.45, lw=0.9, capsize=2,
            )  # fmt: skip
        ax.scatter(
            g["bytes"], g["robust_acc"], s=28, alpha=0.8, label=f"{colour_by} {value}",
            color=colour, marker=MARKERS[i % len(MARKERS)],
        )  # fmt: skip
    f = front.sort_values("bytes")
    ax.step(f["bytes"], f["robust_acc"], where="post", color="black", lw=1.2, label="Pareto front")
    ax.scatter(f["bytes"], f["robust_acc"], s=70, facecolors="none", edgecolors="black")
    ax.set_xscale("log")
    size = points.attrs.get("size", "encoded")
    what = "TFLite int8 flatbuffer" if size == "tflite" else "smallest encoding"
    ax.set_xlabel(f"model size (bytes: {what}; log scale)")
    ax.set_ylabel("robust accuracy (fraction; bars: 95% Wilson)")
    ax.set_title(title or "Pareto front: robust accuracy up, bytes down")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def robustness_curves(
    curve: pd.DataFrame,
    label_by: list[str] | None = None,
    title: str = "",
    path: str | Path | None = None,
) -> Figure:
    """Accuracy against eps, one panel per attack and norm, a line per group (at most
    ``MAX_CURVES``, evenly spaced over the groups' sorted order; the panel's title says so).

    The band is the 95% Wilson interval of the group's pooled count (``lo``/``hi``)
    where it is defined, else the min-max spread over the group's trials.
    """
    curve = curve.copy()
    if "norm" not in curve.columns:
        curve["norm"] = "inf"
    curve["norm"] = curve["norm"].fillna("inf")
    panels = sorted({(str(a), str(n)) for a, n in zip(curve["attack"], curve["norm"], strict=True)})
    # By default a line per group, labelled by the group columns whose values differ.
    label_by = label_by or [
        c
        for c in curve.columns
        if c not in {"attack", "norm", "eps", "mean", "std", "min", "max", "trials", "lo", "hi"}
        and curve[c].nunique(dropna=False) > 1
    ]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False, sharey=True
    )
    for ax, (attack, norm) in zip(axes[0], panels, strict=True):
        sub = curve[(curve["attack"] == attack) & (curve["norm"] == norm)]
        groups = list(sub.groupby(label_by, sort=True, dropna=False)) if label_by else [((), sub)]
        every = len(groups)
        if every > MAX_CURVES:  # evenly spaced over the groups' order: the ends stay
            keep = sorted({round(i * (every - 1) / (MAX_CURVES - 1)) for i in range(MAX_CURVES)})
            groups = [groups[i] for i in keep]
        for i, (key, g) in enumerate(groups):
            key = key if isinstance(key, tuple) else (key,)
            name = ", ".join(
                f"{c.removeprefix('cfg_')}={v}" for c, v in zip(label_by, key, strict=True)
            )
            g = g.sort_values("eps")
            colour, marker = (
                OKABE_ITO[i % len(OKABE_ITO)],
                MARKERS[(i // len(OKABE_ITO)) % len(MARKERS)],
            )
            ax.plot(g["eps"], g["mean"], marker=marker, ms=4, color=colour, label=name or attack)
            wilson = "lo" in g.columns and bool(g["lo"].notna().all())
            low, high = (g["lo"], g["hi"]) if wilson else (g["min"], g["max"])
            ax.fill_between(g["eps"], low, high, color=colour, alpha=0.15, lw=0)
        shown = f"; {len(groups)} of {every} lines, evenly spaced" if every > len(groups) else ""
        ax.set_title(f"{attack} ({'L-inf' if norm == 'inf' else 'L' + norm}){shown}", fontsize=9)
        ax.set_xlabel(f"eps ({'L-inf' if norm == 'inf' else 'L' + norm}, input scale 0-1)")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("accuracy under attack (fraction; band: 95% Wilson, else min-max)")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def heatmap(
    points: pd.DataFrame,
    x: str = "bits",
    y: str = "sparsity",
    value: str = "robust_acc",
    title: str = "",
    path: str | Path | None = None,
) -> Figure:
    """``value`` over two axes (the mean over the other axes), annotated."""
    unit = {
        "robust_acc": "robust accuracy (fraction)",
        "clean_acc": "clean accuracy (fraction)",
        "bytes": "model size (bytes)",
    }.get(value, value)
    table = points.pivot_table(index=y, columns=x, values=value, aggfunc="mean")
    if x == "bits":
        table = table.reindex(sorted(table.columns, key=bits_order), axis=1)
    fig, ax = plt.subplots(figsize=(1.2 * len(table.columns) + 2.5, 0.6 * len(table.index) + 2))
    data = table.to_numpy(dtype=float)
    im = ax.imshow(data, cmap=CMAP, aspect="auto")
    ax.set_xticks(range(len(table.columns)), [str(c) for c in table.columns])
    ax.set_yticks(
        range(len(table.index)), [f"{v:g}" if isinstance(v, float) else str(v) for v in table.index]
    )
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    lo, hi = np.nanmin(data), np.nanmax(data)
    for (i, j), v in np.ndenumerate(data):
        if np.isfinite(v):
            text = f"{v:,.0f}" if value == "bytes" else f"{v:.2f}"
            dark = (v - lo) / (hi - lo or 1.0) < 0.5  # cividis is dark at the low end
            ax.text(
                j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black"
            )
    fig.colorbar(im, ax=ax, label=unit)
    ax.set_title(title or f"{unit} by {x} and {y}")
    return _save(fig, path)


def bits_order(v: object) -> tuple[int, int, str]:
    """Bits from float (widest) to binary, by storage width (trainables.config.weight_bits;
    ans_hybrid at its nominal width); a stochastic scheme before its deterministic twin."""
    s = str(v)
    return (-weight_bits(s), 0 if s.startswith("stochastic_") else 1, s)


def variant_bars(kinds: pd.DataFrame, title: str = "", path: str | Path | None = None) -> Figure:
    """The first paper's figure: robust accuracy per variant per attack kind, one panel per dataset.

    ``kinds`` is ``analysis.compare.Paper1.kinds``: a bar is a variant's mean
    over folds of each fold's mean over the kind's (attack, eps) cells; the
    error bar is the sd over folds (none for one fold).  Each panel has its own
    legend; B (the ``versus`` variant) is cross-hatched, A and B outlined in black.
    """
    datasets = sorted(kinds["dataset"].unique())
    panels, total = [], []
    for ds in datasets:
        sub = kinds[kinds["dataset"] == ds]
        total.append(sub["variant"].nunique())
        panels.append(sorted(_shown_variants(sub, MAX_BARS)))
    ncols = [2 if len(vs) > 4 else 1 for vs in panels]
    rows_in = [math.ceil(len(vs) / c) for vs, c in zip(panels, ncols, strict=True)]
    heights = [2.4 + 0.2 * r + 0.5 for r in rows_in]  # axes + legend under them, inches
    fig, axes = plt.subplots(
        len(datasets), 1, figsize=(8.5, sum(heights)), squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )  # fmt: skip
    for ax, ds, here, ncol, every in zip(axes[:, 0], datasets, panels, ncols, total, strict=True):
        sub = kinds[kinds["dataset"] == ds]
        present = [k for k in ("white", "black", "transfer", "worst") if k in set(sub["kind"])]
        width = 0.8 / max(1, len(here))
        for j, v in enumerate(here):
            g = sub[sub["variant"] == v].set_index("kind")
            ks = [k for k in present if k in g.index]
            xs = [present.index(k) + (j - (len(here) - 1) / 2) * width for k in ks]
            role = str(g["role"].iloc[0]) if "role" in g else ""
            ax.bar(
                xs, g.loc[ks, "robust_mean"], width=width * 0.95,
                color=OKABE_ITO[j % 7],  # not black: it would hide the error bar
                yerr=g.loc[ks, "robust_sd"].fillna(0.0), capsize=2, ecolor="#333333",
                hatch="xx" if role == "B" else ("//" if j >= 7 else ""),
                edgecolor="black" if role in ("A", "B") else "none", linewidth=1.2,
                label=v + (f" [{role}]" if role else ""),
            )  # fmt: skip
        names = {"white": "white-box", "black": "black-box", "transfer": "transfer",
                 "worst": "worst case\n(every attack)"}  # fmt: skip
        ax.set_xticks(range(len(present)), [names[k] for k in present])
        ax.set_ylabel("robust accuracy\n(fraction; bars: fold sd)")
        ax.set_ylim(0, 1)
        shown = (
            ""
            if len(here) == every
            else f" ({len(here)} of {every} variants: A, B and the most robust)"
        )
        ax.set_title(f"{ds}: mean over each kind's (attack, eps) cells{shown}", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(
            fontsize=7, ncol=ncol, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.12)
        )
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _shown_variants(sub: pd.DataFrame, cap: int) -> list[str]:
    """Every variant of one dataset's ``kinds`` rows, or past ``cap`` of them: A and B, then the
    most robust (mean robust accuracy over the kinds, ties by label)."""
    variants = list(dict.fromkeys(sub["variant"]))
    if len(variants) <= cap:
        return variants
    roles = sub.groupby("variant")["role"].first() if "role" in sub else pd.Series(dtype=str)
    keep = [v for v in sorted(variants) if str(roles.get(v, "")) in ("A", "B")]
    mean = sub.groupby("variant")["robust_mean"].mean()
    ranked = sorted((v for v in variants if v not in keep), key=lambda v: (-mean[v], v))
    return keep + ranked[: max(0, cap - len(keep))]


def combination_vs_worst(
    table: pd.DataFrame, title: str = "", path: str | Path | None = None
) -> Figure:
    """The second paper's figure: each combination's robust accuracy against its worst single reduction's.

    ``table`` is ``analysis.compare.paper2``'s; one point per combination
    config and (attack, eps) cell, coloured by adversarial training; below the
    diagonal the combination is less robust than its worst single reduction;
    filled markers: a significant difference (Holm-adjusted, ``verdict``
    'worse' or 'better'), hollow: none or untested.
    """
    rows = table[table["worst_single_robust"].notna()]
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for i, (adv, g) in enumerate(rows.groupby("adv_training", sort=True)):
        c = OKABE_ITO[i % len(OKABE_ITO)]
        sig = g["verdict"].isin(["worse", "better"])
        m = MARKERS[i % len(MARKERS)]
        if sig.any():
            ax.scatter(g.loc[sig, "worst_single_robust"], g.loc[sig, "robust_mean"], s=36,
                       color=c, marker=m, label=f"adv. training {adv}: significant")  # fmt: skip
        if (~sig).any():
            ax.scatter(g.loc[~sig, "worst_single_robust"], g.loc[~sig, "robust_mean"], s=36,
                       facecolors="none", edgecolors=c, marker=m,
                       label=f"adv. training {adv}: not significant / untested")  # fmt: skip
    ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--", label="combination = worst single")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("worst single reduction's robust accuracy (fold mean, fraction)")
    ax.set_ylabel("combination's robust accuracy (fold mean, fraction)")
    ax.set_title(title or "Combined reductions against their worst single reduction")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def jr_on_off(effects: pd.DataFrame, title: str = "", path: str | Path | None = None) -> Figure:
    """JR on against off at equal compression: one row per JR config (``analysis.effects.jr_effects``),
    a hollow dot for robust accuracy without JR, a filled one with it, the arrow between them;
    the error bar on the filled dot is the 95% interval of the paired difference over folds."""
    df = effects.reset_index(drop=True)
    every = len(df)
    if every > MAX_ROWS:  # the smallest adjusted p first, then the largest |delta|; table order
        p = df["p_adjusted"] if "p_adjusted" in df else pd.Series(np.nan, index=df.index)
        rank = pd.DataFrame({"p": p.fillna(np.inf), "d": -df["delta"].abs().fillna(0.0)})
        df = df.loc[sorted(rank.sort_values(["p", "d"], kind="stable").index[:MAX_ROWS])]
        df = df.reset_index(drop=True)
        title = title or (
            f"JR on against off at equal compression ({MAX_ROWS} of {every} configs: "
            "the smallest adjusted p)"
        )
    labels = [
        " ".join(str(v) for v in (r.model, r.bits, f"sp {r.sparsity:g}", f"cl {r.clusters}"))
        + f"  JR {r.jr_layers if r.jr_layers not in (None, '{}') else r.jr_weight}"
        for r in df.itertuples()
    ]
    fig, ax = plt.subplots(figsize=(8.5, 1.2 + 0.32 * len(df)))
    y = np.arange(len(df))[::-1]
    ax.hlines(y, df.robust_off, df.robust_acc, color="#999999", linewidth=1)
    ax.scatter(
        df.robust_off, y, facecolors="white", edgecolors=OKABE_ITO[0], label="JR off", zorder=3
    )
    ci = df.delta_ci95.fillna(0.0)
    ax.errorbar(
        df.robust_acc, y, xerr=ci, fmt="o", color=OKABE_ITO[1], capsize=2, label="JR on", zorder=4
    )
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlabel("robust accuracy (fraction; bar: 95% interval of the paired difference)")
    ax.set_xlim(0, 1)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "JR on against off at equal compression", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def layer_assignments(
    a: LayerAssignments, title: str = "", path: str | Path | None = None
) -> Figure:
    """Left: the front's points (columns, by bytes) x the weight layers (rows), each cell coloured
    by that layer's bits and annotated with its sparsity (s) and cluster count (c).  Right: the
    same front and the uniform points' front in the objective plane (robust accuracy against
    bytes), the points over the budget drawn hollow and the budget as a line."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    front = a.front
    labels = sorted(
        {str(s[layer]["bits"]) for s in a.points.assignment for layer in s}, key=bits_order
    )
    rank = {b: i for i, b in enumerate(labels)}  # widest (float) first
    cmap = ListedColormap(
        plt.get_cmap(CMAP)(np.linspace(0.95, 0.1, max(len(labels), 2)))[: len(labels)]
    )
    norm = BoundaryNorm(np.arange(len(labels) + 1) - 0.5, len(labels))
    n_cols = max(len(front), 1)
    fig, (ax, bx) = plt.subplots(
        1, 2, figsize=(min(0.9 * n_cols + 3.5, 16) + 5.5, 0.45 * len(a.layers) + 3.2),
        gridspec_kw={"width_ratios": [min(0.9 * n_cols + 3.5, 16), 5.5]},
    )  # fmt: skip
    grid = np.full((len(a.layers), n_cols), np.nan)  # (layers, front points)
    for j, assign in enumerate(front.assignment):
        for i, layer in enumerate(a.layers):
            if layer in assign:
                grid[i, j] = rank[str(assign[layer]["bits"])]
                extra = []
                if assign[layer]["sparsity"]:
                    extra.append(f"s{assign[layer]['sparsity']:g}")
                if assign[layer]["clusters"]:
                    extra.append(f"c{assign[layer]['clusters']}")
                text = str(assign[layer]["bits"]) + ("\n" + " ".join(extra) if extra else "")
                dark = rank[str(assign[layer]["bits"])] >= len(labels) / 2  # cividis: dark end
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")  # fmt: skip
    im = ax.imshow(grid, cmap=cmap, norm=norm, aspect="auto")
    ax.set_yticks(range(len(a.layers)), a.layers)
    ax.set_xticks(
        range(len(front)),
        [f"{b:,.0f} B\n{r:.2f}{'' if u else ' *'}" for b, r, u in
         zip(front.bytes, front.robust_acc, front.uniform, strict=True)],
        fontsize=7,
    )  # fmt: skip
    ax.set_xlabel("front points: bytes, robust accuracy (* per-layer assignment)")
    ax.set_ylabel("weight layer (model order)")
    bar = fig.colorbar(im, ax=ax, ticks=range(len(labels)), fraction=0.05)
    bar.ax.set_yticklabels(labels)
    bar.set_label("weight bits", fontsize=8, labelpad=2)
    ax.set_title(title or f"{a.dataset} / {a.model}: per-layer assignments on the front")

    pts = a.points
    ok, over = pts[pts.feasible], pts[~pts.feasible]
    bx.scatter(ok.bytes, ok.robust_acc, s=14, color="#999999", alpha=0.7, label="points")
    if not over.empty:
        bx.scatter(over.bytes, over.robust_acc, s=18, facecolors="none", edgecolors="#999999",
                   label="over budget")  # fmt: skip
    for f, colour, name in ((front, OKABE_ITO[3], "front (all)"),
                            (a.uniform_front, OKABE_ITO[0], "uniform front")):  # fmt: skip
        f = f.sort_values("bytes")
        bx.step(f.bytes, f.robust_acc, where="post", color=colour, lw=1.3, label=name)
        bx.scatter(f.bytes, f.robust_acc, s=36, color=colour)
    if a.max_bytes is not None:
        bx.axvline(a.max_bytes, color="black", ls="--", lw=1, label=f"budget {a.max_bytes:,.0f} B")
    bx.set_xscale("log")
    size = a.attrs.get("size", "encoded")
    bx.set_xlabel(
        f"model size (bytes: {'TFLite int8' if size == 'tflite' else 'smallest encoding'}; log)"
    )
    bx.set_ylabel("robust accuracy (fraction)")
    bx.grid(True, which="both", alpha=0.3)
    bx.legend(fontsize=7, loc="lower right")
    bx.set_title("fronts in the objective plane")
    return _save(fig, path)
