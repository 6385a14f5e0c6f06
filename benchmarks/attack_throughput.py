"""Attack throughput: ART's PGD through robustgrid's compiled classifier, against peers.

For each model (QKeras, 4-bit weights, random weights: the cost of a step
does not depend on what the model learned), one run measures PGD (L-inf,
``--steps`` steps, no random start) on the same batch three ways:

  1. ART's ProjectedGradientDescent on ART's default TensorFlowV2Classifier;
  2. the same ART attack on ``trainables.compiled.CompiledClassifier`` (the
     classifier's loss and class gradients in ``tf.function``; what trials use);
  3. the practical limit: the whole PGD loop fused into one ``tf.function``;
  4. ART's own work alone: the same ART attack on a classifier whose loss
     gradient costs nothing (zeros), i.e. what the attack spends outside the
     classifier each step (projection, clipping, the closing success rate).

Each is warmed up once (tracing), then timed best of ``--repeat``.  The
adversarial examples of 1 and 2 are checked equal first.  Prints seconds and
the ratios compiled / fused and default / fused (goal: compiled within 1.3x),
and (compiled - ART's own work) / fused: the classifier's share against the
fused loop.

Then AutoAttack, per model, on the same examples (each model's own predictions
as labels, so every example is attacked):

  a. robustgrid's standard AutoAttack (trainables.autoattack: APGD-CE, APGD-T,
     FAB-T, Square, each on the survivors of the previous ones), timed two ways:
     "ours", on a fresh model instance (same weights) of an architecture the
     process has attacked before, as a Ray worker's later trials run it (the
     graphs are shared per architecture, ``trainables.apgd.per_model``); and
     "cold", on the first model of its architecture (every graph traced);
  b. ART's AutoAttack as robustgrid ran it up to results revision 2
     (``autoattack_art``: ART's APGD-CE, APGD-DLR and Square);
  c. the compiled-loop bound: the gradient and forward evaluations (a) spent,
     counted per example by a layer in front of the model, priced at the cost
     per example of one ``tf.function`` loop of gradient steps (resp. forward
     passes) on the whole batch: what the same budget costs with no overhead.

The digits CNN is trained a few epochs on scikit-learn's digits (an honest
model: the attacks' early stops depend on what the model learned); ResNet-8
and DS-CNN have random weights (4-bit) and random inputs.  The last line reads
``autoattack speed-up over ART: <lowest ratio>`` (goal: >= 5; from "ours"), and the
table gives ours / bound and cold / bound (goal: <= 1.5).  All times are process CPU
seconds (the machine is shared): ours and the bound the median of ``--repeat``, ART's of
``--art-repeat``.  Both outcomes are checked equal (shared graphs against the cold run).

With ``--deployed`` (or ``--only-deployed``), first the interpreter-side cost of
each route on the deployed int8 TFLite flatbuffer (trainables/deployed.py) against
the Keras attack on the same examples (the trained digits CNN, ``--aa-samples``
examples, its own predictions as labels, eps 0.1): PGD-10 on Keras against the
transfer route (scoring PGD's examples on the interpreter) and BPDA PGD-10; ART's
Square (``--deployed-queries``) on the Keras model's logits against the same attack on
the interpreter's dequantized scores.  Per route: wall seconds, seconds inside the
interpreter, invokes, and the ratio to the Keras attack.

    python benchmarks/attack_throughput.py [--samples 256] [--steps 20] [--models digits_cnn resnet8 ds_cnn]
        [--aa-samples 100] [--aa-eps 0.1 0.03 0.03] [--aa-iter 100] [--art-repeat 1] [--skip-pgd]
        [--deployed | --only-deployed] [--deployed-queries 1000]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import tf_keras
from art.attacks.evasion import ProjectedGradientDescent
from art.estimators.classification import TensorFlowV2Classifier

from trainables.compiled import CompiledClassifier
from trainables.config import TrialConfig
from trainables.models import build_model

SHAPES = {"digits_cnn": (8, 8, 1), "resnet8": (32, 32, 3), "ds_cnn": (49, 10, 1)}
CLASSES = {"digits_cnn": 10, "resnet8": 10, "ds_cnn": 12}
EPS, STEP = 0.03, 0.0075


class FreeGradient(CompiledClassifier):
    """A loss gradient that costs nothing: ART's PGD on it times the attack's own work."""

    def loss_gradient(self, x: Any, y: Any, training_mode: bool = False, **kwargs: Any) -> Any:
        return tf.zeros_like(x) if isinstance(x, tf.Tensor) else np.zeros_like(x)


def fused_pgd(
    model: tf_keras.Model, eps: float, step: float, steps: int
) -> Callable[..., tf.Tensor]:
    loss = tf_keras.losses.CategoricalCrossentropy(from_logits=True)

    @tf.function
    def attack(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        adv = tf.identity(x)
        for _ in tf.range(steps):
            with tf.GradientTape() as tape:
                tape.watch(adv)
                value = loss(y, model(adv, training=False))
            adv = adv + step * tf.sign(tape.gradient(value, adv))
            adv = tf.clip_by_value(tf.clip_by_value(adv, x - eps, x + eps), 0.0, 1.0)
        return adv

    return attack


def best(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: traces and builds what is built once
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["digits_cnn", "resnet8", "ds_cnn"])
    ap.add_argument("--aa-samples", type=int, default=100)
    ap.add_argument(
        "--aa-eps", type=float, nargs="+", default=[0.1, 0.03, 0.03], help="L-inf eps per model"
    )
    ap.add_argument("--aa-iter", type=int, default=100, help="APGD/FAB iterations (Square: 50x)")
    ap.add_argument(
        "--art-repeat", type=int, default=1, help="ART AutoAttack runs (median; 0: not run)"
    )
    ap.add_argument("--skip-pgd", action="store_true", help="only the AutoAttack section")
    ap.add_argument("--deployed", action="store_true", help="also the deployed routes' cost")
    ap.add_argument("--only-deployed", action="store_true", help="only the deployed routes' cost")
    ap.add_argument("--deployed-queries", type=int, default=1000, help="Square's queries")
    args = ap.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(1)  # one trial's allocation
    tf.config.threading.set_inter_op_parallelism_threads(1)
    if args.deployed or args.only_deployed:
        deployed_section(args)
        if args.only_deployed:
            return
    if not args.skip_pgd:
        pgd_section(args)
    autoattack_section(args)


def pgd_section(args: argparse.Namespace) -> None:
    eps, step = EPS, STEP
    print(
        f"PGD L-inf eps={eps} step={step} steps={args.steps}, {args.samples} samples, best of {args.repeat}, 1 thread"
    )
    print(
        f"{'model':<11}{'ART default s':>14}{'compiled s':>11}{'fused s':>9}{'ART own s':>10}"
        f"{'compiled/fused':>15}{'default/fused':>14}{'(compiled-own)/fused':>21}"
    )
    rng = np.random.default_rng(0)
    for name in args.models:
        t_default, t_compiled, t_fused, t_own = measure(
            name, args.samples, args.steps, args.repeat, rng
        )
        print(f"{name:<11}{t_default:>14.3f}{t_compiled:>11.3f}{t_fused:>9.3f}{t_own:>10.3f}"
              f"{t_compiled / t_fused:>15.2f}{t_default / t_fused:>14.2f}"
              f"{(t_compiled - t_own) / t_fused:>21.2f}")  # fmt: skip


def measure(
    name: str, samples: int, steps: int, repeat: int, rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """Seconds of (ART default, ART compiled, fused, ART's own work) PGD on one model."""
    eps, step = EPS, STEP
    shape, classes = SHAPES[name], CLASSES[name]
    tf_keras.utils.set_random_seed(0)
    model = build_model(TrialConfig(model=name, bits="4"), shape, classes)
    x = rng.random((samples, *shape), dtype=np.float32)
    y = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, samples)]

    def art(cls: type) -> Callable[[], np.ndarray]:
        clf = cls(
            model=model, nb_classes=classes, input_shape=shape, clip_values=(0.0, 1.0),
            loss_object=tf_keras.losses.CategoricalCrossentropy(from_logits=True),
        )  # fmt: skip
        pgd = ProjectedGradientDescent(
            clf, norm=np.inf, eps=eps, eps_step=step, max_iter=steps,
            num_random_init=0, batch_size=samples, verbose=False,
        )  # fmt: skip
        return lambda: pgd.generate(x, y)

    default, compiled, own = (
        art(TensorFlowV2Classifier),
        art(CompiledClassifier),
        art(FreeGradient),
    )
    if not np.allclose(default(), compiled(), atol=1e-6):
        raise SystemExit(f"{name}: compiled and default adversarial examples differ")
    fused_fn = fused_pgd(model, eps, step, steps)
    xt, yt = tf.constant(x), tf.constant(y)
    return (
        best(default, repeat),
        best(compiled, repeat),
        best(lambda: fused_fn(xt, yt).numpy(), repeat),
        best(own, repeat),
    )


