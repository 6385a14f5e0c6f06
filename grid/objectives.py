"""A study's objectives, normalised here and nowhere else: robust accuracy (maximise),
bytes (minimise) and, when asked, clean accuracy (maximise); the front of the complete
points and its hypervolume."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grid.study import Study


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
            f"{n} {'>' if m else '<'} {fmt_value(n, r)}"
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


def fmt_value(name: str, value: float) -> str:
    # as `grid pareto` prints them: bytes with separators, accuracies to 3 decimals
    return f"{value:,.0f}" if name == "bytes" else f"{value:.3f}"


def describe_values(obj: Objectives, values: Sequence[float]) -> str:
    return "  ".join(f"{n} {fmt_value(n, v)}" for n, v in zip(obj.names, values, strict=True))
