"""The quantized layer types every model is built from, and the helpers that read them.

The Q-layers are subclassed to implement tfmot's ``ClusterableLayer``:
``cluster_weights`` refuses QKeras layers otherwise (docs/development.md, "Facts
checked on this stack").  Pruning
accepts them as they are (they implement ``get_prunable_weights``).

:class:`Builder` hands each named layer its quantizers (the trial's ``bits`` or
its per-layer override); the built-in models (trainables.models), the models a
researcher brings (trainables.byom) and the footprint (trainables.footprint) all
read layers through this module, which imports none of them.
"""

from __future__ import annotations

import math
from typing import Any

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

from trainables.config import TrialConfig


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


def normalised_kind(layer: Any) -> str:
    """A layer's type as a study names it: the class name lower-cased, QKeras' ``Q`` and
    our clusterable ``CQ`` prefix dropped (CQConv2D -> conv2d, QActivation -> activation)."""
    name = type(layer).__name__
    for prefix in ("CQ", "Q"):
        if name.startswith(prefix) and name[len(prefix) : len(prefix) + 1].isupper():
            name = name[len(prefix) :]
            break
    return name.lower()
