"""FAB-T, the targeted Fast Adaptive Boundary attack of standard AutoAttack, in TensorFlow.

Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive
boundary attack" (ICML 2020).  A port of the reference ``FABAttack_PT`` with
``targeted=True`` (fra31/auto-attack, packaged as pyautoattack 0.2.0:
``fab_base.py``, ``fab_pt.py``, ``fab_projections.py``) at the settings
AutoAttack's ``version='standard'`` gives it: ``n_restarts=1``,
``n_iter=100``, ``n_target_classes=9``, ``alpha_max=0.1``, ``eta=1.05``,
``beta=0.9``.

What the reference does and this module does step for step
(``FABAttack.perturb`` with ``targeted=True``):

- for target rank k = 2 .. n_target_classes + 1, on the examples still
  robust (clean-correct and not yet fooled within eps): the target is the
  class with the k-th highest clean logit; one run of ``attack_single_run``
  from the clean point (with one restart the reference's random start,
  ``use_rand_start=(counter > 0)``, is never used);
- each of the ``n_iter`` steps: one forward/backward pass for the
  linearised boundary ``z_t - z_y`` (``get_diff_logits_grads_batch_targeted``),
  the projections of the current iterate x1 and of the clean point x0 onto
  that hyperplane inside the box [0, 1] (``projection_linf`` /
  ``projection_l2``), the convex step with overshoot ``eta`` and bias
  ``alpha = clip(|d1| / (|d1| + |d2|), 0, alpha_max)`` towards x0's
  projection, clipping to [0, 1], one forward pass to test success (any
  class other than y, as the reference), keeping the smallest-norm success
  and pulling successful iterates back towards x0 by ``beta``;
- a run's result counts only if it is misclassified and its norm is <= eps
  (the reference's ``acc_curr = max(acc_curr, res > eps)``).

Deliberate differences, none of which changes what is computed:

- The 100 steps run as one ``tf.while_loop`` in a ``tf.function`` traced once
  per call (fixed input signature, batch dimension None).  The reference's
  boolean-mask subsets (``c_l``, ``c2``, ``c4``, the successful rows) become
  whole-batch computations selected with ``tf.where``; every operation is
  per row, so the selected rows' values are the reference's.
- Survivors are attacked in chunks of ``batch_size`` (memory: the projections
  hold a few (2 x batch, features) arrays); examples never interact, so the
  chunking does not change any result.
- The targets' schedule (deliberate, for speed): the reference runs target
  rank k only on the examples no earlier target fooled; here, by default, every
  clean-correct example runs against every target in one batch (9 x n rows in
  one compiled loop instead of 9 loops on ever smaller batches, whose per-step
  overhead dominated on small models) and keeps the result of the first target
  in rank order that fooled it within eps.  FAB-T is deterministic and rows do
  not interact, so each example's result is the reference schedule's; the cost
  is the runs the reference skips for examples already fooled (more gradient
  evaluations, less wall time).  Default only when the stacked batch is
  small (``trainables.apgd.batch_targets``: on large inputs it measured no
  faster); ``sequential_targets=True`` keeps the reference's schedule.  The compiled run is cached
  per architecture (``trainables.apgd.per_model``).
- ``dist1`` / ``ind`` of the reference pick the closest of the hyperplanes
  given; the targeted run gives exactly one, so they are the identity here.
- Ties in sorts (the projections' breakpoints, the targets' ranks) are broken
  stably (lowest index first); torch's sort leaves their order unspecified.
- An input gradient that TensorFlow reports as disconnected is zero.
- ``seed`` is accepted for the common interface; with one restart FAB-T draws
  no random numbers (the reference seeds torch but uses no randomness either).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tf_keras

from trainables.apgd import batch_targets, per_model, predict

NORMS = ("inf", "2")
ALPHA_MAX, ETA, BETA = 0.1, 1.05, 0.9  # the reference's defaults (standard AutoAttack keeps them)
NO_SUCCESS = 1e10  # the reference's initial best norm ("res2"): never found


def _gather_rows(params: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """params (n, m), index (n, k) int -> (n, k): params[i, index[i, j]] (torch's ``gather(1, .)``)."""
    return tf.gather(params, index, axis=1, batch_dims=1)


def _binary_search_steps(n_features: int) -> int:
    return math.ceil(math.log2(n_features)) if n_features > 1 else 0


def projection_linf(t: tf.Tensor, w: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Smallest L-inf step d from each point t onto {z: <w, z> = b} with t + d in [0, 1].

    t, w: (n, D); b: (n,).  Returns d (n, D).  Where the hyperplane does not
    meet the box, d reaches the box corner closest to it (the largest move of
    <w, z> towards b).  Port of the reference ``projection_linf``: the optimal
    radius lambda is found by a binary search over the coordinates sorted by
    how far each can move before hitting the box (0 or 1).
    """
    dtype = t.dtype
    n_features = int(t.shape[1])
    one = tf.constant(1.0, dtype)
    # Orient each hyperplane so that <w, t> >= b: every step then decreases <w, z>.
    sign = tf.where(tf.reduce_sum(w * t, axis=1) - b >= 0, one, -one)  # (n,)
    w = w * sign[:, None]
    b = b * sign

    a = tf.cast(w < 0, dtype)  # 1 where increasing z_i decreases <w, z>
    nonzero = tf.cast(w != 0, dtype)
    d = (a - t) * nonzero  # the largest move of each coordinate (to 1 where w<0, to 0 where w>0)
    p = a - t * (2 * a - 1)  # |that move|: distance to the box face, (n, D)
    indp = tf.argsort(p, axis=1, stable=True)  # ascending

    b = b - tf.reduce_sum(w * t, axis=1)  # the change of <w, z> needed (<= 0)
    b0 = tf.reduce_sum(w * d, axis=1)  # the largest change reachable in the box (<= 0)

    indp2 = tf.reverse(indp, axis=[1])  # descending by p
    ws = _gather_rows(w, indp2)
    bs2 = -ws * _gather_rows(d, indp2)
    s = tf.cumsum(tf.abs(ws), axis=1)  # (n, D): |w| of the k largest-p coordinates
    sb = tf.cumsum(bs2, axis=1) + b0[:, None]  # (n, D): change from the saturated rest

    b2 = sb[:, -1] - s[:, -1] * _gather_rows(p, indp[:, 0:1])[:, 0]
    c_l = b - b2 > 0  # reachable with no coordinate saturated
    c2 = (b - b0 > 0) & ~c_l  # reachable, some coordinates saturate

    # Binary search, on every row (the reference: on the c2 rows; rows are independent).
    n = tf.shape(t)[0]
    lb = tf.zeros([n], dtype)
    ub = tf.fill([n], tf.cast(n_features - 1, dtype))
    for _ in range(_binary_search_steps(n_features)):
        counter4 = tf.floor((lb + ub) / 2)
        counter2 = tf.cast(counter4, tf.int32)[:, None]  # (n, 1)
        indcurr = _gather_rows(indp, n_features - 1 - counter2)
        b2 = (_gather_rows(sb, counter2) - _gather_rows(s, counter2) * _gather_rows(p, indcurr))[
            :, 0
        ]
        c = b - b2 > 0
        lb = tf.where(c, counter4, lb)
        ub = tf.where(c, ub, counter4)
    lb_i = tf.cast(lb, tf.int32)[:, None]  # (n, 1)

    lmbd_l = tf.maximum(tf.math.divide_no_nan(b - sb[:, -1], -s[:, -1]), 0)[:, None]
    d_l = (2 * a - 1) * lmbd_l
    lmbd_2 = tf.maximum(
        tf.math.divide_no_nan(b[:, None] - _gather_rows(sb, lb_i), -_gather_rows(s, lb_i)), 0
    )  # (n, 1)
    d_2 = tf.minimum(lmbd_2, d) * a + tf.maximum(-lmbd_2, d) * (1 - a)
    d = tf.where(c_l[:, None], d_l, tf.where(c2[:, None], d_2, d))
    return d * nonzero


def projection_l2(t: tf.Tensor, w: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Smallest L2 step d from each point t onto {z: <w, z> = b} with t + d in [0, 1].

    t, w: (n, D); b: (n,).  Returns d (n, D); where the hyperplane does not
    meet the box, d reaches the box corner closest to it.  Port of the
    reference ``projection_l2``: the solution is t - alpha * w clipped to the
    box; alpha is found by a binary search over the sorted values of alpha at
    which coordinates hit the box.
    """
    dtype = t.dtype
    n_features = int(t.shape[1])
    one = tf.constant(1.0, dtype)
    big = tf.constant(1e12, dtype)
    c = tf.reduce_sum(w * t, axis=1) - b  # (n,)
    ind2 = tf.where(c >= 0, one, -one)
    w = w * ind2[:, None]
    c = c * ind2  # >= 0: <w, d> must equal -c

    small = tf.abs(w) < 1e-8
    w_safe = tf.where(small, one, w)  # the reference divides by 0 there, then overwrites
    r = tf.clip_by_value(tf.maximum(t / w_safe, (t - 1) / w_safe), -big, big)
    r = tf.where(small, big, r)
    r = tf.where(r == -big, big, r)  # the reference's r[r == -1e12] *= -1
    indr = tf.argsort(r, axis=1, stable=True)
    rs = _gather_rows(r, indr)  # (n, D): alphas at which coordinates hit the box, ascending
    rs2 = tf.pad(rs[:, 1:], [[0, 0], [0, 1]])
    rs = tf.where(rs == big, tf.zeros_like(rs), rs)
    rs2 = tf.where(rs2 == big, tf.zeros_like(rs2), rs2)

    w3s = _gather_rows(w**2, indr)
    w5 = tf.reduce_sum(w3s, axis=1, keepdims=True)  # (n, 1): ||w||^2
    ws = w5 - tf.cumsum(w3s, axis=1)  # (n, D): ||w||^2 of the coordinates still free
    not_small = tf.cast(~small, dtype)
    d = -(r * w) * not_small  # every coordinate moved to its face
    s = tf.concat(
        [-w5 * rs[:, 0:1], tf.cumsum((-rs2 + rs) * ws, axis=1) - w5 * rs[:, 0:1]], axis=1
    )  # (n, D + 1): <w, d(alpha)> at alpha = rs_k

    c4 = s[:, 0] + c < 0  # reached before any coordinate saturates
    c3 = tf.reduce_sum(d * w, axis=1) + c > 0  # not reachable inside the box
    c2 = ~(c4 | c3)

    n = tf.shape(t)[0]
    lb = tf.zeros([n], dtype)
    ub = tf.fill([n], tf.cast(n_features - 1, dtype))
    for _ in range(_binary_search_steps(n_features)):
        counter4 = tf.floor((lb + ub) / 2)
        counter2 = tf.cast(counter4, tf.int32)[:, None]
        c3b = _gather_rows(s, counter2)[:, 0] + c > 0
        lb = tf.where(c3b, counter4, lb)
        ub = tf.where(c3b, ub, counter4)
    lb_i = tf.cast(lb, tf.int32)[:, None]  # (n, 1)

    alpha4 = tf.math.divide_no_nan(c, w5[:, 0])
    d4 = -alpha4[:, None] * w
    ws_lb = _gather_rows(ws, lb_i)  # (n, 1)
    alpha2 = tf.where(
        ws_lb == 0,
        tf.zeros_like(ws_lb),
        tf.math.divide_no_nan(_gather_rows(s, lb_i) + c[:, None], ws_lb) + _gather_rows(rs, lb_i),
    )  # (n, 1)
    c5 = tf.cast(alpha2 > r, dtype)  # saturated coordinates keep their face
    d2 = d * c5 - alpha2 * w * (1 - c5)
    d = tf.where(c4[:, None], d4, tf.where(c2[:, None], d2, d))
    return d * not_small


def _norm_rows(v: tf.Tensor, norm: str) -> tf.Tensor:
    """v (n, D) -> (n,): L-inf or L2 norm of each row."""
    if norm == "inf":
        return tf.reduce_max(tf.abs(v), axis=1)
    return tf.sqrt(tf.reduce_sum(v**2, axis=1))


def _np_norm_rows(v: np.ndarray, norm: str) -> np.ndarray:
    """v (n, ...) -> (n,) float32, computed as the reference's ``perturb`` computes ``res``."""
    flat = v.reshape(len(v), -1)
    if norm == "inf":
        return np.abs(flat).max(axis=1)
    return np.sqrt((flat**2).sum(axis=1, dtype=np.float32))


def _build_runner(
    model: tf_keras.Model, input_shape: tuple[int, ...], norm: str, n_iter: int
) -> Callable[..., tuple[tf.Tensor, tf.Tensor]]:
    """One compiled ``attack_single_run`` (targeted) over a batch: returns (best adv, its norm)."""
    return _runner(lambda: model, input_shape, norm, n_iter)


def _runner(
    ref: Callable[[], tf_keras.Model], input_shape: tuple[int, ...], norm: str, n_iter: int
) -> Callable[..., tuple[tf.Tensor, tf.Tensor]]:
    """``_build_runner`` reaching the model through ``ref()`` (a weak reference when cached)."""
    project = projection_linf if norm == "inf" else projection_l2
    spec_x = tf.TensorSpec([None, *input_shape], tf.float32)
    spec_y = tf.TensorSpec([None], tf.int32)
    n_features = math.prod(input_shape)  # static: the projections unroll their binary search

    # autograph=False: the loop is an explicit tf.while_loop; autograph's source
    # conversion (of this function and of every layer) dominated the tracing time.
    @tf.function(input_signature=[spec_x, spec_y, spec_y], autograph=False)
    def run(x: tf.Tensor, y: tf.Tensor, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        bs = tf.shape(x)[0]
        x0 = tf.reshape(x, [-1, n_features])  # (bs, D) the clean points ("im2" / "x0")
        shape = tf.shape(x)

        def step(
            i: tf.Tensor, x1: tf.Tensor, adv: tf.Tensor, res2: tf.Tensor
        ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
            x1_img = tf.reshape(x1, shape)
            with tf.GradientTape() as tape:
                tape.watch(x1_img)
                z = ref()(x1_img, training=False)  # (bs, classes) logits
                # df = -(z_y - z_t): the targeted linearised boundary (one hyperplane per row).
                df = tf.gather(z, target, axis=1, batch_dims=1) - tf.gather(
                    z, y, axis=1, batch_dims=1
                )  # (bs,)
                # Rows do not interact (inference mode): d(sum)/dx_i is row i's own gradient.
                total = tf.reduce_sum(df)
            g = tape.gradient(total, x1_img, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            w = tf.reshape(g, [-1, n_features])  # (bs, D)
            b = -df + tf.reduce_sum(w * x1, axis=1)  # hyperplane <w, z> = b
            d3 = project(tf.concat([x1, x0], 0), tf.concat([w, w], 0), tf.concat([b, b], 0))
            d1, d2 = d3[:bs], d3[bs:]  # projections of x1 and of x0
            a0 = tf.maximum(_norm_rows(d3, norm), 1e-8)[:, None]  # (2 bs, 1)
            a1, a2 = a0[:bs], a0[bs:]
            alpha = tf.minimum(tf.maximum(a1 / (a1 + a2), 0.0), ALPHA_MAX)
            x1 = tf.clip_by_value((x1 + ETA * d1) * (1 - alpha) + (x0 + d2 * ETA) * alpha, 0.0, 1.0)

            pred = tf.argmax(
                ref()(tf.reshape(x1, shape), training=False), axis=1, output_type=tf.int32
            )
            is_adv = pred != y  # (bs,) success = any class but y, as the reference
            t = _norm_rows(x1 - x0, norm)
            better = is_adv & (t < res2)
            adv = tf.where(better[:, None], x1, adv)
            res2 = tf.where(better, t, res2)
            x1 = tf.where(is_adv[:, None], x0 + (x1 - x0) * BETA, x1)
            return i + 1, x1, adv, res2

        res0 = tf.fill([bs], tf.constant(NO_SUCCESS, tf.float32))
        _, _, adv, res2 = tf.while_loop(
            lambda i, *_: i < n_iter, step, (tf.constant(0), x0, x0, res0)
        )
        return tf.reshape(adv, shape), res2

    return run


def fab_targeted(
    model: tf_keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    eps: float,
    norm: str,
    n_iter: int = 100,
    n_target_classes: int = 9,
    seed: int = 0,
    batch_size: int = 1024,
    sequential_targets: bool | None = None,
) -> np.ndarray:
    """Standard AutoAttack's FAB-T: x (n, *shape) float32 in [0, 1], y (n,) int -> x_adv (n, *shape).

    Where an adversarial point within ``eps`` (``norm`` "inf" or "2", 0-1 scale)
    was found, x_adv is it (the smallest-norm one of the first target that
    succeeded); elsewhere x_adv is x.  Clean-misclassified examples are returned
    unchanged.  Targets: the ``min(n_target_classes, classes - 1)`` highest
    clean logits after the first.  ``seed`` is unused (FAB-T with one restart is
    deterministic); ``batch_size`` bounds memory only (rows per compiled call).
    By default (None) every target's run is in one batch when that batch is
    small (``trainables.apgd.batch_targets``; module docstring);
    ``sequential_targets=True`` runs the targets one after another on the
    survivors, as the reference.  Both give each example the same result.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    del seed  # no randomness with n_restarts=1 (module docstring)
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).astype(np.int32)
    input_shape = tuple(int(s) for s in x.shape[1:])
    adv = x.copy()
    if len(x) == 0:
        return adv
    clean = predict(model, x, batch_size)  # (n, classes)
    robust = clean.argmax(axis=1) == y  # the reference's ``acc``
    order = np.argsort(clean, axis=1, kind="stable")  # ascending: column -k is rank k
    n_targets = min(n_target_classes, clean.shape[1] - 1)
    ranks = list(range(2, n_targets + 2))
    if sequential_targets is None:
        sequential_targets = not batch_targets(int(robust.sum()) * len(ranks), input_shape)
    # Cached per architecture (and shape, norm, n_iter): a later call, or a later model of the
    # same architecture, does not trace again.
    run = per_model(
        model, ("fab-t", input_shape, norm, int(n_iter)),
        lambda ref: _runner(ref, input_shape, norm, int(n_iter)),
    )  # fmt: skip

    def attack(idx: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Runs k = (example idx[k], target[k]): (fooled within eps (k,) bool, result (k, *shape))."""
        x_f, y_f = x[idx], y[idx]
        found_adv, found_res = [], []
        for i in range(0, len(idx), batch_size):
            a, r = run(x_f[i : i + batch_size], y_f[i : i + batch_size], target[i : i + batch_size])
            found_adv.append(a.numpy())
            found_res.append(r.numpy())
        succeeded = np.concatenate(found_res) < NO_SUCCESS
        out = np.where(
            succeeded.reshape(-1, *[1] * len(input_shape)), np.concatenate(found_adv), x_f
        )
        # The reference's check in ``perturb``: still correct, or beyond eps, counts as robust.
        still = (predict(model, out, batch_size).argmax(axis=1) == y_f) | (
            _np_norm_rows(x_f - out, norm) > eps
        )
        return ~still, out

    if not sequential_targets:
        todo = np.flatnonzero(robust)
        if todo.size == 0 or not ranks:
            return adv
        m = todo.size
        # Rank-major rows: row r * m + j is example todo[j] against target rank ranks[r].
        idx = np.tile(todo, len(ranks))
        target = np.concatenate([order[todo, -rank] for rank in ranks]).astype(np.int32)
        fooled_rows, out = attack(idx, target)
        fooled = fooled_rows.reshape(len(ranks), m)  # (R, m)
        first = fooled.argmax(0)  # the first rank (in the reference's order) that fooled it
        hit = fooled.any(0)
        adv[todo[hit]] = out.reshape(len(ranks), m, *input_shape)[first, np.arange(m)][hit]
        return adv

    for rank in ranks:
        idx = np.flatnonzero(robust)
        if idx.size == 0:
            break
        target = order[idx, -rank].astype(np.int32)
        fooled_k, out = attack(idx, target)
        robust[idx[fooled_k]] = False
        adv[idx[fooled_k]] = out[fooled_k]
    return adv
