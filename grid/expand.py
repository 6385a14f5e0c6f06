"""A study expanded into trials: the TrialConfigs of each point (one per fold), of the whole
grid, and the models built for the dataset before anything runs.

A *point* is one combination of axis values (:mod:`grid.space`); each point stands for
``folds`` trials that differ in ``fold`` alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from grid.errors import StudyError
from trainables.config import ModelName, TrialConfig

if TYPE_CHECKING:
    from grid.study import Study


def common_settings(study: Study) -> dict[str, Any]:
    """The settings every trial of ``study`` shares (everything but the point and the fold)."""
    t, d = study.train, study.dataset
    # Ray workers run in their trial folders: a relative local data path must be made absolute here.
    path = d.path if d.path is None or "://" in d.path else str(Path(d.path).expanduser().resolve())
    return {
        "dataset": d.name, "data_path": path, "download": d.download, "data_md5": d.md5,
        "seed": study.seed, "folds": study.folds,
        "epochs": t.epochs, "fine_tune_epochs": t.fine_tune_epochs, "batch_size": t.batch_size,
        "learning_rate": t.learning_rate, "test_fraction": t.test_fraction,
        "activation_bits": t.activation_bits, "jr_projections": t.jr_projections,
        "jr_layers": t.jr_layers,
        "attacks": tuple(x.model_dump() for x in study.attacks),
        "deployed": study.deployed,
        "threads": study.resources.cpus_per_trial,
        "gpus": study.resources.gpus_per_trial, "gpu_memory": study.resources.gpu_memory,
    }  # fmt: skip


def point_trials(
    study: Study, point: dict[str, Any], common: dict[str, Any] | None = None
) -> list[TrialConfig]:
    """The trials (one per fold) of one point of the axes (see ``grid.space``).

    ``common``: :meth:`_common`, when a caller builds many points' trials at once.
    """
    common = common or common_settings(study)
    adv = study.axes.adversarial[int(point["adversarial"])]
    jr_layers = study.axes.jr_layers[int(point.get("jr_layers", 0))] or study.train.jr_layers
    # Per-layer bit-widths override a quantized model's layers; a float point is float
    # throughout (so the float baseline really is one).
    layer_bits = study.train.layer_bits if point["bits"] != "float" else {}
    # A per-layer point's overrides (grid.space: canonical, empty ones left out, so a
    # uniform assignment is the plain grid point's config, key included).
    layers: dict[str, dict[str, Any]] = point.get("layers") or {}
    extra: dict[str, Any] = {}
    if layers.get("bits"):
        layer_bits = {**layer_bits, **layers["bits"]}
    if study.search.layers and point["bits"] != "float":
        # One activation width for every quantized point of a per-layer search, uniform
        # ones included (train.activation_bits, else 8): activations following the base
        # width (only the most common layer's) would differ between a uniform point and
        # a mixed one that changes a single layer, and confound the comparison.
        extra["activation_bits"] = study.train.activation_bits or 8
    for name in ("sparsity", "clusters", "activation_bits"):
        if layers.get(name):
            extra[f"layer_{name}"] = dict(layers[name])
    if study.layer_jr:
        jr_layers = dict(layers.get("jr_weight") or {})  # only non-zero weights
    first = TrialConfig.model_validate(
        {
            **common,
            "model": study.models[int(point.get("model", 0))],
            "bits": point["bits"],
            "sparsity": point["sparsity"],
            "clusters": point["clusters"],
            "jr_weight": point["jr_weight"],
            "adversarial": adv,
            "jr_layers": jr_layers,
            "layer_bits": layer_bits,
            "ans": study.train.ans_hybrid if point["bits"] == "ans_hybrid" else None,
            "fold": 0,
            **extra,
        }
    )
    # The other folds differ in ``fold`` alone (0..folds-1, within the field's bounds since
    # ``folds`` is): copies, not a validation each, for grids of 10^5 trials.
    return [first, *(first.model_copy(update={"fold": f}) for f in range(1, study.folds))]


def check_models(study: Study, builtin: bool = False) -> list[Any]:
    """Build each model for the dataset's input shape at each bit-width of the axis (TF).

    Before Ray starts: a layer list's shape errors, a builder that does not import or
    returns the wrong output, a ``layer_bits`` or per-layer JR name the model lacks all
    raise :class:`StudyError` naming the field.  Returns a
    ``trainables.models.ModelReport`` per model (``builtin``: the built-in models too,
    which are known good and skipped otherwise).
    """
    from trainables.byom import ModelError
    from trainables.data import dataset_shape
    from trainables.models import model_report

    shape, classes = dataset_shape(study.dataset.name.value)
    for i, a in enumerate(study.attacks):
        # ART's L2 Square starts from a grid of square tiles as wide as h // 5 laid
        # along both axes, which fails on a non-square input (49 x 10 MFCCs).
        if (
            a.name.value in ("square", "autoattack_art")
            and a.norm_value == "2"
            and shape[0] != shape[1]
        ):
            raise StudyError(
                f"attacks[{i}].norm: ART's L2 Square needs square inputs, and "
                f"{study.dataset.name.value}'s are {shape[0]} x {shape[1]}: use norm 'inf', "
                "or autoattack (its own Square fits any shape)"
            )
    several = len(study.models) > 1
    base = {"sparsity": study.axes.sparsity[0], "clusters": study.axes.clusters[0],
            "jr_weight": study.axes.jr_weight[0], "adversarial": 0, "jr_layers": 0}  # fmt: skip
    reports = []
    for i, (where, m) in enumerate(study.models_where()):
        if isinstance(m, ModelName) and not builtin:
            continue
        configs = [
            point_trials(study, {**base, "bits": b, **({"model": i} if several else {})})[0]
            for b in study.axes.bits
        ]
        try:
            report = model_report(configs, shape, classes)
        except ModelError as err:
            sep = "." if err.index is not None else ": "
            raise StudyError(f"{where}{sep}{err}") from None
        except ValueError as err:  # a layer_bits name the model lacks
            raise StudyError(
                f"train.{err}" if str(err).startswith("layer_bits") else f"{where}: {err}"
            ) from None
        names = {info.name for info in report.layers}
        for field, choice in [("train.jr_layers", study.train.jr_layers)] + [
            (f"axes.jr_layers[{k}]", c) for k, c in enumerate(study.axes.jr_layers)
        ]:
            missing = sorted(set(choice) - names - {"all"})
            if missing:
                raise StudyError(
                    f"{field}: no layer named {missing} in model {report.label} "
                    f"({where}; layers: {', '.join(sorted(names))})"
                )
        reports.append(report)
    return reports


def study_trials(study: Study) -> list[TrialConfig]:
    """The whole grid: every point's trials, in file order (bits outermost, fold innermost).

    A per-layer study is never enumerated: the trials of ``budget`` distinct random
    assignments (seeded), a sample of what its search runs (for sizing)."""
    from grid.space import points, random_points

    if study.search.layers is not None:
        pts = random_points(study, study.budget, study.search_seed)
        return [t for p in pts for t in point_trials(study, p)]
    return [t for p in points(study) for t in point_trials(study, p)]
