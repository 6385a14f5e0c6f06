"""Per-layer assignments on the Pareto front, against the uniform front (issue 22).

A study whose rows hold per-layer assignments (``cfg_layer_bits`` /
``cfg_layer_sparsity`` / ``cfg_layer_clusters`` non-empty, or the built
``meta_layer_*_json`` differing between layers) is read per (dataset, model):

- every config's point (robust accuracy under the selected attack, the
  per-example ``worst`` rows by default, and bytes; :func:`analysis.pareto.trial_points`)
  with its assignment: each weight layer's bits, sparsity and cluster count;
- ``uniform`` marks the points whose every weight layer has the same
  (bits, sparsity, clusters): today's grid points;
- a flash budget (``max_bytes``, on the selected size) keeps the points over it off
  both fronts (they are counted, never dropped silently);
- the front of all points within budget, the front of the uniform points within budget,
  their hypervolumes at one point, ``hv_ref_point`` (robust 0, bytes = the budget, else
  ``1.1 * 4 * params`` as grid.space does), and for each front point whether any uniform
  point within budget dominates it.

Reads rows only (DuckDB); no TensorFlow, no Ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from analysis.pareto import describe, hypervolume, nondominated, trial_points
from analysis.query import CONFIG_ID, columns

# The per-layer dimensions a weight layer carries: (name, the config column of the
# study-wide value, the per-layer override column, the as-built JSON column).
DIMENSIONS = (
    ("bits", "cfg_bits", "cfg_layer_bits", "meta_layer_bits_json"),
    ("sparsity", "cfg_sparsity", "cfg_layer_sparsity", "meta_layer_sparsity_json"),
    ("clusters", "cfg_clusters", "cfg_layer_clusters", "meta_layer_clusters_json"),
)


@dataclass
class LayerAssignments:
    """One (dataset, model)'s per-layer points and fronts (see the module's docstring).

    ``points``: one row per config (``trial_points(per='config')``'s columns) plus
    ``assignment`` ({layer: {'bits', 'sparsity', 'clusters'}}), ``uniform``,
    ``feasible`` (bytes within the budget; always True without one) and, on the front
    tables, ``uniform_dominated`` (some feasible uniform point dominates it).
    """

    dataset: str
    model: str
    layers: list[str]  # weight layers in the model's order
    points: pd.DataFrame
    front: pd.DataFrame  # the front of every feasible point
    uniform_front: pd.DataFrame  # the front of the feasible uniform points
    max_bytes: float | None
    hv_ref_point: tuple[float, float]  # (robust accuracy, bytes) the hypervolumes are bounded by
    hypervolume: float
    uniform_hypervolume: float
    attrs: dict[str, Any] = field(default_factory=dict)  # attack, eps, norm, size

    @property
    def infeasible(self) -> int:
        return int((~self.points.feasible).sum())

    @property
    def beyond_uniform(self) -> int:
        """Front points that are not uniform and that no feasible uniform point dominates."""
        f = self.front
        return int((~f.uniform & ~f.uniform_dominated).sum())


def _json(text: object) -> Any:
    if text is None or (isinstance(text, float) and np.isnan(text)) or text == "":
        return None
    try:
        return json.loads(str(text))
    except ValueError:
        return None


def _layer_order(layers_json: object, built: list[dict[str, Any]]) -> list[str]:
    """The weight layers in the model's order (meta_layers_json lists the footprint's layers in
    order); without it, the built JSON's names sorted."""
    listed = _json(layers_json)
    if isinstance(listed, list):
        names = [
            str(d["name"])
            for d in listed
            if isinstance(d, dict) and "name" in d and int(d.get("kernel_params", 1) or 0) > 0
        ]
        if names:
            return names
    return sorted({name for b in built if isinstance(b, dict) for name in b})


def _norm_value(dim: str, v: object) -> object:
    """One spelling per value, so a built '0.5' and an override 0.5 compare equal."""
    if dim == "bits":
        return str(v)
    if dim == "sparsity":
        return float(v)  # type: ignore[arg-type]
    return int(v)  # type: ignore[call-overload]


