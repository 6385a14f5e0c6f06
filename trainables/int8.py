"""A full-int8 TFLite flatbuffer on ``tf.lite.Interpreter``, batched (trainables/deployed.py's
interpreter): float inputs in [0, 1] quantized with the interpreter's input scale and zero
point, outputs dequantized with its output scale and zero point.

One ``invoke`` per batch of up to ``batch`` examples, the input resized to a power-of-two
bucket (padded with zeros), one interpreter per bucket so a query attack's shrinking
batches never re-allocate.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import tensorflow as tf
from art.estimators.classification.blackbox import BlackBoxClassifierNeuralNetwork

RECENT_BATCHES = 4  # int8 batches whose scores the runner remembers (Square re-asks)


def _bucket(n: int, batch: int) -> int:
    """The padded batch size of a chunk of ``n`` examples: the next power of two, at most ``batch``."""
    return min(batch, 1 << max(0, (n - 1).bit_length()))


class Int8Runner:
    """A full-int8 flatbuffer on ``tf.lite.Interpreter``, batched: inputs in [0, 1] float,
    quantized with the interpreter's input scale and zero point; outputs dequantized with
    its output scale and zero point (the int8 logits as floats)."""

    def __init__(self, flatbuffer: bytes, batch: int = 256) -> None:
        self.flatbuffer = flatbuffer
        self.batch = batch
        probe = tf.lite.Interpreter(model_content=flatbuffer)
        inp, out = probe.get_input_details()[0], probe.get_output_details()[0]
        self.input_scale, self.input_zero = (float(v) for v in inp["quantization"])
        self.output_scale, self.output_zero = (float(v) for v in out["quantization"])
        self.input_shape = tuple(int(d) for d in inp["shape"][1:])
        self.num_classes = int(out["shape"][-1])
        self._interpreters: dict[int, tf.lite.Interpreter] = {}
        self._recent: dict[tuple[tuple[int, ...], bytes], np.ndarray] = {}  # int8 batch -> scores
        self.invokes = 0  # interpreter invocations so far (the cost of the routes)
        self.examples = 0  # examples asked for so far (queries, repeats included)
        self.seconds = 0.0  # wall time inside the interpreter calls

    def _interpreter(self, size: int) -> tf.lite.Interpreter:
        it = self._interpreters.get(size)
        if it is None:
            it = tf.lite.Interpreter(model_content=self.flatbuffer)
            it.resize_tensor_input(it.get_input_details()[0]["index"], [size, *self.input_shape])
            it.allocate_tensors()
            self._interpreters[size] = it
        return it

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """(n, *input) float in [0, 1] -> int8 as the interpreter's input quantization stores it."""
        q = np.round(np.asarray(x, np.float32) / self.input_scale + self.input_zero)
        return np.clip(q, -128, 127).astype(np.int8)

    def dequantize_input(self, q: np.ndarray) -> np.ndarray:
        """int8 input -> the float input the interpreter actually sees."""
        return ((q.astype(np.float32) - self.input_zero) * self.input_scale).astype(np.float32)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """(n, *input) float -> (n, classes) float32 dequantized output scores."""
        t0 = time.perf_counter()
        q = self.quantize(x)
        # ART's Square asks for the scores of the same points several times per iteration
        # (the current points' margins, then the candidates'): the interpreter is
        # deterministic, so a repeat of a recent int8 batch is answered from memory.
        memo = (q.shape, hashlib.sha1(q.tobytes()).digest())
        if memo in self._recent:
            self.examples += len(q)
            self.seconds += time.perf_counter() - t0
            return self._recent[memo].copy()
        out = np.empty((len(q), self.num_classes), np.float32)
        for start in range(0, len(q), self.batch):
            chunk = q[start : start + self.batch]
            size = _bucket(len(chunk), self.batch)
            it = self._interpreter(size)
            padded = np.zeros((size, *self.input_shape), np.int8)  # padding rows: ignored
            padded[: len(chunk)] = chunk
            it.set_tensor(it.get_input_details()[0]["index"], padded)
            it.invoke()
            raw = it.get_tensor(it.get_output_details()[0]["index"])[: len(chunk)]
            out[start : start + len(chunk)] = (
                raw.astype(np.float32) - self.output_zero
            ) * self.output_scale
            self.invokes += 1
        self._recent[memo] = out.copy()
        while len(self._recent) > RECENT_BATCHES:
            self._recent.pop(next(iter(self._recent)))  # the oldest (dicts keep insertion order)
        self.examples += len(q)
        self.seconds += time.perf_counter() - t0
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n,) int64 class predictions."""
        return np.argmax(self.scores(x), axis=1).astype(np.int64)

    def loss(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(n,) float64 cross-entropy of the dequantized scores (as logits) at labels ``y``."""
        return cross_entropy(self.scores(x), y)

    def black_box(self) -> BlackBoxClassifierNeuralNetwork:
        """ART's black-box wrapper over the dequantized scores (raw scores, not softmax:
        see trainables.attacks.predictions_only)."""
        return BlackBoxClassifierNeuralNetwork(
            lambda x: self.scores(np.asarray(x, np.float32)),
            self.input_shape,
            self.num_classes,
            channels_first=False,
            clip_values=(0.0, 1.0),
        )


def cross_entropy(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n,) softmax cross-entropy of (n, classes) logits at integer labels, in float64."""
    s = np.asarray(scores, np.float64)
    top = s.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(s - top).sum(axis=1))
    return lse - s[np.arange(len(s)), np.asarray(y, np.int64)]
