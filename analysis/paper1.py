"""The first paper's comparison: every variant in every cell, and A's relative gain over B
(definitions: ``analysis.compare``'s docstring)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from analysis.query import CONFIG_ID, where_clause
from analysis.variants import (
    _KIND_OF,
    _VARIANT_COLUMNS,
    DEFAULT_A_BITS,
    KIND_NAMES,
    KINDS,
    REFERENCE_MODELS,
    CompareError,
    _is_undefended_float,
    _json_map,
    cell_label,
    match_label,
    variant_label,
)

# ---- first paper ---------------------------------------------------------------------------


@dataclass
class Paper1:
    """The first paper's tables (all long, one row per entry; see the module docstring).

    ``variants``: dataset, variant, role ('A', 'B' or ''), reference (the
    dataset's reference model), attack, kind, norm, eps, cell, n, robust_mean,
    robust_sd, clean_mean, bytes, tflite_bytes, configs.
    ``kinds``: per dataset, variant and kind: cells, n, robust_mean (the mean
    over folds of each fold's mean over the kind's cells), robust_sd.
    ``gain``: per dataset and kind: variant (A), versus (B), cells, skipped,
    acc_a, acc_b (means over the shared cells), gain, abs_diff, cell_list.
    ``notes``: what was chosen and what could not be computed, and why.
    """

    variants: pd.DataFrame
    kinds: pd.DataFrame
    gain: pd.DataFrame
    notes: list[str] = field(default_factory=list)


_PAPER1_SQL = f"""
    SELECT key, any_value({CONFIG_ID}) AS config_id, any_value(fold) AS fold,
           any_value(cfg_dataset) AS dataset, any_value(cfg_model) AS model,
           any_value(cfg_bits) AS bits, any_value(coalesce(cfg_layer_bits, '{{}}')) AS layer_bits,
           any_value(coalesce(cfg_layer_sparsity, '{{}}')) AS layer_sparsity,
           any_value(coalesce(cfg_layer_clusters, '{{}}')) AS layer_clusters,
           any_value(coalesce(cfg_layer_activation_bits, '{{}}')) AS layer_activation_bits,
           any_value(coalesce(cfg_sparsity, 0)) AS sparsity,
           any_value(coalesce(cfg_clusters, 0)) AS clusters,
           any_value(coalesce(cfg_jr_layers, '{{}}')) AS jr_layers,
           any_value(coalesce(cfg_jr_weight, 0)) AS jr_weight,
           any_value(coalesce(cfg_adv_training, 'none')) AS adv_training,
           any_value(cfg_adv_eps) AS adv_eps,
           attack, any_value(attack_kind) AS kind, attack_norm AS norm, eps,
           avg(metric_robust_acc) AS robust, any_value(metric_clean_acc) AS clean,
           any_value(metric_bytes) AS bytes, any_value(metric_tflite_bytes) AS tflite_bytes
    FROM rows
    WHERE status = 'complete' AND attack IS NOT NULL AND attack <> 'none' WHERE_EXTRA
    GROUP BY key, attack, attack_norm, eps
"""


def _bad_where(where: str | None, err: Exception) -> CompareError:
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return CompareError(f"where: {where!r} is not a predicate over the rows: {first}")


def check_where(con: duckdb.DuckDBPyConnection, where: str | None) -> None:
    """A CompareError naming ``where`` when it is not a DuckDB predicate over the rows."""
    if where:
        try:
            con.execute(f"SELECT count(*) FROM rows WHERE true{where_clause(where)}").fetchone()
        except duckdb.Error as err:
            raise _bad_where(where, err) from None


def _trial_cells(con: duckdb.DuckDBPyConnection, where: str | None) -> pd.DataFrame:
    """One row per trial x cell, with the trial's variant label."""
    try:
        df = con.execute(_PAPER1_SQL.replace("WHERE_EXTRA", where_clause(where))).df()
    except duckdb.Error as err:
        raise _bad_where(where, err) from None
    if df.empty:
        return df
    known = df["kind"].isin(KINDS)
    df.loc[~known, "kind"] = df.loc[~known, "attack"].map(_KIND_OF).fillna("white")
    df["norm"] = df["norm"].fillna("inf")
    df["variant"] = [
        variant_label(
            r.model, r.bits, jr_layers=r.jr_layers, jr_weight=r.jr_weight,
            adv_training=r.adv_training, adv_eps=r.adv_eps, sparsity=r.sparsity,
            clusters=r.clusters, layer_bits=r.layer_bits, layer_sparsity=r.layer_sparsity,
            layer_clusters=r.layer_clusters, layer_activation_bits=r.layer_activation_bits,
        )
        for r in df.itertuples()
    ]  # fmt: skip
    df["cell"] = [cell_label(a, n, e) for a, n, e in zip(df.attack, df.norm, df.eps, strict=True)]
    return df


def _sd(x: pd.Series) -> float:
    return float(x.std(ddof=1)) if len(x) > 1 else math.nan


def _default_a(vs: pd.DataFrame, ref_model: str | None) -> tuple[str | None, list[str]]:
    """The default variant A of one dataset, and the other candidates."""
    cands = vs[
        (vs.bits == DEFAULT_A_BITS)
        & vs.jr_layers.map(lambda j: bool(_json_map(j)))
        & (vs.adv_training == "none")
        & ~(vs.sparsity > 0)
        & ~(vs.clusters > 0)
    ]
    if cands.empty:
        return None, []
    order = cands.assign(_ref=cands.model == ref_model).sort_values(["_ref", "variant"])
    labels = list(order.variant)
    return labels[0], labels[1:]


def paper1(
    con: duckdb.DuckDBPyConnection,
    variant: str | None = None,
    versus: str | None = None,
    where: str | None = None,
) -> Paper1:
    """The first paper's comparison: every variant against every cell, and A's gain over B.

    ``variant`` / ``versus`` choose A and B by label (:func:`match_label`);
    None: the defaults of the module docstring, per dataset.  ``where``: a
    DuckDB predicate over the rows.  A CompareError when the results hold no
    attacked trials, or a label is unknown.
    """
    cells = _trial_cells(con, where)
    if cells.empty:
        raise CompareError(
            "paper 1: no complete attacked rows (attack <> 'none') in the results"
            + (f" matching {where!r}" if where else "")
        )
    notes: list[str] = []
    known = sorted(set(cells.variant))
    a_label = match_label(variant, known, "--variant") if variant else None
    b_label = match_label(versus, known, "--versus") if versus else None
    if a_label is not None and a_label == b_label:
        raise CompareError(f"--variant and --versus name the same variant {a_label!r}")

    spans = cells.groupby(["dataset", "variant"]).config_id.nunique()
    for (ds, v), n in spans[spans > 1].items():
        warnings.warn(
            f"paper 1: variant {v!r} on {ds} spans {n} configs (settings outside the variant "
            "differ: epochs, seed, ...); its folds are pooled: filter with where= to separate them",
            UserWarning,
            stacklevel=2,
        )

    per_cell = (
        cells.groupby(["dataset", "variant", "attack", "kind", "norm", "eps", "cell"], sort=True)
        .agg(
            n=("key", "nunique"),
            robust_mean=("robust", "mean"),
            robust_sd=("robust", _sd),
        )
        .reset_index()
    )
    # Per-variant figures over its trials (any attack row carries them).
    trials = cells.drop_duplicates("key")
    per_variant = (
        trials.groupby(["dataset", "variant"])
        .agg(
            clean_mean=("clean", "mean"),
            bytes=("bytes", "mean"),
            tflite_bytes=("tflite_bytes", "mean"),
            configs=("config_id", "nunique"),
            **{c: (c, "first") for c in _VARIANT_COLUMNS},
        )
        .reset_index()
    )

    roles: dict[tuple[str, str], str] = {}
    gain_rows = []
    for ds, vs in per_variant.groupby("dataset", sort=True):
        ds = str(ds)
        ref_model = REFERENCE_MODELS.get(ds)
        b = b_label
        if b is None:
            refs = vs[(vs.model == ref_model) & vs.apply(_is_undefended_float, axis=1)]
            if refs.empty:
                notes.append(
                    f"{ds}: no gain: no reference model rows (B default: {ref_model or 'no reference model known for this dataset'}"
                    f" in float without JR, adversarial training, pruning or clustering); "
                    "name B with --versus"
                )
                continue
            b = str(refs.variant.iloc[0])
        a = a_label
        if a is None:
            a, others = _default_a(vs, ref_model)
            if a is None:
                notes.append(
                    f"{ds}: no gain: no {DEFAULT_A_BITS} variant with per-layer JR (the default A); "
                    "name A with --variant"
                )
                continue
            if others:
                notes.append(
                    f"{ds}: A defaults to {a!r}; also candidates: "
                    + "; ".join(repr(o) for o in others)
                    + " (choose with --variant)"
                )
        have = set(vs.variant)
        missing = [f"{flag} {lab!r}" for flag, lab in (("A", a), ("B", b)) if lab not in have]
        if missing:
            notes.append(f"{ds}: no gain: no rows of " + " and ".join(missing))
            continue
        roles[(ds, a)] = "A"
        roles[(ds, b)] = "B"
        here = per_cell[per_cell.dataset == ds]
        for kind in KINDS:
            ka = here[(here.variant == a) & (here.kind == kind)].set_index("cell").robust_mean
            kb = here[(here.variant == b) & (here.kind == kind)].set_index("cell").robust_mean
            shared = sorted(set(ka.index) & set(kb.index))
            if not shared:
                if len(ka) or len(kb):
                    notes.append(f"{ds}: no {KIND_NAMES[kind]} cell has both A and B")
                continue
            av, bv = ka[shared].to_numpy(float), kb[shared].to_numpy(float)
            ok = bv > 0
            gain_rows.append(
                {
                    "dataset": ds,
                    "kind": kind,
                    "variant": a,
                    "versus": b,
                    "cells": len(shared),
                    "skipped": int((~ok).sum()),
                    "acc_a": float(av.mean()),
                    "acc_b": float(bv.mean()),
                    "gain": float(np.mean((av[ok] - bv[ok]) / bv[ok])) if ok.any() else math.nan,
                    "abs_diff": float(np.mean(av - bv)),
                    "cell_list": ",".join(shared),
                }
            )

    variants = per_cell.merge(per_variant, on=["dataset", "variant"])
    variants["role"] = [roles.get((d, v), "") for d, v in zip(variants.dataset, variants.variant, strict=True)]  # fmt: skip
    variants["reference"] = [_is_reference(r) for r in variants.itertuples()]
    front = ["dataset", "variant", "role", "reference", "attack", "kind", "norm", "eps", "cell",
             "n", "robust_mean", "robust_sd", "clean_mean", "bytes", "tflite_bytes", "configs"]  # fmt: skip
    variants = variants[front + [c for c in _VARIANT_COLUMNS if c not in front]]
    gain = pd.DataFrame(
        gain_rows,
        columns=["dataset", "kind", "variant", "versus", "cells", "skipped", "acc_a", "acc_b",
                 "gain", "abs_diff", "cell_list"],
    )  # fmt: skip
    return Paper1(variants, _kinds(cells, roles), gain, notes)


def _is_reference(r: Any) -> bool:
    """The dataset's reference model in float without defences (B's default); ``r`` a row
    (itertuples) with the ``_VARIANT_COLUMNS``."""
    return bool(REFERENCE_MODELS.get(str(r.dataset)) == r.model and _is_undefended_float(r))


def _kinds(cells: pd.DataFrame, roles: dict[tuple[str, str], str]) -> pd.DataFrame:
    """Per dataset, variant and kind: each fold's mean over the kind's cells, then mean and sd."""
    per_fold = cells.groupby(["dataset", "variant", "kind", "key"]).robust.mean().reset_index()
    out = (
        per_fold.groupby(["dataset", "variant", "kind"])
        .agg(n=("key", "nunique"), robust_mean=("robust", "mean"), robust_sd=("robust", _sd))
        .reset_index()
    )
    ncells = cells.groupby(["dataset", "variant", "kind"]).cell.nunique().rename("cells")
    out = out.merge(ncells.reset_index(), on=["dataset", "variant", "kind"])
    out["role"] = [roles.get((d, v), "") for d, v in zip(out.dataset, out.variant, strict=True)]
    out["kind"] = pd.Categorical(out["kind"], KINDS, ordered=True)
    out = out.sort_values(["dataset", "kind", "variant"]).reset_index(drop=True)
    out["kind"] = out["kind"].astype(str)
    return out[["dataset", "variant", "role", "kind", "cells", "n", "robust_mean", "robust_sd"]]
