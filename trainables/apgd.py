"""APGD (Croce & Hein 2020) in TensorFlow: the standard AutoAttack's APGD-CE and APGD-T.

A step-for-step port of the reference ``autopgd_base.py`` (fra31/auto-attack,
packaged as pyautoattack 0.2.0), L-inf and L2, one restart (the standard
version's ``n_restarts=1``):

- start: L-inf ``x + eps * t / max|t|`` with ``t ~ U(-1, 1)``; L2 ``x + eps * t / ||t||``
  with ``t ~ N(0, 1)``; then clipped to [0, 1];
- step size ``2 eps``, momentum 0.75 (1.0 on the first step), checkpoints every
  ``k`` steps starting at ``k = 0.22 n_iter`` and shrinking by ``0.03 n_iter``
  down to ``0.06 n_iter``; at a checkpoint an example halves its step and
  restarts from its best point (``x_best``, with that point's gradient) when
  the loss grew on at most 75% of the last ``k`` steps, or when its step was
  not halved at the previous checkpoint and its best loss has not improved;
- ``x_best``: per example, the point of highest loss over the start and every
  iterate; ``x_best_adv``: the last misclassified iterate;
- APGD-T: the targeted DLR loss ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``,
  one run per target rank 2 .. n_target_classes + 1 of the clean logits (the
  reference: each on the examples still classified correctly; here by default
  all at once, see below).

The whole iteration loop of one run is a single ``tf.while_loop`` inside a
``tf.function`` (one graph call per run, not one per step).  The compiled
functions are kept per architecture (``per_model``: every later model of the
same architecture in the process, e.g. a Ray worker's later trials, runs on
them with its own weights, nothing traced again), else per model.

Deliberate deviations, all outside the attack's arithmetic:

- random numbers come from ``tf.random.Generator.from_seed(seed)``, not
  torch's generator: same distributions, other draws;
- the reference returns the clean input for examples it does not fool; these
  return that example's ``x_best`` (the highest-loss point; for APGD-T the
  highest over the target runs);
- APGD-T's schedule (deliberate, for speed): the reference runs the targets one
  after another, each on the examples no earlier target fooled; here every
  clean-correct example runs against every target in ONE batch (9 x n rows,
  one compiled call instead of 9 on ever smaller batches, whose per-step
  overhead dominated on small models).  Runs of one example are independent
  (inference mode, no interaction between rows), so an example's outcome
  against a target is what the sequential schedule would give it, up to the
  random start (whose draws depend on the batch composition in the reference
  too); each example keeps the point of the FIRST target in rank order that
  fooled it, as the sequential schedule would, and a survivor its highest-loss
  point over all targets.  The cost: targets the reference skips for examples
  already fooled are run anyway (more gradient evaluations, less wall time).
  This is the default only when the stacked batch is small (``batch_targets``:
  rows x features <= 2**18; on large inputs it measured no faster);
  ``apgd_targeted(..., sequential_targets=True)`` keeps the reference's schedule;
- APGD-T's targets stop at the last wrong class when the model has fewer than
  ``n_target_classes + 1`` classes (the reference indexes past the logits there);
- the reference's checkpoint test reads ``loss_steps[-1]`` (the last row,
  still zero) at the first checkpoint through Python's negative indexing;
  the same row is read here by indexing modulo ``n_iter``.
"""

from __future__ import annotations

import hashlib
import json
import math
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import tensorflow as tf
import tf_keras

Norm = Literal["inf", "2"]
Loss = Literal["ce", "dlr-targeted"]
ZERO = tf.UnconnectedGradients.ZERO
F = TypeVar("F")

# Momentum, step-halving threshold and checkpoint fractions of the reference.
ALPHA_MOMENTUM = 0.75
RHO = 0.75

_FUNCTIONS: dict[tuple[int, Hashable], Any] = {}

