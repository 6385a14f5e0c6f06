"""Flash footprint of a stripped, compressed model.

For each weight layer, the deployed kernel (the quantizer applied to the
stored kernel) is turned into integer *codes*: the values themselves for
fixed-scale quantizers, value / channel scale for stochastic_ternary's and stochastic_binary's
per-output-channel power-of-two scale.  With n weights, nz non-zero,
d distinct codes (d0 distinct non-zero codes) and b bits per weight
(32 float, b int, 2 ternary, 1 binary), the kernel costs, in bits:

    dense      n * b
    sparse     n + nz * b                                (1-bit presence map)
    clustered  n * ceil(log2 d) + d * b                  (index + codebook)
    sparse+cl  n + nz * ceil(log2 d0) + d0 * b           (map + index + codebook)

plus 8 bits per output channel for a power-of-two scale exponent where the
quantizer has one.  Biases cost their own width (32 float, 8 quantized).
A layer's ``bytes`` is ceil((smallest kernel encoding + bias bits) / 8);
the model's ``bytes`` is the sum over layers: the smallest honest encoding.
``bytes_dense`` / ``bytes_sparse`` / ``bytes_clustered`` force one encoding
on every layer for comparison.  Activations and code are not counted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

SCALE_EXPONENT_BITS = 8


def _index_bits(distinct: int) -> int:
    return max(0, math.ceil(math.log2(distinct))) if distinct > 1 else 0


def kernel_encodings(codes: np.ndarray, width: int) -> dict[str, int]:
    """Bits of each encoding of a kernel of integer-like ``codes`` at ``width`` bits a value."""
    n = int(codes.size)
    nz_codes = codes[codes != 0]
    nz = int(nz_codes.size)
    d = int(np.unique(codes).size)
    d0 = int(np.unique(nz_codes).size)
    return {
        "dense": n * width,
        "sparse": n + nz * width,
        "clustered": n * _index_bits(d) + d * width,
        "sparse_clustered": n + nz * _index_bits(d0) + d0 * width,
    }


@dataclass(frozen=True)
class LayerFootprint:
    name: str
    kernel_params: int
    bias_params: int
    nonzero: int  # non-zero deployed kernel weights
    zero_fraction_stored: float  # zeros in the stored (pre-quantizer) kernel: the pruning result
    distinct: int  # distinct deployed kernel values in the layer
    distinct_codes: int  # distinct codes (per-channel for stochastic_ternary)
    weight_bits: int
    per_channel_scale: bool  # a power-of-two scale per output channel (stochastic_ternary)
    encoding: str  # the smallest
    bytes: int
    bytes_dense: int
    bytes_sparse: int
    bytes_clustered: int


@dataclass(frozen=True)
class ModelFootprint:
    layers: tuple[LayerFootprint, ...]
    params: int  # every parameter of the model
    nonzero: int  # non-zero deployed kernel weights + biases
    bytes: int
    bytes_dense: int
    bytes_sparse: int
    bytes_clustered: int

    def layer_dicts(self) -> list[dict[str, Any]]:
        return [asdict(layer) for layer in self.layers]


def layer_footprint(
    name: str,
    stored_kernel: np.ndarray,
    deployed_kernel: np.ndarray,
    deployed_bias: np.ndarray | None,
    weight_bits: int,
    bias_bits: int,
    per_channel_scale: bool = False,
) -> LayerFootprint:
    """Footprint of one layer (shapes: kernel (..., out_channels), bias (out_channels,))."""
    codes = deployed_kernel
    overhead = 0
    if per_channel_scale:
        axes = tuple(range(deployed_kernel.ndim - 1))
        scale = np.max(np.abs(deployed_kernel), axis=axes, keepdims=True)  # (1.., C)
        codes = np.divide(
            deployed_kernel, scale, out=np.zeros_like(deployed_kernel), where=scale > 0
        )
        codes = np.round(codes, 6)
        overhead = SCALE_EXPONENT_BITS * int(deployed_kernel.shape[-1])
    enc = kernel_encodings(codes, weight_bits)
    bias_n = 0 if deployed_bias is None else int(deployed_bias.size)
    bias_total = bias_n * bias_bits

    def to_bytes(kernel_bits: int) -> int:
        return math.ceil((kernel_bits + overhead + bias_total) / 8)

    best = min(enc, key=lambda k: enc[k])
    return LayerFootprint(
        name=name,
        kernel_params=int(stored_kernel.size),
        bias_params=bias_n,
        nonzero=int(np.count_nonzero(deployed_kernel)),
        zero_fraction_stored=float(np.mean(stored_kernel == 0)),
        distinct=int(np.unique(deployed_kernel).size),
        distinct_codes=int(np.unique(codes).size),
        weight_bits=weight_bits,
        per_channel_scale=per_channel_scale,
        encoding=best,
        bytes=to_bytes(enc[best]),
        bytes_dense=to_bytes(enc["dense"]),
        bytes_sparse=to_bytes(min(enc["sparse"], enc["dense"])),
        bytes_clustered=to_bytes(min(enc["clustered"], enc["dense"])),
    )


def quantizer_width(quantizer: Any) -> int:
    """Storage bits per weight under a QKeras quantizer (None: float32)."""
    if quantizer is None:
        return 32
    name = type(quantizer).__name__
    if name in ("ternary", "stochastic_ternary"):
        return 2
    if name in ("binary", "stochastic_binary"):
        return 1
    return int(quantizer.bits)


def model_footprint(model: Any, bias_bits: int) -> ModelFootprint:
    """Footprint of a stripped Keras model built from QKeras layers (see module doc).

    BatchNormalization layers are deployed folded to a per-channel scale and
    shift: 2 x 32 bits per channel.
    """
    import tf_keras  # TF imports deferred: the numpy half of this module is TF-free

    from trainables.qlayers import WEIGHT_LAYERS, kernel_of, kernel_quantizer_of

    layers = []
    nonzero = 0
    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            channels = int(layer.gamma.shape[0])
            b = math.ceil(2 * channels * 32 / 8)
            layers.append(LayerFootprint(
                name=layer.name, kernel_params=0, bias_params=2 * channels, nonzero=0, zero_fraction_stored=0.0,
                distinct=0, distinct_codes=0, weight_bits=32, per_channel_scale=False, encoding="float",
                bytes=b, bytes_dense=b, bytes_sparse=b, bytes_clustered=b,
            ))  # fmt: skip
            nonzero += 2 * channels
            continue
        if not isinstance(layer, WEIGHT_LAYERS):
            continue
        weights = kernel_of(layer)
        kq = kernel_quantizer_of(layer)
        deployed = weights.numpy() if kq is None else np.asarray(kq(weights)).astype(np.float32)
        bias, bias_width = None, 32
        if getattr(layer, "use_bias", False) and layer.bias is not None:
            bq = getattr(layer, "bias_quantizer_internal", None)
            bias = (
                layer.bias.numpy() if bq is None else np.asarray(bq(layer.bias)).astype(np.float32)
            )
            bias_width = 32 if bq is None else bias_bits
        per_channel = type(kq).__name__ in ("stochastic_ternary", "stochastic_binary")
        fp = layer_footprint(
            layer.name,
            weights.numpy(),
            deployed,
            bias,
            quantizer_width(kq),
            bias_width,
            per_channel,
        )
        layers.append(fp)
        nonzero += fp.nonzero + (0 if bias is None else int(np.count_nonzero(bias)))
    return ModelFootprint(
        layers=tuple(layers),
        params=int(model.count_params()),
        nonzero=nonzero,
        bytes=sum(lf.bytes for lf in layers),
        bytes_dense=sum(lf.bytes_dense for lf in layers),
        bytes_sparse=sum(lf.bytes_sparse for lf in layers),
        bytes_clustered=sum(lf.bytes_clustered for lf in layers),
    )
