"""Models built from QKeras layers so that every axis applies.

The Q-layers are subclassed to implement tfmot's ``ClusterableLayer``:
``cluster_weights`` refuses QKeras layers otherwise (docs/development.md, "Facts
checked on this stack").  Pruning accepts them as they are (they implement
``get_prunable_weights``).

Every model outputs logits.  Per-layer quantizer overrides
(``TrialConfig.layer_bits``, e.g. first and last layer at 8 bits) replace
the trial's ``bits`` for the named layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import tf_keras
from qkeras import (
    QActivation,
    QConv2D,
    QDense,
    QDepthwiseConv2D,
    binary,
    quantized_bits,
    quantized_relu,
    stochastic_binary,
    stochastic_ternary,
    ternary,
)
from tensorflow_model_optimization.python.core.clustering.keras.clusterable_layer import (
    ClusterableLayer,
)

from trainables.config import ModelName, TrialConfig


class CQConv2D(QConv2D, ClusterableLayer):
    """QConv2D whose kernel tfmot may cluster."""

    def get_clusterable_weights(self) -> list[tuple[str, Any]]:
        return [("kernel", self.kernel)]


class CQDense(QDense, ClusterableLayer):
    """QDense whose kernel tfmot may cluster."""

    def get_clusterable_weights(self) -> list[tuple[str, Any]]:
        return [("kernel", self.kernel)]


class CQDepthwiseConv2D(QDepthwiseConv2D, ClusterableLayer):
    """QDepthwiseConv2D whose depthwise kernel tfmot may cluster."""

    def get_clusterable_weights(self) -> list[tuple[str, Any]]:
        return [("depthwise_kernel", self.depthwise_kernel)]


CUSTOM_OBJECTS: dict[str, Any] = {
    "CQConv2D": CQConv2D, "CQDense": CQDense, "CQDepthwiseConv2D": CQDepthwiseConv2D,
}  # fmt: skip
WEIGHT_LAYERS = (QConv2D, QDense, QDepthwiseConv2D)

# Bias width for every quantized layer: 8 bits, 3 integer bits ([-8, 8), step 1/16).
BIAS_BITS = 8


def kernel_of(layer: Any) -> Any:
    """The layer's weight tensor (``kernel``, or ``depthwise_kernel``)."""
    return layer.depthwise_kernel if isinstance(layer, QDepthwiseConv2D) else layer.kernel


def kernel_quantizer_of(layer: Any) -> Any:
    if isinstance(layer, QDepthwiseConv2D):
        return layer.depthwise_quantizer_internal
    return layer.kernel_quantizer_internal


def po2(x: float) -> float:
    """Nearest power of two: a scale an MCU applies with a shift."""
    return float(2.0 ** round(math.log2(x)))


def weight_quantizer(bits: str, fan_in: int) -> Any:
    """QKeras kernel quantizer for a ``bits`` label (None: float).

    One fixed power-of-two scale per layer, from the He-init standard
    deviation sqrt(2 / fan_in), so a layer holds at most 2^b distinct values
    (3 for ternary, 2 for binary) and no scale needs storing per channel:
    int b covers +-2 std in 2^b steps; ternary is {-s, 0, s} with s = std and
    threshold s/2; binary is {-s, s}.  stochastic_ternary only accepts an
    automatic scale in QKeras 0.9.0, so it gets a per-output-channel
    power-of-two scale: at most 3 distinct values per output channel;
    stochastic_binary likewise {-s_c, s_c} per output channel.
    """
    std = math.sqrt(2.0 / fan_in)
    if bits == "float":
        return None
    if bits == "ternary":
        s = po2(std)
        return ternary(alpha=s, threshold=s / 2)
    if bits == "stochastic_ternary":
        return stochastic_ternary(alpha="auto_po2")
    if bits == "binary":
        return binary(alpha=po2(std))
    if bits == "stochastic_binary":
        # Sampled signs in training (P(+1) = sigmoid(6 x / std)), the deterministic sign with
        # a per-output-channel power-of-two scale in inference mode, as stochastic_ternary.
        return stochastic_binary(alpha="auto_po2")
    return quantized_bits(int(bits), 0, alpha=po2(2 * std))


def bias_quantizer(bits: str) -> Any:
    return None if bits == "float" else quantized_bits(BIAS_BITS, 3, alpha=1)


def activation(act_bits: int | None) -> Any:
    return "relu" if act_bits is None else quantized_relu(act_bits, 0)


class Builder:
    """Quantizers for each named layer: the trial's bits, or its per-layer override.

    ``used`` collects the weight layers that took quantizers (``q`` / ``bits``) and ``acts`` the
    activation layers (``act``), so that overrides naming no such layer are refused.
    """

    def __init__(self, cfg: TrialConfig) -> None:
        self.cfg = cfg
        self.used: set[str] = set()
        self.acts: set[str] = set()

    def bits(self, name: str) -> str:
        self.used.add(name)
        bits = self.cfg.layer_bits.get(name, self.cfg.bits)
        if bits == "ans_hybrid" and self.cfg.ans is not None:
            # A trial builds ans_hybrid with every layer planned (trainables.ans.resolved); an
            # unplanned build (grid validate's table, preflight) shows the widest: the upper bound.
            return self.cfg.ans.ordered[0]
        return bits

    def q(self, name: str, fan_in: int, depthwise: bool = False) -> dict[str, Any]:
        bits = self.bits(name)  # "float" (a float layer, even in a quantized model): no quantizers
        key = "depthwise_quantizer" if depthwise else "kernel_quantizer"
        return {key: weight_quantizer(bits, fan_in), "bias_quantizer": bias_quantizer(bits)}

    def act(self, name: str) -> QActivation:
        """The activation layer ``name``: ReLU, quantized to its width (``layer_activation_bits``
        or the trial's) in a quantized model."""
        self.acts.add(name)
        return QActivation(activation(self.cfg.act_bits_of(name)), name=name)


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


def normalised_kind(layer: Any) -> str:
    """A layer's type as a study names it: the class name lower-cased, QKeras' ``Q`` and
    our clusterable ``CQ`` prefix dropped (CQConv2D -> conv2d, QActivation -> activation)."""
    name = type(layer).__name__
    for prefix in ("CQ", "Q"):
        if name.startswith(prefix) and name[len(prefix) : len(prefix) + 1].isupper():
            name = name[len(prefix) :]
            break
    return name.lower()


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
