"""A self-contained HTML report of a study's results: tables and figures, no server needed.

    grid report RESULTS [--out report.html] [--attack NAME] [--eps E]

``build_report``/``write_report`` also take ``norm`` ('inf' | '2': the
attacks' norm, default L-inf for the worst rows) and ``size`` ('encoded' |
'tflite': which bytes the points carry).

Figures are embedded as PNG (base64), so the file can be mailed or archived.
With an :class:`Export` (``grid report --csv DIR --latex DIR --figures DIR
--formats png,svg,pdf``) every table also goes out as CSV (the numbers, not
the page's rounding) and LaTeX, and every figure as a file in each format.
"""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path

import duckdb
import pandas as pd

from analysis import plots
from analysis.baseline import compare_to_baseline
from analysis.effects import (
    jr_effects,
    reduction_effects,
    robustness_curve,
)
from analysis.pareto import SIZE_LABELS, describe, pareto_front, resolve, trial_points
from analysis.query import CONFIG_ID, columns, connect
from analysis.report_html import CSS, Export, html_table, img, varying_axes, with_ci
from trainables.headline import SIZES


def _masking(con: duckdb.DuckDBPyConnection, export: Export | None = None) -> list[str]:
    """A warning section listing the trials whose gradient-masking diagnostics fired (none: nothing)."""
    if "metric_masking_flags" not in columns(con):
        return []
    flagged = con.execute(
        "SELECT key, any_value(cfg_bits) AS bits, any_value(cfg_sparsity) AS sparsity, "
        "any_value(cfg_clusters) AS clusters, any_value(cfg_jr_weight) AS jr_weight, "
        "any_value(metric_masking_flags) AS flags, any_value(metric_masking_pgd_acc) AS pgd_large_eps_acc, "
        "any_value(metric_zero_grad_share) AS zero_grad_share FROM rows "
        "WHERE status = 'complete' AND coalesce(metric_masking_flags, '') <> '' GROUP BY key ORDER BY key"
    ).df()
    if flagged.empty:
        return []
    if export is not None:
        export.table("masking", flagged, "Trials whose gradient-masking checks fired")
    return [
        "<h2>Gradient masking suspected</h2>",
        f'<p class="note">{len(flagged)} trial(s) failed a masking check (PGD at a large eps '
        "leaves accuracy above ~0, zero input gradients, or white-box attacks weaker than "
        "black-box / transfer at the same eps): their robust accuracies may be overstated "
        "and are not robustness claims.</p>",
        html_table(flagged),
    ]


def _deployed(
    con: duckdb.DuckDBPyConnection, eps: float, norm: str, export: Export | None = None
) -> list[str]:
    """Keras against deployed robustness per config (analysis.deployed); nothing without deployed rows."""
    from analysis.deployed import keras_vs_deployed

    table = keras_vs_deployed(con, eps, norm)
    if table.empty:
        return []
    table = table.drop(columns=["config_id"])  # the config's JSON: its columns say it
    if export is not None:
        export.table("keras_vs_deployed", table, "Keras against deployed (int8 TFLite) robustness")
    return [
        "<h2>Keras against deployed (int8 TFLite) robustness</h2>",
        f'<p class="note">At eps {eps:g} ({"L-inf" if norm == "inf" else "L2"}): keras_worst is the '
        "QKeras model's per-example worst case; each deployed_* column a route on the int8 "
        "interpreter (transfer from the QAT model, BPDA PGD, query attacks on its dequantized "
        "scores) and deployed_worst their per-example worst case (95% Wilson interval); gap = "
        "deployed_worst - keras_worst. deployed_query_above_transfer: a query route left more "
        "examples robust than a gradient route beyond the paired interval (score masking by int8 "
        "outputs); deployed_disagrees: int8 and Keras predictions agree below 95%.</p>",
        html_table(table),
    ]


