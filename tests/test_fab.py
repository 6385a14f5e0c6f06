"""FAB-T (trainables.fab): its projections against independent solvers, its result on linear
models against the closed-form boundary distance, and its contract (ball, box, labels).

Oracles: scipy's LP (HiGHS) for the L-inf projection and for the box corner when the
hyperplane misses the box; scipy's SLSQP for the L2 projection; |v.x + c| / ||v||_dual for
the distance of a point to a linear decision boundary.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import time
from collections.abc import Callable

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from scipy.optimize import linprog, minimize

from trainables.fab import fab_targeted, projection_l2, projection_linf

# ---------------------------------------------------------------- projections


def _random_case(rng: np.random.Generator, n_features: int) -> Case:
    """A point t in [0, 1]^D, a hyperplane (w, b); some w_i exactly 0, some t_i near a face."""
    t = rng.uniform(0, 1, n_features)
    t[rng.random(n_features) < 0.2] = rng.choice([0.0, 0.01, 0.99, 1.0])
    w = rng.normal(size=n_features)
    w[rng.random(n_features) < 0.15] = 0.0
    if not w.any():
        w[0] = 1.0
    # Offsets from tiny (no face reached) to beyond the box (hyperplane misses it).
    b = float(
        w @ t + rng.choice([-1, 1]) * np.abs(w).sum() * rng.choice([0.01, 0.1, 0.3, 0.6, 1.2])
    )
    return t, w, b


def _box_corner(t: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """The box point whose <w, z> is closest to b when the hyperplane misses the box (an LP)."""
    toward = 1.0 if w @ t > b else -1.0  # minimise <w, z> if it must decrease, else maximise
    res = linprog(toward * w, bounds=[(0, 1)] * len(t), method="highs")
    assert res.status == 0
    return np.asarray(res.x)


def _linf_oracle(t: np.ndarray, w: np.ndarray, b: float) -> float | None:
    """min ||d||_inf s.t. <w, t + d> = b, t + d in [0, 1]; None if infeasible (LP over d, tau)."""
    n = len(t)
    cost = np.r_[np.zeros(n), 1.0]
    a_ub = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))]])
    res = linprog(
        cost,
        A_ub=a_ub,
        b_ub=np.zeros(2 * n),
        A_eq=np.r_[w, 0.0][None],
        b_eq=[b - w @ t],
        bounds=[(-ti, 1 - ti) for ti in t] + [(0, None)],
        method="highs",
    )
    return float(res.fun) if res.status == 0 else None


def _l2_oracle(t: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """argmin ||d||_2 s.t. <w, t + d> = b, t + d in [0, 1] (feasible cases), by SLSQP."""
    res = minimize(
        lambda d: d @ d,
        np.zeros_like(t),
        jac=lambda d: 2 * d,
        constraints=[{"type": "eq", "fun": lambda d: w @ (t + d) - b, "jac": lambda d: w}],
        bounds=[(-ti, 1 - ti) for ti in t],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    assert res.success, res.message
    return np.asarray(res.x)


def _feasible(t: np.ndarray, w: np.ndarray, b: float) -> bool:
    lo = np.where(w > 0, w * 0, w).sum()  # min <w, z> over the box
    hi = np.where(w > 0, w, w * 0).sum()
    return bool(lo < b < hi)


Projection = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]
Case = tuple[np.ndarray, np.ndarray, float]


def _project(fn: Projection, cases: list[Case], dtype: tf.DType = tf.float64) -> np.ndarray:
    """All cases of one dimension in one batch, as FAB calls the projections: d (cases, D)."""
    t, w, b = (np.stack([case[i] for case in cases]) for i in range(3))
    return np.asarray(fn(tf.constant(t, dtype), tf.constant(w, dtype), tf.constant(b, dtype)))


@pytest.mark.parametrize("n_features", [2, 5, 12, 33])
def test_projection_linf_is_the_lp_optimum(n_features: int) -> None:
    rng = np.random.default_rng(n_features)
    cases = [_random_case(rng, n_features) for _ in range(60)]
    d_all = _project(projection_linf, cases)
    kinds = set()
    for (t, w, b), d in zip(cases, d_all, strict=True):
        z = t + d
        assert np.all(z >= -1e-12) and np.all(z <= 1 + 1e-12)
        assert np.all(d[w == 0] == 0)  # the reference leaves coordinates with w = 0 alone
        best = _linf_oracle(t, w, b)
        if best is None:  # the hyperplane misses the box: the closest corner
            kinds.add("infeasible")
            np.testing.assert_allclose(z[w != 0], _box_corner(t, w, b)[w != 0], atol=1e-9)
            continue
        assert w @ z == pytest.approx(b, abs=1e-9)
        assert np.abs(d).max() == pytest.approx(best, rel=1e-9, abs=1e-12)
        # Which branch of the reference: does the unconstrained projection stay in the box?
        free = abs(b - w @ t) / np.abs(w).sum()
        kinds.add("box inactive" if np.all((t + free >= 0) & (t - free <= 1)) and
                  np.all(np.abs(d[w != 0]) == pytest.approx(free)) else "box active")  # fmt: skip
    assert kinds == {"infeasible", "box inactive", "box active"}, kinds  # every branch exercised


@pytest.mark.parametrize("n_features", [2, 5, 12, 33])
def test_projection_l2_is_the_qp_optimum(n_features: int) -> None:
    rng = np.random.default_rng(100 + n_features)
    cases = [_random_case(rng, n_features) for _ in range(60)]
    d_all = _project(projection_l2, cases)
    kinds = set()
    for (t, w, b), d in zip(cases, d_all, strict=True):
        z = t + d
        assert np.all(z >= -1e-12) and np.all(z <= 1 + 1e-12)
        if not _feasible(t, w, b):
            kinds.add("infeasible")
            np.testing.assert_allclose(z[w != 0], _box_corner(t, w, b)[w != 0], atol=1e-9)
            continue
        oracle = _l2_oracle(t, w, b)
        np.testing.assert_allclose(d, oracle, atol=1e-6)
        assert w @ z == pytest.approx(b, abs=1e-9)
        kinds.add("box active" if np.any((z < 1e-9) | (z > 1 - 1e-9)) else "box inactive")
    assert kinds == {"infeasible", "box inactive", "box active"}, kinds


@pytest.mark.parametrize("project", [projection_linf, projection_l2])
def test_projection_float32_agrees_with_float64(project: Projection) -> None:
    """FAB runs the projections in float32: same answer as float64 up to float32 rounding."""
    rng = np.random.default_rng(7)
    cases = [_random_case(rng, 64) for _ in range(50)]
    d64 = _project(project, cases)
    np.testing.assert_allclose(_project(project, cases, tf.float32), d64, atol=2e-4)


# ---------------------------------------------------------------- linear models


def _linear_model(rng: np.random.Generator, shape: tuple[int, ...], classes: int) -> tf_keras.Model:
    inp = tf_keras.Input(shape)
    out = tf_keras.layers.Dense(classes)(tf_keras.layers.Flatten()(inp))
    model = tf_keras.Model(inp, out)
    kernel = rng.normal(size=(int(np.prod(shape)), classes))
    # Every boundary through the box's centre (plus a little): points near it in every norm.
    bias = -0.5 * kernel.sum(axis=0) + 0.1 * rng.normal(size=classes)
    model.layers[-1].set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return model


def _linear_points(
    model: tf_keras.Model, rng: np.random.Generator, shape: tuple[int, ...], norm: str, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Points in [0.3, 0.7] labelled by the model, whose boundary distances keep off the box.

    Returns x, y, the distance to the boundary with the runner-up class (FAB-T's first
    target) and the distance to the nearest pairwise boundary (a lower bound for any
    misclassification), both in ``norm``.
    """
    kernel, bias = (v.astype(np.float64) for v in model.layers[-1].get_weights())
    dual = 1 if norm == "inf" else 2
    x = rng.uniform(0.3, 0.7, (20 * n, *shape)).astype(np.float32)
    z = x.reshape(len(x), -1).astype(np.float64) @ kernel + bias  # (20n, classes)
    y = z.argmax(axis=1)
    runner_up = np.argsort(z, axis=1)[:, -2]
    v = kernel[:, runner_up].T - kernel[:, y].T  # (20n, D) normal of the y / runner-up boundary
    dist_t = (z[np.arange(len(x)), y] - z[np.arange(len(x)), runner_up]) / np.linalg.norm(
        v, dual, axis=1
    )
    gaps = z[np.arange(len(x)), y][:, None] - z  # (20n, classes)
    normals = kernel[None, :, :] - kernel[:, y].T[:, :, None]  # (20n, D, classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        dists = gaps / np.linalg.norm(normals, dual, axis=1)
    dists[np.arange(len(x)), y] = np.inf
    # Within 0.25 the projections move no coordinate out of [0.05, 0.95]: the box stays inactive.
    keep = np.flatnonzero((dist_t < 0.25) & (dist_t > 0.01))[:n]
    assert len(keep) == n
    return x[keep], y[keep], dist_t[keep], dists[keep].min(axis=1)