# Graphs shared across models of one architecture (see ``per_model``).  A Ray worker runs
# many trials (reuse_actors) and each builds a fresh model: tracing every attack graph
# again per trial cost ~1-2 s per graph.  Shared graphs run on a private clone of the
# model (the architecture's "template") whose variables are assigned the calling model's
# values before every call, so each call computes exactly what the model's own graph
# would (same ops, same weights); a model is matched only after its template gave
# identical logits on a probe batch.
SHARED_LAYER_MODULES = ("tf_keras.", "qkeras.", "trainables.")  # layer classes trusted to clone
MAX_ARCHITECTURES = 8  # templates kept (least recently used dropped): per-layer searches vary them
_TEMPLATES: OrderedDict[str, tf_keras.Model] = OrderedDict()
_SHARED: dict[tuple[str, Hashable], Any] = {}
_ARCH_OF: dict[int, str | None] = {}  # id(model) -> its architecture key (None: not shared)
_VERIFIED: dict[int, int] = {}  # id(model) -> id(template) its probe matched


def _layers(model: tf_keras.Model) -> list[Any]:
    """Every layer of ``model``, nested models' layers included, in order."""
    out: list[Any] = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, tf_keras.Model):
            out.extend(_layers(layer))
    return out


def architecture_key(model: tf_keras.Model) -> str | None:
    """A digest of ``model``'s computation up to its weights' values, or None when not shareable.

    Only graph networks (Functional / Sequential) whose layers all come from tf_keras,
    QKeras or this package (no Lambda layers: their code is not in the config) are
    shared.  The key is the model's config with every layer name replaced by its
    position (fresh models get fresh automatic names), plus its weights' shapes and dtypes.
    """
    if not getattr(model, "_is_graph_network", False) or len(model.inputs) != 1:
        return None
    layers = _layers(model)
    for layer in layers:
        if isinstance(layer, tf_keras.layers.Lambda) or not type(layer).__module__.startswith(
            SHARED_LAYER_MODULES
        ):
            return None
    try:
        text = json.dumps(
            [type(model).__module__, type(model).__qualname__, model.get_config()], sort_keys=True
        )
    except (TypeError, ValueError, NotImplementedError):
        return None
    for i, name in enumerate([model.name, *(layer.name for layer in layers)]):
        text = text.replace(json.dumps(name), f'"#layer{i}"')
    weights = [(tuple(v.shape), v.dtype.name) for v in model.weights]
    return hashlib.sha256(f"{text}|{weights}".encode()).hexdigest()


def _sync(template: tf_keras.Model, model: tf_keras.Model) -> None:
    """Give the template ``model``'s current weight values (same order: a clone's)."""
    for t, v in zip(template.weights, model.weights, strict=True):
        t.assign(v)


def _template_for(model: tf_keras.Model) -> tf_keras.Model | None:
    """The verified template of ``model``'s architecture (made on first sight), or None."""
    key = id(model)
    if key not in _ARCH_OF:
        _ARCH_OF[key] = architecture_key(model)
        weakref.finalize(model, _ARCH_OF.pop, key, None)
        weakref.finalize(model, _VERIFIED.pop, key, None)
    arch = _ARCH_OF[key]
    if arch is None:
        return None
    template = _TEMPLATES.get(arch)
    if template is None:
        try:
            template = tf_keras.models.clone_model(model)
        except Exception:  # any layer that cannot be rebuilt from its config: not shared
            _ARCH_OF[key] = None
            return None
        _TEMPLATES[arch] = template
        while len(_TEMPLATES) > MAX_ARCHITECTURES:
            old, _ = _TEMPLATES.popitem(last=False)
            for entry in [e for e in _SHARED if e[0] == old]:
                del _SHARED[entry]
    _TEMPLATES.move_to_end(arch)
    if _VERIFIED.get(key) != id(template):
        # The probe: the template with the model's weights must give the model's own logits
        # (both eager, so the same kernels), else this model keeps graphs of its own.
        _sync(template, model)
        shape = tuple(int(d) for d in model.input_shape[1:])
        probe = np.random.default_rng(0).random((4, *shape), dtype=np.float32)
        if not np.array_equal(
            np.asarray(template(probe, training=False)), np.asarray(model(probe, training=False))
        ):
            _ARCH_OF[key] = None
            return None
        _VERIFIED[key] = id(template)
    return template