def _jr_on_off(
    con: duckdb.DuckDBPyConnection, attack: str, eps: float, norm: str, export: Export | None = None
) -> list[str]:
    """JR on against off at equal compression (analysis.effects.jr_effects); why not, else."""
    parts = ["<h2>Jacobian Regularization on against off at equal compression</h2>"]
    try:
        eff = jr_effects(con, attack, eps, norm=norm)
    except ValueError as err:
        return [*parts, f'<p class="note">{html.escape(str(err))}</p>']
    parts += [
        '<p class="note">Each config with JR (input-output or per layer) paired fold by fold '
        "with the same config without JR (same model, bits, sparsity, clusters, adversarial "
        "training, training settings); delta = robust accuracy with JR minus without, tested "
        "with the corrected resampled t over the folds, p_adjusted by Holm over the table.</p>",
        img(plots.jr_on_off(eff), "JR on against off", export, "jr_on_off"),
        html_table(eff.drop(columns=["dataset"] if eff["dataset"].nunique() == 1 else [])),
    ]
    if export is not None:
        export.table("jr_on_off", eff, "JR on against off at equal compression")
    return parts


def _per_layer(
    con: duckdb.DuckDBPyConnection,
    attack: str,
    eps: float,
    norm: str,
    size: str,
    max_bytes: float | None,
    export: Export | None = None,
) -> list[str]:
    """Per-layer assignments on the front against the uniform front (analysis.assignments);
    nothing for a study without per-layer rows."""
    from analysis.assignments import front_table, per_layer, summary

    found = per_layer(con, attack, eps, norm=norm, size=size, max_bytes=max_bytes)
    if not found:
        return []
    parts = [
        "<h2>Per-layer assignments</h2>",
        '<p class="note">Each weight layer\'s bits (colour), sparsity (s) and cluster count (c) '
        "for the points of the front, ordered by bytes; beside it, the front of every point and "
        "the front of the uniform points (every layer the same bits, sparsity and clusters) in "
        "the objective plane. Points over the flash budget are kept off both fronts. "
        "uniform_dominates: some uniform point within budget is at least as robust and as small "
        "(better in one).</p>",
    ]
    for a in found:
        name = f"per_layer_{a.dataset}_{a.model}"
        table = front_table(a)
        parts += [
            f"<p>{html.escape(summary(a))}</p>",
            img(
                plots.layer_assignments(a),
                f"per-layer assignments: {a.dataset} {a.model}",
                export,
                name,
            ),
            html_table(with_ci(table)),
        ]
        if export is not None:
            export.table(name, table, f"{a.dataset} / {a.model}: the front's per-layer assignments")
    return parts


def _paper_comparisons(con: duckdb.DuckDBPyConnection, export: Export | None = None) -> list[str]:
    """The papers' comparisons (analysis.compare): the gain table and a figure each; why not, else."""
    from analysis.compare import CompareError, paper1, paper2

    parts = [
        "<h2>Paper comparisons</h2>",
        '<p class="note">As <code>grid compare</code> prints them (its CSVs hold every '
        "figure). A variant: model, bits, per-layer JR, input-output JR and adversarial "
        "training; gain of A over B per attack kind: the mean over the kind's (attack, eps) "
        "cells both have of (acc_A - acc_B) / acc_B on fold means (cells with acc_B = 0 "
        "skipped); abs_diff: the mean of acc_A - acc_B over those cells.</p>",
    ]
    try:
        p1 = paper1(con)
        parts.append(
            img(
                plots.variant_bars(p1.kinds),
                "paper 1: robust accuracy per variant and attack kind",
                export,
                "paper1_variants",
            )
        )
        if export is not None:
            from analysis.compare import paper1_gain_table, paper1_wide

            for ds in sorted(p1.variants.dataset.unique()):
                export.table(f"paper1_{ds}", paper1_wide(p1, ds),
                             f"{ds}: robust accuracy per variant and attack (fold mean ± sd)")  # fmt: skip
            if not p1.gain.empty:
                export.table("paper1_gain", paper1_gain_table(p1),
                             "Relative gain of A over B per attack kind")  # fmt: skip
        if not p1.gain.empty:
            gain = p1.gain.assign(
                gain=[f"{100 * g:+.1f}%" if pd.notna(g) else "n/a" for g in p1.gain.gain]
            )
            parts.append(html_table(gain))
        parts += [f'<p class="note">{html.escape(n)}</p>' for n in p1.notes]
    except CompareError as err:
        parts.append(f'<p class="note">Paper 1: no table: {html.escape(str(err))}</p>')
    try:
        p2 = paper2(con)
        combos = p2[p2.reductions.str.contains("+", regex=False)]
        parts.append(
            '<p class="note">Paper 2: each combination of reductions against its worst single '
            "reduction (same training, same attack), fold by fold: corrected resampled t, Holm "
            "over the cell's combinations; below the diagonal the combination is less robust.</p>"
        )
        parts.append(
            img(
                plots.combination_vs_worst(p2),
                "paper 2: combinations against their worst single reduction",
                export,
                "paper2_combinations",
            )
        )
        if not combos.empty:
            cols = ["dataset", "model", "adv_training", "cell", "reductions", "bits", "sparsity",
                    "clusters", "robust_mean", "robust_sd", "worst_single", "worst_single_robust",
                    "delta_vs_worst", "p_vs_worst_adjusted", "verdict"]  # fmt: skip
            parts.append(html_table(combos[cols]))
            if export is not None:
                export.table("paper2_combinations", combos[cols],
                             "Combined reductions against their worst single reduction")  # fmt: skip
    except CompareError as err:
        parts.append(f'<p class="note">Paper 2: no table: {html.escape(str(err))}</p>')
    return parts


