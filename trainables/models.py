"""Models built from QKeras layers so that every axis applies.

The Q-layers are subclassed to implement tfmot's ``ClusterableLayer``:
``cluster_weights`` refuses QKeras layers otherwise (DESIGN.md).  Pruning
accepts them as they are (they implement ``get_prunable_weights``).
"""

from __future__ import annotations

import math
from typing import Any

import tf_keras
from qkeras import (
    QActivation,
    QConv2D,
    QDense,
    binary,
    quantized_bits,
    quantized_relu,
    stochastic_ternary,
    ternary,
)
from tensorflow_model_optimization.python.core.clustering.keras.clusterable_layer import (
    ClusterableLayer,
)

from trainables.config import TrialConfig


class CQConv2D(QConv2D, ClusterableLayer):
    """QConv2D whose kernel tfmot may cluster."""

    def get_clusterable_weights(self) -> list[tuple[str, Any]]:
        return [("kernel", self.kernel)]


class CQDense(QDense, ClusterableLayer):
    """QDense whose kernel tfmot may cluster."""

    def get_clusterable_weights(self) -> list[tuple[str, Any]]:
        return [("kernel", self.kernel)]


CUSTOM_OBJECTS: dict[str, Any] = {"CQConv2D": CQConv2D, "CQDense": CQDense}
WEIGHT_LAYERS = (QConv2D, QDense)

# Bias width for every quantized model: 8 bits, 3 integer bits ([-8, 8), step 1/16).
BIAS_BITS = 8


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
    power-of-two scale: at most 3 distinct values per output channel.
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
    return quantized_bits(int(bits), 0, alpha=po2(2 * std))


def quantizers(bits: str, fan_in: int) -> dict[str, Any]:
    return {
        "kernel_quantizer": weight_quantizer(bits, fan_in),
        "bias_quantizer": bias_quantizer(bits),
    }


def bias_quantizer(bits: str) -> Any:
    return None if bits == "float" else quantized_bits(BIAS_BITS, 3, alpha=1)


def activation(act_bits: int | None) -> Any:
    return "relu" if act_bits is None else quantized_relu(act_bits, 0)


def build_model(cfg: TrialConfig, input_shape: tuple[int, ...], num_classes: int) -> tf_keras.Model:
    """The functional Keras model named by ``cfg.model``; outputs logits (B, classes)."""
    if cfg.model.value == "digits_cnn":
        return digits_cnn(cfg.bits, cfg.act_bits, input_shape, num_classes)
    raise ValueError(f"model: unknown model {cfg.model.value!r}")


def digits_cnn(
    bits: str, act_bits: int | None, input_shape: tuple[int, ...], num_classes: int
) -> tf_keras.Model:
    """Small CNN for 8x8 digits: 2 conv + 1 dense, about 9.9k parameters."""
    inp = tf_keras.Input(input_shape, name="image")  # (B, 8, 8, 1)
    x = CQConv2D(16, 3, padding="same", name="conv1", **quantizers(bits, 9 * input_shape[-1]))(
        inp
    )  # (B, 8, 8, 16)
    x = QActivation(activation(act_bits), name="act1")(x)
    x = CQConv2D(32, 3, strides=2, padding="same", name="conv2", **quantizers(bits, 9 * 16))(
        x
    )  # (B, 4, 4, 32)
    x = QActivation(activation(act_bits), name="act2")(x)
    x = tf_keras.layers.Flatten(name="flatten")(x)  # (B, 512)
    logits = CQDense(num_classes, name="logits", **quantizers(bits, 4 * 4 * 32))(x)  # (B, classes)
    return tf_keras.Model(inp, logits, name="digits_cnn")