def clear_graphs() -> None:
    """Forget every cached graph and template (benchmarks time a cold start with it)."""
    _FUNCTIONS.clear()
    _TEMPLATES.clear()
    _SHARED.clear()
    _ARCH_OF.clear()
    _VERIFIED.clear()


def per_model(model: tf_keras.Model, key: Hashable, build: Callable[[Callable[[], Any]], F]) -> F:
    """``build(model_ref)`` made once per (architecture, key), else once per (model, key).

    Models of one shareable architecture (``architecture_key``) share one built
    function, run on the architecture's template after the template's variables
    are assigned this model's values (on every call).  Other models get their own,
    reaching the model through a weak reference and forgotten with it.
    """
    template = _template_for(model)
    if template is not None:
        arch = _ARCH_OF[id(model)]
        assert arch is not None
        shared: Any = _SHARED.get((arch, key))
        if shared is None:
            held: tf_keras.Model = template  # the template lives as long as its graphs

            def template_ref() -> tf_keras.Model:
                return held

            shared = build(template_ref)
            _SHARED[(arch, key)] = shared
        fn: Callable[..., Any] = shared

        def synced(*args: Any, **kwargs: Any) -> Any:
            _sync(template, model)  # every call: the model's values now, whoever ran last
            return fn(*args, **kwargs)

        return synced  # type: ignore[return-value]
    entry = (id(model), key)
    own: Any = _FUNCTIONS.get(entry)
    if own is None:
        own = build(weakref.ref(model))
        _FUNCTIONS[entry] = own
        weakref.finalize(model, _FUNCTIONS.pop, entry, None)
    return own


def check_norm(norm: str) -> Norm:
    if norm not in ("inf", "2"):
        raise ValueError(f"norm must be 'inf' or '2', got {norm!r}")
    return norm  # type: ignore[return-value]


