"""Grid points: one combination of axis values each, its label, the axes' value orders.

A *point* is one combination of axis values (``bits``, ``sparsity``, ``clusters``,
``jr_weight``, ``adversarial``, ``jr_layers``, and ``model`` when the study has several
models); with k folds it stands for k trials, one per fold.  The axes are
``trainables.config.AXES`` (their names: ``AXIS_NAMES``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from trainables.config import AXES as AXIS_DEFS
from trainables.config import AXIS_NAMES, weight_bits

if TYPE_CHECKING:
    from grid.study import Study

# Axes whose values are mappings or models: a point holds their index in the study's list.
INDEXED = tuple(a.name for a in AXIS_DEFS if a.indexed)

# A point: axis name -> value (adversarial training and per-layer JR by their index in the study's list).
Point = dict[str, Any]


def indexed_axes(study: Study) -> tuple[str, ...]:
    """The indexed axes a point of ``study`` holds (``model`` only when there are several)."""
    return INDEXED if len(study.models) > 1 else INDEXED[:-1]


def points(study: Study) -> list[Point]:
    """Every grid point, in file order (model outermost, then bits; per-layer JR innermost)."""
    a = study.axes
    several = len(study.models) > 1
    return [
        {"bits": b, "sparsity": s, "clusters": c, "jr_weight": j, "adversarial": i, "jr_layers": k}
        | ({"model": m} if several else {})
        for m in range(len(study.models))
        for b in a.bits
        for s in a.sparsity
        for c in a.clusters
        for j in a.jr_weight
        for i in range(len(a.adversarial))
        for k in range(len(a.jr_layers))
    ]


def point_label(point: Mapping[str, Any]) -> str:
    """A stable, readable identity for a point (the folds' keys are its real identity).

    ``model`` appears only in points of a study with several models.
    """
    label = "|".join(f"{k}={point.get(k, 0)}" for k in AXIS_NAMES if k != "model" or k in point)
    if point.get("layers"):  # a per-layer point's canonical overrides
        label += "|layers=" + json.dumps(point["layers"], sort_keys=True)
    return label


def ordered_values(study: Study) -> dict[str, list[Any]]:
    """Each ordered axis's values from least to most compressed / regularised.

    Optuna sees these axes as the rank of their value (an integer), so TPE
    can learn that 8 bits lies between float and 4 bits; measured in
    benchmarks/search_efficiency.py against plain categorical axes.
    """
    a = study.axes
    return {
        name: rank_order(name, getattr(a, name))
        for name in ("bits", "sparsity", "clusters", "jr_weight")
    }


def rank_order(field: str, values: Sequence[Any]) -> list[Any]:
    """``values`` from least to most compressed / regularised (Optuna sees their rank)."""
    if field == "bits":
        return sorted(values, key=lambda b: (-weight_bits(b), b))  # float (32) first
    if field == "clusters":
        return sorted(values, key=lambda c: (c != 0, -c))  # 0 = unclustered first
    if field == "activation_bits":
        return sorted(values, reverse=True)
    return sorted(values)
