"""Models built from QKeras layers so that every axis applies.

The layers are trainables.qlayers' clusterable QKeras layers, quantized by its
``Builder`` (re-exported here, where a researcher's model package imports them).

Every model outputs logits.  Per-layer quantizer overrides
(``TrialConfig.layer_bits``, e.g. first and last layer at 8 bits) replace
the trial's ``bits`` for the named layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import tf_keras
from qkeras import QActivation

from trainables.config import ModelName, TrialConfig
from trainables.modelspec import LayerList
from trainables.qlayers import (
    BIAS_BITS,
    CUSTOM_OBJECTS,
    WEIGHT_LAYERS,
    Builder,
    CQConv2D,
    CQDense,
    CQDepthwiseConv2D,
    kernel_of,
    kernel_quantizer_of,
    normalised_kind,
)

# Re-exported: a researcher's model package imports the layers and the Builder from here.
__all__ = [
    "BIAS_BITS",
    "CUSTOM_OBJECTS",
    "WEIGHT_LAYERS",
    "Builder",
    "CQConv2D",
    "CQDense",
    "CQDepthwiseConv2D",
    "LayerInfo",
    "ModelReport",
    "build_model",
    "check_layer_names",
    "digits_cnn",
    "ds_cnn",
    "kernel_of",
    "kernel_quantizer_of",
    "layer_kinds",
    "model_report",
    "normalised_kind",
    "resnet8",
    "stq_cnn",
]


# Per-layer override fields that name weight layers (Builder.used); layer_activation_bits
# names activation layers (Builder.acts).
_WEIGHT_OVERRIDES = ("layer_bits", "layer_sparsity", "layer_clusters")


def check_layer_names(cfg: TrialConfig, b: Builder) -> None:
    """Refuse per-layer overrides naming no layer of the built model, field first."""
    unknown = set(cfg.layer_bits) - b.used
    if unknown:  # the message layer_bits always had
        raise ValueError(
            f"layer_bits: no layer named {sorted(unknown)} in {cfg.model_label} (layers: {sorted(b.used)})"
        )
    for field in _WEIGHT_OVERRIDES[1:]:
        unknown = set(getattr(cfg, field)) - b.used
        if unknown:
            raise ValueError(
                f"{field}: no weight layer named {sorted(unknown)} in {cfg.model_label} "
                f"(layers: {sorted(b.used)})"
            )
    unknown = set(cfg.layer_activation_bits) - b.acts
    if unknown:
        raise ValueError(
            f"layer_activation_bits: no activation layer named {sorted(unknown)} in "
            f"{cfg.model_label} (activation layers: {sorted(b.acts)})"
        )


def build_model(cfg: TrialConfig, input_shape: tuple[int, ...], num_classes: int) -> tf_keras.Model:
    """The functional Keras model named by ``cfg.model``; outputs logits (B, classes)."""
    builders: dict[str, Callable[[Builder, tuple[int, ...], int], tf_keras.Model]] = {
        "digits_cnn": digits_cnn, "resnet8": resnet8, "ds_cnn": ds_cnn, "stq_cnn": stq_cnn,
    }  # fmt: skip
    b = Builder(cfg)
    if isinstance(cfg.model, ModelName):
        model = builders[cfg.model.value](b, input_shape, num_classes)
    else:  # a layer list or an imported builder (trainables.byom)
        from trainables.byom import build_custom

        model = build_custom(cfg, b, input_shape, num_classes)
    check_layer_names(cfg, b)
    return model


def layer_kinds(cfg: TrialConfig, input_shape: tuple[int, ...], num_classes: int) -> dict[str, str]:
    """Every weight layer and activation layer of ``cfg``'s model -> its normalised kind
    (``conv2d``, ``depthwiseconv2d``, ``dense``, ``activation``), in the model's layer order.

    Builds the untrained model (no training, no data): built-in models, layer lists and
    imported builders alike.
    """
    model = build_model(cfg, input_shape, num_classes)
    return {
        layer.name: normalised_kind(layer)
        for layer in model.layers
        if isinstance(layer, (*WEIGHT_LAYERS, QActivation))
    }


def digits_cnn(b: Builder, input_shape: tuple[int, ...], num_classes: int) -> tf_keras.Model:
    """Small CNN for 8x8 digits: 2 conv + 1 dense, 9,930 parameters."""
    inp = tf_keras.Input(input_shape, name="image")  # (B, 8, 8, 1)
    x = CQConv2D(16, 3, padding="same", name="conv1", **b.q("conv1", 9 * input_shape[-1]))(
        inp
    )  # (B, 8, 8, 16)
    x = b.act("act1")(x)
    x = CQConv2D(32, 3, strides=2, padding="same", name="conv2", **b.q("conv2", 9 * 16))(
        x
    )  # (B, 4, 4, 32)
    x = b.act("act2")(x)
    x = tf_keras.layers.Flatten(name="flatten")(x)  # (B, 512)
    logits = CQDense(num_classes, name="logits", **b.q("logits", 4 * 4 * 32))(x)  # (B, classes)
    return tf_keras.Model(inp, logits, name="digits_cnn")


def _l2() -> Any:
    return tf_keras.regularizers.l2(1e-4)  # as the MLPerf Tiny references


def resnet8(b: Builder, input_shape: tuple[int, ...], num_classes: int) -> tf_keras.Model:
    """MLPerf Tiny image-classification ResNet-8 (ResNet v1, 16-32-64 filters): 78,666 parameters."""
    bn = tf_keras.layers.BatchNormalization
    conv_kw = {"padding": "same", "kernel_initializer": "he_normal", "kernel_regularizer": _l2()}

    def conv(x: Any, filters: int, k: int, stride: int, name: str, fan_in: int) -> Any:
        return CQConv2D(filters, k, strides=stride, name=name, **conv_kw, **b.q(name, fan_in))(x)

    inp = tf_keras.Input(input_shape, name="image")  # (B, 32, 32, 3)
    x = conv(inp, 16, 3, 1, "conv1", 9 * input_shape[-1])
    x = b.act("act1")(bn(name="bn1")(x))  # (B, 32, 32, 16)
    c_in = 16
    for stage, (filters, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
        y = conv(x, filters, 3, stride, f"s{stage}_conv1", 9 * c_in)
        y = b.act(f"s{stage}_act1")(bn(name=f"s{stage}_bn1")(y))
        y = conv(y, filters, 3, 1, f"s{stage}_conv2", 9 * filters)
        y = bn(name=f"s{stage}_bn2")(y)
        if stride != 1:  # projection shortcut for the change in shape
            x = conv(x, filters, 1, stride, f"s{stage}_proj", c_in)
        x = b.act(f"s{stage}_act2")(tf_keras.layers.Add(name=f"s{stage}_add")([x, y]))
        c_in = filters
    # (B, 8, 8, 64)
    x = tf_keras.layers.AveragePooling2D(pool_size=int(min(x.shape[1:3])), name="pool")(x)
    x = tf_keras.layers.Flatten(name="flatten")(x)  # (B, 64)
    logits = CQDense(
        num_classes, name="logits", kernel_initializer="he_normal", **b.q("logits", c_in)
    )(x)
    return tf_keras.Model(inp, logits, name="resnet8")


def ds_cnn(b: Builder, input_shape: tuple[int, ...], num_classes: int) -> tf_keras.Model:
    """MLPerf Tiny keyword-spotting DS-CNN (64 filters, 4 separable blocks): 24,908 parameters."""
    bn = tf_keras.layers.BatchNormalization
    filters = 64
    inp = tf_keras.Input(input_shape, name="mfcc")  # (B, 49, 10, 1)
    x = CQConv2D(
        filters,
        (10, 4),
        strides=(2, 2),
        padding="same",
        kernel_regularizer=_l2(),
        name="conv1",
        **b.q("conv1", 40 * input_shape[-1]),
    )(inp)  # (B, 25, 5, 64)
    x = b.act("act1")(bn(name="bn1")(x))
    x = tf_keras.layers.Dropout(0.2, name="drop1")(x)
    for i in range(1, 5):
        x = CQDepthwiseConv2D(
            (3, 3),
            padding="same",
            depthwise_regularizer=_l2(),
            name=f"dw{i}",
            **b.q(f"dw{i}", 9, depthwise=True),
        )(x)
        x = b.act(f"dw{i}_act")(bn(name=f"dw{i}_bn")(x))
        x = CQConv2D(
            filters,
            (1, 1),
            padding="same",
            kernel_regularizer=_l2(),
            name=f"pw{i}",
            **b.q(f"pw{i}", filters),
        )(x)
        x = b.act(f"pw{i}_act")(bn(name=f"pw{i}_bn")(x))
    x = tf_keras.layers.Dropout(0.4, name="drop2")(x)
    pool = (int(input_shape[0] / 2), int(input_shape[1] / 2))  # (24, 5), as the reference
    x = tf_keras.layers.AveragePooling2D(pool_size=pool, name="pool")(x)  # (B, 1, 1, 64)
    x = tf_keras.layers.Flatten(name="flatten")(x)
    logits = CQDense(num_classes, name="logits", **b.q("logits", filters))(x)
    return tf_keras.Model(inp, logits, name="ds_cnn")


# stq_cnn: (filters, convs) per stage, each stage ending in a 2x2 max pool.
STQ_STAGES = ((64, 2), (128, 2), (256, 2))
STQ_HIDDEN = 256


def stq_cnn(b: Builder, input_shape: tuple[int, ...], num_classes: int) -> tf_keras.Model:
    """STQ-class plain conv stack for 32x32x3 images and 49x10x1 MFCCs: 1,216,458 / 1,215,820 parameters.

    A STAND-IN, not the first paper's model: that paper's stochastic-ternary (STQ)
    network states a flash budget of roughly 300-400 KB but its layer list is not
    published where this project could read it.  This stack is sized to that budget:
    with stochastic-ternary weights, first and last layer at 8 bits
    (``layer_bits: {conv1: 8, logits: 8}``) and 8-bit activations its footprint by
    ``trainables.footprint`` with every weight coded (``bytes_dense``: 2 bits a ternary
    weight) is 315 KB (1 KB = 1,000 bytes) on both input shapes, inside 300-410 KB
    (tests/test_models.py); the smallest encoding (``bytes``) is lower when weights are
    zero (225 KB at initialisation).  To run the paper's own network, type its
    layers as a YAML layer list (docs/guide.md, "Bring your own model").

    Stages of 3x3 convs (64 x2, 128 x2, 256 x2; batch norm and a quantized ReLU after
    each), a 2x2 max pool after each stage (32x32 -> 4x4; 49x10 -> 6x1), global average
    pooling, a 256-unit dense layer, and the logits.  Names: conv1..conv6, bn*, act*,
    pool1..3, gap, dense1, act_dense1, logits.
    """
    bn = tf_keras.layers.BatchNormalization
    inp = tf_keras.Input(input_shape, name="image" if input_shape[-1] == 3 else "mfcc")
    x, c_in, n = inp, input_shape[-1], 0
    for stage, (filters, convs) in enumerate(STQ_STAGES, start=1):
        for _ in range(convs):
            n += 1
            name = f"conv{n}"
            x = CQConv2D(
                filters, 3, padding="same", use_bias=False, name=name, **b.q(name, 9 * c_in)
            )(x)
            x = b.act(f"act{n}")(bn(name=f"bn{n}")(x))
            c_in = filters
        x = tf_keras.layers.MaxPooling2D(2, name=f"pool{stage}")(x)
    x = tf_keras.layers.GlobalAveragePooling2D(name="gap")(x)  # (B, 256)
    x = CQDense(STQ_HIDDEN, name="dense1", **b.q("dense1", c_in))(x)
    x = b.act("act_dense1")(x)
    logits = CQDense(num_classes, name="logits", **b.q("logits", STQ_HIDDEN))(x)
    return tf_keras.Model(inp, logits, name="stq_cnn")


# ---------------------------------------------------------------------------
# What `grid validate` prints


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str  # the list's layer type, or the Keras class
    output: tuple[int | None, ...]  # without the batch dimension
    params: int
    weight_bits: dict[str, int]  # bits label -> storage bits per weight (weight layers only)
    # the type as a study's search.layers names it (trainables.qlayers.normalised_kind):
    # conv2d, depthwiseconv2d, dense, activation, batchnormalization, ...
    spec_kind: str = ""


@dataclass(frozen=True)
class ModelReport:
    label: str
    input_shape: tuple[int, ...]
    classes: int
    params: int
    layers: tuple[LayerInfo, ...]
    footprint: dict[str, int]  # bits label -> bytes of the untrained model (model_footprint)

    def table(self) -> str:
        bits = list(self.footprint)
        heads = ["layer", "type", "output", "params", *[f"bits={b}" for b in bits]]
        rows = [
            [
                info.name, info.kind, "x".join(str(d) for d in info.output), f"{info.params:,}",
                *[str(info.weight_bits[b]) if b in info.weight_bits else "-" for b in bits],
            ]
            for info in self.layers
        ]  # fmt: skip
        rows.append(["total", "", "", f"{self.params:,}", *["" for _ in bits]])
        rows.append(["footprint (B)", "", "", "", *[f"{self.footprint[b]:,}" for b in bits]])
        widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.ljust(w) if i < 3 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        shape = "x".join(map(str, self.input_shape))
        title = (
            f"model {self.label}: {len(self.layers)} layers, {self.params:,} params, "
            f"input {shape} -> {self.classes} classes"
        )
        note = (
            "  (weight bits per layer at each bit-width of the study; footprint of the untrained "
            "model by trainables.footprint: pruning and clustering shrink it further; ans_hybrid: "
            "every ranked layer at its widest width, an upper bound until ANS assigns the widths)"
        )
        return "\n".join([title, *("  " + line(r) for r in [heads, *rows]), note])


def model_report(
    configs: Sequence[TrialConfig], input_shape: tuple[int, ...], num_classes: int
) -> ModelReport:
    """Build one model at each config (one per bits value) and describe it (see ModelReport)."""
    from trainables.footprint import model_footprint

    footprint: dict[str, int] = {}
    widths: dict[str, dict[str, int]] = {}
    first: tf_keras.Model | None = None
    for cfg in configs:
        model = build_model(cfg, input_shape, num_classes)
        fp = model_footprint(model, BIAS_BITS)
        footprint[cfg.bits] = fp.bytes
        for lf in fp.layers:
            if lf.kernel_params:
                widths.setdefault(lf.name, {})[cfg.bits] = lf.weight_bits
        first = first or model
    assert first is not None, "model_report needs at least one config"
    types: dict[str, str] = {}
    spec = configs[0].model
    if isinstance(spec, LayerList):
        types = {str(s.name): s.type for s in spec.layers}
    layers = tuple(
        LayerInfo(
            name=layer.name,
            kind=types.get(layer.name, type(layer).__name__),
            output=tuple(layer.output.shape[1:]),
            params=int(layer.count_params()),
            weight_bits=widths.get(layer.name, {}),
            spec_kind=normalised_kind(layer),
        )
        for layer in first.layers
        if not isinstance(layer, tf_keras.layers.InputLayer)
    )
    return ModelReport(
        label=configs[0].model_label,
        input_shape=tuple(input_shape),
        classes=num_classes,
        params=int(first.count_params()),
        layers=layers,
        footprint=footprint,
    )
