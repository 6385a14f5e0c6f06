"""Building the models a researcher brings (``trainables.modelspec``) as QKeras models.

Definitions:

- :func:`build_layer_list` turns a :class:`~trainables.modelspec.LayerList`
  into a tf_keras functional model: conv -> ``CQConv2D``, depthwise_conv ->
  ``CQDepthwiseConv2D``, dense -> ``CQDense`` (quantizers from ``Builder.q``
  with the He fan-in of the layer: kh*kw*C_in, kh*kw, or the input width),
  activation -> ``Builder.act`` (ReLU quantized to its activation width:
  ``layer_activation_bits[name]`` or the trial's),
  batch_norm / pools / dropout / flatten / add -> the plain Keras layers.
  Weight layers start from He-normal kernels (the scale the quantizers
  assume).  The last dense layer without ``units`` gets the dataset's classes.
- :func:`call_builder` imports ``package.module:function`` and calls it with
  the trial's ``Builder``, the input shape and the classes, after checking
  that this machine's copy of the source has the driver's digest.
- Every custom model is checked (:func:`check_model`): one output of shape
  (B, classes) (the logits), and every layer holding weights is a
  clusterable QKeras layer that took its quantizers from ``Builder.q``
  under its own name (else bits, ``layer_bits``, clustering and the
  footprint would silently miss it), or a batch norm.

A failure raises :class:`ModelError` naming the layer: ``layers[3] (conv2): ...``.
"""

from __future__ import annotations

import importlib
import re
import socket
from typing import Any

import tf_keras

from trainables.config import TrialConfig
from trainables.modelspec import (
    Add,
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    DepthwiseConv,
    Dropout,
    Flatten,
    GlobalAvgPool,
    ImportedModel,
    LayerList,
    MaxPool,
    source_digest,
)
from trainables.qlayers import WEIGHT_LAYERS, Builder, CQConv2D, CQDense, CQDepthwiseConv2D

INPUT_NAME = "image"  # the input layer (as the built-in image models name it)


class ModelError(ValueError):
    """A model that cannot be built or is not usable; names the layer where there is one."""

    def __init__(self, detail: str, index: int | None = None, name: str | None = None) -> None:
        self.detail, self.index, self.name = detail, index, name
        where = f"layers[{index}] ({name}): " if index is not None else ""
        super().__init__(where + detail)


def _first_line(err: BaseException) -> str:
    """The gist of an exception's message: Keras' call preamble and TF's node dump left out."""
    text = re.sub(
        r'Exception encountered when calling layer "[^"]*" \(type \w+\)\.\s*', "", str(err)
    )
    text = re.sub(r" for '\{\{node .*", "", text, flags=re.S)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " ".join(lines[:2])[:500] if lines else type(err).__name__


def build_layer_list(
    spec: LayerList, b: Builder, input_shape: tuple[int, ...], num_classes: int
) -> tf_keras.Model:
    """The layer list as a functional model with logits (B, classes); see the module doc."""
    last_dense = max((i for i, s in enumerate(spec.layers) if isinstance(s, Dense)), default=-1)
    inp = tf_keras.Input(input_shape, name=INPUT_NAME)  # (B, H, W, C)
    x: Any = inp
    outputs: dict[str, Any] = {}
    for i, s in enumerate(spec.layers):
        name = str(s.name)
        try:
            x = _apply(s, x, b, outputs, num_classes if i == last_dense else None)
        except ModelError as err:
            raise ModelError(err.detail, i, name) from None
        except (ValueError, TypeError) as err:  # Keras' shape checks
            raise ModelError(f"{_first_line(err)} (input {tuple(x.shape)[1:]})", i, name) from None
        outputs[name] = x
    model = tf_keras.Model(inp, x, name=spec.label)
    if len(model.outputs) == 1 and tuple(model.output_shape[1:]) != (num_classes,):
        shape = tuple(model.output_shape[1:])
        hint = " (flatten or global_avg_pool before the last dense)" if len(shape) > 1 else ""
        raise ModelError(
            f"the model's output is (B, {', '.join(map(str, shape))}), not the logits "
            f"(B, {num_classes}) of the dataset's {num_classes} classes{hint}",
            len(spec.layers) - 1,
            str(spec.layers[-1].name),
        )
    return model


