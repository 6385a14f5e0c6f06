"""The second paper's comparison: each reduction alone and combined against the uncompressed
config, and each combination against its worst single reduction (definitions:
``analysis.compare``'s docstring)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import duckdb
import numpy as np
import pandas as pd

from analysis.effects import reduction_effects
from analysis.inference import corrected_t, holm, mcnemar_exact
from analysis.paired import discordant, paired_points, robust_masks
from analysis.paper1 import _bad_where
from analysis.query import where_clause
from analysis.variants import (
    _KIND_OF,
    _REDUCTION_ORDER,
    ALPHA,
    KINDS,
    CompareError,
    cell_label,
)

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
            db, dc = discordant(ma[1], mb[1])
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
            pts = paired_points(con, attack, eps, norm, where)
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
            masks = robust_masks(con, keys, attack, eps, norm)
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
