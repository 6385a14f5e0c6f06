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
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from grid.errors import StudyError
from trainables.config import AXES as AXIS_DEFS
from trainables.config import AXIS_NAMES, weight_bits

if TYPE_CHECKING:  # Optuna is imported only where a search needs it
    import optuna

    from grid.spec import Search, Study
    from trainables.config import TrialConfig

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
    # A flash budget is the bytes reference unless one is given: the front's box ends there.
    ref: tuple[float | None, ...] = (o.reference.robust_acc, o.reference.bytes or o.max_bytes)
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
    label = "|".join(f"{k}={point.get(k, 0)}" for k in AXIS_NAMES if k != "model" or k in point)
    if point.get("layers"):  # a per-layer point's canonical overrides
        label += "|layers=" + json.dumps(point["layers"], sort_keys=True)
    return label


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


def distributions(study: Study) -> dict[str, optuna.distributions.BaseDistribution]:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    ls = study.layer_space()
    dists: dict[str, optuna.distributions.BaseDistribution] = {
        name: IntDistribution(0, len(values) - 1)
        for name, values in ordered_values(study).items()
        if ls is None or name not in WEIGHT_FIELDS or not ls.covered(name)
    }
    for name in _indexed(study):
        n = len(study.models) if name == "model" else len(getattr(study.axes, name))
        dists[name] = CategoricalDistribution(list(range(n)))
    for layer, field in ls.params if ls is not None else ():
        dists[param_name(layer, field)] = IntDistribution(0, len(ls.choices[(layer, field)]) - 1)
    return dists


def to_point(study: Study, params: Mapping[str, Any]) -> Point:
    """The grid point an Optuna trial's parameters (ranks) stand for."""
    ls = study.layer_space()
    if ls is not None:
        return _layer_to_point(study, ls, params)
    ordered = ordered_values(study)
    point = {name: ordered[name][int(params[name])] for name in ordered}
    for name in _indexed(study):
        point[name] = int(params.get(name, 0))
    return {k: point[k] for k in AXIS_NAMES if k in point}


def to_params(study: Study, point: Mapping[str, Any]) -> dict[str, int]:
    """The Optuna parameters (ranks) of a grid point (ValueError: not a point of the space)."""
    ls = study.layer_space()
    if ls is not None:
        return _layer_to_params(study, ls, point)
    ordered = ordered_values(study)
    params = {name: ordered[name].index(point[name]) for name in ordered}
    for name in _indexed(study):
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


# ---------------------------------------------------------------------------
# Per-layer spaces (``search.layers``): never enumerated.
#
# A per-layer point is the axes' point plus ``"layers"``: the canonical overrides
# {"bits": {layer: value}, "sparsity": ..., "clusters": ..., "activation_bits": ...,
# "jr_weight": ...} (empty ones left out).  Canonical, so every distinct full assignment
# has one key: the base value of bits / sparsity / clusters is the most common value over
# all weight layers (ties: the first in layer order; bits: the most common quantized
# value when any layer is quantized), the overrides are the layers that differ from it.
# A uniform assignment has no overrides: it is the plain grid's point, key included.

WEIGHT_KINDS = ("conv1d", "conv2d", "depthwiseconv2d", "separableconv2d", "dense")
ACTIVATION_KIND = "activation"  # QActivation: takes activation_bits
LAYER_FIELDS = ("bits", "sparsity", "clusters", "activation_bits", "jr_weight")
WEIGHT_FIELDS = LAYER_FIELDS[:3]
FITS = {
    True: ("bits", "sparsity", "clusters", "jr_weight"),
    False: ("activation_bits", "jr_weight"),
}


def normalize_kind(name: str) -> str:
    """A Keras/QKeras class or a layer type as the study file matches it: lower case, the
    QKeras prefix ``Q`` / ``CQ`` dropped (``CQConv2D`` -> ``conv2d``, ``QActivation`` ->
    ``activation``)."""
    k = name.lower()
    for prefix in ("cq", "q"):
        if k.startswith(prefix) and k[len(prefix) :] in (*WEIGHT_KINDS, ACTIVATION_KIND):
            return k[len(prefix) :]
    return k


