"""Paper-scale studies on paper: their cost from measured per-trial costs, and the driver's limit.

Measures, in this one run, on this machine, for each model the studies use
(ResNet-8 and the STQ-class stq_cnn):
  * training steps at the CIFAR-10 studies' batch size (32) with the
    trials' own ``training_step``: plain, input-output JR, per-layer JR on
    every activation (stochastic ternary weights, 8-bit activations);
  * the cost of one attack gradient per sample: ART's PGD through the
    compiled classifier (what trials use) on 256 samples;
  * the trials per second Tune's driver sustains with trivial trials (the
    peer of the studies' trial rate).

Then, for the embedded paper studies (5 folds, full axes; the per-layer variant
``stq_jr_cifar10_mixed``: its search budget of distinct assignments, the seeds
(uniform assignments and ans_hybrid) and, standing in for the sampler's proposals whose
assignments are not known before the run, seeded random assignments), each trial's
training (epochs x steps x its step's cost, + fine-tuning, + adversarial
training's PGD on its share of each batch) and white-box attacks (FGSM, PGD,
transfer PGD with its float surrogate) are summed into CPU-hours, and the
wall time on N trial slots is tabulated (whole waves; the longest trial
bounds it).  The driver is the bottleneck once N exceeds (trials/s it
sustains) x (seconds a trial takes).  Query-based attacks (Square,
HopSkipJump, Boundary) and CW / DeepFool stop when they succeed, so their
cost depends on the trained model's robustness: they are listed, not
extrapolated.  Measured with ``--threads`` (default: the machine's cores, at
most the studies' 4 CPUs per trial).

    python benchmarks/scaling.py [--threads 2] [--trivial-trials 200]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from typing import TYPE_CHECKING

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no experiment banner on stdout

import numpy as np

if TYPE_CHECKING:
    from grid.spec import Study
    from trainables.config import TrialConfig

STUDIES = ("compounded_cifar10", "stq_jr_cifar10", "stq_jr_cifar10_mixed")
CIFAR_TRAIN = 50_000  # CIFAR-10's training set; 5 folds train on 4/5 of it
SLOTS = (1, 8, 32, 128, 512)
MEASURED_ATTACKS = {"fgsm", "pgd", "transfer_pgd"}


def step_costs(model_name: str, batch: int = 32, steps: int = 12) -> dict[str, float]:
    import tensorflow as tf
    import tf_keras

    from trainables.config import TrialConfig
    from trainables.models import build_model
    from trainables.train import jr_layer_names, training_step

    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((batch, 32, 32, 3), dtype=np.float32))
    y = tf.constant(rng.integers(0, 10, batch))
    out = {}
    for kind in ("plain", "io JR", "layer JR"):
        tf_keras.utils.set_random_seed(0)
        model = build_model(
            TrialConfig(model=model_name, bits="stochastic_ternary", activation_bits=8),
            (32, 32, 3),
            10,
        )
        kw: dict[str, object] = {}
        if kind == "io JR":
            kw = {"jr_weight": 0.05}
        elif kind == "layer JR":
            kw = {"jr_weight": 0.05, "jr_layers": jr_layer_names(model, {"all": 0.01})}
        step = training_step(model, 1e-3, **kw)  # type: ignore[arg-type]
        for _ in range(2):
            float(step(x, y))
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(steps):
                loss = step(x, y)
            float(loss)
            best = min(best, (time.perf_counter() - t0) / steps)
        out[kind] = best
    return out


def gradient_cost(model_name: str, samples: int = 256, steps: int = 20) -> float:
    """Seconds per sample per PGD step (ART PGD on the compiled classifier)."""
    import tf_keras
    from art.attacks.evasion import ProjectedGradientDescent

    from trainables.attacks import classifier
    from trainables.config import TrialConfig
    from trainables.models import build_model

    tf_keras.utils.set_random_seed(0)
    model = build_model(TrialConfig(model=model_name, bits="4"), (32, 32, 3), 10)
    rng = np.random.default_rng(0)
    x = rng.random((samples, 32, 32, 3), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, samples)]
    pgd = ProjectedGradientDescent(
        classifier(model, 10, (32, 32, 3)), norm=np.inf, eps=0.03, eps_step=0.0075,
        max_iter=steps, num_random_init=0, batch_size=samples, verbose=False,
    )  # fmt: skip
    pgd.generate(x, y)  # traces
    t0 = time.perf_counter()
    pgd.generate(x, y)
    return (time.perf_counter() - t0) / (samples * steps)


def driver_rate(trials: int) -> float:
    """Trivial trials per second through Tune, as robustgrid runs them (reuse_actors)."""
    import logging

    import ray
    from ray import tune

    def trivial(config: dict[str, int]) -> None:
        tune.report({"value": config["i"]})

    ray.init(
        address="local", include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False
    )
    cpus = int(ray.available_resources().get("CPU", 1))
    with tempfile.TemporaryDirectory() as tmp:
        tuner = tune.Tuner(
            tune.with_resources(trivial, {"cpu": 1}),
            param_space={"i": tune.grid_search(list(range(trials)))},
            tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=cpus),
            run_config=tune.RunConfig(name="driver", storage_path=tmp, verbose=0),
        )
        t0 = time.perf_counter()
        tuner.fit()
        seconds = time.perf_counter() - t0
    ray.shutdown()
    return trials / seconds


def trial_seconds(
    cfg: TrialConfig,
    costs: dict[str, tuple[dict[str, float], float]],
    folds: int,
) -> float:
    """A paper trial's training + white-box attack seconds from its model's measured costs."""
    steps, grad = costs[str(cfg.model)]
    batch = cfg.batch_size
    per_epoch = math.ceil(CIFAR_TRAIN * (folds - 1) / folds / batch)
    kind = "layer JR" if cfg.jr_layers else "io JR" if cfg.jr_weight > 0 else "plain"
    epochs = cfg.epochs + (cfg.fine_tune_epochs if cfg.clusters else 0)
    step = steps[kind] * batch / 32  # measured at batch 32
    adv = cfg.adversarial
    if adv.method.value != "none":
        step += round(adv.ratio * batch) * (adv.steps if adv.method.value == "pgd" else 1) * grad
    seconds = epochs * per_epoch * step
    if cfg.ans is not None:  # ans_hybrid's float warm-up before its widths are assigned
        seconds += cfg.ans.warmup_epochs * per_epoch * steps["plain"] * batch / 32
    for spec in cfg.attacks:
        name = spec.name.value
        if name not in MEASURED_ATTACKS:
            continue
        n_steps = 1 if name == "fgsm" else spec.steps
        seconds += (spec.samples or 10_000) * n_steps * len(spec.eps) * grad
        if name == "transfer_pgd":  # its float surrogate is trained first
            seconds += cfg.epochs * per_epoch * steps["plain"] * batch / 32
    return seconds


def study_trials(study: Study) -> list[TrialConfig]:
    """Every trial of a grid study; a per-layer search's: its budget of points x folds (the
    seeds, then seeded random assignments standing in for the sampler's proposals)."""
    if study.search.layers is None:
        return study.trials()
    from grid import space

    budget = study.search.budget or 0  # a per-layer space always has one (spec)
    uniform, hybrid = space.seed_points(study)
    chosen = {space.point_label(p): p for p in [*uniform, *([hybrid] if hybrid else [])]}
    for p in space.random_assignments(study, budget, seed=0):
        if len(chosen) >= budget:
            break
        chosen.setdefault(space.point_label(p), p)
    points = list(chosen.values())[:budget]
    return [t for p in points for t in study.point_trials(p)]


