"""The reference AutoAttack run on robustgrid's Keras models, on the CPU: a development-only oracle.

The reference is fra31/auto-attack as packaged on the index (``pyautoattack`` 0.2.0, PyTorch, MIT,
Croce & Hein).  ``trainables.autoattack`` re-implements its standard version in TensorFlow; this
module runs the reference itself on the same trained model and the same examples, so the two can be
compared example by example (tests/test_autoattack_reference.py, benchmarks/autoattack_reference.py).
Nothing in ``trainables``, ``grid`` or ``analysis`` imports it or torch.

How the Keras model reaches the reference.  pyautoattack 0.2.0's ``AutoAttack`` takes a torch
callable only: its APGD still has an ``is_tf_model`` path for ``utils_tf2.ModelAdapter``, but
``AutoAttack`` never sets it, and its FAB is the PyTorch one (``FABAttack_PT`` differentiates the
model with torch autograd), so the adapter cannot drive the standard ensemble (its converter's
``.cuda()`` is a second obstacle).  Porting the weights into a torch module was the other choice,
rejected: a QKeras quantizer (its rounding, scales, straight-through gradient) re-written in torch
would be a second model, and a disagreement would not say whose attack is wrong.  Instead
``torch_model`` wraps the Keras model in a ``torch.nn.Module`` whose forward is the Keras model
(``training=False``, one ``tf.function``) and whose backward is TensorFlow's vector-Jacobian product
of it.  The reference's attack code then runs unchanged, in torch, on the very model under test and
its own gradients.  ``bridge_check`` verifies the plumbing (logits equal, input gradients equal to
TensorFlow's, and on a float model a finite-difference directional derivative).

Layout: the reference is channels first (its Square reads ``c, h, w = x.shape[1:]``), Keras channels
last.  The bridge hands the reference NCHW tensors and transposes to NHWC for TensorFlow (and the
gradient back), as ``ModelAdapter`` does; inputs and outputs of this module are NHWC numpy arrays.

One part alone: ``version='custom'`` would also change the parts' settings (APGD-CE and FAB keep
their constructors' 5 restarts there; the standard version sets 1), so a part is run by building the
standard version and narrowing ``attacks_to_run`` to it, which keeps every standard setting.

Where torch comes from: the venv if it holds it, else the folder ``$ROBUSTGRID_ORACLE`` or
``<venv>/oracle`` (tests/oracle-requirements.txt says why torch lives off the import path).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REFERENCE_VERSION = "0.2.0"  # pyautoattack, pinned in tests/oracle-requirements.txt
NORMS = {"inf": "Linf", "2": "L2"}  # robustgrid's norm names -> the reference's


def oracle_folder() -> Path:
    """The folder tests/oracle-requirements.txt installs into (``$ROBUSTGRID_ORACLE`` overrides)."""
    return Path(os.environ.get("ROBUSTGRID_ORACLE") or Path(sys.prefix) / "oracle")


def load_reference() -> tuple[ModuleType, ModuleType]:
    """(torch, pyautoattack), importing them from the venv or else from ``oracle_folder()``.

    Raises ImportError saying what is missing and how to install it.  The folder joins
    ``sys.path`` only here, when an oracle actually runs, so no other import of this process
    (ART's ``import art`` looks for torch) sees torch earlier than it would have.
    """
    folder = oracle_folder()
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        if not (folder / "torch").is_dir():
            raise ImportError(
                f"torch is not installed (neither in the venv nor in {folder}): "
                "pip install --no-deps --target .venv/oracle -c constraints.txt "
                "-r tests/oracle-requirements.txt"
            ) from None
        sys.path.insert(0, str(folder))
        try:
            torch = importlib.import_module("torch")
        except OSError as err:  # a CUDA build without its nvidia libraries: not usable here
            raise ImportError(f"torch in {folder} does not load: {err}") from None
    try:
        pyautoattack = importlib.import_module("pyautoattack")
    except ImportError:
        raise ImportError(
            f"pyautoattack is not installed (torch {torch.__version__} is): "
            f"pip install pyautoattack=={REFERENCE_VERSION}"
        ) from None
    if pyautoattack.__version__ != REFERENCE_VERSION:
        raise ImportError(f"pyautoattack {pyautoattack.__version__}, want {REFERENCE_VERSION}")
    # One torch thread: the reference's tensors are tiny (a batch of 8x8 digits), and torch's
    # OpenMP workers spin between ops, stealing the cores TensorFlow's model calls need (measured
    # on 2 cores: a (20, 10) cross-entropy took 31 ms per call with the default threads).
    torch.set_num_threads(1)
    return torch, pyautoattack


def torch_model(model: Any) -> Any:
    """``model`` (tf_keras, NHWC float32 in [0, 1] -> logits) as a torch module on NCHW tensors.

    Forward: the Keras model's logits.  Backward: TensorFlow's input gradient of
    ``sum(grad_output * logits)`` (a vector-Jacobian product), transposed back to NCHW.  Both are
    one ``tf.function`` each with a free batch dimension, so the reference's changing batch sizes
    do not retrace.
    """
    import tensorflow as tf

    torch, _ = load_reference()
    shape = tuple(int(d) for d in model.input_shape[1:])  # (h, w, c)
    if len(shape) != 3:
        raise ValueError(f"the bridge handles image-like (h, w, c) inputs, not {shape}")
    spec = tf.TensorSpec((None, *shape), tf.float32)

    @tf.function(input_signature=[spec])
    def logits_fn(x: tf.Tensor) -> tf.Tensor:
        return model(x, training=False)

    @tf.function(input_signature=[spec, tf.TensorSpec((None, None), tf.float32)])
    def vjp_fn(x: tf.Tensor, v: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = tf.reduce_sum(v * model(x, training=False))
        return tape.gradient(out, x)

    def to_nhwc(t: Any) -> tf.Tensor:  # torch (n, c, h, w) -> tf (n, h, w, c)
        return tf.constant(t.detach().cpu().numpy().astype(np.float32).transpose(0, 2, 3, 1))

    class _KerasFn(torch.autograd.Function):  # type: ignore[name-defined]
        @staticmethod
        def forward(ctx: Any, x: Any) -> Any:
            ctx.save_for_backward(x)
            return torch.from_numpy(logits_fn(to_nhwc(x)).numpy())

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> Any:
            (x,) = ctx.saved_tensors
            v = tf.constant(grad_out.detach().cpu().numpy().astype(np.float32))
            g = vjp_fn(to_nhwc(x), v).numpy().transpose(0, 3, 1, 2)  # back to (n, c, h, w)
            return torch.from_numpy(np.ascontiguousarray(g))

    class KerasLogits(torch.nn.Module):  # type: ignore[name-defined]
        def forward(self, x: Any) -> Any:
            return _KerasFn.apply(x)

    return KerasLogits()


def to_nchw(x: np.ndarray) -> Any:
    torch, _ = load_reference()
    return torch.from_numpy(np.ascontiguousarray(x.astype(np.float32).transpose(0, 3, 1, 2)))


@dataclass(frozen=True)
class BridgeCheck:
    """How far the bridge's logits and input gradients are from the Keras model's own."""

    logits_err: float  # max |bridge logits - Keras logits|
    grad_err: float  # max |torch autograd CE gradient through the bridge - TF's CE gradient|
    grad_scale: float  # max |TF's CE gradient|, for scale
    fd_rel_err: float | None  # finite-difference directional derivative, relative error (float)


def bridge_check(model: Any, x: np.ndarray, y: np.ndarray, *, finite_diff: bool) -> BridgeCheck:
    """Logits and cross-entropy input gradients of ``torch_model(model)`` against TensorFlow's.

    TF's gradient comes from its own ``GradientTape`` on NHWC inputs (not through the bridge).  The
    finite-difference check (a float model only: quantized activations have straight-through
    gradients that differences do not see) compares the bridge's directional derivative of the
    summed loss along a random unit direction with a central difference in float64 arithmetic on
    float32 logits; ReLU networks are piecewise linear, so a small step rarely crosses a kink.
    """
    import tensorflow as tf

    torch, _ = load_reference()
    net = torch_model(model)
    xt = to_nchw(x).requires_grad_()
    yt = torch.from_numpy(y.astype(np.int64))
    out = net(xt)
    loss = torch.nn.functional.cross_entropy(out, yt, reduction="sum")
    (g_bridge,) = torch.autograd.grad(loss, [xt])
    g_bridge_nhwc = g_bridge.numpy().transpose(0, 2, 3, 1)

    xtf = tf.constant(x.astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(xtf)
        logits = model(xtf, training=False)
        tf_loss = tf.reduce_sum(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y.astype(np.int32), logits=logits)
        )
    g_tf = tape.gradient(tf_loss, xtf).numpy()
    fd: float | None = None
    if finite_diff:
        rng = np.random.default_rng(0)
        u = rng.standard_normal(x.shape).astype(np.float32)
        u /= np.linalg.norm(u)
        h = 1e-3

        def total(z: np.ndarray) -> float:
            lg = model(tf.constant(z.astype(np.float32)), training=False).numpy().astype(np.float64)
            lse = np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1)
            return float((lse - lg[np.arange(len(y)), y]).sum())

        numeric = (total(x + h * u) - total(x - h * u)) / (2 * h)
        analytic = float((g_bridge_nhwc.astype(np.float64) * u).sum())
        fd = abs(numeric - analytic) / max(abs(numeric), 1e-12)
    return BridgeCheck(
        logits_err=float(np.abs(out.detach().numpy() - logits.numpy()).max()),
        grad_err=float(np.abs(g_bridge_nhwc - g_tf).max()),
        grad_scale=float(np.abs(g_tf).max()),
        fd_rel_err=fd,
    )


def keras_predict(model: Any, x: np.ndarray) -> np.ndarray:
    """Argmax of the Keras model's logits, (n,) int."""
    return np.asarray(model(x.astype(np.float32), training=False)).argmax(1)


def reference_standard_autoattack(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    eps: float,
    norm: str,
    seed: int,
    parts: tuple[str, ...] | None = None,
    batch_size: int = 250,
) -> tuple[np.ndarray, np.ndarray]:
    """The reference's standard AutoAttack (or some of its parts, standard settings) on ``model``.

    ``x`` (n, h, w, c) float32 in [0, 1], ``y`` (n,) int; ``norm`` "inf" or "2"; ``eps`` on the
    0-1 scale.  Returns (x_adv (n, h, w, c) float32, robust (n,) bool): robust = classified
    correctly by the Keras model at x_adv (which is x wherever no part succeeded), as the
    reference's ``run_standard_evaluation`` counts it.
    """
    torch, pyautoattack = load_reference()
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}")
    attack = pyautoattack.AutoAttack(
        torch_model(model), eps=eps, norm=NORMS[norm], seed=seed, version="standard", device="cpu"
    )
    if parts is not None:
        unknown = set(parts) - set(attack.attacks_to_run)
        if unknown:
            raise ValueError(f"not parts of the standard version: {sorted(unknown)}")
        # Narrowed after construction: the standard version's settings stay (see module docstring).
        attack.attacks_to_run = [p for p in attack.attacks_to_run if p in parts]
    x_adv_t, y_adv_t = attack.run_standard_evaluation(
        to_nchw(x), torch.from_numpy(y.astype(np.int64)), batch_size=batch_size
    )
    x_adv = np.ascontiguousarray(x_adv_t.numpy().transpose(0, 2, 3, 1)).astype(np.float32)
    robust = y_adv_t.numpy() == y
    return x_adv, robust


