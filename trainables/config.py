"""The frozen, validated config of one trial.

The annotated field types below are shared with the study schema
(``grid.spec``), so a bad value is rejected with the same rule whether it
comes from a study file or straight from a Python caller.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    model_validator,
)

from trainables.gpu import GpuMemory
from trainables.modelspec import ImportedModel, LayerList, model_kind, model_label, source_digest

# ---------------------------------------------------------------------------
# Quantization labels.  ``bits`` is categorical: an integer width 2..16 or a
# named scheme.  Weight storage width for each (used by the footprint):
#   float -> 32 bits, int b -> b bits, ternary/stochastic_ternary -> 2 bits,
#   binary/stochastic_binary -> 1 bit.  ans_hybrid: a width per layer, assigned
#   by adversarial noise sensitivity (trainables.ans); ``weight_bits`` gives the
#   widest width of its list.
NAMED_SCHEMES = (
    "float",
    "ternary",
    "stochastic_ternary",
    "binary",
    "stochastic_binary",
    "ans_hybrid",
)
MIN_INT_BITS, MAX_INT_BITS = 2, 16


def normalize_bits(value: Any) -> str:
    """Return the canonical label for a ``bits`` value or raise ValueError."""
    if isinstance(value, bool):
        raise ValueError(
            f"bits must be an integer {MIN_INT_BITS}-{MAX_INT_BITS} or one of {', '.join(NAMED_SCHEMES)}; got {value!r}"
        )
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        b = int(value)
        if not MIN_INT_BITS <= b <= MAX_INT_BITS:
            hint = " (use 'binary' for 1-bit weights)" if b == 1 else ""
            raise ValueError(
                f"bits must be an integer {MIN_INT_BITS}-{MAX_INT_BITS} or one of "
                f"{', '.join(NAMED_SCHEMES)}; got {value!r}{hint}"
            )
        return str(b)
    if isinstance(value, str) and value.strip().lower() in NAMED_SCHEMES:
        return value.strip().lower()
    raise ValueError(
        f"bits must be an integer {MIN_INT_BITS}-{MAX_INT_BITS} or one of {', '.join(NAMED_SCHEMES)}; got {value!r}"
    )


# ans_hybrid's width for ordering the bits axis only (its layers have their own widths):
# between 8 and 4 bits, as its default list (8, 4, ternary) averages.
ANS_NOMINAL_BITS = 5


def weight_bits(bits: str) -> int:
    """Storage width in bits of one weight under the ``bits`` label (ans_hybrid: nominal)."""
    named = {
        "float": 32,
        "ternary": 2,
        "stochastic_ternary": 2,
        "binary": 1,
        "stochastic_binary": 1,
    }
    return named.get(bits) or (ANS_NOMINAL_BITS if bits == "ans_hybrid" else int(bits))


class Sensitive(enum.StrEnum):
    widest = "widest"  # the most sensitive layers get the widest width of the list
    narrowest = "narrowest"  # ... the narrowest


class AnsHybrid(BaseModel):
    """Settings of ``bits: ans_hybrid`` (trainables/ans.py): per-layer widths by adversarial noise sensitivity.

    After ``warmup_epochs`` of float training, each weight layer's ANS is measured on
    ``samples`` training examples under FGSM at ``eps``; the layers are ranked, the ranking is
    split into ``len(bits)`` near-equal groups, and the most sensitive group gets the
    ``most_sensitive`` end of ``bits`` (default narrowest: our reading of Quanos, unverified).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    bits: tuple[Bits, ...] = Field(default=("8", "4", "ternary"), min_length=1, max_length=16)
    most_sensitive: Sensitive = Sensitive.narrowest
    warmup_epochs: int = Field(default=1, ge=1, le=1000)
    eps: Eps = 0.03  # L-inf FGSM radius on the 0-1 input scale
    samples: int = Field(default=256, ge=1, le=100_000)  # training examples ANS is averaged over

    @model_validator(mode="after")
    def _widths(self) -> AnsHybrid:
        bad = [b for b in self.bits if b in ("float", "ans_hybrid")]
        if bad:
            raise ValueError(
                f"bits: {bad[0]!r} is not a width a layer can be given (an int, ternary, binary...)"
            )
        if len(set(self.bits)) != len(self.bits):
            raise ValueError(f"bits: {list(self.bits)} has a width twice")
        if self.eps > 1.0:
            raise ValueError(f"eps: {self.eps} > 1 for an L-inf FGSM on inputs in [0, 1]")
        return self

    @property
    def ordered(self) -> list[str]:
        """The widths from widest to narrowest."""
        return sorted(self.bits, key=lambda b: (-weight_bits(b), b))


