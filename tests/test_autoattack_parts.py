"""The TensorFlow AutoAttack parts (APGD-CE, APGD-T, Square) and the standard ensemble.

Oracles are computed here, independently of the attack code: a linear model's
optimal perturbation in closed form, the targeted DLR loss by hand, the
cross-entropy of every recorded iterate with numpy, and the number of
examples that actually went through the model (a counting layer).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import trainables  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from trainables import apgd, autoattack, square


def _ce_numpy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cross-entropy (n,) written out: logsumexp(z) - z_y."""
    z = logits.astype(np.float64)
    m = z.max(1)
    return m + np.log(np.exp(z - m[:, None]).sum(1)) - z[np.arange(len(z)), y]


@pytest.fixture(scope="module")
def digits() -> tuple[tf_keras.Model, np.ndarray, np.ndarray]:
    """The float digits CNN trained 4 epochs on sklearn digits; 200 held-out examples."""
    from sklearn.datasets import load_digits

    from trainables.config import TrialConfig
    from trainables.models import build_model

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1)
    y = d.target.astype(np.int64)
    tf_keras.utils.set_random_seed(0)
    model = build_model(TrialConfig(), (8, 8, 1), 10)
    model.compile(
        optimizer=tf_keras.optimizers.Adam(3e-3),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x[:1500], y[:1500], epochs=4, batch_size=64, verbose=0)
    return model, x[1500:1700], y[1500:1700]


