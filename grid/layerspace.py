"""Per-layer spaces (``search.layers``): each layer's choices resolved against the model,
canonical points, their Optuna parameters, random draws and the seeds of a search.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from grid.errors import StudyError
from grid.points import AXIS_NAMES, Point, indexed_axes, ordered_values, point_label, rank_order
from trainables.config import weight_bits

if TYPE_CHECKING:
    from grid.study import Study
    from trainables.config import TrialConfig

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


def layer_to_point(study: Study, ls: LayerSpace, params: Mapping[str, Any]) -> Point:
    ordered = ordered_values(study)
    axes: Point = {}
    for name, values in ordered.items():
        axes[name] = values[int(params[name])] if name in params else values[0]
    for name in indexed_axes(study):
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


def layer_to_params(study: Study, ls: LayerSpace, point: Mapping[str, Any]) -> dict[str, int]:
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
    for name in indexed_axes(study):
        params[name] = int(point.get(name, 0))
    return params


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
        p = layer_to_point(study, ls, params)
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
    for name in indexed_axes(study):
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
