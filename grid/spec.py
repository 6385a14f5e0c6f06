"""The study file: schema, validation and the trials it stands for.

Everything is checked here, before Ray starts: an unknown key, a wrong
type or an out-of-range value raises :class:`StudyError` naming the field
(as a dotted path) and the value.  The per-value rules are the trial's own
(``trainables.config``), so a study and a trial can never disagree.
"""

from __future__ import annotations

import difflib
import enum
import importlib.resources
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from grid.store import Location
from trainables.config import (
    ActivationBits,
    Adversarial,
    AdvTraining,
    AnsHybrid,
    AttackSpec,
    BatchSize,
    Bits,
    Clusters,
    Dataset,
    Epochs,
    FineTuneEpochs,
    Folds,
    JRLayers,
    JRProjections,
    JRWeight,
    LearningRate,
    Md5,
    Model,
    ModelName,
    Seed,
    Sparsity,
    TestFraction,
    Threads,
    TrialConfig,
)
from trainables.gpu import GpuMemory
from trainables.modelspec import (
    LAYER_TYPES,
    UNION_TAGS,
    ImportedModel,
    model_label,
    source_digest,
)
from trainables.rows import DEPLOYED_WORST

MAX_TRIALS = 100_000
DEFAULT_STUDY = "default"


class StudyError(ValueError):
    """A study file that cannot run; the message names the field and the value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _trial_default(name: str) -> Any:
    """A trial field's default, so the study file and the trial config cannot disagree on it."""
    return TrialConfig.model_fields[name].default


class Train(_Strict):
    # Types and defaults are the trial config's (trainables.config): one definition each.
    epochs: Epochs = _trial_default("epochs")
    fine_tune_epochs: FineTuneEpochs = _trial_default("fine_tune_epochs")
    batch_size: BatchSize = _trial_default("batch_size")
    learning_rate: LearningRate = _trial_default("learning_rate")
    test_fraction: TestFraction = _trial_default("test_fraction")
    activation_bits: ActivationBits | None = _trial_default("activation_bits")
    jr_projections: JRProjections = _trial_default("jr_projections")
    jr_layers: JRLayers = Field(default_factory=dict)  # per-layer JR: {layer name or "all": weight}
    # bits ans_hybrid: the widths to assign by adversarial noise sensitivity, the direction,
    # the float warm-up and the FGSM radius (trainables.ans; defaults when left out)
    ans_hybrid: AnsHybrid | None = None
    layer_bits: dict[str, Bits] = Field(
        default_factory=dict
    )  # per-layer overrides, e.g. {conv1: 8, logits: 8}


def _jr_layers_choice(v: Any) -> Any:
    """``none`` (no per-layer JR) or a mapping {layer or "all": weight}."""
    return {} if v == "none" else v


# One value of the per-layer JR axis: ``none`` or ``{layer: weight}`` / ``{all: weight}``.
JRLayersChoice = Annotated[
    JRLayers, BeforeValidator(_jr_layers_choice, json_schema_input_type=Literal["none"] | JRLayers)
]


def _unique(values: list[Any], what: str) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v in seen:
            raise ValueError(f"duplicate value {v!r}: each {what} value must appear once")
        seen.append(v)
    return values


class Axes(_Strict):
    """The cross product: every combination is one trial."""

    bits: list[Bits] = Field(default_factory=lambda: ["float"], min_length=1, max_length=64)
    sparsity: list[Sparsity] = Field(default_factory=lambda: [0.0], min_length=1, max_length=64)
    clusters: list[Clusters] = Field(default_factory=lambda: [0], min_length=1, max_length=64)
    jr_weight: list[JRWeight] = Field(default_factory=lambda: [0.0], min_length=1, max_length=64)
    adversarial: list[Adversarial] = Field(
        default_factory=lambda: [AdvTraining()], min_length=1, max_length=16
    )
    # Per-layer JR with and without: `[none, {all: 0.01}]`.  (train.jr_layers applies one
    # setting to every trial instead; give it in one place only.)
    jr_layers: list[JRLayersChoice] = Field(
        default_factory=lambda: [dict[str, float]()], min_length=1, max_length=16
    )
    # Several models crossed with the other axes (each a built-in name, a layer list or a
    # builder); None: the study's single ``model``.
    model: list[Model] | None = Field(default=None, min_length=1, max_length=16)

    @field_validator("bits", "sparsity", "clusters", "jr_weight", "adversarial", "jr_layers")
    @classmethod
    def _no_duplicates(cls, v: list[Any], info: Any) -> list[Any]:
        return _unique(v, info.field_name)


