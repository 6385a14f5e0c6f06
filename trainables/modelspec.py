"""Models a researcher brings: a layer list typed in the study, or a Python builder by import path.

Definitions:

- *model spec*: what ``TrialConfig.model`` holds: a built-in name
  (``trainables.config.ModelName``), a :class:`LayerList`, or an
  :class:`ImportedModel`.  Built-in names dump to the same JSON string as
  ever, so their trial keys do not change.
- *layer list*: ``{name: ..., layers: [...]}``, one mapping per layer,
  discriminated on ``type`` (:data:`LAYER_TYPES`).  Weight layers (conv,
  depthwise_conv, dense) become the clusterable QKeras layers through
  ``trainables.models.Builder.q``, so bits, ``layer_bits`` (by the layer's
  name), pruning, clustering, JR and per-layer JR (by activation name) all
  apply; ``activation`` is a ReLU quantized to the trial's activation width.
- *default names*: a layer without ``name`` gets ``<prefix><n>``, n counting
  that prefix's layers from 1 (conv1, dw1, dense1, bn1, act1, maxpool1,
  avgpool1, gap1, drop1, flatten1, add1); the last dense layer is ``logits``.
  Names are resolved here (a list given with or without them is the same
  model, and the same trial key).
- *label*: the readable model name a row carries in ``cfg_model``: the
  built-in name, the list's ``name`` (default ``layers-`` and 8 hex digits
  of the list's SHA-256), or the builder's import path.
- *builder*: ``package.module:function``, called as
  ``function(b, input_shape, num_classes)`` with ``b`` the trial's
  ``trainables.models.Builder`` (per-layer quantizers ``b.q(name, fan_in)``,
  quantized activations ``b.act(name)``); it returns a tf_keras functional
  model whose output is the logits, (B, num_classes).
- *source digest*: 16 hex digits of SHA-256 over every ``.py`` file of the
  builder's top-level package (relative path and bytes, in path order; a
  single-file module: that file).  It is part of the trial identity
  (``TrialConfig.builder_digest``), so edited builder code gives new keys,
  and a worker whose copy differs refuses the trial.

TF-free: the study schema (``grid.spec``) imports it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

LAYER_TYPES = (
    "conv", "depthwise_conv", "dense", "batch_norm", "activation", "max_pool", "avg_pool",
    "global_avg_pool", "dropout", "flatten", "add",
)  # fmt: skip
# Default-name prefix of each layer type (see the module doc).
PREFIX = {
    "conv": "conv", "depthwise_conv": "dw", "dense": "dense", "batch_norm": "bn",
    "activation": "act", "max_pool": "maxpool", "avg_pool": "avgpool", "global_avg_pool": "gap",
    "dropout": "drop", "flatten": "flatten", "add": "add",
}  # fmt: skip
WEIGHT_TYPES = ("conv", "depthwise_conv", "dense")
MAX_LAYERS = 256
IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def _pair(v: Any) -> Any:
    """A size as an int (square) or a pair: always stored as a pair."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, list):
        return tuple(v)
    return v


Size = Annotated[int, Field(strict=True, ge=1, le=4096)]
Pair = Annotated[
    tuple[Size, Size], BeforeValidator(_pair, json_schema_input_type=Size | tuple[Size, Size])
]
Padding = Literal["same", "valid"]
LayerName = Annotated[
    str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", max_length=64)
]  # a Keras layer name
ModelLabel = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$", max_length=100)]


class _Layer(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True,
        serialize_by_alias=True,
    )  # fmt: skip

    name: LayerName | None = None  # default: see the module doc


class Conv(_Layer):
    type: Literal["conv"]
    filters: Annotated[int, Field(strict=True, ge=1, le=65_536)]
    kernel: Pair = (3, 3)
    strides: Pair = (1, 1)
    padding: Padding = "same"
    use_bias: Annotated[bool, Field(strict=True)] = True