def rank_order(field: str, values: Sequence[Any]) -> list[Any]:
    """``values`` from least to most compressed / regularised (Optuna sees their rank)."""
    if field == "bits":
        return sorted(values, key=lambda b: (-weight_bits(b), b))  # float (32) first
    if field == "clusters":
        return sorted(values, key=lambda c: (c != 0, -c))  # 0 = unclustered first
    if field == "activation_bits":
        return sorted(values, reverse=True)
    return sorted(values)


@dataclass(frozen=True, eq=False)
class LayerSpace:
    """``search.layers`` resolved against the model: each matched layer's choices.

    ``layers``: (name, normalised kind, weight layer?) of every weight and activation layer,
    in model order; ``choices``: (layer, field) -> its values in rank order; ``axes_size``:
    the axes' cross product (an axis every weight layer overrides is single-valued).
    """

    model: str
    layers: tuple[tuple[str, str, bool], ...]
    choices: Mapping[tuple[str, str], tuple[Any, ...]]
    axes_size: int

    @property
    def weight(self) -> tuple[str, ...]:
        return tuple(n for n, _, w in self.layers if w)

    @property
    def activation(self) -> tuple[str, ...]:
        return tuple(n for n, _, w in self.layers if not w)

    def covered(self, field: str) -> bool:
        """Whether every weight layer has its own choices of ``field`` (the axis then is none)."""
        return all((n, field) in self.choices for n in self.weight)

    def chosen(self, field: str) -> list[str]:
        """The layers with choices of ``field``, in model order."""
        return [n for n, _, _ in self.layers if (n, field) in self.choices]

    @property
    def params(self) -> list[tuple[str, str]]:
        """(layer, field) of each choice with two values or more: one Optuna parameter each."""
        return [
            (n, f)
            for n, _, _ in self.layers
            for f in LAYER_FIELDS
            if len(self.choices.get((n, f), ())) > 1
        ]

    @property
    def size(self) -> int:
        """Distinct points: the product of the layer choices times the axes' points."""
        out = self.axes_size
        for values in self.choices.values():
            out *= len(values)
        return out

    def table(self) -> str:
        """Each matched layer, its kind and its choices (``grid validate``)."""
        heads = ["layer", "type", *LAYER_FIELDS]
        rows = [
            [name, kind, *(_choice_text(self.choices.get((name, f))) for f in LAYER_FIELDS)]
            for name, kind, _ in self.layers
            if any((name, f) in self.choices for f in LAYER_FIELDS)
        ]
        widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [heads, *rows]
        )


def _choice_text(values: Sequence[Any] | None) -> str:
    return (
        "-"
        if values is None
        else "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) + "]"
    )


def model_layers(study: Study) -> list[tuple[str, str, str]]:
    """(name, normalised kind, what it takes) of every layer of the study's model, as built
    (TensorFlow): ``weight`` (a quantized conv / depthwise / dense layer), ``activation``
    (QActivation) or ``""`` (nothing to choose: flatten, pooling, a plain Keras layer).

    Built at 8 bits, so the activation layers exist (a float build has the same layers);
    the kinds and roles are ``trainables.models.layer_kinds``'s.
    """
    import tf_keras
    from qkeras import QActivation

    from trainables.config import TrialConfig
    from trainables.data import dataset_shape
    from trainables.models import WEIGHT_LAYERS, build_model, normalised_kind

    shape, classes = dataset_shape(study.dataset.name.value)
    cfg = TrialConfig(dataset=study.dataset.name, model=study.models[0], bits="8")
    model = build_model(cfg, shape, classes)

    def takes(layer: Any) -> str:
        if isinstance(layer, WEIGHT_LAYERS):
            return "weight"
        return "activation" if isinstance(layer, QActivation) else ""

    return [
        (layer.name, normalised_kind(layer), takes(layer))
        for layer in model.layers
        if not isinstance(layer, tf_keras.layers.InputLayer)
    ]