# The fields a key of ``search.layers`` may give: weight layers take bits / sparsity /
# clusters, activation (QActivation) layers activation_bits, any of them a JR weight.
LAYER_FIELDS = ("bits", "sparsity", "clusters", "activation_bits", "jr_weight")


class LayerChoices(_Strict):
    """One key of ``search.layers`` (``all``, a layer type or a layer name): each field's choices.

    The values are the axes' own (the trial config's validators): bits labels incl. float
    and ternary/binary, sparsity in [0, 1), clusters 0 or >= 2, activation widths 2-16, JR
    weights >= 0 (a layer's JR weight goes to the trial's ``jr_layers``; 0 = no JR there).
    """

    bits: list[Bits] | None = Field(default=None, min_length=1, max_length=64)
    sparsity: list[Sparsity] | None = Field(default=None, min_length=1, max_length=64)
    clusters: list[Clusters] | None = Field(default=None, min_length=1, max_length=64)
    activation_bits: list[ActivationBits] | None = Field(default=None, min_length=1, max_length=16)
    jr_weight: list[JRWeight] | None = Field(default=None, min_length=1, max_length=64)

    @field_validator("bits", "sparsity", "clusters", "activation_bits", "jr_weight")
    @classmethod
    def _no_duplicates(cls, v: list[Any] | None, info: Any) -> list[Any] | None:
        return None if v is None else _unique(v, info.field_name)

    @field_validator("bits")
    @classmethod
    def _a_width(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and "ans_hybrid" in v:
            raise ValueError(
                "'ans_hybrid' is not a width a layer can be given (an int, float, ternary, "
                "binary...); search.seeds runs the ans_hybrid assignment"
            )
        return v

    @model_validator(mode="after")
    def _some_choice(self) -> LayerChoices:
        if not self.model_fields_set:
            raise ValueError(f"no choices: give one of {', '.join(LAYER_FIELDS)}")
        return self

    def given(self) -> dict[str, list[Any]]:
        """The fields this key gives, in LAYER_FIELDS order."""
        return {f: getattr(self, f) for f in LAYER_FIELDS if getattr(self, f) is not None}


class Attack(AttackSpec):
    """An attack in the study file: the trial's AttackSpec, with strict types."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @field_validator("eps")
    @classmethod
    def _no_duplicate_eps(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(_unique(list(v), "eps"))

    @model_validator(mode="after")
    def _options_known_to_art(self) -> Attack:
        if self.options:  # ART is only imported when there is something to check
            from trainables.attacks import attack_options

            owner, params = attack_options(self.name)
            unknown = sorted(set(self.options) - params)
            if unknown:
                raise ValueError(
                    f"options: {unknown} are not parameters of {owner} "
                    f"(known: {', '.join(sorted(params))})"
                )
        return self


class Reference(_Strict):
    """The hypervolume's reference point: the worst value of each objective that still counts."""

    robust_acc: float = Field(default=0.0, ge=0.0, lt=1.0)
    clean_acc: float = Field(default=0.0, ge=0.0, lt=1.0)
    # default: objective.max_bytes when the study has a budget, else 1.1 x the float32
    # model (4 B/param)
    bytes: int | None = Field(default=None, ge=1)


class SizeMeasure(enum.StrEnum):
    encoded = "encoded"  # metric_bytes: the smallest encoding of the weights (a lower bound)
    tflite = "tflite"  # metric_tflite_bytes: the deployable full-int8 TFLite flatbuffer


class RobustModel(enum.StrEnum):
    keras = "keras"  # the QKeras model in TensorFlow: the rows of the study's attacks
    deployed = "deployed"  # the int8 TFLite flatbuffer on the interpreter (study `deployed: true`)


class Objective(_Strict):
    """What the Pareto front (and a search) optimises: robust accuracy up, bytes down."""

    model: RobustModel = Field(
        default=RobustModel.keras,
        description="whose robustness the objective takes: `keras` (the QKeras model) or "
        "`deployed` (the int8 TFLite flatbuffer: the trial's `deployed_worst` rows, every route "
        "on the interpreter per example, and the flatbuffer's bytes as size); `deployed` needs "
        "the study's `deployed: true` and attack `worst`",
    )

    # 'worst' (per example: robust under every attack of ``norm``, the trial's stored worst
    # rows, trainables/worst.py) or an attack name
    attack: str = "worst"
    eps: float | None = Field(default=None, gt=0.0, le=1000.0)  # default: the largest eps
    norm: str | None = None  # 'inf' | '2': worst never mixes norms; default: inf, or the attack's
    clean: bool = False  # also maximise clean accuracy (a third objective)
    size: SizeMeasure = SizeMeasure.encoded
    reference: Reference = Reference()
    # A flash budget on ``size`` in bytes: a constraint, not an objective.  Points over it
    # are stored and counted, never on the front (each trial's Optuna constraint guides the search).
    max_bytes: int | None = Field(
        default=None,
        ge=1,
        le=10**12,
        description="flash budget in bytes on `size`: a constraint (each Optuna trial's, "
        "Trial.set_constraint); "
        "points over it are stored and counted, never on the front; the hypervolume's bytes "
        "reference defaults to it",
    )

    @field_validator("norm")
    @classmethod
    def _known_norm(cls, v: str | None) -> str | None:
        if v is not None and v not in ("inf", "2"):
            raise ValueError(f"norm must be 'inf' or '2'; got {v!r}")
        return v


class Strategy(enum.StrEnum):
    grid = "grid"  # the whole cross product
    optuna = "optuna"  # multi-objective search through Ray Tune's OptunaSearch
    random = "random"  # distinct grid points drawn uniformly: the baseline


class SamplerName(enum.StrEnum):
    nsga2 = "nsga2"
    nsga3 = "nsga3"
    tpe = "tpe"  # multivariate, multi-objective TPE


class Search(_Strict):
    """How the grid points are visited.  ``trials`` counts distinct points (each runs every fold)."""

    strategy: Strategy = Strategy.grid
    sampler: SamplerName = SamplerName.tpe
    trials: int | None = Field(default=None, ge=1, le=MAX_TRIALS)  # budget; default: every point
    seed: Seed | None = None  # default: the study's seed
    population: int | None = Field(default=None, ge=2, le=10_000)  # NSGA-II/III population
    startup_trials: int = Field(default=10, ge=1, le=10_000)  # TPE's random start
    # The per-layer space: keys ``all``, a layer type (conv2d, dense, activation...) or a
    # layer name; a type overrides ``all`` and a name its type, field by field.
    layers: dict[str, LayerChoices] | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="per-layer space (strategy optuna or random; needs `trials`): keys `all`, "
        "a layer type (conv2d, depthwiseconv2d, dense, activation) or a layer name, each "
        "{bits, sparsity, clusters, activation_bits, jr_weight: [choices]}; per field a name "
        "overrides its type, a type overrides `all`; layers not matched follow the axes",
    )
    # Optuna: the uniform assignments and the ans_hybrid one run first (they count as trials).
    seeds: bool = Field(
        default=True,
        description="optuna with `layers`: the uniform assignments (at most half the budget) "
        "and the ans_hybrid one run first, counted in `trials`",
    )

    @model_validator(mode="after")
    def _budget_needs_a_search(self) -> Search:
        if self.trials is not None and self.strategy == Strategy.grid:
            raise ValueError(
                f"trials: {self.trials} is a budget for strategy optuna or random; "
                "strategy grid runs every point (leave trials out)"
            )
        return self