def build_report(
    con: duckdb.DuckDBPyConnection,
    title: str,
    attack: str = "worst",
    eps: float | None = None,
    *,
    norm: str | None = None,
    size: str = "encoded",
    export: Export | None = None,
    max_bytes: int | None = None,
) -> str:
    """The report's HTML for the results behind ``con`` (tables and figures also to ``export``;
    ``max_bytes``: a flash budget, points over it left off the fronts, the per-layer
    section's too, and counted)."""
    eps, norm = resolve(con, attack, eps, norm)
    what = describe(attack, eps, norm)
    counts = con.execute(
        "SELECT count(DISTINCT key) FILTER (WHERE status = 'complete'), "
        "count(DISTINCT key) FILTER (WHERE status <> 'complete'), string_agg(DISTINCT meta_study, ', ') "
        "FROM rows"
    ).fetchone()
    assert counts is not None
    complete, failed, studies = counts
    stale = con.execute(
        "SELECT count(DISTINCT key) FROM all_rows WHERE key NOT IN (SELECT key FROM rows)"
    ).fetchone()
    points = trial_points(con, attack, eps, per="config", norm=norm, size=size)
    within = None if max_bytes is None else f"{SIZES[size]} <= {int(max_bytes)}"
    front = pareto_front(con, attack, eps, per="config", norm=norm, size=size, where=within)
    budget = ""
    if max_bytes is not None:  # a constraint: points over it are stored, never on the front
        over = int((points["bytes"] > max_bytes).sum())
        budget = (
            f"; budget {max_bytes:,} B ({html.escape(size)}): {over} of {len(points)} complete "
            "point(s) over it, off the front"
        )
    if export is not None:
        export.table(
            "pareto_front", front, f"Pareto front: robust accuracy ({what}) up, bytes down"
        )
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">studies: {html.escape(str(studies))}; {complete} complete trials, {failed} failed'
        + (
            f"; {stale[0]} stale trial(s) of other results revisions left out"
            if stale and stale[0]
            else ""
        )
        + budget
        + f"; robust accuracy under the {html.escape(what)} (input scale 0-1); "
        f"size: {html.escape(SIZE_LABELS[size])}; "
        "points are configs, the mean over their folds, with the 95% Wilson interval of the "
        "count pooled over the folds' disjoint test sets; generated "
        f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}</p>",
        "<h2>Pareto front</h2>",
        img(
            plots.pareto_scatter(
                points, front, title=f"robust accuracy ({what}) against {size} bytes"
            ),
            "Pareto scatter",
            export,
            "pareto",
        ),
        html_table(with_ci(front)),
        *_per_layer(con, attack, eps, norm, size, max_bytes, export),
        *_masking(con, export),
        *_deployed(con, eps, norm, export),
        "<h2>Robustness against eps</h2>",
    ]
    axes = varying_axes(points)
    # One line per value of the first axis that varies (the mean over the others): readable.
    curve = robustness_curve(con, by=[f"cfg_{axes[0]}"] if axes else [], norm=norm)
    parts.append(
        '<p class="note">Lines: the mean over the group\'s trials; band: the min-max spread '
        "(groups span several configs, whose examples overlap).</p>"
    )
    parts.append(img(plots.robustness_curves(curve), "robustness curves", export, "robustness"))
    ids = ", ".join("'" + str(c).replace("'", "''") + "'" for c in front.config_id)
    if ids:
        front_curve = robustness_curve(con, where=f"{CONFIG_ID} IN ({ids})", norm=norm)
        parts += [
            '<p class="note">The Pareto front\'s configs; band: the 95% Wilson interval of the '
            "count pooled over each config's folds.</p>",
            img(
                plots.robustness_curves(front_curve),
                "robustness curves of the front",
                export,
                "robustness_front",
            ),
        ]
    if len(axes) >= 2:
        x, y = ("bits", "sparsity") if {"bits", "sparsity"} <= set(axes) else (axes[0], axes[1])
        parts += [
            f"<h2>{html.escape(x)} x {html.escape(y)}</h2>",
            img(
                plots.heatmap(points, x, y, "robust_acc"),
                "heatmap of robust accuracy",
                export,
                "heatmap_robust",
            ),
            img(plots.heatmap(points, x, y, "bytes"), "heatmap of bytes", export, "heatmap_bytes"),
        ]
    parts.append(
        "<h2>Each reduction alone and combined, against its own uncompressed baseline</h2>"
    )
    try:
        eff = reduction_effects(con, attack, eps, summary=True, norm=norm)
        parts.append(
            '<p class="note">Each config is paired fold by fold with the float, unpruned, '
            "unclustered trial of an otherwise identical config (JR, per-layer JR, "
            "adversarial training, seed, training); delta = robust accuracy minus the "
            "baseline's, averaged per (seed, fold) over the combination's configs; those means "
            "are tested with the corrected resampled t-test for repeated k-fold CV (Nadeau and "
            "Bengio; Bouckaert and Frank; n/a for a single holdout; holdouts over seeds: "
            "Nadeau and Bengio's random-subsampling correction where each seed drew its own "
            "split, the plain paired t over the seeds where the test split is fixed, its p "
            "conditional on that split, as the test column says); p_adjusted: Holm's "
            "correction over the table's tests.</p>"
        )
        parts.append(html_table(eff))
        if export is not None:
            export.table("reduction_effects", eff,
                         "Each reduction alone and combined against its uncompressed baseline")  # fmt: skip
    except ValueError as err:
        parts.append(f'<p class="note">{html.escape(str(err))}</p>')
    parts += _jr_on_off(con, attack, eps, norm, export)
    parts.append(
        "<h2>Undefended baseline against the best robust point at equal or smaller size</h2>"
    )
    try:
        ref = compare_to_baseline(con, attack, eps, norm=norm, size=size)
        parts.append(html_table(with_ci(ref)))
        if export is not None:
            export.table(
                "baseline",
                ref,
                "Undefended baseline against the best robust point at equal or smaller size",
            )
    except ValueError as err:
        parts.append(
            '<p class="note">No undefended baseline to compare with: the results hold no config '
            "that is float, unpruned, unclustered, without JR and without adversarial "
            f"training. ({html.escape(str(err))})</p>"
        )
    parts += _paper_comparisons(con, export)
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_report(
    results: str | Path,
    out: str | Path,
    attack: str = "worst",
    eps: float | None = None,
    *,
    norm: str | None = None,
    size: str = "encoded",
    stale: bool = False,
    export: Export | None = None,
    max_bytes: int | None = None,
) -> Path:
    """``build_report`` of ``results`` into ``out``; the flash budget, unless given, is the one
    the studies' search.json records (analysis.assignments.budget_from), else none."""
    from analysis.assignments import budget_from

    con = connect(results, stale=stale)
    out = Path(out)
    if max_bytes is None:
        max_bytes = budget_from(results)
    text = build_report(
        con, f"robustgrid report: {Path(str(results)).name}", attack, eps, norm=norm, size=size,
        export=export, max_bytes=max_bytes,
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return out