# ---------------------------------------------------------------------------
# The comparison with trainables.autoattack


def in_ball(x_adv: np.ndarray, x: np.ndarray, eps: float, norm: str, tol: float = 1e-5) -> bool:
    """Every row of ``x_adv`` within ``eps`` of ``x`` (``norm``) and inside [0, 1]."""
    d = (x_adv - x).reshape(len(x), -1).astype(np.float64)
    size = np.abs(d).max(1) if norm == "inf" else np.sqrt((d**2).sum(1))
    return bool((size <= eps + tol).all() and x_adv.min() >= -tol and x_adv.max() <= 1 + tol)


@dataclass(frozen=True)
class Comparison:
    """The reference and trainables.autoattack on the same model, examples, eps and norm."""

    parts: tuple[str, ...]
    n: int
    clean_acc: float
    reference_acc: float
    ours_acc: float
    agreement: float  # share of examples on which both say the same (robust or not)
    table: np.ndarray  # (2, 2) counts: rows reference robust/broken, columns ours robust/broken
    reference_seconds: float
    ours_seconds: float

    @property
    def difference(self) -> float:
        return self.ours_acc - self.reference_acc

    def describe(self) -> str:
        t = self.table
        return (
            f"{'+'.join(self.parts)}: n={self.n} clean {self.clean_acc:.3f} | reference "
            f"{self.reference_acc:.3f} ({self.reference_seconds:.1f} s) | ours {self.ours_acc:.3f} "
            f"({self.ours_seconds:.1f} s) | difference {self.difference:+.3f} | agreement "
            f"{self.agreement:.3f} | both robust {t[0, 0]}, reference only {t[0, 1]}, "
            f"ours only {t[1, 0]}, both broken {t[1, 1]}"
        )