def _norms(v: np.ndarray, norm: str) -> np.ndarray:
    flat = v.reshape(len(v), -1).astype(np.float64)
    return np.abs(flat).max(axis=1) if norm == "inf" else np.linalg.norm(flat, axis=1)


def _fab_on_a_line(n_iter: int) -> float:
    """Best adversarial norm / boundary distance of the reference's FAB on a linear model.

    With the box inactive, both projections (of x1 and of x0) move along the same
    direction, so the iterate stays on the line x0 + u * (projection of x0), the boundary
    at u = 1: the reference's update (eta 1.05, alpha_max 0.1, beta 0.9) on the scalar u.
    It settles on a cycle whose successful point is 1.0052 times the distance.
    """
    u, best = 0.0, np.inf
    for _ in range(n_iter):
        a1, a2 = max(abs(1 - u), 1e-8), 1.0  # |projection of x1|, |projection of x0|
        alpha = min(max(a1 / (a1 + a2), 0.0), 0.1)
        u = (u + 1.05 * (1 - u)) * (1 - alpha) + 1.05 * alpha
        if u > 1:  # adversarial: keep the smallest, step back towards x0
            best = min(best, u)
            u *= 0.9
    return best


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_two_classes_reaches_the_closed_form_distance(norm: str) -> None:
    rng = np.random.default_rng(1)
    shape = (3, 4, 1)
    model = _linear_model(rng, shape, 2)
    x, y, dist, _ = _linear_points(model, rng, shape, norm, 40)
    x_adv = fab_targeted(model, x, y, eps=10.0, norm=norm)
    res = _norms(x_adv - x, norm)
    assert np.all(model.predict(x_adv, verbose=0).argmax(axis=1) != y)
    # Never closer than the boundary; and exactly where FAB's update rule settles (1.0052 dist).
    assert np.all(res >= dist * (1 - 1e-5))
    np.testing.assert_allclose(res / dist, _fab_on_a_line(100), rtol=1e-4)

    # The eps check (the reference's ``res > eps``): below the distance nothing counts.
    below = fab_targeted(model, x, y, eps=float(dist.min()) * 0.99, norm=norm)
    np.testing.assert_array_equal(below, x)
    # Per example: kept exactly where the point found is within eps.
    eps = float(np.median(dist))
    x_eps = fab_targeted(model, x, y, eps=eps, norm=norm)
    changed = np.any(x_eps != x, axis=(1, 2, 3))
    np.testing.assert_array_equal(changed, res <= eps)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_multiclass_between_nearest_boundary_and_first_target(norm: str) -> None:
    rng = np.random.default_rng(2)
    shape = (10,)
    model = _linear_model(rng, shape, 5)
    x, y, dist_target, dist_any = _linear_points(model, rng, shape, norm, 40)
    x_adv = fab_targeted(model, x, y, eps=10.0, norm=norm)
    res = _norms(x_adv - x, norm)
    assert np.all(model.predict(x_adv, verbose=0).argmax(axis=1) != y)
    assert np.all(res >= dist_any * (1 - 1e-5))  # no misclassified point is closer
    assert np.all(res <= dist_target * _fab_on_a_line(100) * (1 + 1e-4))  # first target reached