def _check_clusters(value: int) -> int:
    if value == 1 or value < 0:
        raise ValueError(f"clusters must be 0 (off) or 2-65536; got {value}")
    return value


# Shared field types (the study schema uses the same ones for its axes).
# In a study file: an integer width or a scheme's name (the JSON Schema editors complete from).
BITS_INPUT_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": MIN_INT_BITS, "maximum": MAX_INT_BITS},
        {"enum": list(NAMED_SCHEMES)},
        {"type": "string", "pattern": "^ *([2-9]|1[0-6]) *$"},
    ],
    "description": f"an integer width {MIN_INT_BITS}-{MAX_INT_BITS} or one of {', '.join(NAMED_SCHEMES)}",
}
Bits = Annotated[
    str, BeforeValidator(normalize_bits), WithJsonSchema(BITS_INPUT_SCHEMA, mode="validation")
]
Sparsity = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]
# The trial's training and split settings: the study file's ``train``, ``seed``, ``folds`` and
# dataset ``md5`` use these same types (grid.spec), so a bound is one edit here.
Epochs = Annotated[int, Field(ge=1, le=10_000)]
FineTuneEpochs = Annotated[int, Field(ge=0, le=10_000)]  # after clustering
BatchSize = Annotated[int, Field(ge=1, le=65_536)]
LearningRate = Annotated[float, Field(gt=0.0, le=10.0, allow_inf_nan=False)]
TestFraction = Annotated[float, Field(gt=0.0, lt=1.0)]
ActivationBits = Annotated[int, Field(ge=MIN_INT_BITS, le=MAX_INT_BITS)]
JRProjections = Annotated[int, Field(ge=1, le=64)]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
MAX_FOLDS = 20
Folds = Annotated[int, Field(ge=1, le=MAX_FOLDS)]  # 1: holdout; k >= 2: stratified k-fold
Md5 = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Threads = Annotated[int, Field(ge=1, le=1024)]
Clusters = Annotated[int, Field(le=65536), AfterValidator(_check_clusters)]
JRWeight = Annotated[float, Field(ge=0.0, le=1e6, allow_inf_nan=False)]
Eps = Annotated[
    float, Field(gt=0.0, le=1000.0, allow_inf_nan=False)
]  # input's 0-1 scale (L-inf: <= 1)


class AttackName(enum.StrEnum):
    # white-box (gradients of the attacked model)
    fgsm = "fgsm"
    pgd = "pgd"
    cw_l2 = "cw_l2"
    cw_linf = "cw_linf"
    deepfool = "deepfool"
    # black-box (predictions only)
    square = "square"  # score-based
    hopskipjump = "hopskipjump"  # decision-based
    boundary = "boundary"  # decision-based
    # transfer: crafted on a float surrogate trained on the same fold
    transfer_fgsm = "transfer_fgsm"
    transfer_pgd = "transfer_pgd"
    # white-box ensembles: the standard AutoAttack (Croce & Hein 2020, fra31/auto-attack
    # version='standard': APGD-CE, APGD-T, FAB-T, Square; trainables/autoattack.py), and the
    # cheaper, weaker ensemble robustgrid ran up to results revision 2 (ART's APGD-CE,
    # untargeted APGD-DLR and Square): never reported as "AutoAttack"
    autoattack = "autoattack"
    autoattack_art = "autoattack_art"


