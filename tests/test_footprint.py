"""Footprint: bytes equal hand-computed figures for tiny known models."""

from __future__ import annotations

import numpy as np
import pytest

import trainables  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from trainables.footprint import kernel_encodings, layer_footprint, model_footprint

# 4x4 kernel: 12 zeros and four 0.5 -> n=16, nz=4, d=2 distinct codes, d0=1.
KERNEL = np.zeros((4, 4), np.float32)
KERNEL[0, 0] = KERNEL[1, 1] = KERNEL[2, 3] = KERNEL[3, 2] = 0.5
BIAS = np.array([0.5, -1.0, 0.0, 2.0], np.float32)


def test_encodings_by_hand() -> None:
    # width 4: dense 16*4; sparse 16 + 4*4; clustered 16*ceil(log2 2) + 2*4; sparse+cl 16 + 4*0 + 1*4
    assert kernel_encodings(KERNEL, 4) == {
        "dense": 64,
        "sparse": 32,
        "clustered": 24,
        "sparse_clustered": 20,
    }
    codes = np.array([-1, 0, 1, 1, 0, 0, -1, 1])  # ternary-like: d=3 -> 2 index bits, d0=2 -> 1
    assert kernel_encodings(codes, 2) == {
        "dense": 16,
        "sparse": 8 + 5 * 2,
        "clustered": 8 * 2 + 3 * 2,
        "sparse_clustered": 8 + 5 * 1 + 2 * 2,
    }


def _tiny(quantized: bool):  # type: ignore[no-untyped-def]
    import tf_keras
    from qkeras import quantized_bits

    from trainables.models import CQDense

    q = (
        {
            "kernel_quantizer": quantized_bits(4, 0, alpha=1),
            "bias_quantizer": quantized_bits(8, 3, alpha=1),
        }
        if quantized
        else {}
    )
    inp = tf_keras.Input((4,))
    layer = CQDense(4, name="d", **q)
    model = tf_keras.Model(inp, layer(inp))
    layer.set_weights([KERNEL, BIAS])
    return model


@pytest.mark.parametrize(
    ("quantized", "width", "expected"),
    [
        # 4-bit kernel (best: sparse+clustered 20 bits) + 4 biases x 8 bits = 52 bits -> 7 bytes
        (True, 4, {"bytes": 7, "bytes_dense": 12, "bytes_sparse": 8, "bytes_clustered": 7}),
        # float kernel (best: sparse+clustered 16 + 32 = 48 bits) + 4 x 32 = 176 bits -> 22 bytes
        (False, 32, {"bytes": 22, "bytes_dense": 80, "bytes_sparse": 34, "bytes_clustered": 26}),
    ],
)
def test_model_bytes_by_hand(quantized: bool, width: int, expected: dict[str, int]) -> None:
    fp = model_footprint(_tiny(quantized), bias_bits=8)
    assert fp.layers[0].weight_bits == width
    got = {k: getattr(fp, k) for k in expected}
    assert got == expected
    (layer,) = fp.layers
    assert (layer.kernel_params, layer.bias_params, layer.nonzero, layer.distinct) == (16, 4, 4, 2)
    assert layer.encoding == "sparse_clustered"
    assert fp.params == 20
    assert fp.nonzero == 4 + 3  # kernel + non-zero biases


def test_per_channel_scale_counts_codes_and_exponents() -> None:
    # Two output channels at scales 0.5 and 0.25: 4 values, but 3 codes {-1, 0, 1}.
    k = np.array([[0.5, 0.25], [-0.5, 0.0], [0.0, -0.25]], np.float32)
    lf = layer_footprint("t", k, k, None, weight_bits=2, bias_bits=8, per_channel_scale=True)
    assert (lf.distinct, lf.distinct_codes) == (5, 3)
    # dense 6 x 2 bits = 12; sparse 6 + 4 x 2 = 14; + 2 channels x 8-bit exponent = 28 bits -> 4 bytes
    assert lf.bytes_dense == 4 and lf.bytes == 4
