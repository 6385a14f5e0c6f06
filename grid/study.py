"""The study: one YAML file's sections together, the rules across them, and what it stands
for (points, budget, headline objective, results folder).

The per-section schema is :mod:`grid.sections`; expanding a study into TrialConfigs is
:mod:`grid.expand`; reading a file and formatting its errors is :mod:`grid.spec`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import Field, PrivateAttr, field_validator, model_validator

from grid.errors import StudyError
from grid.sections import (
    MAX_TRIALS,
    Attack,
    Axes,
    DatasetChoice,
    DatasetSpec,
    Logger,
    LoggerName,
    Objective,
    Resources,
    RobustModel,
    Search,
    SizeMeasure,
    Strategy,
    Train,
    _Strict,
    _trial_default,
    _unique,
    check_results,
)
from grid.store import Location
from trainables.config import Dataset, Folds, Model, ModelName, Seed, TrialConfig
from trainables.headline import Headline
from trainables.modelspec import ImportedModel, model_label, source_digest


class Study(_Strict):
    name: str = Field(min_length=1, max_length=100)
    description: str = ""
    dataset: DatasetChoice = DatasetSpec(name=Dataset.digits)
    model: Model = ModelName.digits_cnn  # one model; axes.model for several
    seed: Seed = _trial_default("seed")
    folds: Folds = _trial_default("folds")  # k >= 2: stratified k-fold, one trial per fold
    train: Train = Train()
    axes: Axes = Axes()
    attacks: list[Attack] = Field(default_factory=list, max_length=32)
    objective: Objective = Objective()
    search: Search = Search()
    resources: Resources = Resources()
    results: str = Field(
        default="results", min_length=1
    )  # folder or URI; rows go to <results>/<name>/
    artifacts: bool = True  # keep each trial's model, deployed weights and TFLite (grid export)
    deployed: bool = Field(
        default=False,
        description="also attack each trial's int8 TFLite flatbuffer on the interpreter: the "
        "white-box attacks' examples transferred from the QAT model, BPDA PGD, query attacks "
        "(the study's black-box ones, else Square); rows `deployed_*` and `deployed_worst`, flags "
        "`deployed_query_above_transfer` / `deployed_disagrees` (trainables/deployed.py). In a "
        "trial's key only when true",
    )
    loggers: list[LoggerName] = Field(
        default_factory=list,
        max_length=2,
        description="Ray Tune's logger callbacks for this run: `mlflow` (a run per trial, "
        "params = the point's axis values) and/or `tensorboard` (events under "
        "`<results>/<name>/tensorboard/<key>/`); default none",
    )
    mlflow_uri: str | None = Field(
        default=None,
        min_length=1,
        description="MLflow tracking URI for `loggers: [mlflow]` (e.g. `sqlite:///mlflow.db`, "
        "`http://host:5000`); default `sqlite:///<results>/<name>/mlflow.db`",
    )

    @field_validator("loggers", mode="before")
    @classmethod
    def _loggers_once(cls, v: Any) -> Any:
        return _unique(v, "loggers") if isinstance(v, list) else v

    @model_validator(mode="after")
    def _mlflow_uri_needs_mlflow(self) -> Study:
        if self.mlflow_uri is not None and Logger.mlflow not in self.loggers:
            raise ValueError(
                f"mlflow_uri: {self.mlflow_uri!r} is set but loggers {[x.value for x in self.loggers]} "
                "has no 'mlflow'"
            )
        return self

    @field_validator("results")
    @classmethod
    def _results_location(cls, v: str) -> str:
        return check_results(v)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError(
                "must be letters, digits, '.', '_' or '-' (it names the results folder)"
            )
        return v

    @model_validator(mode="after")
    def _check_objective_and_size(self) -> Study:
        names = [a.name.value for a in self.attacks]
        if len(set(names)) != len(names):
            raise ValueError(f"attacks: each attack may appear once; got {names}")
        o = self.objective
        if o.attack != "worst" and o.attack not in names:
            raise ValueError(
                f"objective.attack: {o.attack!r} is not among the study's attacks "
                f"({', '.join(['worst', *names])})"
            )
        if o.attack != "worst" and o.norm is not None:
            own = next(a.norm_value for a in self.attacks if a.name.value == o.attack)
            if own != o.norm:
                raise ValueError(
                    f"objective.norm: {o.norm!r} is not the norm of attack {o.attack!r} ({own!r})"
                )
        if o.model is RobustModel.deployed:
            if not self.deployed or not self.attacks:
                raise ValueError(
                    "objective.model: 'deployed' needs the study's `deployed: true` and attacks "
                    f"(deployed: {self.deployed}, {len(self.attacks)} attacks)"
                )
            if o.attack != "worst":
                raise ValueError(
                    f"objective.attack: {o.attack!r} with objective.model 'deployed'; the deployed "
                    "objective is the worst case over its routes ('worst')"
                )
            if "size" in o.model_fields_set and o.size is not SizeMeasure.tflite:
                raise ValueError(
                    "objective.size: 'encoded' with objective.model 'deployed'; the deployed "
                    "model's size is its flatbuffer ('tflite')"
                )
        pool = [e for a in self.objective_attacks for e in a.eps]
        if self.attacks and not pool:
            norms = sorted({a.norm_value for a in self.attacks})
            raise ValueError(
                f"objective.norm: no attack of the study has norm {self.headline_norm!r} "
                f"(they have {norms}); set objective.norm"
            )
        if o.eps is not None and not any(math.isclose(o.eps, e) for e in pool):
            raise ValueError(
                f"objective.eps: {o.eps} is not an eps of the objective's attacks {sorted(set(pool))}"
            )
        self._check_layers()
        if (
            self.search.layers is None
            and self.search.budget is not None
            and self.search.budget > self.point_count
        ):
            raise ValueError(
                f"search.budget: {self.search.budget} is more than the {self.point_count} distinct points "
                "of the axes' cross product"
            )
        if (
            self.train.ans_hybrid is not None
            and "ans_hybrid" not in self.axes.bits
            and not self.search.layers
        ):
            raise ValueError(
                f"train.ans_hybrid: settings for bits 'ans_hybrid', which axes.bits {list(self.axes.bits)} "
                "does not have"
            )
        if self.train.jr_layers and self.axes.jr_layers != [{}]:
            raise ValueError(
                "train.jr_layers and axes.jr_layers: give per-layer JR in one place "
                "(axes.jr_layers to vary it, e.g. [none, {all: 0.01}])"
            )
        if self.axes.model is not None and "model" in self.model_fields_set:
            raise ValueError(
                "model and axes.model: give the model in one place "
                "(model: for one, axes.model: [...] for several)"
            )
        labels = [model_label(m) for m in self.models]
        for i, label in enumerate(labels):
            if label in labels[:i]:
                raise ValueError(
                    f"axes.model[{i}]: a second model labelled {label!r} "
                    f"(axes.model[{labels.index(label)}]); give each a distinct name"
                )
        for where, m in self.models_where():
            if isinstance(m, ImportedModel):
                try:
                    source_digest(m.builder)
                except ValueError as err:
                    msg = str(err).removeprefix("builder: ")
                    raise ValueError(f"{where} = {m.builder!r}: {msg}") from None
        if self.search.layers is None and self.grid_size > MAX_TRIALS:
            raise ValueError(
                f"axes: the cross product has {self.grid_size} trials, more than {MAX_TRIALS}"
            )
        return self

    def _check_layers(self) -> None:
        """What ``search.layers`` says that can be checked without the model (the rest:
        :meth:`layer_space`, before any trial)."""
        s = self.search
        if s.layers is None:
            return
        if s.strategy == Strategy.grid:
            raise ValueError(
                "search.layers: a per-layer space is searched, not enumerated: "
                "set search.strategy to optuna or random (strategy grid refuses it)"
            )
        if s.budget is None:
            raise ValueError(
                "search.budget: a per-layer space needs a budget (distinct points, seeds included)"
            )
        if len(self.models) > 1:
            raise ValueError(
                "search.layers: one model per study (axes.model gives several; the layers "
                "differ from model to model)"
            )
        given = {f for c in s.layers.values() for f in c.given()}
        if "jr_weight" in given and (self.train.jr_layers or self.axes.jr_layers != [{}]):
            raise ValueError(
                "search.layers jr_weight and train.jr_layers / axes.jr_layers: give per-layer JR "
                "in one place"
            )
        if "bits" in given and self.train.layer_bits:
            raise ValueError(
                "search.layers bits and train.layer_bits: give per-layer bits in one place"
            )
        if "ans_hybrid" in self.axes.bits:
            raise ValueError(
                "axes.bits: 'ans_hybrid' with search.layers: its point runs as a seed "
                "(search.seeds), settings in train.ans_hybrid"
            )

    _layer_space: Any = PrivateAttr(default=None)

    def layer_space(self) -> Any:
        """The per-layer space resolved against the model (``grid.space.LayerSpace``), or None.

        Builds the model once (TensorFlow); an unknown layer name or type, a field a layer
        cannot take, or a budget over the space's size raises :class:`StudyError`.
        """
        if self.search.layers is None:
            return None
        if self._layer_space is None:
            from grid.space import resolve_layers

            self._layer_space = resolve_layers(self)  # LayerSpaceError: a StudyError
        return self._layer_space

    @property
    def layer_jr(self) -> bool:
        """Whether search.layers gives JR weights (the point's then set ``jr_layers``)."""
        return any(c.jr_weight is not None for c in (self.search.layers or {}).values())

    @property
    def models(self) -> list[Any]:
        """The study's models: ``axes.model``, or the single ``model``."""
        return list(self.axes.model) if self.axes.model is not None else [self.model]

    def models_where(self) -> list[tuple[str, Any]]:
        """(field path, model) of each model, as an error names it."""
        if self.axes.model is None:
            return [("model", self.model)]
        return [(f"axes.model[{i}]", m) for i, m in enumerate(self.axes.model)]

    @property
    def point_count(self) -> int:
        """Distinct points: the axes' cross product (times the layer choices, for a per-layer space)."""
        if self.search.layers is not None:
            return int(self.layer_space().size)
        return self.axes_point_count

    @property
    def axes_point_count(self) -> int:
        """The axes' cross product."""
        a = self.axes
        return (
            len(self.models)
            * len(a.bits)
            * len(a.sparsity)
            * len(a.clusters)
            * len(a.jr_weight)
            * len(a.adversarial)
            * len(a.jr_layers)
        )

    @property
    def grid_size(self) -> int:
        """Trials of the whole grid: the axes' cross product times the folds."""
        return self.point_count * self.folds

    @property
    def budget(self) -> int:
        """Points this study visits: the search budget, or every point."""
        return self.search.budget or self.point_count

    @property
    def search_seed(self) -> int:
        return self.seed if self.search.seed is None else self.search.seed

    @property
    def headline_norm(self) -> str:
        """The norm of the objective's attacks: 'worst' never mixes L-inf and L2 radii."""
        o = self.objective
        if o.attack != "worst":
            return next((a.norm_value for a in self.attacks if a.name.value == o.attack), "inf")
        if o.norm is not None:
            return o.norm
        norms = {a.norm_value for a in self.attacks}
        return "inf" if "inf" in norms or not norms else "2"  # L-inf, unless every attack is L2

    @property
    def objective_attacks(self) -> list[Attack]:
        """The attacks the robust-accuracy objective is taken over (one norm)."""
        o = self.objective
        return [
            a
            for a in self.attacks
            if (o.attack == "worst" and a.norm_value == self.headline_norm)
            or a.name.value == o.attack
        ]

    @property
    def headline(self) -> Headline:
        """The objectives' headline robust accuracy (trainables/headline.py): attack or 'worst',
        eps (the largest of its attacks' when the study names none), norm, size measure."""
        o = self.objective
        eps = o.eps
        if eps is None and self.objective_attacks:
            eps = max(e for a in self.objective_attacks for e in a.eps)
        if o.model is RobustModel.deployed:  # the flatbuffer: its routes' worst case, its bytes
            return Headline(o.attack, eps, self.headline_norm, SizeMeasure.tflite.value, "deployed")
        return Headline(o.attack, eps, self.headline_norm, o.size.value)

    def results_dir(self, override: str | None = None) -> Location:
        """Where this study's results go: ``<results>/<name>``, a local folder or a URI."""
        if override:
            try:
                check_results(override)
            except ValueError as err:
                raise StudyError(f"--results: {err}") from None
        return Location(override or self.results).child(self.name)  # ResultsError: can't open

    def _common(self) -> dict[str, Any]:
        """The settings every trial of this study shares (:func:`grid.expand.common_settings`)."""
        from grid.expand import common_settings

        return common_settings(self)

    def point_trials(
        self, point: dict[str, Any], common: dict[str, Any] | None = None
    ) -> list[TrialConfig]:
        """The trials (one per fold) of one point of the axes (:func:`grid.expand.point_trials`)."""
        from grid.expand import point_trials

        return point_trials(self, point, common)

    def check_models(self, builtin: bool = False) -> list[Any]:
        """Each model built at each bit-width of the axis (:func:`grid.expand.check_models`)."""
        from grid.expand import check_models

        return check_models(self, builtin)

    def trials(self) -> list[TrialConfig]:
        """The TrialConfigs of the whole grid (:func:`grid.expand.study_trials`)."""
        from grid.expand import study_trials

        return study_trials(self)
