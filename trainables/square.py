"""Square Attack (Andriushchenko et al. 2020) in TensorFlow, as the standard AutoAttack runs it.

A port of the reference ``square.py`` (fra31/auto-attack, pyautoattack 0.2.0),
L-inf and L2, with the standard version's settings: ``p_init = 0.8``, the
margin loss on logits, one restart, ``resc_schedule=False`` (the ``p``
schedule is read at the raw iteration number, 10 .. 8000, whatever the query
budget).  Inputs are channels-last images (n, h, w, c) in [0, 1].

As the reference: the first query is the starting point (L-inf: vertical
stripes ``x + eps * (+-1)`` constant down each column; L2: a grid of
``eta`` tiles of random sign); each later iteration queries the model once on
each example not yet misclassified (margin > 0), with one window position
(and, for L-inf, one sign per channel) drawn for the whole batch and, for L2,
one sign per example and channel; an example keeps the new point when its
loss decreased or it became misclassified.  The window side follows the
reference's ``p`` schedule and is clipped to the input's smaller side; its
position is drawn within h and w separately (``floor(U * (h - s))``, as the
reference's ``random_int``, which never draws ``h - s``: the last row and column
are reached only by a window as long as that side, as in the reference and in
the original Square code's ``randint(0, h - s)``).

The whole query loop is one ``tf.while_loop`` in one ``tf.function``; each
iteration gathers the still-unbroken examples, queries the model on those
only and scatters the results back.

Deliberate deviations:

- random numbers are TensorFlow's stateless draws keyed by ``(seed, iteration)``,
  not torch's generator: same distributions, other draws;
- the L2 starting grid: the reference places ``h // s`` x ``w // s`` tiles of side
  ``s = h // 5`` from offset ``(h - 5 s) // 2``, which fails on a non-square input
  (49 x 10 MFCCs: a 9-wide tile past a 10-wide input) and on inputs under 5
  pixels (``s = 0``).  Here ``s = max(min(h, w) // 5, 1)``; a square input keeps
  the reference's offsets, a non-square one centres ``h // s`` x ``w // s`` tiles
  on each axis; a tile that would not fit is skipped (the reference drops the
  empty ones and raises on partial ones);
- examples the attack does not fool come back as their best point (lowest
  margin) instead of the clean input.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from trainables.apgd import check_norm, per_model, predict

# The reference's p_selection: p = p_init / 2**level, level = number of these bounds < iteration.
P_BOUNDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


@dataclass(frozen=True)
class SquareRun:
    """One Square run on n examples: x_best (n, h, w, c), margin (n,) at x_best, queries (n,)."""

    x_best: np.ndarray
    margin: np.ndarray
    queries: np.ndarray


def p_selection(it: int, p_init: float) -> float:
    """The reference's schedule (``resc_schedule=False``): p at iteration ``it``."""
    return p_init / 2 ** sum(it > b for b in P_BOUNDS)


def side_table(h: int, w: int, c: int, p_init: float, norm: str) -> list[int]:
    """Window side for each schedule level 0..9, as the reference computes it, clipped to min(h, w)."""
    n_features = c * h * w
    sides = []
    for level in range(len(P_BOUNDS) + 1):
        p = p_init / 2**level
        if norm == "inf":
            s = max(round(math.sqrt(p * n_features / c)), 1)
        else:
            s = max(round(math.sqrt(p * n_features / c)), 3)
            s += s % 2 == 0  # the reference makes the L2 window odd before clipping
        sides.append(min(s, min(h, w)))
    return sides


def eta_rectangles(x: int, y: int) -> np.ndarray:
    """The reference's ``eta_rectangles`` (L2): nested rectangles weighted 1/(r+1)^2, unit L2 norm."""
    delta = np.zeros((x, y))
    x_c, y_c = x // 2 + 1, y // 2 + 1
    c0, c1 = x_c - 1, y_c - 1
    for counter in range(max(x_c, y_c)):
        delta[
            max(c0, 0) : min(c0 + 2 * counter + 1, x), max(0, c1) : min(c1 + 2 * counter + 1, y)
        ] += 1.0 / (counter + 1) ** 2
        c0 -= 1
        c1 -= 1
    norm = math.sqrt(float((delta**2).sum()))
    return delta / norm if norm > 0 else delta