class LayerSpaceError(StudyError):
    """A per-layer space the model cannot take: a study-file error naming the field."""


def resolve_layers(study: Study, layers: Sequence[tuple[str, ...]] | None = None) -> LayerSpace:
    """``search.layers`` against the model's layers (``layers``: (name, kind[, what it takes]),
    as :func:`model_layers` gives them; default: built).

    Keys: ``all``, a layer type (matched case-insensitively, ``Q``/``CQ`` dropped) or a
    layer name; per field a name overrides its type, a type overrides ``all``.  Raises
    :class:`LayerSpaceError` (a StudyError) naming the field and the value (did-you-mean for
    an unknown layer), before any trial.
    """
    import difflib

    from trainables.modelspec import model_label

    spec = study.search.layers or {}
    listed = list(layers if layers is not None else model_layers(study))
    takes = {
        item[0]: item[2] if len(item) > 2
        else "weight" if item[1] in WEIGHT_KINDS
        else "activation" if item[1] == ACTIVATION_KIND else ""
        for item in listed
    }  # fmt: skip
    found: list[tuple[str, str]] = [(str(item[0]), str(item[1])) for item in listed]
    label = model_label(study.models[0])
    names = [n for n, _ in found]
    kinds = list(dict.fromkeys(k for _, k in found))
    role = {n: takes[n] == "weight" for n, _ in found}
    usable = {n for n, _ in found if takes[n]}
    levels: list[tuple[int, str, Any, str]] = []  # (0 all / 1 type / 2 name, matched, choices, key)
    for key, given in spec.items():
        if key == "all":
            levels.append((0, key, given, key))
        elif key in names:
            if key not in usable:
                kind = dict(found)[key]
                raise LayerSpaceError(
                    f"search.layers.{key}: layer {key!r} ({kind}) has no weights and is no "
                    f"activation layer: nothing to choose (layers that take choices: "
                    f"{', '.join(n for n in names if n in usable)})"
                )
            levels.append((2, key, given, key))
        elif normalize_kind(key) in kinds:
            kind = normalize_kind(key)
            if not any(takes[n] for n, k in found if k == kind):
                raise LayerSpaceError(
                    f"search.layers.{key}: {kind} layers have no weights and are no activation "
                    "layers: nothing to choose"
                )
            levels.append((1, kind, given, key))
        else:
            known = ["all", *kinds, *names]
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise LayerSpaceError(
                f"search.layers.{key}: no layer or layer type {key!r} in model {label} "
                f"(layers: {', '.join(names)}; types: {', '.join(kinds)}; or all){hint}"
            )
    levels.sort(key=lambda x: x[0])
    choices: dict[tuple[str, str], tuple[Any, ...]] = {}
    for name, kind in found:
        if name not in usable:
            continue
        fits = FITS[role[name]]
        for level, match, these, key in levels:
            if not (level == 0 or (level == 1 and match == kind) or (level == 2 and match == name)):
                continue
            for field, values in these.given().items():
                if field in fits:
                    choices[(name, field)] = tuple(rank_order(field, values))
                elif level > 0:
                    raise LayerSpaceError(
                        f"search.layers.{key}.{field} = {values!r}: {name} is "
                        f"{'a weight' if role[name] else 'an activation'} layer ({kind}); "
                        f"it takes {', '.join(fits)}"
                    )
    weight = [n for n, _ in found if n in usable and role[n]]
    if not weight:
        raise LayerSpaceError(f"search.layers: model {label} has no weight layer to search")
    for field in WEIGHT_FIELDS:
        axis = getattr(study.axes, field)
        if len(axis) > 1 and all((n, field) in choices for n in weight):
            raise LayerSpaceError(
                f"axes.{field}: {list(axis)} varies, but search.layers gives every weight layer "
                f"its own {field}: give it in one place"
            )
    space = LayerSpace(
        model=label,
        layers=tuple((n, k, role[n]) for n, k in found if n in usable),
        choices=choices,
        axes_size=study.axes_point_count,
    )
    if study.search.budget is not None and study.search.budget > space.size:
        raise LayerSpaceError(
            f"search.budget: {study.search.budget} is more than the {space.size:,} distinct "
            "points of the per-layer space"
        )
    return space