def fmt(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--trivial-trials", type=int, default=200)
    args = ap.parse_args()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(min(2, args.threads))

    from grid.spec import load_study

    studies = [load_study(name) for name in STUDIES]
    models = sorted({str(m) for s in studies for m in s.models})
    costs = {m: (step_costs(m), gradient_cost(m)) for m in models}
    rate = driver_rate(args.trivial_trials)
    print(f"measured with {args.threads} thread(s), steps at batch 32:")
    for m, (steps, grad) in costs.items():
        print(
            f"  {m}: step plain {steps['plain'] * 1e3:.0f} ms, io JR {steps['io JR'] * 1e3:.0f} ms, "
            f"per-layer JR {steps['layer JR'] * 1e3:.0f} ms; attack gradient "
            f"{grad * 1e3:.2f} ms per sample-step"
        )
    print(f"  Tune driver {rate:.1f} trivial trials/s")
    head = "".join(f"{f'N={n}':>10}" for n in SLOTS)
    print(
        "trial times as measured here; CPU-h = trial time x the study's CPUs per trial "
        "(an upper bound when --threads is fewer than those CPUs); wall time on N trial slots"
    )
    print(
        f"\n{'study':<22}{'trials':>7}{'trial (mean/max)':>19}{'CPU-h':>9}{head}{'driver-bound N':>16}"
    )
    needs = []
    for study in studies:
        trials = study_trials(study)
        secs = [trial_seconds(cfg, costs, study.folds) for cfg in trials]
        needs.append(max(SLOTS) * len(secs) / sum(secs))  # trials/s finishing at N slots
        cpus = study.resources.cpus_per_trial
        total, longest = sum(secs), max(secs)
        walls = "".join(f"{fmt(max(total / n, longest)):>10}" for n in SLOTS)
        bound = rate * min(secs)  # slots the driver keeps busy at its measured trial rate
        left_out = sorted({s.name.value for c in trials for s in c.attacks} - MEASURED_ATTACKS)
        print(
            f"{study.name:<22}{len(secs):>7}{fmt(total / len(secs)):>10} / {fmt(longest):<7}"
            f"{total * cpus / 3600:>9,.0f}{walls}{bound:>16,.0f}"
        )
        if left_out:
            print(f"{'':<22}  + not extrapolated: {', '.join(left_out)}")
    need = max(needs)
    print(
        f"\nratio: at N={max(SLOTS)} slots the studies finish at most {need:.3f} trials/s; "
        f"the driver sustains {rate:.1f} trivial trials/s ({rate / need:,.0f}x that)"
    )


if __name__ == "__main__":
    main()
