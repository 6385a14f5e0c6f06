"""The MLPerf Tiny reference models, in QKeras, match their reference parameter counts."""

from __future__ import annotations

import numpy as np
import pytest

import trainables  # noqa: F401
from trainables.config import TrialConfig

# (model, input shape, classes, total params, trainable params) from the MLPerf Tiny
# reference layer lists (BatchNormalization's moving mean/variance are the difference).
REFERENCE = [
    ("resnet8", (32, 32, 3), 10, 78_666, 78_186),
    ("ds_cnn", (49, 10, 1), 12, 24_908, 23_756),
    ("digits_cnn", (8, 8, 1), 10, 9_930, 9_930),
]


@pytest.mark.parametrize(
    ("name", "shape", "classes", "total", "trainable"), REFERENCE, ids=[r[0] for r in REFERENCE]
)
@pytest.mark.parametrize("bits", ["float", "ternary"])
def test_parameter_counts(
    name: str, shape: tuple[int, ...], classes: int, total: int, trainable: int, bits: str
) -> None:
    import tensorflow as tf

    from trainables.models import build_model

    model = build_model(TrialConfig(model=name, bits=bits), shape, classes)
    assert model.count_params() == total
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == trainable
    assert model(tf.zeros((2, *shape)), training=False).shape == (2, classes)


def test_layer_bits_override_first_and_last() -> None:
    from trainables.footprint import model_footprint
    from trainables.models import build_model

    cfg = TrialConfig(model="resnet8", bits="ternary", layer_bits={"conv1": 8, "logits": 8})
    fp = model_footprint(build_model(cfg, (32, 32, 3), 10), bias_bits=8)
    widths = {lf.name: lf.weight_bits for lf in fp.layers if lf.kernel_params}
    assert widths["conv1"] == widths["logits"] == 8
    assert {w for n, w in widths.items() if n not in ("conv1", "logits")} == {2}
    with pytest.raises(ValueError, match=r"layer_bits: no layer named \['conv9'\]"):
        build_model(
            TrialConfig(model="resnet8", bits="8", layer_bits={"conv9": 4}), (32, 32, 3), 10
        )


@pytest.mark.slow
def test_ds_cnn_trains_prunes_and_clusters_on_kws_shaped_data() -> None:
    """The depthwise layers take every axis too (tiny synthetic MFCC-shaped batch)."""
    from trainables import compress
    from trainables.models import WEIGHT_LAYERS, build_model, kernel_of
    from trainables.train import dataset, fit

    rng = np.random.default_rng(0)
    x = rng.random((64, 49, 10, 1), dtype=np.float32)
    y = rng.integers(0, 12, 64)
    cfg = TrialConfig(model="ds_cnn", bits="4", sparsity=0.5, clusters=4)
    data = dataset(x, y, 32, 0)
    model = compress.prune(build_model(cfg, (49, 10, 1), 12), 0.5, total_steps=4)
    fit(model, data, epochs=2, learning_rate=1e-3, jr_weight=0.01)
    model = compress.strip_pruning(model)
    masks = compress.zero_masks(model)
    model = compress.cluster(model, 4, preserve_sparsity=True)
    fit(model, data, epochs=1, learning_rate=1e-4)
    model = compress.strip_clustering(model)
    compress.keep_pruned_zeros_only(model, masks)
    layers = [layer for layer in model.layers if isinstance(layer, WEIGHT_LAYERS)]
    assert [type(layer).__name__ for layer in layers].count("CQDepthwiseConv2D") == 4
    for layer in layers:
        k = kernel_of(layer).numpy()
        assert abs(np.mean(k == 0) - 0.5) <= 0.01 + 1 / k.size, layer.name
        assert np.unique(k).size <= 4, layer.name
