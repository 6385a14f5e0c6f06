"""A study's axes as a search space: grid points, Optuna distributions, samplers.

A *point* is one combination of axis values (``bits``, ``sparsity``,
``clusters``, ``jr_weight``, ``adversarial``, ``jr_layers``, and ``model``
when the study has several models: a single-model study's points, labels and
Optuna space are what they were before models became an axis); with k folds it stands for k
trials, one per fold.  Every strategy draws points from the same axis
values, so a searched point is always a grid point and its trial keys are
the grid's keys: results of a grid, a random and an Optuna search over the
same axes mix in one store.

Objectives and the front: :mod:`grid.objectives`; points and labels: :mod:`grid.points`;
per-layer spaces: :mod:`grid.layerspace`.  Their names are re-exported here
(``from grid import space``; ``space.point_label``...).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from grid.layerspace import (
    ACTIVATION_KIND,
    FITS,
    LAYER_FIELDS,
    WEIGHT_FIELDS,
    WEIGHT_KINDS,
    Assignment,
    LayerSpace,
    LayerSpaceError,
    act_default,
    canonical,
    config_point,
    full_assignment,
    layer_to_params,
    layer_to_point,
    model_layers,
    normalize_kind,
    param_name,
    random_assignments,
    resolve_layers,
    seed_points,
)
from grid.objectives import (
    IDEAL,
    Front,
    Objectives,
    complete_values,
    describe_values,
    fmt_value,
    front,
    objectives,
)
from grid.points import (
    AXIS_NAMES,
    INDEXED,
    Point,
    indexed_axes,
    ordered_values,
    point_label,
    points,
    rank_order,
)

if TYPE_CHECKING:  # Optuna is imported only where a search needs it
    import optuna

    from grid.sections import Search
    from grid.study import Study
    from trainables.config import TrialConfig

__all__ = [
    "ACTIVATION_KIND",
    "AXIS_NAMES",
    "FITS",
    "IDEAL",
    "INDEXED",
    "LAYER_FIELDS",
    "WEIGHT_FIELDS",
    "WEIGHT_KINDS",
    "Assignment",
    "Front",
    "LayerSpace",
    "LayerSpaceError",
    "Objectives",
    "Point",
    "act_default",
    "canonical",
    "complete_values",
    "config_point",
    "describe_point",
    "describe_values",
    "distributions",
    "fmt_value",
    "front",
    "full_assignment",
    "grid_trials",
    "in_space",
    "indexed_axes",
    "layer_to_params",
    "layer_to_point",
    "make_sampler",
    "model_layers",
    "normalize_kind",
    "objectives",
    "ordered_values",
    "param_name",
    "point_label",
    "points",
    "random_assignments",
    "random_points",
    "rank_order",
    "resolve_layers",
    "seed_points",
    "to_params",
    "to_point",
]


def grid_trials(
    study: Study, pts: Sequence[Point]
) -> tuple[dict[str, list[TrialConfig]], dict[str, list[str]]]:
    """Each point's trials (one per fold) and their keys, by point label.

    The same as ``study.point_trials(p)`` and each trial's ``key``, built for many points at
    once: the study's common settings once, one validation and one identity dump per point
    (a grid of 10^5 trials is planned in seconds, not a minute).
    """
    common = study._common()
    trials, keys = {}, {}
    for p in pts:
        label = point_label(p)
        ts = study.point_trials(p, common)
        trials[label] = ts
        keys[label] = ts[0].fold_keys(t.fold for t in ts)  # the folds differ in fold alone
    return trials, keys


def random_points(study: Study, n: int, seed: int) -> list[Point]:
    """``n`` distinct grid points drawn uniformly without replacement (a seeded permutation);
    for a per-layer space, distinct seeded random assignments (:func:`random_assignments`)."""
    if study.search.layers is not None:
        return random_assignments(study, n, seed)
    pts = points(study)
    random.Random(seed).shuffle(pts)
    return pts[:n]


def distributions(study: Study) -> dict[str, optuna.distributions.BaseDistribution]:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    ls = study.layer_space()
    dists: dict[str, optuna.distributions.BaseDistribution] = {
        name: IntDistribution(0, len(values) - 1)
        for name, values in ordered_values(study).items()
        if ls is None or name not in WEIGHT_FIELDS or not ls.covered(name)
    }
    for name in indexed_axes(study):
        n = len(study.models) if name == "model" else len(getattr(study.axes, name))
        dists[name] = CategoricalDistribution(list(range(n)))
    for layer, field in ls.params if ls is not None else ():
        dists[param_name(layer, field)] = IntDistribution(0, len(ls.choices[(layer, field)]) - 1)
    return dists


def to_point(study: Study, params: Mapping[str, Any]) -> Point:
    """The grid point an Optuna trial's parameters (ranks) stand for."""
    ls = study.layer_space()
    if ls is not None:
        return layer_to_point(study, ls, params)
    ordered = ordered_values(study)
    point = {name: ordered[name][int(params[name])] for name in ordered}
    for name in indexed_axes(study):
        point[name] = int(params.get(name, 0))
    return {k: point[k] for k in AXIS_NAMES if k in point}