WHITE_BOX = {
    AttackName.fgsm,
    AttackName.pgd,
    AttackName.cw_l2,
    AttackName.cw_linf,
    AttackName.deepfool,
    AttackName.autoattack,
    AttackName.autoattack_art,
}
BLACK_BOX = {AttackName.square, AttackName.hopskipjump, AttackName.boundary}
TRANSFER = {AttackName.transfer_fgsm, AttackName.transfer_pgd}
# Minimal-perturbation attacks run once; a sample counts as robust at eps when the
# attack fails or needs a perturbation larger than eps (in the attack's norm).
MINIMAL = {
    AttackName.cw_l2,
    AttackName.cw_linf,
    AttackName.deepfool,
    AttackName.hopskipjump,
    AttackName.boundary,
}
DEFAULT_NORM = {
    AttackName.cw_l2: "2",
    AttackName.deepfool: "2",
    AttackName.hopskipjump: "2",
    AttackName.boundary: "2",
}
NORM_CHOICES = {
    AttackName.square: {"inf", "2"},
    AttackName.hopskipjump: {"inf", "2"},
    AttackName.autoattack: {"inf", "2"},
    AttackName.autoattack_art: {"inf", "2"},
}

OptionValue = int | float | bool | str


class AttackSpec(BaseModel):
    """One attack of the evaluation: every eps gives one row.

    ``options`` go to the ART attack as they are (checked against the ART
    class's own ``attack_params``), e.g. ``{binary_search_steps: 5}``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: AttackName
    eps: tuple[Eps, ...] = Field(min_length=1, max_length=64)
    norm: str | None = None  # 'inf' or '2'; default: the attack's own (see DEFAULT_NORM)
    steps: int = Field(default=10, ge=1, le=10_000)  # PGD iterations (FGSM: ignored)
    # PGD random restarts (ART's num_random_init): 0 starts at the clean example;
    # r >= 1 runs r random starts and an example is robust only if it survives all.
    # autoattack (standard): one APGD restart, as the standard version (0 or 1 here); its
    # APGD and FAB iterations are max_iter (100), Square's queries 50 x max_iter (5,000).
    # autoattack_art: APGD's random starts, max(1, restarts).
    restarts: int = Field(default=0, ge=0, le=1000)
    step_ratio: float = Field(default=0.25, gt=0.0, le=1.0)  # PGD step = step_ratio * eps
    max_iter: int | None = Field(default=None, ge=1, le=100_000)  # other iterative attacks
    samples: int | None = Field(default=None, ge=1, le=10_000_000)  # None: the whole test split
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    options: dict[str, OptionValue] = Field(default_factory=dict)

    @property
    def kind(self) -> str:
        return (
            "white" if self.name in WHITE_BOX else "black" if self.name in BLACK_BOX else "transfer"
        )

    @property
    def norm_value(self) -> str:
        return self.norm or DEFAULT_NORM.get(self.name, "inf")

    @model_validator(mode="after")
    def _check(self) -> AttackSpec:
        allowed = NORM_CHOICES.get(self.name, {DEFAULT_NORM.get(self.name, "inf")})
        if self.norm is not None and self.norm not in allowed:
            raise ValueError(
                f"norm: {self.norm!r} is not available for {self.name.value} (choose {sorted(allowed)})"
            )
        if self.name is AttackName.autoattack and self.restarts > 1:
            raise ValueError(
                f"restarts: {self.restarts} for autoattack; the standard version runs 1 APGD "
                "restart (0 or 1; autoattack_art takes more)"
            )
        if self.norm_value == "inf" and max(self.eps) > 1.0:
            raise ValueError(f"eps: {max(self.eps)} > 1 for an L-inf attack on inputs in [0, 1]")
        return self


class AdvMethod(enum.StrEnum):
    none = "none"
    fgsm = "fgsm"
    pgd = "pgd"


class AdvTraining(BaseModel):
    """Adversarial training: each batch's first ``ratio`` share is replaced by ART adversarial examples."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: AdvMethod = AdvMethod.none
    eps: Eps = 0.1
    steps: int = Field(default=7, ge=1, le=1000)  # PGD iterations (ignored by FGSM)
    ratio: float = Field(default=0.5, gt=0.0, le=1.0)


def _adv_shorthand(v: Any) -> Any:
    return {"method": v} if isinstance(v, str) else v


Adversarial = Annotated[
    AdvTraining, BeforeValidator(_adv_shorthand, json_schema_input_type=AdvMethod | AdvTraining)
]
JRLayers = dict[str, JRWeight]  # layer name (or "all": every activation) -> JR weight


class Dataset(enum.StrEnum):
    digits = "digits"
    cifar10 = "cifar10"
    svhn = "svhn"
    speech_commands = "speech_commands"