class Logger(enum.StrEnum):
    """Ray Tune's own logger callbacks a study can switch on (`loggers:`; grid/loggers.py)."""

    mlflow = "mlflow"  # MLflowLoggerCallback: a run per trial, params = the point's axis values
    tensorboard = "tensorboard"  # TBXLoggerCallback: scalars and hparams per trial


class Resources(_Strict):
    cpus_per_trial: Threads = 1  # each trial's TensorFlow threads
    gpus_per_trial: float = Field(
        default=0,
        ge=0,
        le=64,
        description="GPUs per trial: a whole number, or a fraction in (0, 1) to share a GPU "
        "(0.25: four trials per GPU, each capped to its share of the memory; trainables/gpu.py)",
    )
    gpu_memory: GpuMemory = Field(
        default=GpuMemory.limit,
        description="how a trial sharing a GPU holds memory: `limit` (a hard cap of its share, "
        "less 512 MB of CUDA context) or `growth` (TensorFlow's memory growth, no cap)",
    )
    max_concurrent: int | None = Field(default=None, ge=1, le=100_000)
    retries: int = Field(
        default=2, ge=0, le=100
    )  # Tune retries of a trial that raised or lost its node

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_or_a_share(cls, v: float) -> float:
        # Ray's own rule: a fraction of one GPU, or whole GPUs.
        if v > 1 and v != int(v):
            raise ValueError(
                f"{v:g} GPUs: a trial takes a fraction of one GPU (0 < x <= 1) or whole GPUs (1, 2, ...)"
            )
        return v


