"""A study's axes as a search space: grid points, Optuna distributions, samplers.

A *point* is one combination of axis values (``bits``, ``sparsity``,
``clusters``, ``jr_weight``, ``adversarial``, ``jr_layers``, and ``model``
when the study has several models: a single-model study's points, labels and
Optuna space are what they were before models became an axis); with k folds it stands for k
trials, one per fold.  Every strategy draws points from the same axis
values, so a searched point is always a grid point and its trial keys are
the grid's keys: results of a grid, a random and an Optuna search over the
same axes mix in one store.

Objectives, normalised here and nowhere else: robust accuracy (maximise),
bytes (minimise) and, when asked, clean accuracy (maximise).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainables.config import AXES as AXIS_DEFS
from trainables.config import AXIS_NAMES, weight_bits

if TYPE_CHECKING:  # Optuna is imported only where a search needs it
    import optuna

    from grid.spec import Search, Study
    from trainables.config import TrialConfig

AXES = AXIS_NAMES  # one definition: trainables.config.AXES
# Axes whose values are mappings or models: a point holds their index in the study's list.
INDEXED = tuple(a.name for a in AXIS_DEFS if a.indexed)

# A point: axis name -> value (adversarial training and per-layer JR by their index in the study's list).
Point = dict[str, Any]


@dataclass(frozen=True)
class Objectives:
    """Names, directions and reference point of a study's objectives."""

    names: tuple[str, ...]  # result keys: robust_acc, bytes[, clean_acc]
    maximize: tuple[bool, ...]
    reference: tuple[float | None, ...]  # None: 10% above the float32 model's bytes (4 x params)

    @property
    def modes(self) -> list[str]:
        return ["max" if m else "min" for m in self.maximize]

    def resolve_reference(self, params: int | None) -> tuple[float, ...]:
        """The reference point, with the bytes default filled in from the model's parameter count."""
        out = []
        for name, ref in zip(self.names, self.reference, strict=True):
            if ref is None:
                if not params:
                    raise ValueError(
                        f"objective.reference.{name}: no default without a trial's params"
                    )
                # 10% above float32 weights, so the uncompressed model is on the box too.
                ref = 1.1 * 4.0 * params
            out.append(float(ref))
        return tuple(out)


def objectives(study: Study) -> Objectives:
    o = study.objective
    names: tuple[str, ...] = ("robust_acc", "bytes")
    maximize: tuple[bool, ...] = (True, False)
    ref: tuple[float | None, ...] = (o.reference.robust_acc, o.reference.bytes)
    if o.clean:
        names, maximize, ref = (
            (*names, "clean_acc"),
            (*maximize, True),
            (*ref, o.reference.clean_acc),
        )
    return Objectives(names, maximize, ref)


def _indexed(study: Study) -> tuple[str, ...]:
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
    return "|".join(f"{k}={point.get(k, 0)}" for k in AXES if k != "model" or k in point)


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
    """``n`` distinct grid points drawn uniformly without replacement (a seeded permutation)."""
    pts = points(study)
    random.Random(seed).shuffle(pts)
    return pts[:n]


def ordered_values(study: Study) -> dict[str, list[Any]]:
    """Each ordered axis's values from least to most compressed / regularised.

    Optuna sees these axes as the rank of their value (an integer), so TPE
    can learn that 8 bits lies between float and 4 bits; measured in
    benchmarks/search_efficiency.py against plain categorical axes.
    """
    a = study.axes
    return {
        "bits": sorted(a.bits, key=lambda b: (-weight_bits(b), b)),  # float (32) first
        "sparsity": sorted(a.sparsity),
        "clusters": sorted(a.clusters, key=lambda c: (c != 0, -c)),  # 0 = unclustered first
        "jr_weight": sorted(a.jr_weight),
    }


def distributions(study: Study) -> dict[str, optuna.distributions.BaseDistribution]:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    dists: dict[str, optuna.distributions.BaseDistribution] = {
        name: IntDistribution(0, len(values) - 1) for name, values in ordered_values(study).items()
    }
    for name in _indexed(study):
        n = len(study.models) if name == "model" else len(getattr(study.axes, name))
        dists[name] = CategoricalDistribution(list(range(n)))
    return dists