class ModelName(enum.StrEnum):
    digits_cnn = "digits_cnn"
    resnet8 = "resnet8"  # MLPerf Tiny image classification (CIFAR-10)
    ds_cnn = "ds_cnn"  # MLPerf Tiny keyword spotting
    stq_cnn = "stq_cnn"  # STQ-class stand-in sized to the first paper's budget (trainables.models.stq_cnn)


def known_model(v: Any) -> Any:
    """A clearer message than pydantic's for an unknown built-in name: say what is known."""
    if isinstance(v, str) and v not in {e.value for e in ModelName}:
        raise ValueError(
            f"unknown model {v!r} (known: {', '.join(e.value for e in ModelName)}; "
            "or a layer list {layers: [...]}, or a builder 'package.module:function')"
        )
    return v


# A model: a built-in name, a layer list, or a Python builder by import path
# (trainables.modelspec).  A built-in name dumps to its name, as it always has.
Model = Annotated[
    Annotated[ModelName, BeforeValidator(known_model), Tag("builtin")]
    | Annotated[LayerList, Tag("layer_list")]
    | Annotated[ImportedModel, Tag("import")],
    Discriminator(
        model_kind,
        custom_error_type="model_kind",
        custom_error_message=(
            "a model is a built-in name, a layer list {name: ..., layers: [...]}, "
            "or a builder 'package.module:function' / {builder: ..., name: ...}"
        ),
    ),
]


# Per-layer override fields newer than the results they would otherwise re-key: in a config's
# identity only when not empty (TrialConfig.identity).
LAYER_OVERRIDES_OPTIONAL = ("layer_sparsity", "layer_clusters", "layer_activation_bits")

NOT_IN_KEY = {"threads", "gpus", "gpu_memory", "data_path", "download", "data_md5"}

# The results revision: the version of what a trial computes.  Bump it with
# any change that alters a trial's rows for the same config (training, JR,
# attacks, sampling, metrics).  It is part of every trial's identity, so the
# key changes with it: rows of another revision are stale (``grid status``
# reports them, ``grid run`` reruns their trials, analysis leaves them out
# unless asked).  History: 1 up to 7fa72bb's JR and first-N attack samples;
# 2 exact JR gradients through batch norm, stratified seeded attack
# subsets, grouped Speech Commands folds, logits for score-based attacks,
# masking diagnostics; 3 per-example worst rows (attack 'worst': the AND of
# the attacks' masks over their common prefix, no longer the minimum of
# their accuracies), the standard AutoAttack, white_above_* per attack,
# attacks' published default budgets, per-layer JR's sign draws.
RESULTS_REVISION = 3


@dataclass(frozen=True)
class Axis:
    """One axis of a study's cross product, named once for every package.

    ``name``: the study file's ``axes.<name>``, the grid point's key and the trial config's
    field; ``columns``: the row columns that identify its value (analysis groups by them);
    ``indexed``: a point holds the value's index in the study's list (mappings, models).
    """

    name: str
    columns: tuple[str, ...]
    indexed: bool = False


# The axes, in the order points are labelled (grid.space) and tables list them (analysis).
# A new axis: an entry here, its TrialConfig field and row column(s), its study list in
# grid.spec.Axes and how a point sets it in grid.spec.Study.point_trials;
# tests/test_spec.py::test_every_axis_is_wired_through fails until each exists.
AXES: tuple[Axis, ...] = (
    Axis("bits", ("cfg_bits",)),
    Axis("sparsity", ("cfg_sparsity",)),
    Axis("clusters", ("cfg_clusters",)),
    Axis("jr_weight", ("cfg_jr_weight",)),
    Axis(
        "adversarial", ("cfg_adv_training", "cfg_adv_eps", "cfg_adv_steps", "cfg_adv_ratio"), True
    ),
    Axis("jr_layers", ("cfg_jr_layers",), True),
    Axis("model", ("cfg_model",), True),
)
AXIS_NAMES = tuple(a.name for a in AXES)