def predict(model: tf_keras.Model, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Logits (n, classes) of ``model`` in inference mode, float32."""
    fn = per_model(model, "logits", _logits_fn)
    out = [fn(tf.constant(x[i : i + batch])).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _logits_fn(ref: Callable[[], Any]) -> Callable[[tf.Tensor], tf.Tensor]:
    @tf.function(reduce_retracing=True, autograph=False)
    def logits(x: tf.Tensor) -> tf.Tensor:
        return tf.cast(ref()(x, training=False), tf.float32)

    return logits


def dlr_targeted_loss(logits: tf.Tensor, y: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Targeted DLR (n,): ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``, pi sorting z down."""
    z = tf.sort(logits, axis=1, direction="DESCENDING")  # (n, classes)
    z_y = tf.gather(logits, y, axis=1, batch_dims=1)
    z_t = tf.gather(logits, target, axis=1, batch_dims=1)
    return -(z_y - z_t) / (z[:, 0] - 0.5 * (z[:, 2] + z[:, 3]) + 1e-12)


def ce_loss(logits: tf.Tensor, y: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Per-example cross-entropy (n,) of the true labels (``target`` unused)."""
    del target
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)


LOSSES: dict[str, Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]] = {
    "ce": ce_loss,
    "dlr-targeted": dlr_targeted_loss,
}


def _rows(v: tf.Tensor, rank: int) -> tf.Tensor:
    """(n,) -> (n, 1, ..., 1) to broadcast against an input batch of ``rank`` dims."""
    return tf.reshape(v, [-1] + [1] * (rank - 1))


def _l2(v: tf.Tensor, rank: int) -> tf.Tensor:
    """Per-example L2 norm, kept as (n, 1, ..., 1)."""
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=list(range(1, rank)), keepdims=True))


def normalize(v: tf.Tensor, norm: Norm, rank: int) -> tf.Tensor:
    """The reference's ``normalize``: v / (||v|| + 1e-12) per example."""
    axes = list(range(1, rank))
    t = tf.reduce_max(tf.abs(v), axis=axes, keepdims=True) if norm == "inf" else _l2(v, rank)
    return v / (t + 1e-12)


@dataclass(frozen=True)
class ApgdRun:
    """One APGD run (the reference's ``attack_single_run``) on n examples.

    x_best (n, *shape): highest-loss point; acc (n,) bool: never misclassified;
    loss_best (n,); x_best_adv (n, *shape): last misclassified iterate (the start
    where none); loss_steps (n_iter, n): the loss at each iterate; iterates
    (n_iter, n, *shape) when recorded (a debug path for tests), else None.
    """

    x_best: np.ndarray
    acc: np.ndarray
    loss_best: np.ndarray
    x_best_adv: np.ndarray
    loss_steps: np.ndarray
    iterates: np.ndarray | None


def random_start(x: np.ndarray, eps: float, norm: Norm, gen: tf.random.Generator) -> np.ndarray:
    """The reference's starting point, clipped to [0, 1]."""
    rank = x.ndim
    if norm == "inf":
        t = 2.0 * gen.uniform(x.shape, dtype=tf.float32) - 1.0
    else:
        t = gen.normal(x.shape, dtype=tf.float32)
    return np.asarray(tf.clip_by_value(x + eps * normalize(t, norm, rank), 0.0, 1.0), np.float32)


def apgd_run(
    model: tf_keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    eps: float,
    norm: str,
    loss: Loss = "ce",
    n_iter: int = 100,
    target: np.ndarray | None = None,
    x_init: np.ndarray | None = None,
    gen: tf.random.Generator | None = None,
    record_iterates: bool = False,
) -> ApgdRun:
    """One APGD run from ``x_init`` (default: the reference's random start drawn from ``gen``)."""
    norm = check_norm(norm)
    x = np.asarray(x, np.float32)
    if x_init is None:
        x_init = random_start(x, eps, norm, gen or tf.random.Generator.from_seed(0))
    if target is None:
        target = np.zeros(len(x), np.int32)
    shape = tuple(int(d) for d in x.shape[1:])
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    # One graph for both losses (the loss is an argument): one trace per architecture, not two.
    fn = per_model(
        model, ("apgd", shape, norm, record_iterates),
        lambda ref: _apgd_graph(ref, shape, norm, record_iterates),
    )  # fmt: skip
    n_iter_2 = max(int(0.22 * n_iter), 1)
    n_iter_min = max(int(0.06 * n_iter), 1)
    size_decr = max(int(0.03 * n_iter), 1)
    out = fn(
        tf.constant(x), tf.constant(np.asarray(y, np.int32)), tf.constant(np.asarray(target, np.int32)),
        tf.constant(np.asarray(x_init, np.float32)), tf.constant(eps, tf.float32),
        tf.constant(loss == "dlr-targeted"),
        tf.constant(n_iter), tf.constant(n_iter_2), tf.constant(n_iter_min), tf.constant(size_decr),
    )  # fmt: skip
    x_best, acc, loss_best, x_best_adv, loss_steps, iterates = (t.numpy() for t in out)
    return ApgdRun(
        x_best, acc, loss_best, x_best_adv, loss_steps, iterates if record_iterates else None
    )


def _apgd_graph(
    ref: Callable[[], Any], shape: tuple[int, ...], norm: Norm, record: bool
) -> Callable[..., tuple[tf.Tensor, ...]]:
    """The compiled APGD run: one ``tf.function`` whose iteration loop is a ``tf.while_loop``."""
    rank = len(shape) + 1
    x_spec = tf.TensorSpec([None, *shape], tf.float32)
    i_spec = tf.TensorSpec([None], tf.int32)
    s_f = tf.TensorSpec([], tf.float32)
    s_i = tf.TensorSpec([], tf.int32)

    def loss_grad(
        xa: tf.Tensor, y: tf.Tensor, t: tf.Tensor, dlr: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(xa)
            logits = tf.cast(ref()(xa, training=False), tf.float32)  # (n, classes)
            # Both losses, one selected: cheaper to trace than a tf.cond (whose gradient
            # graph costs seconds); the unselected loss gets a zero upstream gradient and
            # both have finite local derivatives (DLR's denominator is >= 1e-12).
            if logits.shape[1] is not None and logits.shape[1] < 4:
                per = ce_loss(logits, y, t)  # (n,) DLR needs 4 classes (apgd_targeted refuses)
            else:
                per = tf.where(dlr, dlr_targeted_loss(logits, y, t), ce_loss(logits, y, t))
            total = tf.reduce_sum(per)  # examples do not interact in inference mode
        return logits, per, tape.gradient(total, xa, unconnected_gradients=ZERO)

    def project(x: tf.Tensor, xa: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        """The reference's projection onto the eps-ball around x, then onto [0, 1]."""
        if norm == "inf":
            return tf.clip_by_value(tf.minimum(tf.maximum(xa, x - eps), x + eps), 0.0, 1.0)
        d = xa - x
        return tf.clip_by_value(
            x + normalize(d, norm, rank) * tf.minimum(eps, _l2(d, rank)), 0.0, 1.0
        )

    s_b = tf.TensorSpec([], tf.bool)

    # autograph=False: the loop is an explicit tf.while_loop; autograph's source
    # conversion of this function and of every layer took most of the tracing time.
    @tf.function(
        input_signature=[x_spec, i_spec, i_spec, x_spec, s_f, s_b, s_i, s_i, s_i, s_i],
        autograph=False,
    )
    def run(
        x: tf.Tensor, y: tf.Tensor, target: tf.Tensor, x_init: tf.Tensor, eps: tf.Tensor,
        dlr: tf.Tensor, n_iter: tf.Tensor, n_iter_2: tf.Tensor, n_iter_min: tf.Tensor, size_decr: tf.Tensor,
    ) -> tuple[tf.Tensor, ...]:  # fmt: skip
        n = tf.shape(x)[0]
        step = 2.0 * eps * tf.ones([n], tf.float32)  # (n,) the reference's alpha * eps
        # Iterate -1 is the reference's evaluation of the start (no step, no loss_steps
        # row, no checkpoint): the model is traced once, in the loop body, not twice.
        its = tf.TensorArray(
            tf.float32, size=n_iter + 1 if record else 0, element_shape=[None, *shape]
        )

        def body(
            i: tf.Tensor, x_adv: tf.Tensor, x_adv_old: tf.Tensor, grad: tf.Tensor,
            x_best: tf.Tensor, grad_best: tf.Tensor, loss_best: tf.Tensor, step: tf.Tensor,
            acc: tf.Tensor, x_best_adv: tf.Tensor, loss_steps: tf.Tensor, counter3: tf.Tensor,
            k: tf.Tensor, loss_best_last: tf.Tensor, reduced_last: tf.Tensor, its: tf.TensorArray,
        ) -> tuple[Any, ...]:  # fmt: skip
            start = i < 0
            # gradient step with momentum (a = 1 on the first step: no momentum yet)
            grad2 = x_adv - x_adv_old
            x_adv_old = x_adv
            a = tf.where(i > 0, ALPHA_MOMENTUM, 1.0)
            st = _rows(step, rank)
            if norm == "inf":
                x1 = project(x, x_adv + st * tf.sign(grad), eps)
            else:
                x1 = project(x, x_adv + st * normalize(grad, norm, rank), eps)
            x_adv = tf.where(
                start, x_adv, project(x, x_adv + (x1 - x_adv) * a + grad2 * (1.0 - a), eps)
            )

            logits, y1, grad = loss_grad(x_adv, y, target, dlr)
            pred = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y)
            acc = tf.logical_and(acc, pred)
            x_best_adv = tf.where(_rows(~pred, rank), x_adv, x_best_adv)
            loss_steps = tf.where(
                start, loss_steps,
                tf.tensor_scatter_nd_update(loss_steps, [[tf.maximum(i, 0)]], y1[None]),
            )  # fmt: skip
            if record:
                its = its.write(i + 1, x_adv)
            better = y1 > loss_best  # all at the start (loss_best = -inf)
            x_best = tf.where(_rows(better, rank), x_adv, x_best)
            grad_best = tf.where(_rows(better, rank), grad, grad_best)
            loss_best = tf.where(better, y1, loss_best)
            loss_best_last = tf.where(start, y1, loss_best_last)

            # checkpoint: halve the step and restart from x_best where progress stalled
            counter3 = counter3 + tf.cast(~start, tf.int32)
            check = tf.equal(counter3, k)
            js = i - tf.range(k)  # the last k iterates; -1 wraps to the last row as in Python
            up = tf.gather(loss_steps, tf.math.floormod(js, n_iter)) > tf.gather(
                loss_steps, tf.math.floormod(js - 1, n_iter)
            )  # (k, n)
            n_up = tf.reduce_sum(tf.cast(up, tf.float32), axis=0)
            fl_osc = tf.cast(n_up <= tf.cast(k, tf.float32) * RHO, tf.float32)
            fl_no_impr = (1.0 - reduced_last) * tf.cast(loss_best_last >= loss_best, tf.float32)
            fl_osc = tf.maximum(fl_osc, fl_no_impr)
            halve = tf.logical_and(check, fl_osc > 0)
            reduced_last = tf.where(check, fl_osc, reduced_last)
            loss_best_last = tf.where(check, loss_best, loss_best_last)
            step = tf.where(halve, step / 2.0, step)
            x_adv = tf.where(_rows(halve, rank), x_best, x_adv)
            grad = tf.where(_rows(halve, rank), grad_best, grad)
            k = tf.where(check, tf.maximum(k - size_decr, n_iter_min), k)
            counter3 = tf.where(check, 0, counter3)
            return (
                i + 1, x_adv, x_adv_old, grad, x_best, grad_best, loss_best, step, acc,
                x_best_adv, loss_steps, counter3, k, loss_best_last, reduced_last, its,
            )  # fmt: skip

        minus_inf = tf.fill([n], tf.constant(-np.inf, tf.float32))
        state = (
            tf.constant(-1), x_init, x_init, tf.zeros_like(x_init), x_init, tf.zeros_like(x_init),
            minus_inf, step, tf.ones([n], tf.bool), x_init, tf.zeros([n_iter, n], tf.float32),
            tf.constant(0), n_iter_2, minus_inf, tf.ones([n], tf.float32), its,
        )  # fmt: skip
        out = tf.while_loop(lambda i, *_: i < n_iter, body, state)
        x_best, loss_best, acc, x_best_adv, loss_steps = out[4], out[6], out[8], out[9], out[10]
        iterates = out[15].stack()[1:] if record else tf.zeros([0], tf.float32)
        return x_best, acc, loss_best, x_best_adv, loss_steps, iterates

    return run


def apgd_ce(
    model: tf_keras.Model, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str,
    n_iter: int = 100, seed: int = 0,
) -> np.ndarray:  # fmt: skip
    """APGD-CE (untargeted cross-entropy, one restart) on the clean-correct examples.

    Returns x_adv (n, *shape) in the eps-ball and [0, 1]: the last misclassified
    iterate where the attack succeeded, else the highest-loss point; examples
    misclassified clean come back unchanged.
    """
    norm = check_norm(norm)
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int32)
    adv = x.copy()
    todo = np.flatnonzero(predict(model, x).argmax(1) == y)  # the reference's ind_to_fool
    if todo.size == 0:
        return adv
    gen = tf.random.Generator.from_seed(seed)
    run = apgd_run(model, x[todo], y[todo], eps=eps, norm=norm, loss="ce", n_iter=n_iter, gen=gen)
    adv[todo] = np.where(_rows_np(run.acc, x.ndim), run.x_best, run.x_best_adv)
    return adv


# Rows x features of the stacked target batch up to which all targets run as one batch.
# Measured (1 thread, warm graphs): trained digits CNN (8x8), 64 x 9 rows, 100 iterations:
# APGD-T 1.5-1.6 s batched vs 1.8-2.0 s sequential, FAB-T 2.5-3.4 vs 3.2-3.3 s; ResNet-8 (32x32x3, random 4-bit), 32 x 9 rows (884,736 values): no
# gain (APGD-T 15.3-17.6 s batched vs 15.6 s sequential at 20 iterations; FAB-T 26-35 vs
# 29 s): per-row work dominates there, so large inputs keep the reference's schedule
# (which also skips runs for examples already fooled, and holds 9x fewer rows).
BATCH_TARGETS_MAX_VALUES = 2**18


def batch_targets(rows: int, shape: tuple[int, ...]) -> bool:
    """Whether to run all targets as one batch of ``rows`` inputs of ``shape`` (see above)."""
    return rows * math.prod(shape) <= BATCH_TARGETS_MAX_VALUES


def target_ranks(n_classes: int, n_target_classes: int) -> range:
    """Ranks (in the clean logits, 1 = highest) of the targets: 2 .. n_target_classes + 1, at most all wrong ones."""
    return range(2, min(n_target_classes, n_classes - 1) + 2)


def apgd_targeted(
    model: tf_keras.Model, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str,
    n_iter: int = 100, n_target_classes: int = 9, seed: int = 0,
    sequential_targets: bool | None = None,
) -> np.ndarray:  # fmt: skip
    """APGD-T: APGD on the targeted DLR loss, one run per target class.

    Targets are the classes ranked 2 .. n_target_classes + 1 by the clean logits
    (all classes - 1 when there are fewer).  The DLR loss reads the 4 highest
    logits, so the model needs at least 4 classes.  By default (None) all target
    runs are one batch when that batch is small (``batch_targets``) (every clean-correct example once per target; an example
    fooled keeps its first target's point in rank order: module docstring);
    ``sequential_targets=True`` runs them one after another on the survivors,
    as the reference.
    """
    norm = check_norm(norm)
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int32)
    adv = x.copy()
    logits = predict(model, x)  # (n, classes)
    if logits.shape[1] < 4:
        raise ValueError(
            f"the targeted DLR loss needs at least 4 classes, the model has {logits.shape[1]}"
        )
    robust = logits.argmax(1) == y
    # One generator for all target runs, seeded once, as the reference seeds torch once.
    gen = tf.random.Generator.from_seed(seed)
    order = np.argsort(logits, axis=1, kind="stable")  # ascending, as torch's sort
    ranks = list(target_ranks(logits.shape[1], n_target_classes))
    if sequential_targets is None:
        sequential_targets = not batch_targets(int(robust.sum()) * len(ranks), x.shape[1:])
    if not sequential_targets:
        todo = np.flatnonzero(robust)
        if todo.size == 0 or not ranks:
            return adv
        m = todo.size
        # (R * m, ...) rank-major: row r * m + j is example todo[j] against target rank ranks[r].
        target = np.concatenate([order[todo, -rank] for rank in ranks])
        run = apgd_run(
            model, np.tile(x[todo], (len(ranks),) + (1,) * (x.ndim - 1)), np.tile(y[todo], len(ranks)),
            eps=eps, norm=norm, loss="dlr-targeted", n_iter=n_iter, target=target, gen=gen,
        )  # fmt: skip
        fooled = ~run.acc.reshape(len(ranks), m)  # (R, m)
        loss_best = run.loss_best.reshape(len(ranks), m)
        x_best_adv = run.x_best_adv.reshape(len(ranks), m, *x.shape[1:])
        x_best = run.x_best.reshape(len(ranks), m, *x.shape[1:])
        cols = np.arange(m)
        first = fooled.argmax(0)  # the first rank that fooled each example (0 where none did)
        # Survivors keep their highest targeted-DLR point over the targets (the first such rank).
        top = loss_best.argmax(0)
        any_fooled = np.asarray(fooled.any(0))  # (m,)
        adv[todo] = np.where(
            _rows_np(any_fooled, x.ndim), x_best_adv[first, cols], x_best[top, cols]
        )
        return adv
    best_loss = np.full(len(x), -np.inf, np.float32)
    for rank in ranks:
        todo = np.flatnonzero(robust)
        if todo.size == 0:
            break
        target = order[todo, -rank]
        run = apgd_run(
            model, x[todo], y[todo], eps=eps, norm=norm, loss="dlr-targeted", n_iter=n_iter,
            target=target, gen=gen,
        )  # fmt: skip
        fooled = ~run.acc
        adv[todo[fooled]] = run.x_best_adv[fooled]
        robust[todo[fooled]] = False
        # Survivors keep their highest targeted-DLR point over the target runs.
        better = run.acc & (run.loss_best > best_loss[todo])
        adv[todo[better]] = run.x_best[better]
        best_loss[todo[better]] = run.loss_best[better]
    return adv


def _rows_np(v: np.ndarray, rank: int) -> np.ndarray:
    return v.reshape((-1,) + (1,) * (rank - 1))
