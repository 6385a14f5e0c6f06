"""A trial's deployable artifacts, as bytes for the store to write.

    model.h5            the stripped, compressed Keras model with its QKeras quantizers
                        (reload: :func:`load_model`)
    weights.npz         the deployed weights: each layer's quantizer applied ("<layer>/kernel",
                        "<layer>/bias"); plain arrays, no pickle
    model_int8.tflite   a full-int8 TFLite flatbuffer of a plain-Keras copy that carries the
                        deployed weights (quantized activations become ReLU capped at 1)
    manifest.json       key, config, footprint, the Keras and the TFLite test accuracy, and
                        each file's size and SHA-256

The footprint in the rows (``metric_bytes``) is computed from exactly the
arrays in weights.npz (``footprint_from_npz`` recomputes it); the TFLite
file is larger than ``metric_bytes`` because TFLite stores int8 weights
densely plus the graph.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from trainables.footprint import ModelFootprint, layer_footprint
from trainables.models import (
    BIAS_BITS,
    CUSTOM_OBJECTS,
    WEIGHT_LAYERS,
    kernel_of,
    kernel_quantizer_of,
)

MODEL_FILE, WEIGHTS_FILE, TFLITE_FILE, MANIFEST_FILE = (
    "model.h5",
    "weights.npz",
    "model_int8.tflite",
    "manifest.json",
)


def deployed_weights(model: tf_keras.Model) -> dict[str, np.ndarray]:
    out = {}
    for layer in model.layers:
        if not isinstance(layer, WEIGHT_LAYERS):
            continue
        w, kq = kernel_of(layer), kernel_quantizer_of(layer)
        out[f"{layer.name}/kernel"] = (w.numpy() if kq is None else np.asarray(kq(w))).astype(
            np.float32
        )
        if getattr(layer, "use_bias", False) and layer.bias is not None:
            bq = layer.bias_quantizer_internal
            b = layer.bias.numpy() if bq is None else np.asarray(bq(layer.bias))
            out[f"{layer.name}/bias"] = b.astype(np.float32)
    return out


def deploy_copy(model: tf_keras.Model) -> tf_keras.Model:
    """The same graph in plain Keras layers carrying the deployed weights."""
    from qkeras import QActivation, QConv2D, QDense, QDepthwiseConv2D

    def clone(layer: tf_keras.layers.Layer) -> tf_keras.layers.Layer:
        cfg = layer.get_config()
        common = {"name": cfg["name"], "use_bias": cfg.get("use_bias", True)}
        if isinstance(layer, QDepthwiseConv2D):
            return tf_keras.layers.DepthwiseConv2D(
                cfg["kernel_size"],
                strides=cfg["strides"],
                padding=cfg["padding"],
                depth_multiplier=cfg["depth_multiplier"],
                **common,
            )
        if isinstance(layer, QConv2D):
            return tf_keras.layers.Conv2D(
                cfg["filters"],
                cfg["kernel_size"],
                strides=cfg["strides"],
                padding=cfg["padding"],
                **common,
            )
        if isinstance(layer, QDense):
            return tf_keras.layers.Dense(cfg["units"], **common)
        if isinstance(layer, QActivation):
            quantized = (
                not isinstance(layer.activation, str)
                and "quantized_relu" in type(layer.activation).__name__
            )
            return tf_keras.layers.ReLU(max_value=1.0 if quantized else None, name=cfg["name"])
        return layer.__class__.from_config(cfg)

    with tf_keras.utils.custom_object_scope(CUSTOM_OBJECTS):
        copy = tf_keras.models.clone_model(model, clone_function=clone)
    weights = deployed_weights(model)
    for src, dst in zip(model.layers, copy.layers, strict=True):
        if isinstance(src, WEIGHT_LAYERS):
            arrays = [weights[f"{src.name}/kernel"]]
            if f"{src.name}/bias" in weights:
                arrays.append(weights[f"{src.name}/bias"])
            dst.set_weights(arrays)
        elif src.weights:
            dst.set_weights(src.get_weights())
    return copy


def tflite_int8(model: tf_keras.Model, calibration: np.ndarray) -> bytes:
    conv = tf.lite.TFLiteConverter.from_keras_model(deploy_copy(model))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: (
        [calibration[i : i + 1]] for i in range(len(calibration))
    )
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return bytes(conv.convert())


def tflite_predict(flatbuffer: bytes, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Class predictions of an int8 flatbuffer (inputs in [0, 1], quantized with its own scale).

    Batched: the input is resized to ``batch`` examples and the interpreter invoked once per
    batch (per-tensor quantization and inference-mode layers: each example's output does not
    depend on its batch-mates, so this equals one invoke per example, tested)."""
    it = tf.lite.Interpreter(model_content=flatbuffer)
    inp = it.get_input_details()[0]
    scale, zero = inp["quantization"]
    preds = np.empty(len(x), np.int64)
    size = 0
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        if len(chunk) != size:  # (B, *input): one resize per distinct batch size
            size = len(chunk)
            it.resize_tensor_input(inp["index"], [size, *inp["shape"][1:]])
            it.allocate_tensors()
        it.set_tensor(
            inp["index"], np.clip(np.round(chunk / scale + zero), -128, 127).astype(np.int8)
        )
        it.invoke()
        preds[start : start + size] = np.argmax(
            it.get_tensor(it.get_output_details()[0]["index"]), axis=1
        )
    return preds