def to_point(study: Study, params: Mapping[str, Any]) -> Point:
    """The grid point an Optuna trial's parameters (ranks) stand for."""
    ordered = ordered_values(study)
    point = {name: ordered[name][int(params[name])] for name in ordered}
    for name in _indexed(study):
        point[name] = int(params.get(name, 0))
    return {k: point[k] for k in AXES if k in point}


def to_params(study: Study, point: Mapping[str, Any]) -> dict[str, int]:
    """The Optuna parameters (ranks) of a grid point."""
    ordered = ordered_values(study)
    params = {name: ordered[name].index(point[name]) for name in ordered}
    for name in _indexed(study):
        params[name] = int(point.get(name, 0))
    return params


def make_sampler(search: Search, seed: int) -> optuna.samplers.BaseSampler:
    """The study's Optuna sampler, seeded (several objectives need NSGA-II or multivariate TPE)."""
    import optuna

    name = search.sampler.value
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=search.population or 8)
    if name == "nsga3":
        return optuna.samplers.NSGAIIISampler(seed=seed, population_size=search.population or 8)
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=search.startup_trials
        )
    raise ValueError(f"search.sampler: unknown sampler {name!r}")


def complete_values(
    results: Sequence[Mapping[str, Any]], names: Sequence[str]
) -> list[float] | None:
    """Objective values of a point from its folds' reported results (mean over folds)."""
    if not results or any(r.get("status") != "complete" for r in results):
        return None
    vals = []
    for name in names:
        xs = [r.get(name) for r in results]
        if any(x is None for x in xs):
            return None
        vals.append(sum(float(x) for x in xs if x is not None) / len(xs))
    return vals


IDEAL = {
    "robust_acc": 1.0,
    "clean_acc": 1.0,
    "bytes": 0.0,
}  # the box the normalised hypervolume divides by


@dataclass(frozen=True)
class Front:
    """The Pareto front of the complete points and its hypervolume."""

    labels: tuple[str, ...]  # points on the front
    hypervolume: float  # in the objectives' units (accuracy x bytes [x accuracy])
    normalized: float  # share of the box between the reference and the ideal point (0..1)
    reference: tuple[float, ...]
    points: int  # complete points it was computed over

    def describe(self, obj: Objectives) -> str:
        ref = ", ".join(
            f"{n} {'>' if m else '<'} {_fmt(n, r)}"
            for n, m, r in zip(obj.names, obj.maximize, self.reference, strict=True)
        )
        return (
            f"front {len(self.labels)} of {self.points} point(s), hypervolume {self.normalized:.4f} "
            f"of the reference box ({ref})"
        )


def front(values: Mapping[str, Sequence[float]], obj: Objectives, params: int | None) -> Front:
    """Front and hypervolume of ``values`` (point label -> objective values, in ``obj.names`` order)."""
    import numpy as np

    from analysis.pareto import hypervolume, nondominated

    labels = sorted(values)
    ref = obj.resolve_reference(params) if labels else tuple(r or 0.0 for r in obj.reference)
    if not labels:
        return Front((), 0.0, 0.0, ref, 0)
    v = np.array([values[k] for k in labels], dtype=np.float64)
    mask = nondominated(v, obj.maximize)
    hv = hypervolume(v, obj.maximize, ref)
    box = float(np.prod([abs(r - IDEAL[n]) for n, r in zip(obj.names, ref, strict=True)]))
    on = tuple(k for k, m in zip(labels, mask, strict=True) if m)
    return Front(on, hv, hv / box if box > 0 else 0.0, ref, len(labels))


def _fmt(name: str, value: float) -> str:
    # as `grid pareto` prints them: bytes with separators, accuracies to 3 decimals
    return f"{value:,.0f}" if name == "bytes" else f"{value:.3f}"


def describe_values(obj: Objectives, values: Sequence[float]) -> str:
    return "  ".join(f"{n} {_fmt(n, v)}" for n, v in zip(obj.names, values, strict=True))


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
    for axis in AXES:
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