def _known_value(kind: type[enum.StrEnum], what: str, v: Any) -> Any:
    """A clearer message than pydantic's for an unknown name: say what is known."""
    if isinstance(v, str) and v not in {e.value for e in kind}:
        raise ValueError(f"unknown {what} {v!r} (known: {', '.join(e.value for e in kind)})")
    return v


LoggerName = Annotated[Logger, BeforeValidator(lambda v: _known_value(Logger, "logger", v))]


class DatasetSpec(_Strict):
    """``dataset: cifar10`` or ``dataset: {name: cifar10, path: ..., download: false, md5: ...}``."""

    name: Dataset
    path: str | None = Field(
        default=None, min_length=1
    )  # local folder, file:// or object storage (s3://, gs://)
    download: bool = False  # fetch the official files (checksummed) when missing
    md5: Md5 | None = None  # of a custom archive

    @field_validator("name", mode="before")
    @classmethod
    def _known(cls, v: Any) -> Any:
        return _known_value(Dataset, "dataset", v)


def _dataset_shorthand(v: Any) -> Any:
    return {"name": v} if isinstance(v, str) else v


# ``dataset: digits`` or the mapping.
DatasetChoice = Annotated[
    DatasetSpec, BeforeValidator(_dataset_shorthand, json_schema_input_type=Dataset | DatasetSpec)
]

RESULT_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "abfs", "abfss")  # what pyarrow.fs opens