class DepthwiseConv(_Layer):
    type: Literal["depthwise_conv"]
    kernel: Pair = (3, 3)
    strides: Pair = (1, 1)
    padding: Padding = "same"
    depth_multiplier: Annotated[int, Field(strict=True, ge=1, le=64)] = 1
    use_bias: Annotated[bool, Field(strict=True)] = True


class Dense(_Layer):
    type: Literal["dense"]
    units: Annotated[int, Field(strict=True, ge=1, le=1_000_000)] | None = (
        None  # the last dense: the dataset's classes
    )
    use_bias: Annotated[bool, Field(strict=True)] = True


class BatchNorm(_Layer):
    type: Literal["batch_norm"]


class Activation(_Layer):
    type: Literal["activation"]  # ReLU, quantized to the trial's activation width


class MaxPool(_Layer):
    type: Literal["max_pool"]
    pool: Pair = (2, 2)
    strides: Pair | None = None  # default: the pool size
    padding: Padding = "valid"


class AvgPool(_Layer):
    type: Literal["avg_pool"]
    pool: Pair = (2, 2)
    strides: Pair | None = None  # default: the pool size
    padding: Padding = "valid"


class GlobalAvgPool(_Layer):
    type: Literal["global_avg_pool"]  # (B, H, W, C) -> (B, C)


class Dropout(_Layer):
    type: Literal["dropout"]
    rate: Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = 0.2


class Flatten(_Layer):
    type: Literal["flatten"]


class Add(_Layer):
    """Residual add: this layer's input plus the output of the earlier layer ``from``."""

    type: Literal["add"]
    from_: LayerName = Field(alias="from")


LayerSpec = Annotated[
    Conv | DepthwiseConv | Dense | BatchNorm | Activation | MaxPool | AvgPool | GlobalAvgPool
    | Dropout | Flatten | Add,
    Field(discriminator="type"),
]  # fmt: skip
LAYER_CLASSES: dict[str, type[BaseModel]] = {
    "conv": Conv, "depthwise_conv": DepthwiseConv, "dense": Dense, "batch_norm": BatchNorm,
    "activation": Activation, "max_pool": MaxPool, "avg_pool": AvgPool,
    "global_avg_pool": GlobalAvgPool, "dropout": Dropout, "flatten": Flatten, "add": Add,
}  # fmt: skip


def default_names(layers: tuple[Any, ...]) -> list[str]:
    """Each layer's name: its own, else the default (see the module doc)."""
    dense = [i for i, layer in enumerate(layers) if layer.type == "dense"]
    last_dense = dense[-1] if dense else -1
    counts: dict[str, int] = {}
    names = []
    for i, layer in enumerate(layers):
        prefix = PREFIX[layer.type]
        counts[prefix] = counts.get(prefix, 0) + 1
        default = "logits" if i == last_dense else f"{prefix}{counts[prefix]}"
        names.append(layer.name or default)
    return names