def test_deterministic_and_clean_misclassified_unchanged() -> None:
    rng = np.random.default_rng(3)
    shape = (10,)
    model = _linear_model(rng, shape, 5)
    x = rng.uniform(0, 1, (30, *shape)).astype(np.float32)
    pred = model.predict(x, verbose=0).argmax(axis=1)
    y = pred.copy()
    y[:5] = (pred[:5] + 1) % 5  # misclassified from the start
    a = fab_targeted(model, x, y, eps=0.05, norm="inf", seed=0)
    b = fab_targeted(model, x, y, eps=0.05, norm="inf", seed=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:5], x[:5])
    assert np.any(a[5:] != x[5:])  # the test would be empty otherwise


def test_rejects_unknown_norm() -> None:
    model = _linear_model(np.random.default_rng(0), (3,), 2)
    with pytest.raises(ValueError, match="norm"):
        fab_targeted(model, np.zeros((1, 3), np.float32), np.zeros(1, int), eps=0.1, norm="1")


# ---------------------------------------------------------------- digits CNN


def _check_contract(
    model: tf_keras.Model, x: np.ndarray, y: np.ndarray, x_adv: np.ndarray, eps: float, norm: str
) -> np.ndarray:
    """Ball, box, and: changed exactly where misclassified (clean-correct examples). Returns fooled."""
    assert x_adv.dtype == np.float32 and x_adv.shape == x.shape
    assert np.all((x_adv >= 0) & (x_adv <= 1))
    diff = (x_adv - x).reshape(len(x), -1)
    size = np.abs(diff).max(axis=1) if norm == "inf" else np.sqrt((diff**2).sum(axis=1))
    assert np.all(size <= eps * (1 + 1e-6))
    clean_ok = model.predict(x, verbose=0).argmax(axis=1) == y
    adv_wrong = model.predict(x_adv, verbose=0).argmax(axis=1) != y
    changed = np.any(diff != 0, axis=1)
    np.testing.assert_array_equal(changed, clean_ok & adv_wrong)
    return clean_ok & adv_wrong


