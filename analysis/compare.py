"""The two papers' comparisons, computed from a results folder (``grid compare RESULTS``).

Definitions first:

- **cell**: one (attack, norm, eps) the results hold, e.g. ``pgd@0.031``; its
  **kind** is the attack's: ``white`` (gradients of the attacked model),
  ``black`` (predictions only) or ``transfer`` (crafted on a float surrogate),
  from the rows' ``attack_kind`` (from the attack's name for rows without it);
  ``worst`` for the trials' worst rows (attack ``worst``: per example, robust
  only if robust under every attack of the cell's norm and eps, over the
  examples all of them attacked), a kind of its own, so the gain and the
  second paper's tests are also given on the per-example worst case.
- **fold mean**: a variant's robust accuracy in a cell, averaged over its
  complete trials there (its folds); **sd** their sample standard deviation
  (NaN for one fold); **n** how many trials.
- **variant** (first paper): what the first paper varies, per dataset: the
  model, ``bits`` (with any per-layer bits), per-layer JR (on/off and its
  weights), input-output JR's weight, adversarial training (method and eps),
  and pruning / clustering where present.  Its readable label, e.g.
  ``resnet8 float``, ``stq_cnn stochastic_ternary +JR(all=0.01)``,
  ``digits_cnn 4 +ioJR(0.1) +adv(pgd 0.03)`` (:func:`variant_label`).  Every
  other setting (epochs, seed, ...) is pooled; a variant that spans several
  configs gets a warning (filter with ``where=``).
- **reference model** of a dataset (``REFERENCE_MODELS``): MLPerf Tiny's
  ResNet-8 on images (``cifar10``, ``svhn``), DS-CNN on keyword spotting
  (``speech_commands``), and the stand-in ``digits_cnn`` on the embedded digits.
- **relative gain of A over B** for one kind: over the cells of that kind in
  which both A and B have complete trials, with a and b their fold means,
  ``gain = mean over cells with b > 0 of (a - b) / b`` (a fraction: 0.083 is
  the paper's "8.3% higher"); cells with b = 0 have no ratio and are counted
  in ``skipped``; ``abs_diff = mean over all shared cells of (a - b)`` (an
  accuracy difference; x 100 for points).  Defaults: B is the dataset's
  reference model in float without defences (no JR of either kind, no
  adversarial training, no pruning, clustering or per-layer bits); A is the
  ``stochastic_ternary`` variant with per-layer JR and no adversarial
  training, preferring a model other than the reference (the first by label
  when several qualify; the others are named in ``notes``).

Second paper (:func:`paper2`), per cell and adversarial-training method:
each reduction (quantization, pruning, clustering) alone and every
combination, with its fold mean and sd, its paired difference against the
uncompressed config of the same training (``analysis.effects.reduction_effects``:
corrected resampled t, exact McNemar, Holm over the cell's configs), and, for
a combination, the paired difference against its **worst single reduction**:
of the configs that apply exactly one of the combination's reductions at the
combination's setting (same bits, or sparsity, or clusters; everything else
identical), the one with the lowest fold mean over the folds both have.  That
difference is tested fold by fold the same way (corrected t, exact McNemar on
the per-example masks summed over folds; Holm over the cell's combinations).
``verdict``: ``worse`` / ``better`` when the Holm-adjusted corrected-t p is
below ``alpha`` (0.05) with that sign, ``no significant difference``
otherwise, ``untested: <why>`` when no test can be made (a single fold, a
missing single reduction).  Choosing the lowest single makes "worse" the
harder claim, never the easier one.

Reads the DuckDB views of :func:`analysis.query.connect`: rows of stale
results revisions are already left out.  Accuracies are fractions.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from analysis.effects import _discordant, _masks, _paired_points, reduction_effects
from analysis.inference import corrected_t, holm, mcnemar_exact
from analysis.query import CONFIG_ID, where_clause
from trainables.config import BLACK_BOX, TRANSFER, WHITE_BOX
from trainables.rows import WORST

# 'worst': the trials' stored worst rows (per example, robust under every attack of the
# cell's norm and eps, over the examples all of them attacked: trainables/worst.py).
KINDS = ("white", "black", "transfer", "worst")
KIND_NAMES = {"white": "white-box", "black": "black-box", "transfer": "transfer",
              "worst": "worst case over the attacks"}  # fmt: skip
_KIND_MARK = {"white": "w:", "black": "b:", "transfer": "t:", "worst": ""}  # column header prefix
REFERENCE_MODELS = {
    "cifar10": "resnet8",
    "svhn": "resnet8",
    "speech_commands": "ds_cnn",
    "digits": "digits_cnn",
}
DEFAULT_A_BITS = "stochastic_ternary"
ALPHA = 0.05

_KIND_OF = {
    **{str(a): "white" for a in WHITE_BOX},
    **{str(a): "black" for a in BLACK_BOX},
    **{str(a): "transfer" for a in TRANSFER},
    WORST: "worst",
}
_VARIANT_COLUMNS = [
    "model", "bits", "layer_bits", "sparsity", "clusters", "jr_layers", "jr_weight",
    "adv_training", "adv_eps", "layer_sparsity", "layer_clusters", "layer_activation_bits",
]  # fmt: skip
_REDUCTION_ORDER = {"quantization": 0, "pruning": 1, "clustering": 2}


class CompareError(ValueError):
    """A comparison that the results cannot support; the message says why."""


# ---- labels --------------------------------------------------------------------------------


def _json_map(text: object) -> dict[str, object]:
    if text is None or (isinstance(text, float) and math.isnan(text)) or text == "":
        return {}
    value = json.loads(str(text))
    return dict(value) if isinstance(value, dict) else {}


def _num(v: object) -> str:
    return f"{v:g}" if isinstance(v, int | float) else str(v)


def variant_label(
    model: str,
    bits: str,
    *,
    jr_layers: object = "{}",
    jr_weight: float = 0.0,
    adv_training: str = "none",
    adv_eps: float | None = None,
    sparsity: float = 0.0,
    clusters: int = 0,
    layer_bits: object = "{}",
    layer_sparsity: object = "{}",
    layer_clusters: object = "{}",
    layer_activation_bits: object = "{}",
) -> str:
    """The readable label of a variant: ``'<model> <bits>'`` plus what it adds.

    ``bits{conv1:8}`` per-layer bits, ``act{act1:4}`` per-layer activation widths,
    ``sparsity 0.5``, ``sparsity{conv2:0.75}`` per-layer, ``clusters 16``,
    ``clusters{conv2:4}`` per-layer,
    ``+JR(all=0.01)`` per-layer JR, ``+ioJR(0.1)`` input-output JR,
    ``+adv(pgd 0.03)`` adversarial training.
    """
    parts = [str(model), str(bits)]
    lb = _json_map(layer_bits)
    if lb:
        parts.append("bits{" + ",".join(f"{k}:{_num(v)}" for k, v in sorted(lb.items())) + "}")
    la = _json_map(layer_activation_bits)
    if la:
        parts.append("act{" + ",".join(f"{k}:{_num(v)}" for k, v in sorted(la.items())) + "}")
    if sparsity and sparsity > 0:
        parts.append(f"sparsity {sparsity:g}")
    ls = _json_map(layer_sparsity)
    if ls:
        parts.append("sparsity{" + ",".join(f"{k}:{_num(v)}" for k, v in sorted(ls.items())) + "}")
    if clusters and clusters > 0:
        parts.append(f"clusters {int(clusters)}")
    lc = _json_map(layer_clusters)
    if lc:
        parts.append("clusters{" + ",".join(f"{k}:{_num(v)}" for k, v in sorted(lc.items())) + "}")
    jl = _json_map(jr_layers)
    if jl:
        parts.append("+JR(" + ",".join(f"{k}={_num(v)}" for k, v in sorted(jl.items())) + ")")
    if jr_weight and jr_weight > 0:
        parts.append(f"+ioJR({jr_weight:g})")
    if adv_training and adv_training != "none":
        eps = "" if adv_eps is None or pd.isna(adv_eps) else f" {adv_eps:g}"
        parts.append(f"+adv({adv_training}{eps})")
    return " ".join(parts)


def cell_label(attack: str, norm: str, eps: float) -> str:
    """``pgd@0.031``; L2 cells say so: ``cw_l2@0.5(L2)``."""
    return f"{attack}@{eps:g}" + ("" if norm == "inf" else f"(L{norm})")


def _is_undefended_float(r: Any) -> bool:
    """``r``: a row (a Series or an itertuples row) with the ``_VARIANT_COLUMNS``."""
    return bool(
        r.bits == "float"
        and not _json_map(r.layer_bits)
        and not _json_map(r.jr_layers)
        and not (r.jr_weight and r.jr_weight > 0)
        and r.adv_training == "none"
        and not (r.sparsity and r.sparsity > 0)
        and not (r.clusters and r.clusters > 0)
        and not any(
            float(str(v)) > 0 for v in _json_map(getattr(r, "layer_sparsity", "{}")).values()
        )
        and not any(
            float(str(v)) > 0 for v in _json_map(getattr(r, "layer_clusters", "{}")).values()
        )
    )


def match_label(wanted: str, known: Sequence[str], flag: str) -> str:
    """The known label ``wanted`` names: exact, then case-insensitive, then a unique substring.

    Otherwise a :class:`CompareError` naming ``flag``, the value and the known labels.
    """
    if wanted in known:
        return wanted
    low = wanted.strip().lower()
    same = [k for k in known if k.lower() == low]
    if len(same) == 1:
        return same[0]
    hits = [k for k in known if low in k.lower()]
    if len(hits) == 1:
        return hits[0]
    listing = "; ".join(repr(k) for k in sorted(known))
    if hits:
        raise CompareError(
            f"{flag}: {wanted!r} matches {len(hits)} variants: "
            + "; ".join(repr(k) for k in sorted(hits))
            + ": give more of the label"
        )
    raise CompareError(f"{flag}: no variant {wanted!r}; known variants: {listing}")


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


# ---- second paper --------------------------------------------------------------------------


def _cells(con: duckdb.DuckDBPyConnection, where: str | None) -> list[tuple[str, str, float, str]]:
    try:
        rows = con.execute(
            "SELECT attack, coalesce(attack_norm, 'inf'), eps, any_value(attack_kind) "
            "FROM rows WHERE status = 'complete' AND attack IS NOT NULL AND attack <> 'none'"
            f"{where_clause(where)} GROUP BY ALL ORDER BY 1, 2, 3"
        ).fetchall()
    except duckdb.Error as err:
        raise _bad_where(where, err) from None
    out = []
    for attack, norm, eps, kind in rows:
        k = kind if kind in KINDS else _KIND_OF.get(str(attack), "white")
        out.append((str(attack), str(norm), float(eps), str(k)))
    # One cell per (attack, norm, eps) even where rows disagree on the kind.
    return list({(a, n, e): (a, n, e, k) for a, n, e, k in out}.values())


def _null(v: object) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


# What a trial applying only one reduction shares with a combination (besides its pair id):
# the reduction's own settings, compared as pandas' ``==`` does (a null never matches), except
# activation_bits, where null (the float width) matches null.
_SINGLE_KEYS = {
    "quantization": ("bits", "layer_bits", "activation_bits", "layer_activation_bits"),
    "pruning": ("sparsity", "layer_sparsity"),
    "clustering": ("clusters", "layer_clusters"),
}


def _single_key(part: str, pair_id: object, values: Sequence[object]) -> tuple[object, ...] | None:
    """A trial's lookup key among the ``part``-alone trials (None: a null that matches nothing)."""
    if _null(pair_id):
        return None
    out: list[object] = [pair_id]
    for col, v in zip(_SINGLE_KEYS[part], values, strict=True):
        if _null(v):
            if col != "activation_bits":
                return None
            v = None
        out.append(v)
    return tuple(out)