class Counter(tf_keras.layers.Layer):
    """Identity that counts the examples through it: forward passes, and backward passes
    (its gradient function runs once per backward pass through the model)."""

    def __init__(self) -> None:
        super().__init__()
        self.forwards = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.backwards = tf.Variable(0, dtype=tf.int64, trainable=False)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        n = tf.cast(tf.shape(x)[0], tf.int64)
        self.forwards.assign_add(n)
        backwards = self.backwards

        @tf.custom_gradient
        def ident(t: tf.Tensor) -> Any:
            def grad(dy: tf.Tensor) -> tf.Tensor:
                with tf.control_dependencies([backwards.assign_add(n)]):
                    return tf.identity(dy)

            return tf.identity(t), grad

        return ident(x)


def trained_digits(samples: int) -> tuple[tf_keras.Model, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target
    tf_keras.utils.set_random_seed(0)
    model = build_model(TrialConfig(model="digits_cnn", bits="4"), (8, 8, 1), 10)
    model.compile(
        optimizer=tf_keras.optimizers.Adam(3e-3),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x[:1400], y[:1400], epochs=8, batch_size=64, verbose=0)
    return model, x[1400 : 1400 + samples]


def cpu_median(fn: Callable[[], object], repeat: int) -> float:
    """Median CPU seconds of ``fn`` over ``repeat`` calls (the machine is shared: CPU time, not wall)."""
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return float(np.median(times))


def per_example_cpu(
    model: tf_keras.Model, x: np.ndarray, y: np.ndarray, repeat: int
) -> tuple[float, float]:
    """CPU seconds per example of a gradient step and of a forward pass, each in one compiled loop."""
    steps = 20
    loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def grads(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        adv = tf.identity(x)
        for _ in tf.range(steps):
            with tf.GradientTape() as tape:
                tape.watch(adv)
                value = loss(y, model(adv, training=False))
            adv = tf.clip_by_value(adv + 1e-3 * tf.sign(tape.gradient(value, adv)), 0.0, 1.0)
        return adv

    @tf.function
    def forwards(x: tf.Tensor) -> tf.Tensor:
        acc = tf.zeros([tf.shape(x)[0]])
        for i in tf.range(steps):
            acc += tf.reduce_max(model(x + 1e-4 * tf.cast(i, tf.float32), training=False), axis=1)
        return acc

    xt, yt = tf.constant(x), tf.constant(y)
    grads(xt, yt)  # tracing, untimed
    forwards(xt)
    g = cpu_median(lambda: grads(xt, yt).numpy(), repeat) / (steps * len(x))
    f = cpu_median(lambda: forwards(xt).numpy(), repeat) / (steps * len(x))
    return g, f


def autoattack_section(args: argparse.Namespace) -> None:
    from art.attacks.evasion import AutoAttack as ArtAutoAttack

    from trainables.apgd import clear_graphs
    from trainables.attacks import classifier, make_attack
    from trainables.autoattack import standard_autoattack
    from trainables.config import AttackName, AttackSpec

    print(
        f"\nAutoAttack L-inf, {args.aa_samples} examples, {args.aa_iter} APGD/FAB iterations, "
        f"{50 * args.aa_iter} Square queries, 1 thread, CPU seconds (ours and bound: median of "
        f"{args.repeat}; ART's: {args.art_repeat}); ART's: autoattack_art (APGD-CE, APGD-DLR, Square)"
    )
    print(
        "ours: a fresh model of an architecture this process has attacked before (a worker's later"
        " trials: graphs shared per architecture); cold: the first model of its architecture"
        " (tracing included)"
    )
    print(
        f"{'model':<11}{'eps':>6}{'robust':>8}{'ART rob':>8}{'ours s':>9}{'cold s':>9}{'ART s':>9}"
        f"{'bound s':>9}{'grad ex':>9}{'fwd ex':>9}{'ART/ours':>9}{'ART/cold':>9}{'ours/bound':>11}"
        f"{'cold/bound':>11}"
    )
    speedups = []
    rng = np.random.default_rng(1)
    for name, eps in zip(args.models, args.aa_eps, strict=False):
        shape, classes = SHAPES[name], CLASSES[name]
        cfg = TrialConfig(model=name, bits="4")
        if name == "digits_cnn":
            model, x = trained_digits(args.aa_samples)
        else:
            tf_keras.utils.set_random_seed(0)
            model = build_model(cfg, shape, classes)
            x = rng.random((args.aa_samples, *shape), dtype=np.float32)
        y = np.argmax(model.predict(x, verbose=0), axis=1)  # every example clean-correct
        weights = model.get_weights()

        def fresh(
            weights: list[np.ndarray] = weights,
            shape: tuple[int, ...] = shape,
            classes: int = classes,
            cfg: TrialConfig = cfg,
        ) -> tf_keras.Model:
            """A new model instance with the same weights: what a later trial hands the attack."""
            m = build_model(cfg, shape, classes)
            m.set_weights(weights)
            return m

        def ours(
            m: tf_keras.Model, x: np.ndarray = x, y: np.ndarray = y, eps: float = eps
        ) -> np.ndarray:
            out = standard_autoattack(
                m, x, y, eps=eps, norm="inf", seed=0, apgd_iter=args.aa_iter,
                fab_iter=args.aa_iter, square_queries=50 * args.aa_iter,
            )  # fmt: skip
            return np.asarray(out.robust)

        # cold: the first model of this architecture in the process (every graph traced)
        clear_graphs()
        first = fresh()
        t0 = time.process_time()
        robust = ours(first)
        t_cold = time.process_time() - t0
        # warm architecture: each repeat on a new instance (the graphs of `first` are shared)
        models = [fresh() for _ in range(args.repeat)]
        times = []
        for m in models:
            t0 = time.process_time()
            again = ours(m)
            times.append(time.process_time() - t0)
            if not np.array_equal(again, robust):
                raise SystemExit(
                    f"{name}: a shared-graph run gave another outcome than the cold one"
                )
        t_ours = float(np.median(times))

        # the evaluations spent, counted by a layer in front of the model (its own graphs)
        counter = Counter()
        inp = tf_keras.Input(shape)
        counted = tf_keras.Model(inp, model(counter(inp), training=False))
        if not np.array_equal(ours(counted), robust):
            raise SystemExit(f"{name}: the counted run gave another outcome")
        backwards = int(counter.backwards.numpy())
        forwards = int(counter.forwards.numpy()) - backwards  # forward-only passes
        # the same budget without overhead
        g, f = per_example_cpu(model, x, y, args.repeat)
        bound = backwards * g + forwards * f

        print(
            f"  {name}: ours {t_ours:.2f} s (runs {', '.join(f'{t:.2f}' for t in times)}), cold "
            f"{t_cold:.2f} s, bound {bound:.2f} s: ours/bound {t_ours / bound:.2f}, cold/bound "
            f"{t_cold / bound:.2f}",
            flush=True,
        )
        spec = AttackSpec(name=AttackName.autoattack_art, eps=(eps,), max_iter=args.aa_iter)
        art_attack = make_attack(spec, classifier(model, classes, shape), eps)
        assert isinstance(art_attack, ArtAutoAttack)
        art_times = []
        for _ in range(args.art_repeat):
            np.random.seed(0)
            t0 = time.process_time()
            x_art = art_attack.generate(x=x, y=np.eye(classes, dtype=np.float32)[y])
            art_times.append(time.process_time() - t0)
        if not art_times:  # --art-repeat 0: the bound only
            continue
        t_art = float(np.median(art_times))
        art_robust = np.argmax(model.predict(x_art.astype(np.float32), verbose=0), axis=1) == y
        speedups.append(t_art / t_ours)
        print(f"{name:<11}{eps:>6g}{robust.mean():>8.3f}{art_robust.mean():>8.3f}{t_ours:>9.2f}"
              f"{t_cold:>9.2f}{t_art:>9.2f}{bound:>9.2f}{backwards:>9d}{forwards:>9d}"
              f"{t_art / t_ours:>9.2f}{t_art / t_cold:>9.2f}{t_ours / bound:>11.2f}"
              f"{t_cold / bound:>11.2f}", flush=True)  # fmt: skip
    if speedups:
        print(f"autoattack speed-up over ART: {min(speedups):.2f}")


def deployed_section(args: argparse.Namespace) -> None:
    """The deployed routes' interpreter-side cost against the Keras attacks (module docstring)."""
    from trainables.artifacts import tflite_int8
    from trainables.attacks import evaluate_attacks
    from trainables.config import AttackName, AttackSpec
    from trainables.deployed import evaluate_deployed

    model, x = trained_digits(args.aa_samples)
    y = np.argmax(model.predict(x, verbose=0), axis=1)  # every example attacked
    flatbuffer = tflite_int8(model, x)
    pgd = AttackSpec(name=AttackName.pgd, eps=(0.1,), steps=10)
    square = AttackSpec(name=AttackName.square, eps=(0.1,), max_iter=args.deployed_queries)
    keras = evaluate_attacks(model, x, y, 10, (pgd, square), keep_adv=True)
    k_time = {r.attack: r.seconds for r in keras}
    rep = evaluate_deployed(model, flatbuffer, x, y, 10, (pgd, square), keras_results=keras)
    print(f"\ndeployed int8 TFLite routes, digits_cnn 4-bit, {len(x)} examples, eps 0.1, 1 thread")
    print(
        f"{'route':<26}{'wall s':>9}{'interp s':>10}{'invokes':>9}{'keras s':>9}{'ratio':>8}  robust"
    )
    against = {"transfer": "pgd", "bpda": "pgd", "query": "square"}
    for route in ("transfer", "bpda", "query"):
        for r in rep.routes[route]:
            base = k_time[against[route]]
            print(f"{r.attack:<26}{rep.seconds[route]:>9.2f}{rep.interpreter_seconds[route]:>10.2f}"
                  f"{rep.invokes[route]:>9d}{base:>9.2f}{rep.seconds[route] / base:>8.2f}  "
                  f"{r.robust_acc:.3f} (keras {against[route]}: "
                  f"{next(k.robust_acc for k in keras if k.attack == against[route]):.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