class TrialConfig(BaseModel):
    """Everything one trial needs; the hash of it (less NOT_IN_KEY) is the trial key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: Dataset = Dataset.digits
    model: Model = ModelName.digits_cnn
    bits: Bits = "float"
    activation_bits: ActivationBits | None = None  # None: follow int bits, else 8
    layer_bits: dict[str, Bits] = Field(default_factory=dict)  # per-layer overrides of ``bits``
    # Per-layer overrides of ``sparsity`` / ``clusters`` (weight layers) and ``activation_bits``
    # (QActivation layers); a layer not named follows the config's value.  Left out of the
    # identity while empty, so configs without them keep their keys.
    layer_sparsity: dict[str, Sparsity] = Field(default_factory=dict)
    layer_clusters: dict[str, Clusters] = Field(default_factory=dict)  # 0: that layer unclustered
    layer_activation_bits: dict[str, ActivationBits] = Field(default_factory=dict)
    sparsity: Sparsity = 0.0
    clusters: Clusters = 0
    jr_weight: JRWeight = 0.0
    jr_projections: JRProjections = 1
    jr_layers: JRLayers = Field(default_factory=dict)  # per-layer JR on hidden outputs
    adversarial: Adversarial = AdvTraining()
    epochs: Epochs = 8
    fine_tune_epochs: FineTuneEpochs = 2  # after clustering
    batch_size: BatchSize = 64
    learning_rate: LearningRate = 3e-3
    test_fraction: TestFraction = 0.2
    seed: Seed = 0
    folds: Folds = 1  # 1: holdout; k >= 2: stratified k-fold
    fold: int = Field(default=0, ge=0, le=MAX_FOLDS - 1)
    attacks: tuple[AttackSpec, ...] = ()
    # Also attack the int8 TFLite flatbuffer on the interpreter (trainables/deployed.py):
    # rows 'deployed_*'.  In the identity only when true, so every other config keeps its key.
    deployed: bool = False
    # Not part of the key: where the data lives and how many TF threads the trial may use.
    data_path: str | None = None
    download: bool = False
    data_md5: Md5 | None = None
    threads: Threads = 1
    # The trial's share of a GPU (0.25: four trials per GPU) and how its memory is held
    # (trainables.gpu): where the trial runs, not what it computes.
    gpus: float = Field(default=0.0, ge=0.0, le=64.0)
    gpu_memory: GpuMemory = GpuMemory.limit
    # An imported builder's source digest (trainables.modelspec): in the key, so edited
    # builder code gives new keys; None (and left out of the identity) for other models.
    builder_digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$")
    # bits ans_hybrid only: how its per-layer widths are chosen (None elsewhere; filled with the
    # defaults for ans_hybrid, so they are part of its key)
    ans: AnsHybrid | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_revision(cls, data: Any) -> Any:
        # A stored identity (meta_config_json, a manifest's config) carries the results
        # revision it was computed under; the revision belongs to the code, not the config:
        # rebuilding the config computes under this code's revision (and key).
        if isinstance(data, dict) and "revision" in data:
            data = {k: v for k, v in data.items() if k != "revision"}
        return data

    @model_validator(mode="before")
    @classmethod
    def _ans_defaults(cls, data: Any) -> Any:
        # ans_hybrid always carries its settings (the defaults if none are given): they decide
        # the widths, so they belong in its key.
        if (
            isinstance(data, dict)
            and str(data.get("bits", "")).strip().lower() == "ans_hybrid"
            and data.get("ans") is None
        ):
            data = {**data, "ans": {}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _builder_digest(cls, data: Any) -> Any:
        # An imported builder without a digest gets this machine's (the driver's): a worker
        # rebuilds the config from the driver's dump, digest included, and compares.
        if isinstance(data, dict) and data.get("builder_digest") is None:
            model = data.get("model")
            if model_kind(model) == "import":
                try:
                    spec = ImportedModel.model_validate(model)
                except ValueError:
                    return data  # the model field's own validation says what is wrong
                data = {**data, "builder_digest": source_digest(spec.builder)}
        return data

    @model_validator(mode="after")
    def _fold_in_range(self) -> TrialConfig:
        if self.builder_digest is not None and not isinstance(self.model, ImportedModel):
            raise ValueError(
                f"builder_digest: {self.builder_digest!r} belongs to an imported builder; "
                f"model {self.model_label!r} is not one"
            )
        if self.fold >= self.folds:
            raise ValueError(f"fold: {self.fold} must be below folds ({self.folds})")
        if self.ans is not None and self.bits != "ans_hybrid":
            raise ValueError(f"ans: hybrid settings belong to bits 'ans_hybrid', not {self.bits!r}")
        quantized = {k: v for k, v in self.layer_bits.items() if v != "float"}
        if self.bits == "float" and quantized:
            raise ValueError(
                f"layer_bits: {quantized} overrides layers of a quantized model; "
                "bits 'float' is float in every layer"
            )
        if self.bits == "float" and self.layer_activation_bits:
            raise ValueError(
                f"layer_activation_bits: {self.layer_activation_bits} sets activation widths of a "
                "quantized model; bits 'float' has float activations"
            )
        return self

    @property
    def weight_bits(self) -> int:
        """Storage width of a weight (ans_hybrid: the widest of its widths)."""
        if self.ans is not None:
            return max(weight_bits(b) for b in self.ans.bits)
        return weight_bits(self.bits)

    @property
    def act_bits(self) -> int | None:
        """Activation width: None for float models."""
        if self.bits == "float":
            return None
        if self.activation_bits is not None:
            return self.activation_bits
        return int(self.bits) if self.bits.isdigit() else 8

    def sparsity_of(self, layer: str) -> float:
        """The pruning target of weight layer ``layer``: its override, else ``sparsity``."""
        return self.layer_sparsity.get(layer, self.sparsity)

    def clusters_of(self, layer: str) -> int:
        """The cluster count of weight layer ``layer`` (0: unclustered): its override, else ``clusters``."""
        return self.layer_clusters.get(layer, self.clusters)

    def act_bits_of(self, layer: str) -> int | None:
        """The width of activation layer ``layer`` (None: float): its override, else ``act_bits``."""
        if self.act_bits is None:
            return None
        return self.layer_activation_bits.get(layer, self.act_bits)

    @property
    def pruned(self) -> bool:
        """Some weight layer may be pruned: the base target or an override above 0.

        (A layer named in neither follows ``sparsity``; whether every layer is named is
        only known once the model is built, so a non-zero base counts.)
        """
        return self.sparsity > 0 or any(v > 0 for v in self.layer_sparsity.values())

    @property
    def clustered(self) -> bool:
        """Some weight layer may be clustered: the base count or an override is non-zero."""
        return self.clusters > 0 or any(v > 0 for v in self.layer_clusters.values())

    @property
    def model_label(self) -> str:
        """The model's readable name (``cfg_model``): built-in name, list name or import path."""
        return model_label(self.model)

    def identity(self) -> dict[str, Any]:
        """The fields that define the trial's result (all but NOT_IN_KEY), and the results revision.

        ``builder_digest`` and ``ans`` only when set (an imported builder, ans_hybrid),
        ``deployed`` only when true, and the per-layer ``layer_sparsity`` / ``layer_clusters`` /
        ``layer_activation_bits`` only when not empty, so every other config's identity, and
        key, is what it was before the field existed.
        """
        exclude = (
            NOT_IN_KEY
            | {k for k in ("builder_digest", "ans") if getattr(self, k) is None}
            | {k for k in LAYER_OVERRIDES_OPTIONAL if not getattr(self, k)}
            | ({"deployed"} if not self.deployed else set())
        )
        return {**self.model_dump(mode="json", exclude=exclude), "revision": RESULTS_REVISION}

    @property
    def key(self) -> str:
        """16 hex digits of SHA-256 over the canonical JSON of :meth:`identity`."""
        return self.fold_keys([self.fold])[0]

    def fold_keys(self, folds: Iterable[int]) -> list[str]:
        """The keys of this config at each of ``folds`` (``key`` with another fold), from one
        identity dump: a grid of 10^5 trials keys its folds without a dump each."""
        token = '"fold":-1'  # the fold's place in the canonical JSON, filled in per fold
        blob = json.dumps({**self.identity(), "fold": -1}, sort_keys=True, separators=(",", ":"))
        head, sep, tail = blob.partition(token)
        if not sep or token in tail:
            raise AssertionError(f"trial key: the fold's place is not unique in {blob[:200]}")
        return [
            hashlib.sha256(f'{head}"fold":{int(f)}{tail}'.encode()).hexdigest()[:16] for f in folds
        ]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialConfig:
        return cls.model_validate(data)
