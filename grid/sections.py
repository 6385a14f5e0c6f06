"""The study file's sections (``train``, ``axes``, ``attacks``, ``objective``, ``search``,
``resources``, ``dataset``): their schema and the rules each checks on its own.

Types and defaults are the trial config's (``trainables.config``), so a study and a trial
cannot disagree on a value.  The rules across sections live on :class:`grid.study.Study`.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

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
    JRLayers,
    JRProjections,
    JRWeight,
    LearningRate,
    Md5,
    Model,
    Seed,
    Sparsity,
    TestFraction,
    Threads,
    TrialConfig,
)
from trainables.gpu import GpuMemory

MAX_TRIALS = 100_000  # trials (points x folds) a grid may expand to


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
    """How the grid points are visited.  ``budget`` counts distinct points (each runs every fold,
    so a budget of 40 points with 5 folds is 200 trials)."""

    strategy: Strategy = Strategy.grid
    sampler: SamplerName = SamplerName.tpe
    budget: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TRIALS,
        description="distinct points to visit (strategy optuna or random; each runs all its "
        "folds); default every point.  Formerly `trials` (still read, with a warning)",
    )
    seed: Seed | None = None  # default: the study's seed
    population: int | None = Field(default=None, ge=2, le=10_000)  # NSGA-II/III population
    startup_trials: int = Field(default=10, ge=1, le=10_000)  # TPE's random start
    # The per-layer space: keys ``all``, a layer type (conv2d, dense, activation...) or a
    # layer name; a type overrides ``all`` and a name its type, field by field.
    layers: dict[str, LayerChoices] | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="per-layer space (strategy optuna or random; needs `budget`): keys `all`, "
        "a layer type (conv2d, depthwiseconv2d, dense, activation) or a layer name, each "
        "{bits, sparsity, clusters, activation_bits, jr_weight: [choices]}; per field a name "
        "overrides its type, a type overrides `all`; layers not matched follow the axes",
    )
    # Optuna: the uniform assignments and the ans_hybrid one run first (they count towards the budget).
    seeds: bool = Field(
        default=True,
        description="optuna with `layers`: the uniform assignments (at most half the budget) "
        "and the ans_hybrid one run first, counted in `budget`",
    )

    @model_validator(mode="after")
    def _budget_needs_a_search(self) -> Search:
        if self.budget is not None and self.strategy == Strategy.grid:
            raise ValueError(
                f"budget: {self.budget} points is a budget for strategy optuna or random; "
                "strategy grid runs every point (leave budget out)"
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