def check_results(v: str) -> str:
    """A results location: a folder, or a URI whose scheme pyarrow.fs opens."""
    scheme = v.split("://", 1)[0] if "://" in v else None
    if scheme is not None and scheme not in RESULT_SCHEMES:
        raise ValueError(
            f"unsupported storage {scheme + '://'!r} in {v!r} "
            f"(a folder, or one of {', '.join(s + '://' for s in RESULT_SCHEMES)})"
        )
    return v


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
            and self.search.trials is not None
            and self.search.trials > self.points
        ):
            raise ValueError(
                f"search.trials: {self.search.trials} is more than the {self.points} distinct points "
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
        if s.trials is None:
            raise ValueError(
                "search.trials: a per-layer space needs a budget (distinct points, seeds included)"
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
            from grid.space import LayerSpaceError, resolve_layers

            try:
                self._layer_space = resolve_layers(self)
            except LayerSpaceError as err:
                raise StudyError(str(err)) from None
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
    def points(self) -> int:
        """Distinct points: the axes' cross product (times the layer choices, for a per-layer space)."""
        if self.search.layers is not None:
            return int(self.layer_space().size)
        return self.axes_points

    @property
    def axes_points(self) -> int:
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
        return self.points * self.folds

    @property
    def budget(self) -> int:
        """Points this study visits: the search budget, or every point."""
        return self.search.trials or self.points

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
    def headline(self) -> tuple[str, float | None, str, str]:
        """(attack or 'worst', eps, norm, size measure) of the objectives (objective.model
        'deployed': 'deployed_worst' and 'tflite')."""
        o = self.objective
        eps = o.eps
        if eps is None and self.objective_attacks:
            eps = max(e for a in self.objective_attacks for e in a.eps)
        if o.model is RobustModel.deployed:
            return DEPLOYED_WORST, eps, self.headline_norm, SizeMeasure.tflite.value
        return o.attack, eps, self.headline_norm, o.size.value

    def results_dir(self, override: str | None = None) -> Location:
        """Where this study's results go: ``<results>/<name>``, a local folder or a URI."""
        if override:
            try:
                check_results(override)
            except ValueError as err:
                raise StudyError(f"--results: {err}") from None
        try:
            return Location(override or self.results).child(self.name)
        except ValueError as err:
            raise StudyError(str(err)) from None

    def _common(self) -> dict[str, Any]:
        t, d = self.train, self.dataset
        # Ray workers run in their trial folders: a relative local data path must be made absolute here.
        path = (
            d.path
            if d.path is None or "://" in d.path
            else str(Path(d.path).expanduser().resolve())
        )
        return {
            "dataset": d.name, "data_path": path, "download": d.download, "data_md5": d.md5,
            "seed": self.seed, "folds": self.folds,
            "epochs": t.epochs, "fine_tune_epochs": t.fine_tune_epochs, "batch_size": t.batch_size,
            "learning_rate": t.learning_rate, "test_fraction": t.test_fraction,
            "activation_bits": t.activation_bits, "jr_projections": t.jr_projections,
            "jr_layers": t.jr_layers,
            "attacks": tuple(x.model_dump() for x in self.attacks),
            "deployed": self.deployed,
            "threads": self.resources.cpus_per_trial,
            "gpus": self.resources.gpus_per_trial, "gpu_memory": self.resources.gpu_memory,
        }  # fmt: skip

    def point_trials(
        self, point: dict[str, Any], common: dict[str, Any] | None = None
    ) -> list[TrialConfig]:
        """The trials (one per fold) of one point of the axes (see ``grid.space``).

        ``common``: :meth:`_common`, when a caller builds many points' trials at once.
        """
        common = common or self._common()
        adv = self.axes.adversarial[int(point["adversarial"])]
        jr_layers = self.axes.jr_layers[int(point.get("jr_layers", 0))] or self.train.jr_layers
        # Per-layer bit-widths override a quantized model's layers; a float point is float
        # throughout (so the float baseline really is one).
        layer_bits = self.train.layer_bits if point["bits"] != "float" else {}
        # A per-layer point's overrides (grid.space: canonical, empty ones left out, so a
        # uniform assignment is the plain grid point's config, key included).
        layers: dict[str, dict[str, Any]] = point.get("layers") or {}
        extra: dict[str, Any] = {}
        if layers.get("bits"):
            layer_bits = {**layer_bits, **layers["bits"]}
        if self.search.layers and point["bits"] != "float":
            # One activation width for every quantized point of a per-layer search, uniform
            # ones included (train.activation_bits, else 8): activations following the base
            # width (only the most common layer's) would differ between a uniform point and
            # a mixed one that changes a single layer, and confound the comparison.
            extra["activation_bits"] = self.train.activation_bits or 8
        for name in ("sparsity", "clusters", "activation_bits"):
            if layers.get(name):
                extra[f"layer_{name}"] = dict(layers[name])
        if self.layer_jr:
            jr_layers = dict(layers.get("jr_weight") or {})  # only non-zero weights
        first = TrialConfig.model_validate(
            {
                **common,
                "model": self.models[int(point.get("model", 0))],
                "bits": point["bits"],
                "sparsity": point["sparsity"],
                "clusters": point["clusters"],
                "jr_weight": point["jr_weight"],
                "adversarial": adv,
                "jr_layers": jr_layers,
                "layer_bits": layer_bits,
                "ans": self.train.ans_hybrid if point["bits"] == "ans_hybrid" else None,
                "fold": 0,
                **extra,
            }
        )
        # The other folds differ in ``fold`` alone (0..folds-1, within the field's bounds since
        # ``folds`` is): copies, not a validation each, for grids of 10^5 trials.
        return [first, *(first.model_copy(update={"fold": f}) for f in range(1, self.folds))]

    def check_models(self, builtin: bool = False) -> list[Any]:
        """Build each model for the dataset's input shape at each bit-width of the axis (TF).

        Before Ray starts: a layer list's shape errors, a builder that does not import or
        returns the wrong output, a ``layer_bits`` or per-layer JR name the model lacks all
        raise :class:`StudyError` naming the field.  Returns a
        ``trainables.byom.ModelReport`` per model (``builtin``: the built-in models too,
        which are known good and skipped otherwise).
        """
        from trainables.byom import ModelError, model_report
        from trainables.data import dataset_shape

        shape, classes = dataset_shape(self.dataset.name.value)
        for i, a in enumerate(self.attacks):
            # ART's L2 Square starts from a grid of square tiles as wide as h // 5 laid
            # along both axes, which fails on a non-square input (49 x 10 MFCCs).
            if (
                a.name.value in ("square", "autoattack_art")
                and a.norm_value == "2"
                and shape[0] != shape[1]
            ):
                raise StudyError(
                    f"attacks[{i}].norm: ART's L2 Square needs square inputs, and "
                    f"{self.dataset.name.value}'s are {shape[0]} x {shape[1]}: use norm 'inf', "
                    "or autoattack (its own Square fits any shape)"
                )
        several = len(self.models) > 1
        base = {"sparsity": self.axes.sparsity[0], "clusters": self.axes.clusters[0],
                "jr_weight": self.axes.jr_weight[0], "adversarial": 0, "jr_layers": 0}  # fmt: skip
        reports = []
        for i, (where, m) in enumerate(self.models_where()):
            if isinstance(m, ModelName) and not builtin:
                continue
            configs = [
                self.point_trials({**base, "bits": b, **({"model": i} if several else {})})[0]
                for b in self.axes.bits
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
            for field, choice in [("train.jr_layers", self.train.jr_layers)] + [
                (f"axes.jr_layers[{k}]", c) for k, c in enumerate(self.axes.jr_layers)
            ]:
                missing = sorted(set(choice) - names - {"all"})
                if missing:
                    raise StudyError(
                        f"{field}: no layer named {missing} in model {report.label} "
                        f"({where}; layers: {', '.join(sorted(names))})"
                    )
            reports.append(report)
        return reports

    def trials(self) -> list[TrialConfig]:
        """The whole grid: every point's trials, in file order (bits outermost, fold innermost).

        A per-layer study is never enumerated: the trials of ``budget`` distinct random
        assignments (seeded), a sample of what its search runs (for sizing)."""
        from grid.space import points, random_points

        if self.search.layers is not None:
            pts = random_points(self, self.budget, self.search_seed)
            return [t for p in pts for t in self.point_trials(p)]
        return [t for p in points(self) for t in self.point_trials(p)]


# ---------------------------------------------------------------------------
# Loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that rejects a key given twice in one mapping (YAML keeps the last silently)."""


def _construct_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _is_tag(loc: tuple[int | str, ...], i: int) -> bool:
    """Whether ``loc[i]`` is the tag pydantic puts after a model or a layer of a union."""
    part = loc[i]
    return (
        isinstance(part, str) and part in UNION_TAGS and i > 0
        and (isinstance(loc[i - 1], int) or loc[i - 1] == "model")
    )  # fmt: skip


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if _is_tag(loc, i):
            continue  # model.layers[3], not model.layer_list.layers[3].conv
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part and "(" in part:
            continue  # pydantic's internal step names for annotated/union types
        else:
            out += f".{part}" if out else str(part)
    return out or "study"


def _known_fields(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Field names valid at ``loc`` (for 'did you mean')."""
    current: Any = model
    for i, part in enumerate(loc[:-1]):
        if _is_tag(loc, i):
            current = UNION_TAGS[str(part)]
            continue
        if isinstance(part, int) or not (
            isinstance(current, type) and issubclass(current, BaseModel)
        ):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        current = next(
            (a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = _path(loc)
        msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if e["type"] == "extra_forbidden":
            known = _known_fields(Study, loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = (
                f"; did you mean {close[0]!r}?"
                if close
                else (f" (known: {', '.join(known)})" if known else "")
            )
            lines.append(f"{path}: unknown key{hint}")
        elif e["type"] in ("union_tag_invalid", "union_tag_not_found"):  # a layer's type
            ctx = e.get("ctx") or {}
            disc = str(ctx.get("discriminator", "type")).strip("'")
            tag = ctx.get("tag")
            expected = str(ctx.get("expected_tags", "")).replace("'", "") or ", ".join(LAYER_TYPES)
            close = difflib.get_close_matches(str(tag), expected.split(", "), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            what = f" = {tag!r}: unknown" if tag is not None else ": missing"
            lines.append(f"{path}.{disc}{what} (known: {expected}){hint}")
        elif not loc:  # a whole-study rule: its message names the fields
            lines.append(msg)
        elif e["type"] == "missing":
            lines.append(f"{path}: required field is missing")
        elif isinstance(
            e.get("input"), dict
        ):  # a rule over a whole section: its message names the field
            sep = (
                "." if msg.startswith(("layers[", "layers:")) else ": "
            )  # model.layers[2] (add1): ...
            lines.append(f"{path}{sep}{msg}")
        else:
            lines.append(f"{path} = {e.get('input')!r}: {msg}")
    n = len(lines)
    head = f"{source}: {n} error{'s' if n > 1 else ''} in the study file"
    return head + "\n" + "\n".join(f"  - {line}" for line in lines)


def parse_study(data: Any, source: str = "<study>") -> Study:
    if not isinstance(data, dict):
        raise StudyError(
            f"{source}: the study file must be a YAML mapping of keys to values; got {type(data).__name__}"
        )
    try:
        # JSON mode: strict types (no "10" for 10, no 2.5 for an int) that
        # still take enum names as strings.  YAML-only types (dates) become text.
        return Study.model_validate_json(json.dumps(data, default=str))
    except ValidationError as err:
        raise StudyError(format_errors(err, source)) from None


def study_json_schema() -> dict[str, Any]:
    """The study file's JSON Schema (draft 2020-12), as editors use it to complete and check YAML.

    Generated from :class:`Study` in validation mode, so it accepts the file's shorthands
    (``dataset: digits``, ``bits: 4``, ``jr_layers: none``, ``adversarial: pgd``).  Checks a
    schema cannot state (a layer name that exists, an attack's options) stay in ``grid validate``.
    """
    schema = Study.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://robustgrid.invalid/study.schema.json",
        **schema,
        "title": "robustgrid study",
    }


def embedded_studies() -> dict[str, str]:
    """The embedded studies: file name (``grid run NAME``) -> the study's ``name``."""
    out = {}
    for ref in sorted(importlib.resources.files("grid").joinpath("studies").iterdir(), key=str):
        if ref.name.endswith(".yaml") and ref.is_file():
            data = yaml.safe_load(ref.read_text())
            out[ref.name.removesuffix(".yaml")] = str((data or {}).get("name", ""))
    return out


def load_study(path: str | Path | None = None) -> Study:
    """Load and validate a study: a file, an embedded study by file name (``stq_showcase``)
    or by its ``name`` (``stq-showcase``, as ``grid run`` prints it); ``None``: the default."""
    ref = str(DEFAULT_STUDY if path is None else path)
    p = Path(ref)
    if p.is_file():
        return _parse_text(p.read_text(), str(p))
    if p.suffix == "" and "/" not in ref:
        known = embedded_studies()
        stem = ref if ref in known else next((f for f, n in known.items() if n == ref), None)
        if stem is not None:
            embedded = importlib.resources.files("grid") / "studies" / f"{stem}.yaml"
            return _parse_text(embedded.read_text(), f"<embedded {stem} study>")
        names = ", ".join(f"{f} ({n})" for f, n in known.items())
        raise StudyError(
            f"{ref}: no such study file, and no embedded study of that file name or name "
            f"(embedded: {names})"
        )
    raise StudyError(f"{ref}: no such study file")


def _parse_text(text: str, source: str) -> Study:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise StudyError(f"{source}: not valid YAML: {err}") from None
    return parse_study(data, source)