def compare(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    eps: float,
    norm: str,
    seed: int = 0,
    parts: tuple[str, ...] | None = None,
) -> Comparison:
    """Run both on the same examples; each side's robust mask is re-judged by the Keras model.

    Each side's claim is checked independently of the side itself: its x_adv lies in the eps-ball
    and [0, 1], and its robust mask equals "the Keras model classifies x_adv correctly" (so neither
    can count a point outside the threat model, or a success that is not one).  Raises
    AssertionError otherwise.
    """
    from trainables.autoattack import STANDARD_PARTS, standard_autoattack

    chosen = tuple(STANDARD_PARTS) if parts is None else tuple(parts)
    t0 = time.perf_counter()
    ref_adv, ref_robust = reference_standard_autoattack(
        model, x, y, eps=eps, norm=norm, seed=seed, parts=chosen
    )
    t1 = time.perf_counter()
    outcome = standard_autoattack(model, x, y, eps=eps, norm=norm, seed=seed, parts=chosen)
    t2 = time.perf_counter()
    ours_robust = np.asarray(outcome.robust, bool)
    for name, adv, robust in (
        ("reference", ref_adv, ref_robust),
        ("ours", outcome.x_adv, ours_robust),
    ):
        assert in_ball(adv, x, eps, norm), f"{name}: x_adv outside the eps-ball or [0, 1]"
        judged = keras_predict(model, adv) == y
        # robust must be exactly "the Keras model classifies this side's x_adv correctly": a
        # broken example misclassified there, a robust one not (else a success went uncounted).
        wrong = np.flatnonzero(judged != robust)
        assert wrong.size == 0, f"{name}: robust mask != Keras judgement at x_adv on {wrong}"
    clean = keras_predict(model, x) == y
    assert not (ours_robust & ~clean).any() and not (ref_robust & ~clean).any()
    table = np.array(
        [
            [int((ref_robust & ours_robust).sum()), int((ref_robust & ~ours_robust).sum())],
            [int((~ref_robust & ours_robust).sum()), int((~ref_robust & ~ours_robust).sum())],
        ]
    )
    return Comparison(
        parts=chosen,
        n=len(y),
        clean_acc=float(clean.mean()),
        reference_acc=float(ref_robust.mean()),
        ours_acc=float(ours_robust.mean()),
        agreement=float((ref_robust == ours_robust).mean()),
        table=table,
        reference_seconds=t1 - t0,
        ours_seconds=t2 - t1,
    )


# ---------------------------------------------------------------------------
# Models and examples (the trials' own training path and attack subsets)


def digits_model(bits: str, epochs: int = 3, seed: int = 0) -> tuple[Any, np.ndarray, np.ndarray]:
    """A digits CNN trained as a trial trains it (``bits``: "float", "4", "ternary", ...),
    with its test split (x (n, 8, 8, 1) float32 in [0, 1], y (n,) int)."""
    from trainables.config import TrialConfig
    from trainables.data import trial_split
    from trainables.trial import train_compressed

    cfg = TrialConfig(bits=bits, epochs=epochs, seed=seed)
    model, _ = train_compressed(cfg)
    split = trial_split(cfg)
    return model, split.x_test.astype(np.float32), split.y_test.astype(np.int64)


def attack_subset(
    x: np.ndarray, y: np.ndarray, n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` of the seeded stratified order the trials attack (same examples every run)."""
    from trainables.attacks import stratified_order

    idx = stratified_order(y, seed)[:n]
    return x[idx], y[idx]