def _versus_worst_singles(
    pts: pd.DataFrame, combos: Sequence[str], masks: dict[str, tuple[str, np.ndarray] | str]
) -> dict[str, dict[str, object]]:
    """Each combination config of ``combos`` against its worst single reduction, fold by fold.

    A single of ``part`` applies only that reduction, at the combination's setting, with the
    combination's pair id (everything else identical): quantization alone is unpruned and
    unclustered (per-layer overrides included), pruning alone float and unclustered,
    clustering alone float and unpruned.  The trials are indexed once by (pair id, the
    reduction's settings), so each combination costs a lookup (a scan per combination is
    quadratic in the configs)."""
    no_ls = (pts.layer_sparsity.fillna("{}") == "{}").to_numpy()
    no_lc = (pts.layer_clusters.fillna("{}") == "{}").to_numpy()
    unpruned = (pts.sparsity == 0).to_numpy() & no_ls
    unclustered = (pts.clusters == 0).to_numpy() & no_lc
    is_float = (pts.bits == "float").to_numpy()
    alone = {
        "quantization": unpruned & unclustered,
        "pruning": is_float & unclustered,
        "clustering": is_float & unpruned,
    }
    pair = pts.pair_id.tolist()
    values = {c: pts[c].tolist() for cols in _SINGLE_KEYS.values() for c in cols}
    index: dict[str, dict[tuple[object, ...], list[int]]] = {}
    for part, cols in _SINGLE_KEYS.items():
        found = index[part] = {}
        for i in np.flatnonzero(alone[part]).tolist():
            key = _single_key(part, pair[i], [values[c][i] for c in cols])
            if key is not None:
                found.setdefault(key, []).append(i)
    config_id = pts.config_id.tolist()
    fold = pts.fold.tolist()
    robust = pts.robust_acc.to_numpy(float)
    keys = pts.key.tolist()
    reductions = pts.reductions.tolist()
    cfg_folds = pts.cfg_folds.tolist()
    at: dict[str, list[int]] = {}
    wanted = set(combos)
    for i, cid in enumerate(config_id):
        if cid in wanted:
            at.setdefault(cid, []).append(i)

    def versus(rows: list[int]) -> dict[str, object]:
        first = rows[0]
        singles = []
        for part in str(reductions[first]).split("+"):
            cols = _SINGLE_KEYS[part]
            key = _single_key(part, pair[first], [values[c][first] for c in cols])
            sel = index[part].get(key, []) if key is not None else []
            if not sel:
                return {"why": f"no {part}-alone config"}
            n_configs = len({config_id[j] for j in sel if not _null(config_id[j])})
            if n_configs > 1:
                return {"why": f"{n_configs} {part}-alone configs match"}
            # (combination trial, single trial) of the same fold, in the combination's order
            paired = [(i, j) for i in rows for j in sel if fold[j] == fold[i]]
            if not paired:
                return {"why": f"the {part}-alone config shares no fold"}
            singles.append((part, paired))
        # The worst single: the lowest mean over the folds it shares with the combination.
        part, paired = min(
            singles, key=lambda s: (float(robust[[j for _, j in s[1]]].mean()), s[0])
        )
        combo_acc = robust[[i for i, _ in paired]]
        single_acc = robust[[j for _, j in paired]]
        deltas = combo_acc - single_acc
        test = corrected_t(deltas, int(cfg_folds[first]))
        b = c = 0
        usable = True
        for i, j in paired:
            ma, mb = masks.get(keys[i]), masks.get(keys[j])
            if not isinstance(ma, tuple) or not isinstance(mb, tuple) or ma[0] != mb[0]:
                usable = False
                break
            db, dc = _discordant(ma[1], mb[1])
            b, c = b + db, c + dc
        return {
            "worst_single": part,
            "worst_single_robust": float(single_acc.mean()),
            "vs_worst_pairs": len(paired),
            "delta_vs_worst": float(deltas.mean()),
            "delta_vs_worst_ci95": test.half_ci95,
            "p_vs_worst": test.p_value,
            "mcnemar_b_vs_worst": b if usable else pd.NA,
            "mcnemar_c_vs_worst": c if usable else pd.NA,
            "p_mcnemar_vs_worst": mcnemar_exact(b, c) if usable else math.nan,
            "why": "" if np.isfinite(test.p_value) else f"{test.test}",
        }

    return {cid: versus(at[cid]) for cid in combos if cid in at}