def export(
    model: tf_keras.Model,
    manifest: dict[str, Any],
    x_calib: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
) -> dict[str, bytes]:
    """Every artifact of a trial, as {file name: bytes}."""
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / MODEL_FILE
        model.save(path, save_format="h5")
        files[MODEL_FILE] = path.read_bytes()
    buf = io.BytesIO()
    np.savez_compressed(buf, **deployed_weights(model))  # type: ignore[arg-type]
    files[WEIGHTS_FILE] = buf.getvalue()
    info = dict(manifest)
    try:
        fb = tflite_int8(model, x_calib[:200])
        files[TFLITE_FILE] = fb
        info["tflite_test_acc"] = float(np.mean(tflite_predict(fb, x_test) == y_test))
    except Exception as err:  # a model TFLite cannot express: keep the others, say why
        info["tflite_error"] = f"{type(err).__name__}: {err}"[:500]
    info["files"] = {
        name: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
        for name, b in files.items()
    }
    files[MANIFEST_FILE] = json.dumps(info, indent=2, sort_keys=True).encode()
    return files


def load_model(folder: str | Path) -> tf_keras.Model:
    """Reload a trial's Keras model from its artifact folder."""
    from qkeras.utils import load_qmodel

    return load_qmodel(str(Path(folder) / MODEL_FILE), custom_objects=CUSTOM_OBJECTS, compile=False)


def footprint_from_npz(folder: str | Path, manifest: dict[str, Any]) -> ModelFootprint:
    """The footprint of the deployed weights in the artifact, by the rows' formula."""
    layers = []
    widths: dict[str, int] = manifest["weight_bits"]
    per_channel: list[str] = manifest["per_channel_scale"]
    bn_bytes = manifest["batchnorm_bytes"]
    with np.load(Path(folder) / WEIGHTS_FILE, allow_pickle=False) as z:
        names = sorted({k.rsplit("/", 1)[0] for k in z.files})
        for name in names:
            k = z[f"{name}/kernel"]
            b = z[f"{name}/bias"] if f"{name}/bias" in z.files else None
            bias_bits = 32 if widths[name] == 32 else BIAS_BITS
            layers.append(
                layer_footprint(name, k, k, b, widths[name], bias_bits, name in per_channel)
            )
    total = sum(lf.bytes for lf in layers) + bn_bytes
    return ModelFootprint(tuple(layers), 0, 0, total, 0, 0, 0)