def _apply(s: Any, x: Any, b: Builder, outputs: dict[str, Any], classes: int | None) -> Any:
    """One layer of the list on ``x`` (B, ...)."""
    name = str(s.name)
    init = "he_normal"
    if isinstance(s, Conv):
        if len(x.shape) != 4:
            raise ModelError(f"conv needs a (B, H, W, C) input; got {tuple(x.shape)}")
        fan_in = s.kernel[0] * s.kernel[1] * int(x.shape[-1])
        return CQConv2D(
            s.filters, s.kernel, strides=s.strides, padding=s.padding, use_bias=s.use_bias,
            kernel_initializer=init, name=name, **b.q(name, fan_in),
        )(x)  # fmt: skip
    if isinstance(s, DepthwiseConv):
        if len(x.shape) != 4:
            raise ModelError(f"depthwise_conv needs a (B, H, W, C) input; got {tuple(x.shape)}")
        return CQDepthwiseConv2D(
            s.kernel, strides=s.strides, padding=s.padding, depth_multiplier=s.depth_multiplier,
            use_bias=s.use_bias, depthwise_initializer=init, name=name,
            **b.q(name, s.kernel[0] * s.kernel[1], depthwise=True),
        )(x)  # fmt: skip
    if isinstance(s, Dense):
        units = s.units if s.units is not None else classes
        assert units is not None  # the list's validation: only the last dense may omit units
        return CQDense(
            units, use_bias=s.use_bias, kernel_initializer=init, name=name,
            **b.q(name, int(x.shape[-1])),
        )(x)  # fmt: skip
    if isinstance(s, BatchNorm):
        return tf_keras.layers.BatchNormalization(name=name)(x)
    if s.type == "activation":
        return b.act(name)(x)
    if isinstance(s, MaxPool | AvgPool):
        kind = (
            tf_keras.layers.MaxPooling2D
            if isinstance(s, MaxPool)
            else tf_keras.layers.AveragePooling2D
        )
        if len(x.shape) != 4:
            raise ModelError(f"{s.type} needs a (B, H, W, C) input; got {tuple(x.shape)}")
        return kind(s.pool, strides=s.strides or s.pool, padding=s.padding, name=name)(x)
    if isinstance(s, GlobalAvgPool):
        if len(x.shape) != 4:
            raise ModelError(f"global_avg_pool needs a (B, H, W, C) input; got {tuple(x.shape)}")
        return tf_keras.layers.GlobalAveragePooling2D(name=name)(x)
    if isinstance(s, Dropout):
        return tf_keras.layers.Dropout(s.rate, name=name)(x)
    if isinstance(s, Flatten):
        return tf_keras.layers.Flatten(name=name)(x)
    if isinstance(s, Add):
        other = outputs[s.from_]
        if tuple(other.shape[1:]) != tuple(x.shape[1:]):
            raise ModelError(
                f"cannot add {s.from_}'s output {tuple(other.shape)[1:]} to this input "
                f"{tuple(x.shape)[1:]}: the shapes differ"
            )
        return tf_keras.layers.Add(name=name)([other, x])
    raise ModelError(f"unknown layer type {s.type!r}")


def call_builder(
    spec: ImportedModel,
    digest: str | None,
    b: Builder,
    input_shape: tuple[int, ...],
    num_classes: int,
) -> tf_keras.Model:
    """Import and call ``spec.builder``; refuse when this machine's source is not the driver's."""
    try:
        here = source_digest(spec.builder)
    except ValueError as err:
        raise ModelError(
            f"{str(err).removeprefix('builder: ')} (on {socket.gethostname()}): every worker needs "
            "the package; grid run ships it with Ray's py_modules unless it is installed in "
            "site-packages, where each node must have it installed"
        ) from None
    if digest is not None and here != digest:
        raise ModelError(
            f"the builder {spec.builder}'s source on {socket.gethostname()} has digest {here}, "
            f"the driver's has {digest}: this machine runs other code (edited since the study "
            "started, or another version installed); ship or install the same code on every node"
        )
    try:
        module = importlib.import_module(spec.module)
    except Exception as err:
        raise ModelError(
            f"cannot import module {spec.module!r}: {type(err).__name__}: {_first_line(err)}"
        ) from None
    fn = getattr(module, spec.function, None)
    if not callable(fn):
        raise ModelError(f"module {spec.module!r} has no function {spec.function!r}")
    try:
        model = fn(b, tuple(input_shape), num_classes)
    except Exception as err:
        raise ModelError(
            f"{spec.builder}(b, {tuple(input_shape)}, {num_classes}) raised "
            f"{type(err).__name__}: {_first_line(err)}"
        ) from None
    if not isinstance(model, tf_keras.Model):
        raise ModelError(
            f"{spec.builder} returned {type(model).__name__}, not a tf_keras.Model "
            "(import Keras as tf_keras: QKeras needs Keras 2)"
        )
    if len(model.outputs) != 1 or tuple(model.output_shape[1:]) != (num_classes,):
        raise ModelError(
            f"{spec.builder}'s model outputs {model.output_shape}, not the logits "
            f"(None, {num_classes}) of the dataset's {num_classes} classes"
        )
    return model


def check_model(model: tf_keras.Model, b: Builder) -> None:
    """Every weight-holding layer is a clusterable QKeras layer quantized by ``b`` (or a batch norm)."""
    from tensorflow_model_optimization.python.core.clustering.keras.clusterable_layer import (
        ClusterableLayer,
    )

    for layer in model.layers:
        if not layer.weights or isinstance(layer, tf_keras.layers.BatchNormalization):
            continue
        kind = type(layer).__name__
        if not (isinstance(layer, WEIGHT_LAYERS) and isinstance(layer, ClusterableLayer)):
            raise ModelError(
                f"layer {layer.name!r} ({kind}) holds weights but is not one of "
                "trainables.models.CQConv2D / CQDense / CQDepthwiseConv2D: bits, clustering and "
                "the footprint would miss it"
            )
        if layer.name not in b.used:
            raise ModelError(
                f"layer {layer.name!r} ({kind}) did not take its quantizers from "
                f"b.q({layer.name!r}, fan_in): bits and layer_bits would not apply to it"
            )


def build_custom(
    cfg: TrialConfig, b: Builder, input_shape: tuple[int, ...], num_classes: int
) -> tf_keras.Model:
    """The trial's layer-list or imported model (``trainables.models.build_model`` dispatches here)."""
    if isinstance(cfg.model, LayerList):
        model = build_layer_list(cfg.model, b, input_shape, num_classes)
    elif isinstance(cfg.model, ImportedModel):
        model = call_builder(cfg.model, cfg.builder_digest, b, input_shape, num_classes)
    else:
        raise ModelError(f"model {cfg.model!r} is not a layer list or an imported builder")
    check_model(model, b)
    return model