def to_params(study: Study, point: Mapping[str, Any]) -> dict[str, int]:
    """The Optuna parameters (ranks) of a grid point (ValueError: not a point of the space)."""
    ls = study.layer_space()
    if ls is not None:
        return layer_to_params(study, ls, point)
    ordered = ordered_values(study)
    params = {name: ordered[name].index(point[name]) for name in ordered}
    for name in indexed_axes(study):
        params[name] = int(point.get(name, 0))
    return params


def make_sampler(search: Search, seed: int) -> optuna.samplers.BaseSampler:
    """The study's Optuna sampler, seeded (several objectives need NSGA-II or multivariate TPE).

    A flash budget is no argument here: the searcher sets each trial's constraint
    (``Trial.set_constraint``), which these samplers read from the trials themselves."""
    import optuna

    name = search.sampler.value
    pop = search.population or 8
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=pop)
    if name == "nsga3":
        return optuna.samplers.NSGAIIISampler(seed=seed, population_size=pop)
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=search.startup_trials
        )
    raise ValueError(f"search.sampler: unknown sampler {name!r}")


def describe_point(study: Study, label: str) -> str:
    """A point's label as a reader wants it: the axes that vary in the study, by value
    (``bits=4 jr_layers={"all": 3e-05} model=stq_digits``; indexed axes by their entry)."""
    from trainables.modelspec import model_label

    values = dict(part.split("=", 1) for part in label.split("|"))
    a = study.axes
    lists: dict[str, Sequence[Any]] = {
        "bits": a.bits, "sparsity": a.sparsity, "clusters": a.clusters, "jr_weight": a.jr_weight,
        "adversarial": a.adversarial, "jr_layers": a.jr_layers, "model": study.models,
    }  # fmt: skip
    out = []
    for axis in AXIS_NAMES:
        if axis not in values or len(lists[axis]) < 2:
            continue
        v: Any = values[axis]
        if axis in INDEXED:
            entry = lists[axis][int(v)]
            if axis == "model":
                v = model_label(entry)
            elif axis == "jr_layers":
                v = json.dumps(entry) if entry else "none"
            else:
                v = (
                    entry.method.value
                    if entry.method.value == "none"
                    else (f"{entry.method.value}(eps={entry.eps:g})")
                )
        out.append(f"{axis}={v}")
    return " ".join(out) or label


def in_space(study: Study, point: Mapping[str, Any]) -> bool:
    """Whether ``point`` is a point of the study's space (canonical, every value a choice)."""
    ls = study.layer_space()
    if ls is None:
        return point_label(point) in {point_label(p) for p in points(study)}
    try:
        return layer_to_point(study, ls, layer_to_params(study, ls, point)) == dict(point)
    except (ValueError, KeyError, IndexError):
        return False