@pytest.fixture(scope="module")
def digits_cnn() -> tuple[tf_keras.Model, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    from trainables.config import TrialConfig
    from trainables.models import build_model

    tf_keras.utils.set_random_seed(0)
    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1) in [0, 1]
    y = bunch.target.astype(np.int32)
    model = build_model(TrialConfig(bits="float"), (8, 8, 1), 10)
    model.compile(
        optimizer=tf_keras.optimizers.Adam(3e-3),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x[:1500], y[:1500], epochs=8, batch_size=64, verbose=0)
    return model, x[1500:], y[1500:]


def test_random_cnn_contract() -> None:
    """The contract on an untrained digits CNN (fast): ball, box, changed iff fooled."""
    from trainables.config import TrialConfig
    from trainables.models import build_model

    tf_keras.utils.set_random_seed(1)
    model = build_model(TrialConfig(bits="float"), (8, 8, 1), 10)
    x = np.random.default_rng(0).uniform(0, 1, (16, 8, 8, 1)).astype(np.float32)
    y = model.predict(x, verbose=0).argmax(axis=1)
    for norm, eps in (("inf", 0.05), ("2", 0.3)):
        x_adv = fab_targeted(model, x, y, eps=eps, norm=norm, n_iter=10, n_target_classes=3)
        _check_contract(model, x, y, x_adv, eps, norm)


@pytest.mark.slow
@pytest.mark.parametrize(("norm", "eps"), [("inf", 0.3), ("2", 2.0)])
def test_undefended_digits_cnn_broken(
    digits_cnn: tuple[tf_keras.Model, np.ndarray, np.ndarray], norm: str, eps: float
) -> None:
    model, x, y = digits_cnn
    x, y = x[:100], y[:100]
    clean = model.predict(x, verbose=0).argmax(axis=1) == y
    assert clean.mean() > 0.85  # the model learned something: the test is not vacuous
    x_adv = fab_targeted(model, x, y, eps=eps, norm=norm)
    fooled = _check_contract(model, x, y, x_adv, eps, norm)
    robust = clean & ~fooled
    assert robust.mean() <= 0.02, robust.mean()


@pytest.mark.slow
def test_digits_seconds_per_100(digits_cnn: tuple[tf_keras.Model, np.ndarray, np.ndarray]) -> None:
    """Time of FAB-T on 100 digits at L-inf eps 0.1 (printed; run with -s), and determinism."""
    model, x, y = digits_cnn
    x, y = x[:100], y[:100]
    t0 = time.perf_counter()
    a = fab_targeted(model, x, y, eps=0.1, norm="inf")
    seconds = time.perf_counter() - t0
    b = fab_targeted(model, x, y, eps=0.1, norm="inf")
    np.testing.assert_array_equal(a, b)
    fooled = _check_contract(model, x, y, a, 0.1, "inf")
    print(
        f"FAB-T digits_cnn 100 examples Linf eps 0.1: {seconds:.2f} s (incl. tracing), fooled {fooled.mean():.2f}"
    )