def _assignment(r: pd.Series, present: set[str]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """A config's weight layers and each one's bits / sparsity / clusters.

    The as-built JSON wins (ans_hybrid's realised widths); without it (rows of older
    revisions), the study-wide value with the config's per-layer overrides.
    """
    built = {dim: _json(r.get(meta)) if meta in present else None for dim, _, _, meta in DIMENSIONS}
    overrides = {
        dim: _json(r.get(col)) or {} if col in present else {} for dim, _, col, _ in DIMENSIONS
    }
    layers = _layer_order(r.get("meta_layers_json"), [b for b in built.values() if b])
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        cell = {}
        for dim, base, _, _ in DIMENSIONS:
            b = built[dim]
            if isinstance(b, dict) and layer in b:
                v = b[layer]
            else:
                v = overrides[dim].get(layer, r.get(base))
            cell[dim] = _norm_value(dim, v)
        out[layer] = cell
    return layers, out


def _is_uniform(assign: dict[str, dict[str, Any]]) -> bool:
    cells = list(assign.values())
    return all(c == cells[0] for c in cells[1:])


def budget_from(results: str | Path) -> int | None:
    """A flash budget the study recorded: ``max_bytes`` in a search.json (top level or under
    'objective' / 'headline' / 'budget') of the results folder or its studies; None when none
    says (several different budgets: an error, pass one)."""
    root = Path(str(results))
    if "://" in str(results) or not root.exists():
        return None
    found: set[int] = set()
    files = [root / "search.json", *sorted(root.glob("*/search.json"))]
    for path in files:
        if not path.is_file():
            continue
        data = _json(path.read_text())
        if not isinstance(data, dict):
            continue
        for holder in (data, data.get("objective"), data.get("headline"), data.get("budget")):
            if isinstance(holder, dict) and holder.get("max_bytes") is not None:
                found.add(int(holder["max_bytes"]))
    if len(found) > 1:
        raise ValueError(
            f"max_bytes: the studies under {results} record different budgets "
            f"({sorted(found)}): pass one"
        )
    return found.pop() if found else None


def _dominated_by(p: pd.DataFrame, by: pd.DataFrame) -> np.ndarray:
    """For each point of ``p``: does some point of ``by`` dominate it (robust up, bytes down)?"""
    if by.empty or p.empty:
        return np.zeros(len(p), dtype=bool)
    a, b = p.robust_acc.to_numpy()[:, None], p.bytes.to_numpy()[:, None]
    qa, qb = by.robust_acc.to_numpy()[None, :], by.bytes.to_numpy()[None, :]
    dom = (qa >= a) & (qb <= b) & ((qa > a) | (qb < b))  # (len(p), len(by))
    return dom.any(axis=1)


def _front(points: pd.DataFrame) -> pd.DataFrame:
    if points.empty:
        return points.copy()
    keep = nondominated(points[["robust_acc", "bytes"]].to_numpy(float), [True, False])
    return points[keep].sort_values(["bytes", "robust_acc"], ascending=[True, False])


def per_layer(
    con: duckdb.DuckDBPyConnection,
    attack: str = "worst",
    eps: float | None = None,
    *,
    norm: str | None = None,
    size: str = "encoded",
    max_bytes: float | None = None,
    where: str | None = None,
) -> list[LayerAssignments]:
    """Each (dataset, model) whose rows hold per-layer assignments (none: an empty list)."""
    have = set(columns(con))
    wanted = [c for dim in DIMENSIONS for c in dim[1:] if c in have]
    wanted += ["meta_layers_json"] if "meta_layers_json" in have else []
    pick = ", ".join(f"any_value({c}) AS {c}" for c in wanted)
    extra = f" AND ({where})" if where else ""
    configs = con.execute(
        f"SELECT {CONFIG_ID} AS config_id, {pick} FROM rows "
        f"WHERE status = 'complete'{extra} GROUP BY config_id"
    ).df()
    if configs.empty:
        return []
    present = set(configs.columns)
    layers_of: dict[str, list[str]] = {}
    assign_of: dict[str, dict[str, dict[str, Any]]] = {}
    per_layer_ids = set()
    for _, r in configs.iterrows():
        layers, assign = _assignment(r, present)
        layers_of[r.config_id], assign_of[r.config_id] = layers, assign
        overrides = any(_json(r.get(col)) for _, _, col, _ in DIMENSIONS if col in present)
        if overrides or not _is_uniform(assign):
            per_layer_ids.add(r.config_id)
    if not per_layer_ids:
        return []
    pts = trial_points(con, attack, eps, where=where, per="config", norm=norm, size=size)
    attrs = dict(pts.attrs)
    pts = pts[pts.config_id.isin(assign_of)].copy()
    pts["assignment"] = [assign_of[c] for c in pts.config_id]
    pts["uniform"] = [_is_uniform(assign_of[c]) for c in pts.config_id]
    pts["feasible"] = True if max_bytes is None else pts.bytes <= max_bytes
    out = []
    for (dataset, model), group in pts.groupby(["dataset", "model"], sort=True):
        if not set(group.config_id) & per_layer_ids:
            continue
        g = group.reset_index(drop=True)
        # The longest layer list (older rows without meta_layers_json may name fewer).
        layers = max((layers_of[c] for c in g.config_id), key=len)
        ok = g[g.feasible]
        front = _front(ok).copy()
        uni = _front(ok[ok.uniform]).copy()
        front["uniform_dominated"] = _dominated_by(front, ok[ok.uniform])
        uni["uniform_dominated"] = False
        params = float(g.params.max()) if g.params.notna().any() else 0.0
        ref = (0.0, float(max_bytes) if max_bytes is not None else 1.1 * 4.0 * params)
        hv = hypervolume(front[["robust_acc", "bytes"]].to_numpy(float), [True, False], ref)
        hv_u = hypervolume(uni[["robust_acc", "bytes"]].to_numpy(float), [True, False], ref)
        front, uni = front.reset_index(drop=True), uni.reset_index(drop=True)
        out.append(
            LayerAssignments(
                str(dataset), str(model), layers, g, front, uni, max_bytes, ref, hv, hv_u, attrs
            )
        )
    return out


def _num(v: object) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def cell_text(cell: dict[str, Any]) -> str:
    """'4', '4 s0.5', '8 s0.75 c8': bits, then sparsity and clusters where set."""
    text = str(cell["bits"])
    if cell.get("sparsity"):
        text += f" s{_num(cell['sparsity'])}"
    if cell.get("clusters"):
        text += f" c{cell['clusters']}"
    return text


def assignment_text(assign: dict[str, dict[str, Any]], layers: list[str]) -> str:
    """'conv1=8 conv2=4 s0.5 dense=ternary' (uniform: 'all=...')."""
    if assign and _is_uniform(assign):
        return "all=" + cell_text(next(iter(assign.values())))
    return ", ".join(f"{name}={cell_text(assign[name])}" for name in layers if name in assign)


def front_table(a: LayerAssignments) -> pd.DataFrame:
    """The front as a table: bytes, robust accuracy and its interval, clean accuracy, whether
    the point is uniform or dominated by a uniform point, and its assignment (one column per
    weight layer)."""
    f = a.front
    df = pd.DataFrame(
        {
            "bytes": f.bytes.to_numpy(float),
            "robust_acc": f.robust_acc.to_numpy(float),
            "robust_lo": f.robust_lo.to_numpy(float),
            "robust_hi": f.robust_hi.to_numpy(float),
            "clean_acc": f.clean_acc.to_numpy(float),
            "kind": ["uniform" if u else "per-layer" for u in f.uniform],
            "uniform_dominates": f.uniform_dominated.to_numpy(bool),
        }
    )
    if "jr_layers" in f and f.jr_layers.nunique(dropna=False) > 1:
        df["jr_layers"] = f.jr_layers.to_numpy()
    for layer in a.layers:
        df[layer] = [cell_text(s[layer]) if layer in s else "" for s in f.assignment]
    df["key"] = f.key.to_numpy()
    return df


def summary(a: LayerAssignments) -> str:
    """One paragraph of figures: budget and infeasible points, the fronts, their hypervolumes."""
    what = describe(
        a.attrs.get("attack", "worst"), a.attrs.get("eps", 0.0), a.attrs.get("norm", "inf")
    )
    n, nu = len(a.points), int(a.points.uniform.sum())
    budget = (
        f"budget {a.max_bytes:,.0f} B ({a.attrs.get('size', 'encoded')}): {a.infeasible} of {n} "
        "complete points over it, off the fronts"
        if a.max_bytes is not None
        else "no flash budget"
    )
    ratio = f"{a.hypervolume / a.uniform_hypervolume:.3f}" if a.uniform_hypervolume > 0 else "n/a"
    front_pl = int((~a.front.uniform).sum())
    verdict = (
        f"{a.beyond_uniform} of the front's {len(a.front)} points are per-layer assignments that "
        "no uniform point dominates"
        if a.beyond_uniform
        else "no per-layer assignment improves on the uniform front: every front point is "
        "uniform or dominated by a uniform point"
    )
    return (
        f"{a.dataset} / {a.model}: {n} configs ({nu} uniform, {n - nu} per-layer); robust accuracy "
        f"under the {what}; {budget}. Front: {len(a.front)} points ({front_pl} per-layer); uniform "
        f"front: {len(a.uniform_front)}. Hypervolume at (robust {a.hv_ref_point[0]:g}, "
        f"{a.hv_ref_point[1]:,.0f} B): all points {a.hypervolume:,.1f}, uniform only "
        f"{a.uniform_hypervolume:,.1f} (ratio {ratio}). {verdict}."
    )


def format_per_layer(a: LayerAssignments) -> str:
    """The section as plain text, for ``grid compare``."""
    table = front_table(a)
    cols = ["bytes", "robust_acc", "clean_acc", "kind", "uniform_dominates", *a.layers]
    cols += ["jr_layers"] if "jr_layers" in table else []
    width = {c: max([len(c), *(len(_cell(v, c)) for v in table[c])]) for c in cols}
    lines = [f"Per-layer assignments: {summary(a)}"]
    lines.append("  " + "  ".join(f"{c:>{width[c]}}" for c in cols))
    for _, r in table.iterrows():
        lines.append("  " + "  ".join(f"{_cell(r[c], c):>{width[c]}}" for c in cols))
    return "\n".join(lines)


def _cell(v: object, column: str = "") -> str:
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if column == "bytes":
        return f"{float(v):,.0f}"  # type: ignore[arg-type]
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)