def eta(s: int) -> np.ndarray:
    """The reference's ``eta(s)`` before its random transpose: (s, s), +top / -bottom, unit L2 norm."""
    delta = np.zeros((s, s))
    delta[: s // 2] = eta_rectangles(s // 2, s)
    delta[s // 2 :] = -eta_rectangles(s - s // 2, s)
    return delta / math.sqrt(float((delta**2).sum()))


def l2_init_tiles(h: int, w: int) -> tuple[int, list[tuple[int, int]]]:
    """Side and top-left corners of the L2 starting tiles (see the module docstring)."""
    s = max(min(h, w) // 5, 1)
    if h == w:
        starts = ((h - 5 * s) // 2, (w - 5 * s) // 2)
    else:
        starts = ((h - s * (h // s)) // 2, (w - s * (w // s)) // 2)
    rows = [starts[0] + k * s for k in range(h // s)]
    cols = [starts[1] + k * s for k in range(w // s)]
    return s, [(r, q) for r in rows for q in cols if r + s <= h and q + s <= w]


def _margin(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """z_y - max_{j != y} z_j (n,): the reference's margin (and, for 'margin', its loss)."""
    one_hot = tf.one_hot(y, tf.shape(logits)[1], on_value=True, off_value=False)
    z_y = tf.reduce_sum(tf.where(one_hot, logits, 0.0), axis=1)
    z_other = tf.reduce_max(tf.where(one_hot, -np.inf, logits), axis=1)
    return z_y - z_other


def _seed(seed: tf.Tensor, counter: tf.Tensor) -> tf.Tensor:
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(counter, tf.int64)])


def square_run(
    model: tf_keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    eps: float,
    norm: str,
    n_queries: int = 5000,
    p_init: float = 0.8,
    seed: int = 0,
) -> SquareRun:
    """The reference's ``attack_single_run`` on every given example (n, h, w, c)."""
    norm = check_norm(norm)
    x = np.asarray(x, np.float32)
    if x.ndim != 4:
        raise ValueError(f"Square needs images (n, h, w, c), got shape {x.shape}")
    n, h, w, c = x.shape
    if norm == "inf":
        # Vertical stripes: one +-1 per (example, column, channel), constant down each column.
        signs = np.sign(2.0 * tf.random.stateless_uniform([n, 1, w, c], _seed(seed, -1)) - 1.0)
        x_init = np.clip(x + eps * signs, 0.0, 1.0)
    else:
        s, corners = l2_init_tiles(h, w)
        flips = tf.random.stateless_uniform([len(corners)], _seed(seed, -2)).numpy() > 0.5
        tile_signs = np.sign(
            2.0 * tf.random.stateless_uniform([len(corners), n, 1, 1, c], _seed(seed, -3)) - 1.0
        )
        delta = np.zeros_like(x)
        base = eta(s)
        for (r, q), flip, sg in zip(corners, flips, tile_signs, strict=True):
            tile = base.T if flip else base  # the reference's eta() transposes at random
            delta[:, r : r + s, q : q + s, :] += tile[None, :, :, None] * sg
        l2 = np.sqrt((delta.reshape(n, -1) ** 2).sum(1)).reshape(n, 1, 1, 1)
        x_init = np.clip(x + delta / (l2 + 1e-12) * eps, 0.0, 1.0)
    key = ("square", (h, w, c), norm, float(p_init))
    fn = per_model(model, key, lambda ref: _square_graph(ref, (h, w, c), norm, p_init))
    out = fn(
        tf.constant(x), tf.constant(np.asarray(y, np.int32)), tf.constant(x_init.astype(np.float32)),
        tf.constant(eps, tf.float32), tf.constant(n_queries, tf.int32), tf.constant(seed, tf.int64),
    )  # fmt: skip
    x_best, margin, queries = (t.numpy() for t in out)
    return SquareRun(x_best, margin, queries)


def _square_graph(
    ref: Callable[[], Any], shape: tuple[int, int, int], norm: str, p_init: float
) -> Callable[..., tuple[tf.Tensor, ...]]:
    """The compiled query loop: one ``tf.function``, one ``tf.while_loop`` over iterations."""
    h, w, c = shape
    sides = side_table(h, w, c, p_init, norm)
    s_table = tf.constant(sides, tf.int32)  # (10,)
    bounds = tf.constant(P_BOUNDS, tf.int32)
    rows = tf.range(h)[:, None]  # (h, 1)
    cols = tf.range(w)[None, :]  # (1, w)
    if norm == "2":
        # eta(s) of every level, straight and transposed, at the top-left of an (h, w) canvas.
        canvas = np.zeros((len(sides), 2, h, w), np.float32)
        for level, s in enumerate(sides):
            e = eta(s)
            canvas[level, 0, :s, :s] = e
            canvas[level, 1, :s, :s] = e.T
        canvases = tf.constant(canvas)
    x_spec = tf.TensorSpec([None, h, w, c], tf.float32)

    def margin_of(xs: tf.Tensor, ys: tf.Tensor) -> tf.Tensor:
        return _margin(tf.cast(ref()(xs, training=False), tf.float32), ys)

    def window(vh: tf.Tensor, vw: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
        """(h, w, 1) float mask of the s x s window with top-left (vh, vw)."""
        inside = (rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s)
        return tf.cast(inside, tf.float32)[:, :, None]

    def position(u: tf.Tensor, s: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The reference's random_int(0, h - s), random_int(0, w - s) from two uniforms."""
        vh = tf.cast(tf.floor(u[0] * tf.cast(h - s, tf.float32)), tf.int32)
        vw = tf.cast(tf.floor(u[1] * tf.cast(w - s, tf.float32)), tf.int32)
        return vh, vw

    @tf.function(
        input_signature=[
            x_spec, tf.TensorSpec([None], tf.int32), x_spec, tf.TensorSpec([], tf.float32),
            tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int64),
        ],
        autograph=False,  # an explicit tf.while_loop; autograph's conversion is slow to trace
    )  # fmt: skip
    def run(
        x: tf.Tensor,
        y: tf.Tensor,
        x_init: tf.Tensor,
        eps: tf.Tensor,
        n_queries: tf.Tensor,
        seed: tf.Tensor,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        n = tf.shape(x)[0]
        # Iteration -1 is the reference's first query, on the starting point of every
        # example (margin +inf: all active; no window): the model is traced once, not twice.
        inf = tf.fill([n], tf.constant(np.inf, tf.float32))

        def body(
            i: tf.Tensor,
            x_best: tf.Tensor,
            margin_min: tf.Tensor,
            loss_min: tf.Tensor,
            queries: tf.Tensor,
        ) -> tuple[tf.Tensor, ...]:
            idx = tf.where(margin_min > 0.0)  # (n_a, 1) the examples still to fool
            x_curr = tf.gather_nd(x, idx)
            xb_curr = tf.gather_nd(x_best, idx)
            y_curr = tf.gather_nd(y, idx)
            mm_curr = tf.gather_nd(margin_min, idx)
            lm_curr = tf.gather_nd(loss_min, idx)
            start = i < 0
            s = tf.gather(s_table, tf.reduce_sum(tf.cast(i > bounds, tf.int32)))
            u = tf.random.stateless_uniform([5 + c], _seed(seed, 2 * i))
            vh, vw = position(u[0:2], s)
            mask = window(vh, vw, s)  # (h, w, 1)
            if norm == "inf":
                sign = tf.sign(2.0 * u[5:] - 1.0)  # (c,) one sign per channel for the batch
                x_new = xb_curr + mask * (2.0 * eps * sign)
                x_new = tf.clip_by_value(
                    tf.minimum(tf.maximum(x_new, x_curr - eps), x_curr + eps), 0.0, 1.0
                )
            else:
                n_a = tf.shape(idx)[0]
                delta = xb_curr - x_curr  # (n_a, h, w, c)
                nw1 = tf.sqrt(tf.reduce_sum(tf.square(delta * mask), axis=[1, 2], keepdims=True))
                vh2, vw2 = position(u[2:4], s)
                mask2 = window(vh2, vw2, s)
                norm_img = tf.sqrt(tf.reduce_sum(tf.square(delta), axis=[1, 2, 3], keepdims=True))
                mask_img = tf.maximum(mask, mask2)
                nws = tf.sqrt(
                    tf.reduce_sum(tf.square(delta * mask_img), axis=[1, 2], keepdims=True)
                )
                level = tf.reduce_sum(tf.cast(i > bounds, tf.int32))
                flip = tf.cast(u[4] > 0.5, tf.int32)
                tile = tf.roll(canvases[level, flip], shift=[vh, vw], axis=[0, 1])[None, :, :, None]
                signs = tf.sign(
                    2.0 * tf.random.stateless_uniform([n_a, 1, 1, c], _seed(seed, 2 * i + 1)) - 1.0
                )
                new = tile * signs + delta * mask / (1e-12 + nw1)
                new_norm = tf.sqrt(tf.reduce_sum(tf.square(new), axis=[1, 2], keepdims=True))
                budget = tf.maximum(tf.square(eps) - tf.square(norm_img), 0.0) / float(
                    c
                ) + tf.square(nws)
                new = new / (1e-12 + new_norm) * tf.sqrt(budget)
                delta = delta * (1.0 - mask2) * (1.0 - mask) + new  # new is 0 outside the window
                d_norm = tf.sqrt(tf.reduce_sum(tf.square(delta), axis=[1, 2, 3], keepdims=True))
                x_new = tf.clip_by_value(x_curr + delta / (d_norm + 1e-12) * eps, 0.0, 1.0)
            x_new = tf.where(start, xb_curr, x_new)
            margin = margin_of(x_new, y_curr)
            loss = margin  # the standard loss is the margin itself
            improved = loss < lm_curr  # all at the start (loss_min = +inf)
            lm_new = tf.where(improved, loss, lm_curr)
            improved = improved | (margin <= 0.0)
            mm_new = tf.where(improved, margin, mm_curr)
            xb_new = tf.where(improved[:, None, None, None], x_new, xb_curr)
            return (
                i + 1,
                tf.tensor_scatter_nd_update(x_best, idx, xb_new),
                tf.tensor_scatter_nd_update(margin_min, idx, mm_new),
                tf.tensor_scatter_nd_update(loss_min, idx, lm_new),
                tf.tensor_scatter_nd_add(queries, idx, tf.ones_like(mm_new)),
            )

        def cond(
            i: tf.Tensor, x_best: tf.Tensor, margin_min: tf.Tensor, *_: tf.Tensor
        ) -> tf.Tensor:
            return (i < n_queries) & tf.reduce_any(margin_min > 0.0)

        queries0 = tf.zeros([n], tf.float32)
        out = tf.while_loop(cond, body, (tf.constant(-1), x_init, inf, inf, queries0))
        return out[1], out[2], out[4]

    return run


def square(
    model: tf_keras.Model, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str,
    n_queries: int = 5000, p_init: float = 0.8, seed: int = 0,
) -> np.ndarray:  # fmt: skip
    """Square on the clean-correct examples; x_adv (n, h, w, c) in the eps-ball and [0, 1].

    Attacked examples come back as their best point (misclassified where the
    attack succeeded); examples misclassified clean come back unchanged.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int32)
    adv = x.copy()
    todo = np.flatnonzero(predict(model, x).argmax(1) == y)
    if todo.size:
        run = square_run(
            model,
            x[todo],
            y[todo],
            eps=eps,
            norm=norm,
            n_queries=n_queries,
            p_init=p_init,
            seed=seed,
        )
        adv[todo] = run.x_best
    return adv