@pytest.mark.slow
@pytest.mark.parametrize(("norm", "eps"), [("inf", 0.1), ("2", 0.8)])
def test_matches_reference_fab_t(norm: str, eps: float) -> None:
    """The reference FABAttack_PT (targeted, 1 restart) on the same MLP, weights copied to torch.

    Runs only where torch and pyautoattack are installed.  Both are float32 ports of one
    algorithm, so they may part only where rounding tips an argmax: the robust masks must
    agree on nearly every example and the adversarial points found by both lie as far.
    """
    torch = pytest.importorskip("torch")
    fab_pt = pytest.importorskip("pyautoattack.fab_pt")
    from sklearn.datasets import load_digits

    tf_keras.utils.set_random_seed(4)
    bunch = load_digits()
    x_all = (bunch.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1)
    y_all = bunch.target.astype(np.int64)
    inp = tf_keras.Input((8, 8, 1))
    hidden = tf_keras.layers.Dense(32, activation="relu")(tf_keras.layers.Flatten()(inp))
    model = tf_keras.Model(inp, tf_keras.layers.Dense(10)(hidden))
    model.compile(
        optimizer=tf_keras.optimizers.Adam(3e-3),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_all[:1500], y_all[:1500], epochs=10, batch_size=64, verbose=0)
    x, y = x_all[1500:1600], y_all[1500:1600]

    (k1, b1), (k2, b2) = model.layers[2].get_weights(), model.layers[3].get_weights()
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )  # Flatten of (n, 8, 8, 1) gives Keras's order: the kernels transpose as they are
    with torch.no_grad():
        for layer, k, b in ((net[1], k1, b1), (net[3], k2, b2)):
            layer.weight.copy_(torch.from_numpy(k.T.copy()))
            layer.bias.copy_(torch.from_numpy(b))
    net.eval()
    attack = fab_pt.FABAttack_PT(
        net,
        norm={"inf": "Linf", "2": "L2"}[norm],
        n_restarts=1,
        n_iter=100,
        eps=eps,
        seed=0,
        targeted=True,
        device="cpu",
        n_target_classes=9,
    )
    ref = attack.perturb(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    ours = fab_targeted(model, x, y, eps=eps, norm=norm)

    def fooled(adv: np.ndarray) -> np.ndarray:
        changed = np.any((adv != x).reshape(len(x), -1), axis=1)
        return changed & (model.predict(adv, verbose=0).argmax(axis=1) != y)

    ref_fooled, our_fooled = fooled(ref), fooled(ours)
    assert 0.2 < ref_fooled.mean() < 0.95  # an eps where the comparison says something
    assert (ref_fooled == our_fooled).mean() >= 0.97
    both = ref_fooled & our_fooled
    np.testing.assert_allclose(
        _norms(ours[both] - x[both], norm), _norms(ref[both] - x[both], norm), rtol=0.02
    )


def test_batched_targets_give_the_sequential_schedule_results() -> None:
    """All targets in one batch (the default) = the reference's sequential schedule, per example.

    FAB-T is deterministic and rows do not interact, so each example's result
    must be the one the sequential run (target k only on the survivors of
    targets < k) gives it: same fooled set, same points.
    """
    from trainables.config import TrialConfig
    from trainables.models import build_model

    tf_keras.utils.set_random_seed(2)
    model = build_model(TrialConfig(bits="float"), (8, 8, 1), 10)
    x = np.random.default_rng(3).uniform(0, 1, (24, 8, 8, 1)).astype(np.float32)
    y = model.predict(x, verbose=0).argmax(axis=1)
    y[:3] = (y[:3] + 1) % 10  # three clean-misclassified examples: returned unchanged
    for norm, eps in (("inf", 0.08), ("2", 0.45)):  # about half the examples' FAB distances
        seq = fab_targeted(model, x, y, eps=eps, norm=norm, n_iter=10, sequential_targets=True)
        bat = fab_targeted(model, x, y, eps=eps, norm=norm, n_iter=10)
        fooled_seq = _check_contract(model, x, y, seq, eps, norm)
        fooled_bat = _check_contract(model, x, y, bat, eps, norm)
        # Not vacuous: some examples fooled, some not (else the schedule would not matter).
        assert 0 < fooled_seq.sum() < 21
        np.testing.assert_array_equal(fooled_bat, fooled_seq)
        np.testing.assert_allclose(bat, seq, atol=1e-5)