class LayerList(BaseModel):
    """``model: {name: my_cnn, layers: [{type: conv, filters: 16}, ...]}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ModelLabel | None = None  # default: layers-<8 hex of the list's SHA-256>
    layers: tuple[LayerSpec, ...] = Field(max_length=MAX_LAYERS)

    @model_validator(mode="after")
    def _resolve(self) -> LayerList:
        if not self.layers:
            raise ValueError("layers: give at least one layer")
        names = default_names(self.layers)
        seen: dict[str, int] = {}
        for i, (layer, name) in enumerate(zip(self.layers, names, strict=True)):
            if name in seen:
                raise ValueError(
                    f"layers[{i}]: name {name!r} is already the name of layers[{seen[name]}]; "
                    "each layer needs its own name"
                )
            if isinstance(layer, Add) and layer.from_ not in seen:
                raise ValueError(
                    f"layers[{i}] ({name}): from = {layer.from_!r} names no earlier layer "
                    f"(earlier: {', '.join(seen) or 'none'})"
                )
            if isinstance(layer, Dense) and layer.units is None and name != names[self._last_dense]:
                raise ValueError(
                    f"layers[{i}] ({name}): units is required (only the last dense layer "
                    "defaults to the dataset's classes)"
                )
            seen[name] = i
        if self.layers[-1].type == "activation":
            raise ValueError(
                f"layers[{len(self.layers) - 1}]: the last layer is a ReLU; the model must end "
                "in logits (end with a dense layer)"
            )
        resolved = tuple(
            layer.model_copy(update={"name": name})
            for layer, name in zip(self.layers, names, strict=True)
        )
        object.__setattr__(self, "layers", resolved)
        if self.name is None:
            object.__setattr__(self, "name", "layers-" + self.digest()[:8])
        return self

    @property
    def _last_dense(self) -> int:
        dense = [i for i, layer in enumerate(self.layers) if layer.type == "dense"]
        return dense[-1] if dense else -1

    def digest(self) -> str:
        """SHA-256 of the resolved layers' canonical JSON (the name left out)."""
        blob = json.dumps(
            [layer.model_dump(mode="json") for layer in self.layers],
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def label(self) -> str:
        return str(self.name)


class ImportedModel(BaseModel):
    """``model: package.module:function`` (or ``{builder: ..., name: ...}``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    builder: str
    name: ModelLabel | None = None  # the label; default: the import path

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"builder": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _path(self) -> ImportedModel:
        if not IMPORT_PATH.match(self.builder):
            raise ValueError(f"{self.builder!r} is not an import path 'package.module:function'")
        return self

    @property
    def module(self) -> str:
        return self.builder.split(":", 1)[0]

    @property
    def function(self) -> str:
        return self.builder.split(":", 1)[1]

    @property
    def label(self) -> str:
        return self.name or self.builder


def model_kind(v: Any) -> str | None:
    """The union tag of a model value (see ``trainables.config.Model``)."""
    if isinstance(v, LayerList):
        return "layer_list"
    if isinstance(v, ImportedModel):
        return "import"
    if isinstance(v, str):
        return "import" if ":" in v else "builtin"
    if isinstance(v, dict):
        if "layers" in v:
            return "layer_list"
        if "builder" in v:
            return "import"
        return None
    return "builtin"


# The tags pydantic puts in error locations of the model unions (grid.spec drops them).
UNION_TAGS: dict[str, type[BaseModel] | None] = {
    "builtin": None, "layer_list": LayerList, "import": ImportedModel, **LAYER_CLASSES,
}  # fmt: skip


def model_label(model: Any) -> str:
    """The readable name of a model spec (``cfg_model``)."""
    return str(getattr(model, "label", None) or getattr(model, "value", model))


# ---------------------------------------------------------------------------
# The builder's source


def source_files(import_path: str) -> tuple[Path, list[Path]]:
    """(root, the .py files) of the top-level package of ``import_path``'s module.

    Located without importing anything (``importlib.util.find_spec`` of the
    top-level name); the root is what Ray ships to the workers (a package
    folder, or a single module file).
    """
    top = import_path.split(":", 1)[0].split(".", 1)[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError) as err:
        raise ValueError(f"builder: cannot locate {top!r}: {err}") from None
    if spec is None:
        raise ValueError(
            f"builder: no module named {top!r} on this machine's Python path "
            "(install the package, or add its parent folder to PYTHONPATH)"
        )
    locations = list(spec.submodule_search_locations or [])
    if locations:
        if len(locations) != 1:
            raise ValueError(
                f"builder: package {top!r} spans {len(locations)} folders (a namespace package); "
                "give it an __init__.py"
            )
        root = Path(locations[0])
        files = sorted(
            p for p in root.rglob("*.py") if "__pycache__" not in p.relative_to(root).parts
        )
        return root, files
    if not spec.origin or not spec.origin.endswith(".py"):
        raise ValueError(f"builder: {top!r} is not Python source ({spec.origin})")
    return Path(spec.origin), [Path(spec.origin)]


def source_digest(import_path: str) -> str:
    """16 hex digits of SHA-256 over the builder's package sources (see the module doc)."""
    root, files = source_files(import_path)
    h = hashlib.sha256()
    base = root if root.is_dir() else root.parent
    for f in files:
        h.update(f.relative_to(base).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]