def _linear(w: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> tf_keras.Model:
    """logits = flatten(x) @ w + b."""
    model = tf_keras.Sequential(
        [tf_keras.Input(shape), tf_keras.layers.Flatten(), tf_keras.layers.Dense(w.shape[1])]
    )
    model.layers[-1].set_weights([w, b])
    return model


# --- (1) an independent oracle: a two-class linear model ---------------------------------


def test_apgd_linf_finds_the_closed_form_optimum_of_a_linear_model() -> None:
    # Two classes: CE = log(1 + exp(z_t - z_y)) grows with (w_t - w_y).x, which is separable, so
    # the best point in the L-inf ball and [0, 1] is x_i = clip(x0_i - eps sign(w_y - w_t)_i, 0, 1).
    rng = np.random.default_rng(1)
    shape = (4, 4, 1)
    w = rng.normal(size=(16, 2)).astype(np.float32)
    b = np.array([10.0, 0.0], np.float32)  # class 0 by a wide margin: eps 0.05 cannot flip it
    model = _linear(w, b, shape)
    x = rng.uniform(0.0, 1.0, (6, *shape)).astype(np.float32)
    x[:3] = np.where(rng.random(x[:3].shape) < 0.3, 0.0, x[:3])  # some coordinates on the box edge
    y = np.zeros(6, np.int64)
    eps = 0.05
    d = (w[:, 0] - w[:, 1]).reshape(shape)
    optimum = np.clip(x - eps * np.sign(d), 0.0, 1.0)
    assert (model(x).numpy().argmax(1) == y).all() and (model(optimum).numpy().argmax(1) == y).all()
    adv = apgd.apgd_ce(model, x, y, eps=eps, norm="inf", n_iter=10)
    np.testing.assert_allclose(adv, optimum, atol=1e-6)


def test_apgd_linf_success_on_a_linear_model_is_misclassified_and_in_the_ball() -> None:
    rng = np.random.default_rng(2)
    shape = (4, 4, 1)
    w = rng.normal(size=(16, 2)).astype(np.float32)
    b = -0.5 * w.sum(0)  # centred: the classes split the unit cube
    model = _linear(w, b, shape)
    x = rng.uniform(0.0, 1.0, (40, *shape)).astype(np.float32)
    y = model(x).numpy().argmax(1)  # every example correct clean
    eps = 0.1
    # The true class's margin is sgn (d.x + b0 - b1), smallest at x - eps sign(sgn d) clipped to [0, 1].
    d = w[:, 0] - w[:, 1]
    sgn = np.where(y == 0, 1.0, -1.0)[:, None]
    opt = np.clip(x.reshape(40, -1) - eps * np.sign(sgn * d), 0.0, 1.0)
    flippable = sgn[:, 0] * (opt @ d + b[0] - b[1]) < 0
    assert 0 < flippable.sum() < 40  # the case is informative both ways
    adv = apgd.apgd_ce(model, x, y, eps=eps, norm="inf", n_iter=20)
    fooled = model(adv).numpy().argmax(1) != y
    np.testing.assert_array_equal(fooled, flippable)
    assert np.abs(adv - x).max() <= eps + 1e-6 and adv.min() >= 0.0 and adv.max() <= 1.0


def test_apgd_l2_reaches_the_closed_form_optimum_inside_the_box() -> None:
    # With x0 = 0.5 and eps 0.2 the L2 ball lies inside [0, 1]: the optimum is x0 - eps d / ||d||.
    rng = np.random.default_rng(3)
    shape = (4, 4, 1)
    w = rng.normal(size=(16, 2)).astype(np.float32)
    model = _linear(w, np.array([5.0, 0.0], np.float32), shape)
    x = np.full((3, *shape), 0.5, np.float32)
    d = (w[:, 0] - w[:, 1]).reshape(shape)
    optimum = x - 0.2 * d / np.linalg.norm(d)
    adv = apgd.apgd_ce(model, x, np.zeros(3, np.int64), eps=0.2, norm="2", n_iter=100)
    assert np.sqrt(((adv - x) ** 2).reshape(3, -1).sum(1)).max() <= 0.2 + 1e-5
    np.testing.assert_allclose(adv, optimum, atol=2e-3)


# --- faithfulness: a line-by-line numpy transliteration of the reference's loop ------------


def _reference_apgd_ce(
    model: tf_keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    x_init: np.ndarray,
    eps: float,
    norm: str,
    n_iter: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """autopgd_base.APGDAttack.attack_single_run (loss 'ce'), torch -> numpy, Python loop and all.

    Returns x_best, acc, x_best_adv, loss_steps.  Only the model's gradient comes from TensorFlow
    (eager, one call per step).
    """
    n = len(x)
    f32 = np.float32

    def normalize(v: np.ndarray) -> np.ndarray:
        flat = v.reshape(n, -1)
        t = np.abs(flat).max(1) if norm == "inf" else np.sqrt((flat**2).sum(-1))
        return v / (t.reshape(-1, 1, 1, 1) + f32(1e-12))

    def l2_norm(v: np.ndarray) -> np.ndarray:
        return np.sqrt((v**2).reshape(n, -1).sum(-1)).reshape(-1, 1, 1, 1)

    def loss_grad(xa: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xt = tf.constant(xa)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            logits = model(xt, training=False)
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            total = tf.reduce_sum(loss)
        return logits.numpy(), loss.numpy(), tape.gradient(total, xt).numpy()

    n_iter_2, n_iter_min, size_decr = (
        max(int(0.22 * n_iter), 1),
        max(int(0.06 * n_iter), 1),
        max(int(0.03 * n_iter), 1),
    )
    x_adv = x_init.copy()
    x_best, x_best_adv = x_adv.copy(), x_adv.copy()
    loss_steps = np.zeros((n_iter, n), f32)
    logits, loss_indiv, grad = loss_grad(x_adv)
    grad_best = grad.copy()
    acc = logits.argmax(1) == y
    loss_best = loss_indiv.copy()
    step_size = f32(2.0 * eps) * np.ones((n, 1, 1, 1), f32)
    x_adv_old = x_adv.copy()
    counter3, k = 0, n_iter_2
    loss_best_last_check, reduced_last_check = loss_best.copy(), np.ones_like(loss_best)
    for i in range(n_iter):
        grad2 = x_adv - x_adv_old
        x_adv_old = x_adv.copy()
        a = f32(0.75 if i > 0 else 1.0)
        if norm == "inf":
            x_adv_1 = x_adv + step_size * np.sign(grad)
            x_adv_1 = np.clip(np.minimum(np.maximum(x_adv_1, x - eps), x + eps), 0.0, 1.0)
            x_adv_1 = np.clip(
                np.minimum(
                    np.maximum(x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a), x - eps), x + eps
                ),
                0.0,
                1.0,
            )
        else:
            x_adv_1 = x_adv + step_size * normalize(grad)
            x_adv_1 = np.clip(
                x + normalize(x_adv_1 - x) * np.minimum(f32(eps), l2_norm(x_adv_1 - x)), 0.0, 1.0
            )
            x_adv_1 = x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a)
            x_adv_1 = np.clip(
                x + normalize(x_adv_1 - x) * np.minimum(f32(eps), l2_norm(x_adv_1 - x)), 0.0, 1.0
            )
        x_adv = x_adv_1.astype(f32)
        logits, loss_indiv, grad = loss_grad(x_adv)
        pred = logits.argmax(1) == y
        acc = acc & pred
        x_best_adv[~pred] = x_adv[~pred]
        y1 = loss_indiv.copy()
        loss_steps[i] = y1
        ind = y1 > loss_best
        x_best[ind], grad_best[ind], loss_best[ind] = x_adv[ind], grad[ind], y1[ind]
        counter3 += 1
        if counter3 == k:
            t = np.zeros(n, f32)
            for counter5 in range(k):  # loss_steps[-1] at the first checkpoint: Python wraps
                t += loss_steps[i - counter5] > loss_steps[i - counter5 - 1]
            fl_oscillation = (t <= k * 0.75).astype(f32)
            fl_reduce_no_impr = (1.0 - reduced_last_check) * (loss_best_last_check >= loss_best)
            fl_oscillation = np.maximum(fl_oscillation, fl_reduce_no_impr)
            reduced_last_check = fl_oscillation.copy()
            loss_best_last_check = loss_best.copy()
            if fl_oscillation.sum() > 0:
                ind_fl = fl_oscillation > 0
                step_size[ind_fl] /= 2.0
                x_adv[ind_fl] = x_best[ind_fl]
                grad[ind_fl] = grad_best[ind_fl]
            k = max(k - size_decr, n_iter_min)
            counter3 = 0
    return x_best, acc, x_best_adv, loss_steps


@pytest.mark.parametrize(("norm", "eps", "n_iter"), [("inf", 0.1, 100), ("2", 1.0, 30)])
def test_apgd_follows_the_reference_loop_step_for_step(
    digits: Any, norm: str, eps: float, n_iter: int
) -> None:
    model, x, y = digits
    x, y = x[:48], y[:48].astype(np.int32)
    x0 = apgd.random_start(x, eps, norm, tf.random.Generator.from_seed(1))  # type: ignore[arg-type]
    run = apgd.apgd_run(model, x, y, eps=eps, norm=norm, n_iter=n_iter, x_init=x0)
    x_best, acc, x_best_adv, loss_steps = _reference_apgd_ce(model, x, y, x0, eps, norm, n_iter)
    np.testing.assert_allclose(run.loss_steps, loss_steps, rtol=1e-4, atol=1e-5)
    # float32 sums in another order drift by ~1e-5; a different iterate or a missed restart
    # moves points by the step size (>= 1e-3 here)
    np.testing.assert_allclose(run.x_best, x_best, atol=1e-4)
    np.testing.assert_allclose(run.x_best_adv, x_best_adv, atol=1e-4)
    np.testing.assert_array_equal(run.acc, acc)
    assert 0 < (~acc).sum() < len(x)  # some fooled, some not: both outputs exercised


# --- (2) the best point over the iterations ------------------------------------------------


def test_apgd_returns_the_highest_loss_point_over_its_iterates(digits: Any) -> None:
    model, x, y = digits
    keep = apgd.predict(model, x).argmax(1) == y
    x, y = x[keep][:64], y[keep][:64]
    x0 = apgd.random_start(x, 0.1, "inf", tf.random.Generator.from_seed(0))
    run = apgd.apgd_run(
        model, x, y, eps=0.1, norm="inf", n_iter=10, x_init=x0, record_iterates=True
    )
    assert run.iterates is not None and run.iterates.shape == (10, *x.shape)
    points = np.concatenate([x0[None], run.iterates])  # (11, n, 8, 8, 1): start + every iterate
    losses = np.stack([_ce_numpy(model(p).numpy(), y) for p in points])  # (11, n) by numpy
    best = _ce_numpy(model(run.x_best).numpy(), y)
    assert (best >= losses.max(0) - 1e-4).all()
    # x_best is one of the visited points, one of highest loss (up to float noise between the
    # compiled batch and this evaluation)
    same = (points == run.x_best[None]).reshape(len(points), len(x), -1).all(2)  # (11, n)
    assert same.any(0).all()
    assert (np.where(same, losses, -np.inf).max(0) >= losses.max(0) - 1e-4).all()
    # not vacuous: for some examples the last iterate is worse than the best one
    assert (losses[-1] < best - 1e-3).any()
    # iterates stay in the ball and [0, 1]; misclassified iterates were reported as successes
    assert np.abs(points - x).max() <= 0.1 + 1e-6 and points.min() >= 0.0 and points.max() <= 1.0
    wrong = np.stack([model(p).numpy().argmax(1) != y for p in points]).any(0)
    np.testing.assert_array_equal(~run.acc, wrong)
    assert (model(run.x_best_adv).numpy().argmax(1)[wrong] != y[wrong]).all()


def test_apgd_breaks_an_undefended_digits_cnn_at_linf_0_3(digits: Any) -> None:
    model, x, y = digits
    clean = apgd.predict(model, x).argmax(1) == y
    assert clean.mean() > 0.8
    for fn in (apgd.apgd_ce, apgd.apgd_targeted):
        adv = fn(model, x, y, eps=0.3, norm="inf", n_iter=50)
        assert np.abs(adv - x).max() <= 0.3 + 1e-6 and adv.min() >= 0.0 and adv.max() <= 1.0
        assert (apgd.predict(model, adv).argmax(1) == y).mean() <= 0.02
        np.testing.assert_array_equal(adv[~clean], x[~clean])  # wrong clean: returned unchanged


# --- (5) the targeted DLR loss by hand -----------------------------------------------------


def test_targeted_dlr_loss_by_hand() -> None:
    logits = np.array(
        [
            [3.0, 1.0, 2.0, 0.5, -1.0],  # sorted 3, 2, 1, 0.5: -(3 - 2) / (3 - 0.75) = -1 / 2.25
            [
                0.0,
                4.0,
                -2.0,
                1.0,
                2.0,
            ],  # y=1, t=3; sorted 4, 2, 1, 0: -(4 - 1) / (4 - 0.5) = -3 / 3.5
            [1.0, 1.0, 1.0, 1.0, 5.0],  # y=4, t=0; sorted 5, 1, 1, 1: -(5 - 1) / (5 - 1) = -1
            [2.0, 6.0, 1.0, 0.0, 3.0],  # y=0, t=1 (the target leads); sorted 6, 3, 2, 1: 4 / 4.5
        ],
        np.float32,
    )
    y = np.array([0, 1, 4, 0])
    t = np.array([2, 3, 0, 1])
    got = apgd.dlr_targeted_loss(tf.constant(logits), tf.constant(y), tf.constant(t)).numpy()
    np.testing.assert_allclose(got, [-1 / 2.25, -3 / 3.5, -1.0, 4 / 4.5], rtol=1e-6)


def test_targets_are_the_top_wrong_classes() -> None:
    assert list(apgd.target_ranks(10, 9)) == list(range(2, 11))
    assert list(apgd.target_ranks(5, 9)) == [2, 3, 4, 5]  # fewer than 10 classes: all wrong ones
    assert list(apgd.target_ranks(12, 9)) == list(range(2, 11))


def test_batched_apgd_t_keeps_the_first_target_that_fooled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Targets in one batch: rows rank-major; each example keeps its first fooling target's point.

    ``apgd_run`` is replaced by a stub whose outcome per (target rank, example)
    is set here, so the selection is checked against the sequential rule
    written out by hand: the first rank in order that fooled an example gives
    its x_best_adv; an example no rank fooled gets x_best of its highest loss.
    """
    w = np.eye(4, 5, dtype=np.float32)  # 4 features -> 5 classes, logits = x @ w + b
    b = np.array([0.0, 0.0, 0.0, 0.0, -1.0], np.float32)
    model = _linear(w, b, (4,))
    x = np.array([[0.9, 0.5, 0.3, 0.1], [0.1, 0.8, 0.4, 0.2], [0.2, 0.1, 0.9, 0.5]], np.float32)
    y = np.array([0, 1, 2])
    # Rank 2..5 targets of each example by hand (classes sorted by clean logit, top first).
    want_targets = {0: [1, 2, 3, 4], 1: [2, 3, 0, 4], 2: [3, 0, 1, 4]}
    # fooled[r, j]: whether the stub's run at rank index r fools example j.
    fooled = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 0]], bool)
    loss = np.array([[1.0, 1.0, 0.5], [2.0, 1.0, 3.0], [0.0, 5.0, 3.0], [9.0, 0.0, 1.0]])
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def stub(model: Any, xs: np.ndarray, ys: np.ndarray, **kw: Any) -> apgd.ApgdRun:
        seen.append((ys, kw["target"]))
        r, j = np.divmod(np.arange(len(xs)), 3)
        tag = (10 * r + j).astype(np.float32)[:, None] * np.ones((1, 4), np.float32)
        return apgd.ApgdRun(
            x_best=tag + 0.5, acc=~fooled[r, j], loss_best=loss[r, j].astype(np.float32),
            x_best_adv=tag, loss_steps=np.zeros((1, len(xs)), np.float32), iterates=None,
        )  # fmt: skip

    monkeypatch.setattr(apgd, "apgd_run", stub)
    adv = apgd.apgd_targeted(model, x, y, eps=0.1, norm="inf", n_iter=3, n_target_classes=9)
    assert len(seen) == 1  # one batch
    ys, targets = seen[0]
    np.testing.assert_array_equal(ys, np.tile(y, 4))
    np.testing.assert_array_equal(targets.reshape(4, 3).T, [want_targets[j] for j in range(3)])
    # example 0: first fooled at rank index 1; example 1: at 2; example 2: never, top loss at 1
    np.testing.assert_array_equal(adv[:, 0], [10 * 1 + 0, 10 * 2 + 1, 10 * 1 + 2 + 0.5])


# --- (3) Square on non-square and small inputs ---------------------------------------------


class _Count(tf_keras.layers.Layer):
    """Identity that counts the examples passing through it (inside compiled loops too)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen = tf.Variable(0, dtype=tf.int64, trainable=False)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        self.seen.assign_add(tf.cast(tf.shape(x)[0], tf.int64))
        return x


def _counted_cnn(
    shape: tuple[int, int, int], classes: int, seed: int
) -> tuple[tf_keras.Model, _Count]:
    tf_keras.utils.set_random_seed(seed)
    inp = tf_keras.Input(shape)
    count = _Count()
    h = tf_keras.layers.Conv2D(8, 3, padding="same", activation="relu")(count(inp))
    h = tf_keras.layers.GlobalAveragePooling2D()(h)
    out = tf_keras.layers.Dense(classes)(tf_keras.layers.Dense(16, activation="relu")(h))
    return tf_keras.Model(inp, out), count


@pytest.mark.parametrize("shape", [(49, 10, 1), (8, 8, 1), (10, 49, 2)])
@pytest.mark.parametrize(("norm", "eps"), [("inf", 0.05), ("2", 0.5)])
def test_square_stays_in_budget_on_non_square_inputs(
    shape: tuple[int, int, int], norm: str, eps: float
) -> None:
    model, count = _counted_cnn(shape, 12, 0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, (16, *shape)).astype(np.float32)
    y = model(x).numpy().argmax(1)
    y[:2] = (y[:2] + 1) % 12  # two examples misclassified clean: fooled by the first query
    n_queries = 60
    seen0 = int(count.seen.numpy())
    run = square.square_run(model, x, y, eps=eps, norm=norm, n_queries=n_queries, seed=0)
    d = (run.x_best - x).reshape(16, -1)
    size = np.abs(d).max(1) if norm == "inf" else np.sqrt((d**2).sum(1))
    assert (size <= eps + 1e-5).all() and run.x_best.min() >= 0.0 and run.x_best.max() <= 1.0
    # queries: the starting point, then one per iteration while not fooled (the reference's count)
    assert (run.queries >= 1).all() and (run.queries <= n_queries + 1).all()
    assert (run.queries[:2] == 1).all()
    # the model saw exactly the counted queries: fooled examples were not queried again
    assert int(count.seen.numpy()) - seen0 == int(run.queries.sum())
    # the reported margins are the model's at x_best; an unfooled example used every query
    logits = model(run.x_best).numpy()
    margin = logits[np.arange(16), y] - np.where(np.eye(12, dtype=bool)[y], -np.inf, logits).max(1)
    np.testing.assert_allclose(run.margin, margin, atol=1e-4)
    assert (run.queries[run.margin > 0] == n_queries + 1).all()
    # the perturbation reaches across the whole input, not only a top-left square (the last row and
    # column only by a window as long as that side: the reference draws a corner in [0, h - s))
    moved = np.abs(run.x_best - x).max(axis=(0, 3)) > 0  # (h, w)
    assert moved[-2].any() and moved[:, -2].any()


def _reference_square_linf(
    model: tf_keras.Model, x: np.ndarray, y: np.ndarray, eps: float, n_queries: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """square.SquareAttack.attack_single_run (L-inf, margin loss, p_init 0.8, no rescaling), torch ->
    numpy, channels last.  Random numbers: the same stateless draws as trainables.square (the
    only shared part), used as the reference uses torch.rand."""
    n, h, w, c = x.shape
    p_init, n_features = 0.8, c * h * w

    def margin_and_loss(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits = model(xs, training=False).numpy()
        u = np.arange(len(xs))
        y_corr = logits[u, ys].copy()
        logits[u, ys] = -np.inf
        m = y_corr - logits.max(-1)
        return m, m

    def p_selection(it: int) -> float:
        if 10 < it <= 50:
            return p_init / 2
        if 50 < it <= 200:
            return p_init / 4
        if 200 < it <= 500:
            return p_init / 8
        if 500 < it <= 1000:
            return p_init / 16
        return p_init if it <= 10 else p_init / 32  # (n_queries <= 2000 here)

    def draw(shape: list[int], counter: int) -> np.ndarray:
        return tf.random.stateless_uniform(shape, tf.constant([seed, counter], tf.int64)).numpy()

    x_best = np.clip(x + eps * np.sign(2 * draw([n, 1, w, c], -1) - 1), 0.0, 1.0).astype(np.float32)
    margin_min, loss_min = margin_and_loss(x_best, y)
    queries = np.ones(n, np.float32)
    if (margin_min < 0.0).all():
        return queries, x_best
    for i_iter in range(n_queries):
        idx_to_fool = np.flatnonzero(margin_min > 0.0)
        x_curr, x_best_curr, y_curr = x[idx_to_fool], x_best[idx_to_fool], y[idx_to_fool]
        margin_min_curr, loss_min_curr = margin_min[idx_to_fool], loss_min[idx_to_fool]
        p = p_selection(i_iter)
        s = max(round(math.sqrt(p * n_features / c)), 1)
        s = min(s, min(h, w))
        u = draw([5 + c], 2 * i_iter)
        vh = int(
            u[0] * np.float32(h - s)
        )  # random_int(0, h - s): low + (high - low) * rand, .long()
        vw = int(u[1] * np.float32(w - s))
        new_deltas = np.zeros((h, w, c), np.float32)
        new_deltas[vh : vh + s, vw : vw + s, :] = 2.0 * eps * np.sign(2 * u[5:] - 1)
        x_new = np.minimum(np.maximum(x_best_curr + new_deltas, x_curr - eps), x_curr + eps)
        x_new = np.clip(x_new, 0.0, 1.0)
        margin, loss = margin_and_loss(x_new, y_curr)
        idx_improved = (loss < loss_min_curr).astype(np.float32)
        loss_min[idx_to_fool] = idx_improved * loss + (1.0 - idx_improved) * loss_min_curr
        idx_improved = np.maximum(idx_improved, (margin <= 0.0).astype(np.float32))
        margin_min[idx_to_fool] = idx_improved * margin + (1.0 - idx_improved) * margin_min_curr
        idx_improved = idx_improved.reshape(-1, 1, 1, 1)
        x_best[idx_to_fool] = idx_improved * x_new + (1.0 - idx_improved) * x_best_curr
        queries[idx_to_fool] += 1.0
        if (margin_min <= 0.0).all():
            break
    return queries, x_best


@pytest.mark.parametrize("case", ["digits 8x8", "random 49x10"])
def test_square_linf_follows_the_reference_loop(digits: Any, case: str) -> None:
    if case == "digits 8x8":
        model, x, y = digits
        keep = apgd.predict(model, x).argmax(1) == y
        x, y, eps = x[keep][:48], y[keep][:48], 0.1
    else:
        model, _ = _counted_cnn((49, 10, 1), 12, 1)
        x = np.random.default_rng(1).uniform(0.0, 1.0, (48, 49, 10, 1)).astype(np.float32)
        y, eps = model(x).numpy().argmax(1), 0.02
    run = square.square_run(model, x, y, eps=eps, norm="inf", n_queries=300, seed=7)
    queries, x_best = _reference_square_linf(model, x, y, eps, 300, 7)
    np.testing.assert_array_equal(run.queries, queries)
    np.testing.assert_allclose(run.x_best, x_best, atol=1e-6)
    assert 0 < (run.margin <= 0).sum() < len(x) and (queries > 51).any()  # several schedule levels


def _reference_eta(s: int, transpose: bool) -> np.ndarray:
    """square.SquareAttack.eta / eta_rectangles (L2), torch -> numpy."""

    def eta_rectangles(x: int, y: int) -> np.ndarray:
        delta = np.zeros([x, y])
        x_c, y_c = x // 2 + 1, y // 2 + 1
        counter2 = [x_c - 1, y_c - 1]
        for counter in range(0, max(x_c, y_c)):
            delta[
                max(counter2[0], 0) : min(counter2[0] + (2 * counter + 1), x),
                max(0, counter2[1]) : min(counter2[1] + (2 * counter + 1), y),
            ] += 1.0 / (counter + 1) ** 2
            counter2[0] -= 1
            counter2[1] -= 1
        return delta / np.sqrt((delta**2).sum()) if delta.size else delta

    delta = np.zeros([s, s])
    delta[: s // 2] = eta_rectangles(s // 2, s)
    delta[s // 2 :] = -1.0 * eta_rectangles(s - s // 2, s)
    delta /= np.sqrt((delta**2).sum())
    return delta.T if transpose else delta


def _reference_square_l2(
    model: tf_keras.Model, x: np.ndarray, y: np.ndarray, eps: float, n_queries: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """square.SquareAttack.attack_single_run (L2, margin loss, p_init 0.8), torch -> numpy, channels
    last, for a square input (the reference's starting grid), with trainables.square's draws."""
    n, h, w, c = x.shape
    p_init, n_features = 0.8, c * h * w

    def draw(shape: list[int], counter: int) -> np.ndarray:
        return tf.random.stateless_uniform(shape, tf.constant([seed, counter], tf.int64)).numpy()

    def margin_and_loss(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits = model(xs, training=False).numpy()
        u = np.arange(len(xs))
        y_corr = logits[u, ys].copy()
        logits[u, ys] = -np.inf
        m = y_corr - logits.max(-1)
        return m, m

    def l2(v: np.ndarray) -> np.ndarray:
        return np.sqrt((v**2).reshape(len(v), -1).sum(-1)).reshape(-1, 1, 1, 1)

    # the starting grid; tiles past the border are the empty slices torch skips (s = 1 on 8 x 8)
    delta_init = np.zeros_like(x)
    s = h // 5
    sp_init = (h - s * 5) // 2
    corners = [
        (sp_init + a * s, sp_init + b * s)
        for a in range(h // s)
        for b in range(w // s)
        if sp_init + a * s + s <= h and sp_init + b * s + s <= w
    ]
    flips = draw([len(corners)], -2) > 0.5
    signs = np.sign(2.0 * draw([len(corners), n, 1, 1, c], -3) - 1.0)
    for t, (vh, vw) in enumerate(corners):
        delta_init[:, vh : vh + s, vw : vw + s, :] += (
            _reference_eta(s, flips[t])[None, :, :, None] * signs[t]
        )
    x_best = np.clip(x + delta_init / (l2(delta_init) + 1e-12) * eps, 0.0, 1.0).astype(np.float32)
    margin_min, loss_min = margin_and_loss(x_best, y)
    queries = np.ones(n, np.float32)
    for i_iter in range(n_queries):
        idx_to_fool = np.flatnonzero(margin_min > 0.0)
        x_curr, x_best_curr, y_curr = x[idx_to_fool], x_best[idx_to_fool], y[idx_to_fool]
        margin_min_curr, loss_min_curr = margin_min[idx_to_fool], loss_min[idx_to_fool]
        delta_curr = x_best_curr - x_curr
        p = square.p_selection(i_iter, p_init)  # the schedule itself is checked by hand above
        s = max(round(math.sqrt(p * n_features / c)), 3)
        if s % 2 == 0:
            s += 1
        s = min(s, min(h, w))
        u = draw([5 + c], 2 * i_iter)
        vh, vw = int(u[0] * np.float32(h - s)), int(u[1] * np.float32(w - s))
        norms_window_1 = np.sqrt(
            (delta_curr[:, vh : vh + s, vw : vw + s, :] ** 2).sum(axis=(1, 2), keepdims=True)
        )
        vh2, vw2 = int(u[2] * np.float32(h - s)), int(u[3] * np.float32(w - s))
        mask_image = np.zeros_like(x_curr)
        mask_image[:, vh : vh + s, vw : vw + s, :] = 1.0
        mask_image[:, vh2 : vh2 + s, vw2 : vw2 + s, :] = 1.0
        norms_image = l2(x_best_curr - x_curr)
        norms_windows = np.sqrt(((delta_curr * mask_image) ** 2).sum(axis=(1, 2), keepdims=True))
        sign = np.sign(2.0 * draw([len(idx_to_fool), 1, 1, c], 2 * i_iter + 1) - 1.0)
        new_deltas = np.ones([len(idx_to_fool), s, s, c]) * (
            _reference_eta(s, u[4] > 0.5)[None, :, :, None] * sign
        )
        new_deltas += delta_curr[:, vh : vh + s, vw : vw + s, :] / (1e-12 + norms_window_1)
        new_deltas = (
            new_deltas
            / (1e-12 + np.sqrt((new_deltas**2).sum(axis=(1, 2), keepdims=True)))
            * np.sqrt(np.maximum(eps**2 - norms_image**2, 0.0) / c + norms_windows**2)
        )
        delta_curr[:, vh2 : vh2 + s, vw2 : vw2 + s, :] = 0.0
        delta_curr[:, vh : vh + s, vw : vw + s, :] = new_deltas
        x_new = np.clip(x_curr + delta_curr / (l2(delta_curr) + 1e-12) * eps, 0.0, 1.0).astype(
            np.float32
        )
        margin, loss = margin_and_loss(x_new, y_curr)
        idx_improved = (loss < loss_min_curr).astype(np.float32)
        loss_min[idx_to_fool] = idx_improved * loss + (1.0 - idx_improved) * loss_min_curr
        idx_improved = np.maximum(idx_improved, (margin <= 0.0).astype(np.float32))
        margin_min[idx_to_fool] = idx_improved * margin + (1.0 - idx_improved) * margin_min_curr
        idx_improved = idx_improved.reshape(-1, 1, 1, 1)
        x_best[idx_to_fool] = idx_improved * x_new + (1.0 - idx_improved) * x_best_curr
        queries[idx_to_fool] += 1.0
        if (margin_min <= 0.0).all():
            break
    return queries, x_best


def test_square_l2_follows_the_reference_loop(digits: Any) -> None:
    model, x, y = digits
    keep = apgd.predict(model, x).argmax(1) == y
    x, y = x[keep][:48], y[keep][:48]
    run = square.square_run(model, x, y, eps=1.0, norm="2", n_queries=300, seed=5)
    queries, x_best = _reference_square_l2(model, x, y, 1.0, 300, 5)
    np.testing.assert_array_equal(run.queries, queries)
    np.testing.assert_allclose(run.x_best, x_best, atol=2e-5)
    assert 0 < (run.margin <= 0).sum() < len(x) and (queries > 51).any()  # several schedule levels


def test_square_window_sides_are_clipped_to_the_smaller_side() -> None:
    # 49 x 10: sqrt(0.8 * 490) = 19.8 -> 20 > 10, clipped; later levels shrink it (p / 2**level).
    assert square.side_table(49, 10, 1, 0.8, "inf")[:4] == [10, 10, 10, 7]
    assert square.side_table(8, 8, 1, 0.8, "inf") == [7, 5, 4, 3, 2, 1, 1, 1, 1, 1]
    assert square.side_table(8, 8, 1, 0.8, "2") == [7, 5, 5, 3, 3, 3, 3, 3, 3, 3]
    assert square.p_selection(10, 0.8) == 0.8 and square.p_selection(11, 0.8) == 0.4
    assert square.p_selection(8001, 0.8) == 0.8 / 512


def test_square_breaks_an_undefended_digits_cnn(digits: Any) -> None:
    model, x, y = digits
    adv = square.square(model, x[:100], y[:100], eps=0.3, norm="inf", n_queries=300)
    assert (apgd.predict(model, adv).argmax(1) == y[:100]).mean() <= 0.05


# --- (4) the ensemble ----------------------------------------------------------------------


def test_ensemble_attacks_only_the_survivors(digits: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, y = digits
    seen: dict[str, np.ndarray] = {}

    def spy(name: str, fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        def wrapped(m: Any, xs: np.ndarray, ys: np.ndarray, **kw: Any) -> np.ndarray:
            seen[name] = np.concatenate(
                [seen.get(name, np.zeros((0, *x.shape[1:]), np.float32)), xs]
            )
            return fn(m, xs, ys, **kw)

        return wrapped

    for name, attr in (("apgd-ce", "apgd_ce"), ("apgd-t", "apgd_targeted"), ("square", "square")):
        monkeypatch.setattr(autoattack, attr, spy(name, getattr(autoattack, attr)))
    parts = ("apgd-ce", "apgd-t", "square")
    out = autoattack.standard_autoattack(
        model,
        x,
        y,
        eps=0.08,
        norm="inf",
        parts=parts,
        apgd_iter=20,
        square_queries=100,
        batch_size=64,
    )
    clean = apgd.predict(model, x).argmax(1) == y
    before = clean
    for name in parts:
        # each part got exactly the examples robust before it (in index order) and nothing else
        np.testing.assert_array_equal(seen.get(name, x[:0]), x[before])
        assert not (out.parts[name] & ~before).any()  # cumulative masks only shrink
        before = out.parts[name]
        assert out.part_seconds[name] >= 0.0
    np.testing.assert_array_equal(out.robust, out.parts["square"])
    assert out.robust.sum() <= clean.sum() and 0 < out.parts["apgd-ce"].sum() < clean.sum()
    # x_adv: in the ball and [0, 1], misclassified where not robust, the input where robust
    assert (
        np.abs(out.x_adv - x).max() <= 0.08 + 1e-6 and out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    )
    pred = apgd.predict(model, out.x_adv).argmax(1)
    assert (pred[clean & ~out.robust] != y[clean & ~out.robust]).all()
    np.testing.assert_array_equal(out.x_adv[out.robust], x[out.robust])


def test_clip_to_ball() -> None:
    x = np.full((2, 3), 0.5, np.float32)
    far = np.array([[2.0, 0.5, 0.5], [0.5, -1.0, 0.9]], np.float32)
    np.testing.assert_allclose(
        autoattack.clip_to_ball(far, x, 0.1, "inf"), [[0.6, 0.5, 0.5], [0.5, 0.4, 0.6]]
    )
    l2 = autoattack.clip_to_ball(far, x, 0.5, "2")
    np.testing.assert_allclose(np.linalg.norm(l2 - x, axis=1), [0.5, 0.5], rtol=1e-5)


# --- (6) determinism -----------------------------------------------------------------------


def test_parts_are_deterministic_for_a_seed(digits: Any) -> None:
    model, x, y = digits
    x, y = x[:40], y[:40]
    a = apgd.apgd_ce(model, x, y, eps=0.05, norm="2", n_iter=10, seed=3)
    np.testing.assert_array_equal(
        a, apgd.apgd_ce(model, x, y, eps=0.05, norm="2", n_iter=10, seed=3)
    )
    assert not np.array_equal(a, apgd.apgd_ce(model, x, y, eps=0.05, norm="2", n_iter=10, seed=4))
    t = apgd.apgd_targeted(model, x, y, eps=0.03, norm="inf", n_iter=10, n_target_classes=3, seed=3)
    t2 = apgd.apgd_targeted(
        model, x, y, eps=0.03, norm="inf", n_iter=10, n_target_classes=3, seed=3
    )
    np.testing.assert_array_equal(t, t2)
    for norm in ("inf", "2"):
        s = square.square(model, x, y, eps=0.05, norm=norm, n_queries=30, seed=3)
        np.testing.assert_array_equal(
            s, square.square(model, x, y, eps=0.05, norm=norm, n_queries=30, seed=3)
        )
        assert not np.array_equal(
            s, square.square(model, x, y, eps=0.05, norm=norm, n_queries=30, seed=4)
        )


def _digits_cnn(seed: int, bits: str = "4") -> tf_keras.Model:
    from trainables.config import TrialConfig
    from trainables.models import build_model

    tf_keras.utils.set_random_seed(seed)
    return build_model(TrialConfig(model="digits_cnn", bits=bits), (8, 8, 1), 10)


@pytest.mark.slow
def test_models_of_one_architecture_share_graphs_and_keep_their_own_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second model of an architecture runs on the first one's graphs (nothing traced again)
    and gets exactly the outcome graphs of its own give it, before and after the first runs again."""
    a, b = _digits_cnn(0), _digits_cnn(1)
    key = apgd.architecture_key(a)
    assert key is not None and key == apgd.architecture_key(b)
    assert apgd.architecture_key(_digits_cnn(0, "float")) != key  # other quantizers, other graphs
    x = np.random.default_rng(0).random((12, 8, 8, 1), dtype=np.float32)

    def attack(m: tf_keras.Model) -> autoattack.AutoAttackOutcome:
        y = apgd.predict(m, x).argmax(1)  # every example clean-correct
        return autoattack.standard_autoattack(
            m, x, y, eps=0.03, norm="inf", apgd_iter=4, fab_iter=4, square_queries=30
        )

    apgd.clear_graphs()
    shared_a = attack(a)
    built = len(apgd._SHARED)
    shared_b = attack(b)
    again_a = attack(a)
    assert built > 0 and len(apgd._SHARED) == built and not apgd._FUNCTIONS
    assert not np.array_equal(shared_a.x_adv, shared_b.x_adv)  # b's own weights were used
    # some examples went through every part, so every shared graph was exercised
    assert shared_b.parts["fab-t"].any() or shared_b.parts["apgd-t"].any()

    monkeypatch.setattr(apgd, "SHARED_LAYER_MODULES", ("no layer module",))
    apgd.clear_graphs()
    for shared, own in ((shared_b, attack(b)), (again_a, attack(a)), (shared_a, attack(a))):
        assert np.array_equal(shared.x_adv, own.x_adv)
        assert np.array_equal(shared.robust, own.robust)
    assert apgd._FUNCTIONS and not apgd._SHARED
    apgd.clear_graphs()


def test_models_outside_the_trusted_layers_keep_graphs_of_their_own() -> None:
    """A Lambda layer's code is not in its config: such a model is never matched to another."""
    inp = tf_keras.Input((8, 8, 1))
    out = tf_keras.layers.Dense(10)(
        tf_keras.layers.Flatten()(tf_keras.layers.Lambda(lambda t: 2 * t)(inp))
    )
    model = tf_keras.Model(inp, out)
    assert apgd.architecture_key(model) is None
    apgd.clear_graphs()
    apgd.predict(model, np.zeros((2, 8, 8, 1), np.float32))
    assert len(apgd._FUNCTIONS) == 1 and not apgd._SHARED
    apgd.clear_graphs()