PAPER2_COLUMNS = [
    "dataset", "model", "adv_training", "attack", "kind", "norm", "eps", "cell", "reductions",
    "bits", "sparsity", "clusters", "jr_weight", "jr_layers", "folds", "robust_mean",
    "robust_sd", "uncompressed_robust", "delta", "delta_ci95", "p_value", "p_adjusted",
    "p_mcnemar", "p_mcnemar_adjusted", "worst_single", "worst_single_robust", "delta_vs_worst",
    "delta_vs_worst_ci95", "p_vs_worst", "p_vs_worst_adjusted", "mcnemar_b_vs_worst",
    "mcnemar_c_vs_worst", "p_mcnemar_vs_worst", "below_worst_single", "verdict",
]  # fmt: skip


def paper2(
    con: duckdb.DuckDBPyConnection, where: str | None = None, alpha: float = ALPHA
) -> pd.DataFrame:
    """The second paper's table: each reduction alone and combined, per cell and adversarial training.

    One row per compressed config and cell (columns ``PAPER2_COLUMNS``; see
    the module docstring).  ``delta`` .. ``p_mcnemar_adjusted`` are
    :func:`analysis.effects.reduction_effects`'s (against the uncompressed
    config of the same fold, adversarial training and everything else), Holm
    over the cell's configs; ``*_vs_worst``: the combination against its worst
    single reduction, Holm over the cell's combinations.  A CompareError when
    there are no attacked rows, no uncompressed config, or nothing compressed.
    """
    cells = _cells(con, where)
    if not cells:
        raise CompareError(
            "paper 2: no complete attacked rows (attack <> 'none') in the results"
            + (f" matching {where!r}" if where else "")
        )
    parts = []
    heard: list[str] = []  # the cells' warnings, said once below
    for attack, norm, eps, kind in cells:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            try:
                eff = reduction_effects(con, attack, eps, where, norm=norm)
            except ValueError as err:
                raise CompareError(f"paper 2: {err}") from None
            pts = _paired_points(con, attack, eps, norm, where)
        heard += [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        if eff.empty:
            continue
        eff = eff.assign(
            attack=attack, kind=kind, norm=norm, eps=eps, cell=cell_label(attack, norm, eps)
        )
        combos = [cid for cid, r in zip(eff.config_id, eff.reductions, strict=True) if "+" in r]
        versus: dict[str, dict[str, object]] = {}
        if combos:
            # All masks the singles may need: every trial sharing a combination's pair id.
            ids = set(pts[pts.config_id.isin(combos)].pair_id)
            keys = pts[pts.config_id.isin(combos)].key.tolist()
            keys += pts[pts.pair_id.isin(ids)].key.tolist()
            masks = _masks(con, keys, attack, eps, norm)
            versus = _versus_worst_singles(pts, combos, masks)
        extra = pd.DataFrame([versus.get(cid, {"why": ""}) for cid in eff.config_id])
        eff = pd.concat([eff.reset_index(drop=True), extra], axis=1)
        for col in ("worst_single", "worst_single_robust", "delta_vs_worst", "delta_vs_worst_ci95",
                    "p_vs_worst", "mcnemar_b_vs_worst", "mcnemar_c_vs_worst", "p_mcnemar_vs_worst"):  # fmt: skip
            if col not in eff:
                eff[col] = math.nan if col != "worst_single" else ""
        combo_rows = eff.reductions.str.contains("+", regex=False)
        eff["p_vs_worst_adjusted"] = math.nan
        eff.loc[combo_rows, "p_vs_worst_adjusted"] = holm(
            eff.loc[combo_rows, "p_vs_worst"].to_numpy(dtype=float)
        )
        eff["below_worst_single"] = [
            bool(d < 0) if c and pd.notna(d) else pd.NA
            for c, d in zip(combo_rows, eff.delta_vs_worst, strict=True)
        ]
        eff["verdict"] = [
            _verdict(c, d, p, why, alpha)
            for c, d, p, why in zip(combo_rows, eff.delta_vs_worst, eff.p_vs_worst_adjusted,
                                    eff.why, strict=True)
        ]  # fmt: skip
        parts.append(eff)
    if heard:
        warnings.warn(
            f"paper 2: {len(heard)} warning(s) over {len(cells)} cell(s), the first: {heard[0]}",
            UserWarning,
            stacklevel=2,
        )
    if not parts:
        raise CompareError(
            "paper 2: no compressed config (quantized, pruned or clustered) has an uncompressed "
            "config of the same training to compare with"
        )
    df = pd.concat(parts, ignore_index=True)
    df = df.rename(
        columns={"robust_acc": "robust_mean", "robust_std": "robust_sd",
                 "baseline_robust_acc": "uncompressed_robust"}
    )  # fmt: skip
    df["worst_single"] = df["worst_single"].fillna("")
    df["_n"] = df.reductions.str.count("[+]")
    df["_o"] = df.reductions.map(lambda r: "".join(str(_REDUCTION_ORDER[p]) for p in r.split("+")))
    df = df.sort_values(
        ["dataset", "model", "kind", "attack", "norm", "eps", "adv_training", "_n", "_o", "bits",
         "sparsity", "clusters"],
        key=lambda s: s.map(KINDS.index) if s.name == "kind" else s,
    )  # fmt: skip
    return df[PAPER2_COLUMNS].reset_index(drop=True)


def _verdict(combo: bool, delta: float, p: float, why: object, alpha: float) -> str:
    if not combo:
        return ""
    if pd.isna(delta):
        return f"untested: {why}"
    if not np.isfinite(p):
        return f"untested: {why or 'no test'}"
    if p < alpha:
        return "worse" if delta < 0 else "better"
    return "no significant difference"


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