def _most_common(values: Sequence[Any]) -> Any:
    """The most common value; ties: the first in order."""
    counts: dict[Any, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    best = max(counts.values())
    return next(v for v in values if counts[v] == best)


def act_default(study: Study, bits: str, mixed: bool) -> int | None:
    """The activation width a point's config gives its activation layers (None: float).

    Mixed weight widths: train.activation_bits or 8 (``Study.point_trials``); else the
    trial config's own rule (train.activation_bits, else the int width, else 8).
    """
    if bits == "float":
        return None
    if mixed:
        return study.train.activation_bits or 8
    if study.train.activation_bits is not None:
        return study.train.activation_bits
    return int(bits) if bits.isdigit() else 8


Assignment = dict[str, dict[str, Any]]  # field -> {layer: value}


def canonical(study: Study, ls: LayerSpace, axes: Mapping[str, Any], full: Assignment) -> Point:
    """The canonical point of an axes point and a full assignment.

    ``full``: bits / sparsity / clusters of every weight layer, activation_bits and
    jr_weight of the layers with choices of them.
    """
    point: Point = dict(axes)
    layers: dict[str, dict[str, Any]] = {}
    for field in WEIGHT_FIELDS:
        values = [full[field][n] for n in ls.weight]
        pool = [b for b in values if b != "float"] if field == "bits" else values
        base = _most_common(pool or values)
        point[field] = base
        layers[field] = {n: v for n, v in zip(ls.weight, values, strict=True) if v != base}
    default = act_default(study, point["bits"], bool(layers["bits"]))
    if default is not None:  # a float model has no quantized activations: nothing to override
        act = full.get("activation_bits", {})
        layers["activation_bits"] = {n: v for n, v in act.items() if v != default}
    layers["jr_weight"] = {n: w for n, w in full.get("jr_weight", {}).items() if w != 0}
    kept = {f: v for f, v in layers.items() if v}
    if kept:
        point["layers"] = kept
    return {k: point[k] for k in (*AXIS_NAMES, "layers") if k in point}


def full_assignment(study: Study, ls: LayerSpace, point: Mapping[str, Any]) -> Assignment:
    """Each layer's value of each field under ``point`` (the inverse of :func:`canonical`)."""
    over = point.get("layers") or {}
    full: Assignment = {
        f: {n: over.get(f, {}).get(n, point[f]) for n in ls.weight} for f in WEIGHT_FIELDS
    }
    default = act_default(study, point["bits"], bool(over.get("bits")))
    full["activation_bits"] = {
        n: over.get("activation_bits", {}).get(n, default)
        if default is not None
        else ls.choices[(n, "activation_bits")][0]  # float: no quantized activations
        for n in ls.chosen("activation_bits")
    }
    full["jr_weight"] = {
        n: float(over.get("jr_weight", {}).get(n, 0.0)) for n in ls.chosen("jr_weight")
    }
    return full


def param_name(layer: str, field: str) -> str:
    """The Optuna parameter of one layer's field (optuna-dashboard shows it by layer name)."""
    return f"{layer}.{field}"


def _layer_to_point(study: Study, ls: LayerSpace, params: Mapping[str, Any]) -> Point:
    ordered = ordered_values(study)
    axes: Point = {}
    for name, values in ordered.items():
        axes[name] = values[int(params[name])] if name in params else values[0]
    for name in _indexed(study):
        axes[name] = int(params.get(name, 0))
    full: Assignment = {f: {} for f in LAYER_FIELDS}
    for name, _, weight in ls.layers:
        for field in FITS[weight]:
            these = ls.choices.get((name, field))
            if these is not None:
                full[field][name] = these[int(params.get(param_name(name, field), 0))]
            elif field in WEIGHT_FIELDS:
                full[field][name] = axes[field]  # a layer not matched follows the axis
    return canonical(study, ls, axes, full)


def _layer_to_params(study: Study, ls: LayerSpace, point: Mapping[str, Any]) -> dict[str, int]:
    full = full_assignment(study, ls, point)
    params: dict[str, int] = {}
    for (name, field), values in ls.choices.items():
        v = full[field][name]
        if v not in values:
            raise ValueError(f"{name}.{field}: {v!r} is not among its choices {list(values)}")
        if len(values) > 1:
            params[param_name(name, field)] = values.index(v)
    ordered = ordered_values(study)
    for field, axis in ordered.items():
        if field in WEIGHT_FIELDS:
            rest = {full[field][n] for n in ls.weight if (n, field) not in ls.choices}
            if len(rest) > 1:
                raise ValueError(f"{field}: the layers that follow the axis differ ({rest})")
            if ls.covered(field):
                continue  # no axis: every weight layer has its own
            v = rest.pop()
        else:
            v = point[field]
        if v not in axis:
            raise ValueError(f"{field}: {v!r} is not among the axis' values {axis}")
        params[field] = axis.index(v)
    for name in _indexed(study):
        params[name] = int(point.get(name, 0))
    return params


def in_space(study: Study, point: Mapping[str, Any]) -> bool:
    """Whether ``point`` is a point of the study's space (canonical, every value a choice)."""
    ls = study.layer_space()
    if ls is None:
        return point_label(point) in {point_label(p) for p in points(study)}
    try:
        return _layer_to_point(study, ls, _layer_to_params(study, ls, point)) == dict(point)
    except (ValueError, KeyError, IndexError):
        return False


def config_point(study: Study, cfg: TrialConfig) -> Point | None:
    """The point a stored trial config stands for in a per-layer study (None: not one of its
    axes' values).  The caller compares the point's trial key with the stored one."""
    ls = study.layer_space()
    a = study.axes
    try:
        adv = a.adversarial.index(cfg.adversarial)
        jr = 0 if study.layer_jr else a.jr_layers.index(cfg.jr_layers or {})
    except ValueError:
        if study.layer_jr or cfg.jr_layers != study.train.jr_layers:
            return None
        adv, jr = a.adversarial.index(cfg.adversarial), 0
    axes: Point = {"bits": cfg.bits, "sparsity": cfg.sparsity, "clusters": cfg.clusters,
                   "jr_weight": cfg.jr_weight, "adversarial": adv, "jr_layers": jr}  # fmt: skip
    if cfg.bits == "ans_hybrid" or ls is None:
        return axes
    per: dict[str, dict[str, Any]] = {
        "bits": cfg.layer_bits,
        "sparsity": cfg.layer_sparsity,
        "clusters": cfg.layer_clusters,
    }
    full: Assignment = {f: {n: per[f].get(n, axes[f]) for n in ls.weight} for f in WEIGHT_FIELDS}
    acts = cfg.layer_activation_bits
    full["activation_bits"] = {n: acts.get(n, cfg.act_bits) for n in ls.chosen("activation_bits")}
    full["jr_weight"] = {n: float(cfg.jr_layers.get(n, 0.0)) for n in ls.chosen("jr_weight")}
    if cfg.act_bits is None:
        full["activation_bits"] = {}
    return canonical(study, ls, axes, full)


def random_assignments(study: Study, n: int, seed: int) -> list[Point]:
    """``n`` distinct points of a per-layer space drawn uniformly (seeded): the random baseline.

    Each parameter's rank is drawn uniformly and the draw kept if its canonical point is
    new; a space within 4x of ``n`` is enumerated and shuffled instead.
    """
    import itertools

    ls = study.layer_space()
    dists = _param_sizes(study, ls)
    rng = random.Random(seed)
    if ls.size <= 4 * n:
        combos = [
            dict(zip(dists, c, strict=True))
            for c in itertools.product(*(range(k) for k in dists.values()))
        ]
        rng.shuffle(combos)
        draws: Any = iter(combos)
    else:
        draws = ({name: rng.randrange(k) for name, k in dists.items()} for _ in range(1000 * n))
    out: dict[str, Point] = {}
    for params in draws:
        p = _layer_to_point(study, ls, params)
        out.setdefault(point_label(p), p)
        if len(out) >= n:
            break
    return list(out.values())


def _param_sizes(study: Study, ls: LayerSpace) -> dict[str, int]:
    """Each Optuna parameter and its number of values."""
    out = {
        name: len(v)
        for name, v in ordered_values(study).items()
        if not ls.covered(name) or name not in WEIGHT_FIELDS
    }
    for name in _indexed(study):
        out[name] = len(study.models) if name == "model" else len(getattr(study.axes, name))
    for layer, field in ls.params:
        out[param_name(layer, field)] = len(ls.choices[(layer, field)])
    return out


def _compression(point: Mapping[str, Any]) -> float:
    """Bits per stored weight of a uniform point (a rough order for the seeds, not a size)."""
    bits = float(weight_bits(str(point["bits"])))
    if point["clusters"]:
        bits = min(bits, math.log2(int(point["clusters"])))
    return bits * (1.0 - float(point["sparsity"]))


def seed_points(study: Study) -> tuple[list[Point], Point | None]:
    """The uniform assignments of a per-layer space (at most half the budget: sampled evenly
    in order of compression when more), and the ``ans_hybrid`` point (None when no layer can
    be quantized).  Together they count towards ``search.budget``."""
    ls = study.layer_space()
    axes0 = {"jr_weight": study.axes.jr_weight[0], "adversarial": 0, "jr_layers": 0}
    allowed: dict[str, list[Any]] = {}
    for field in WEIGHT_FIELDS:
        pools = [set(ls.choices[(n, field)]) for n in ls.weight if (n, field) in ls.choices]
        if not ls.covered(field):
            pools.append(set(getattr(study.axes, field)))
        common = set.intersection(*pools)
        allowed[field] = rank_order(field, list(common))
    uniform: dict[str, Point] = {}
    for b in allowed["bits"]:
        for s in allowed["sparsity"]:
            for c in allowed["clusters"]:
                full: Assignment = {
                    f: {n: v for n in ls.weight}
                    for f, v in (("bits", b), ("sparsity", s), ("clusters", c))
                }
                default = act_default(study, b, False)
                full["activation_bits"] = {
                    n: default
                    if default in ls.choices[(n, "activation_bits")]
                    else ls.choices[(n, "activation_bits")][0]
                    for n in ls.chosen("activation_bits")
                }
                full["jr_weight"] = {
                    n: 0.0
                    if 0.0 in ls.choices[(n, "jr_weight")]
                    else ls.choices[(n, "jr_weight")][0]
                    for n in ls.chosen("jr_weight")
                }
                p = canonical(study, ls, {"bits": b, "sparsity": s, "clusters": c, **axes0}, full)
                uniform.setdefault(point_label(p), p)
    budget = study.budget
    cap = max(1, budget // 2)
    seeds = sorted(uniform.values(), key=lambda p: (-_compression(p), point_label(p)))
    if len(seeds) > cap:
        step = (len(seeds) - 1) / max(1, cap - 1)
        seeds = [seeds[round(i * step)] for i in range(cap)] if cap > 1 else [seeds[0]]
    quantized = any(
        b != "float" for n in ls.weight for b in ls.choices.get((n, "bits"), study.axes.bits)
    )
    ans = None
    if quantized and len(seeds) < budget:
        least = {
            f: (allowed[f] or rank_order(f, list(getattr(study.axes, f))))[0]
            for f in ("sparsity", "clusters")
        }
        ans = {"bits": "ans_hybrid", **least, **axes0}
        ans = {k: ans[k] for k in AXIS_NAMES if k in ans}
    return seeds, ans
