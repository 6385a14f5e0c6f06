"""Does searching each layer's bits and sparsity beat today's uniform grid under a flash budget?

For each model and seed, in one run, four real ``grid run`` subprocesses train and attack on
generated study files (tiny epochs, PGD with few steps, the per-example ``worst`` rows as the
robustness objective) with the same per-layer choices, the same training and the same budget:

  per-layer   strategy optuna (``--sampler``) over ``search.layers`` (every weight layer: bits
              in {8, 4, ternary} x sparsity in {0, 0.5}), ``--trials`` distinct points, the
              seeds (uniform assignments and ans_hybrid) included, the budget a constraint;
  uniform     the uniform grid: axes bits x sparsity (every layer the same), all its points
              (at most ``--trials``: equal budgets, or the uniform space's size when smaller);
  ans_hybrid  the one ``bits: ans_hybrid`` point (its widths assigned by ANS);
  random      strategy random over the same ``search.layers``, ``--trials`` distinct random
              assignments, no seeds (the baseline a search must beat).

The results are read with DuckDB (analysis.pareto.trial_points, one point per config).
Points over the budget (``--budget`` x the model's float32 bytes, on the smallest encoding)
are off every front.  Printed per model (mean over seeds, per-seed in brackets):

  * hypervolume of each method's feasible points at one reference point per model
    (robust accuracy 0, bytes = the budget) and the ratios per-layer / uniform,
    per-layer / ans_hybrid, per-layer / random, each measured in this run;
  * share: of the per-layer search's front, the points that are per-layer assignments
    (not uniform) and that no uniform-grid point dominates;
  * the smallest footprint at which each method reaches ``--target`` x the best robust
    accuracy any method reached for that model and seed (n/a: none reaches it).

Models: digits_cnn and an STQ-class conv stack cut to digits' 8x8 input (the stq_showcase's
``stq_digits`` layer list) on scikit-learn digits (real data); ResNet-8 on CIFAR-10 and
DS-CNN on Speech Commands written small in their real on-disk formats by tests/helpers.py
(random pixels / sine tones: those two exercise the search on the real models, their
accuracies are not findings).

    python benchmarks/mixed_precision.py [--models digits_cnn,stq_digits,resnet8,ds_cnn]
        [--seeds 0,1] [--trials 8] [--epochs 2] [--budget 0.15] [--target 0.9]
        [--sampler tpe] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.pareto import hypervolume, nondominated, trial_points  # noqa: E402
from analysis.query import connect  # noqa: E402

METHODS = ("per-layer", "uniform", "ans_hybrid", "random")
BITS = ["8", "4", "ternary"]
SPARSITY = [0.0, 0.5]

# The stq_showcase's STQ-class stack for 8x8 digits (conv 32-32-64 with batch norm).
STQ_DIGITS = {
    "name": "stq_digits",
    "layers": [
        {"type": "conv", "filters": 32, "kernel": 3, "padding": "same", "name": "conv1"},
        {"type": "batch_norm"},
        {"type": "activation"},
        {"type": "conv", "filters": 32, "kernel": 3, "padding": "same"},
        {"type": "batch_norm"},
        {"type": "activation"},
        {"type": "max_pool", "pool": 2},
        {"type": "conv", "filters": 64, "kernel": 3, "padding": "same"},
        {"type": "batch_norm"},
        {"type": "activation"},
        {"type": "max_pool", "pool": 2},
        {"type": "flatten"},
        {"type": "dense", "name": "logits"},
    ],
}


@dataclass(frozen=True)
class Setup:
    """A model's dataset, its study ``model`` entry, the attack's L-inf radius, the batch size and
    the folds (Speech Commands: 2, so that no speaker is in training and test)."""

    dataset: str
    model: Any
    eps: float
    batch_size: int
    folds: int = 1


SETUPS = {
    "digits_cnn": Setup("digits", "digits_cnn", 0.1, 64),
    "stq_digits": Setup("digits", STQ_DIGITS, 0.1, 64),
    "resnet8": Setup("cifar10", "resnet8", 0.031, 32),
    "ds_cnn": Setup("speech_commands", "ds_cnn", 0.05, 16, folds=2),
}


def write_data(root: Path) -> dict[str, Path]:
    """CIFAR-10 and Speech Commands, small, in their real on-disk formats (tests/helpers.py)."""
    from tests.helpers import cifar_batches, write_cifar_bin, write_kws

    out = {"cifar10": root / "cifar10", "speech_commands": root / "speech_commands"}
    if not out["cifar10"].exists():
        out["cifar10"].mkdir(parents=True)
        write_cifar_bin(out["cifar10"], cifar_batches(n=60))
    if not out["speech_commands"].exists():
        write_kws(out["speech_commands"])
    return out


def float_bytes(setup: Setup, data: dict[str, Path]) -> int:
    """The model's float32 weight bytes (4 x parameters), from the model as built."""
    from grid.spec import parse_study
    from trainables.config import TrialConfig
    from trainables.data import dataset_shape
    from trainables.models import build_model

    study = parse_study(base_study("size", setup, 0, 1, 0.0), "<size>")
    shape, classes = dataset_shape(setup.dataset)
    cfg = TrialConfig(dataset=study.dataset.name, model=study.models[0], bits="float")
    return 4 * int(build_model(cfg, shape, classes).count_params())


def base_study(name: str, setup: Setup, seed: int, epochs: int, max_bytes: float) -> dict[str, Any]:
    """What every method's study file shares: data, model, training, attack, objective."""
    study: dict[str, Any] = {
        "name": name,
        "dataset": setup.dataset,
        "model": setup.model,
        "seed": seed,
        "folds": setup.folds,
        "train": {
            "epochs": epochs,
            "fine_tune_epochs": 1,
            "batch_size": setup.batch_size,
            "learning_rate": 0.003,
            "activation_bits": 8,  # the same activations for every assignment
        },
        "attacks": [{"name": "pgd", "eps": [setup.eps], "steps": 5, "restarts": 1, "samples": 64}],
        "objective": {"attack": "worst", "eps": setup.eps},
        "resources": {"cpus_per_trial": 1},
    }
    if max_bytes:
        study["objective"]["max_bytes"] = int(max_bytes)
    return study


def method_study(
    method: str, setup: Setup, seed: int, args: argparse.Namespace, max_bytes: float
) -> dict[str, Any]:
    s = base_study(f"mp-{method}-{args.model_tag}-s{seed}", setup, seed, args.epochs, max_bytes)
    layers = {"all": {"bits": BITS, "sparsity": SPARSITY}}
    if method == "per-layer":
        s["search"] = {"strategy": "optuna", "sampler": args.sampler, "budget": args.trials,
                       "seeds": True, "layers": layers}  # fmt: skip
    elif method == "random":
        s["search"] = {"strategy": "random", "budget": args.trials, "seeds": False,
                       "layers": layers}  # fmt: skip
    elif method == "uniform":
        s["axes"] = {"bits": BITS, "sparsity": SPARSITY}
        if len(BITS) * len(SPARSITY) > args.trials:  # equal budgets: random uniform points
            s["search"] = {"strategy": "random", "budget": args.trials}
    else:
        s["axes"] = {"bits": ["ans_hybrid"]}
    return s


def run_grid(study: dict[str, Any], work: Path, data: Path | None) -> tuple[Path, float]:
    """``grid run`` on the study file in a subprocess; its results folder and wall seconds."""
    path = work / "studies" / f"{study['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    cmd = [sys.executable, "-m", "grid.cli", "run", str(path), "--results", str(work / "r")]
    cmd += ["--data", str(data)] if data is not None else []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    wall = time.perf_counter() - t0
    (work / "logs").mkdir(exist_ok=True)
    (work / "logs" / f"{study['name']}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"grid run {path} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return work / "r" / study["name"], wall


def points(folder: Path, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(robust accuracy, bytes) of each complete config, and whether it is uniform."""
    import warnings

    con = connect(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pts = trial_points(con, "worst", eps, per="config")
    built = dict(
        con.execute(
            "SELECT key, any_value(meta_layer_bits_json || '|' || "
            "coalesce(meta_layer_sparsity_json, '{}')) FROM rows GROUP BY key"
        ).fetchall()
    )

    def uniform(key: str) -> bool:
        bits, sparsity = (json.loads(t) for t in built[key].split("|"))
        return len(set(bits.values())) <= 1 and len(set(sparsity.values())) <= 1

    vals = pts[["robust_acc", "bytes"]].to_numpy(float)
    return vals, np.array([uniform(k) for k in pts.key], dtype=bool)


def dominated_by(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """For each (robust, bytes) row of p: does some row of q dominate it?"""
    if not len(q) or not len(p):
        return np.zeros(len(p), dtype=bool)
    ge = (q[None, :, 0] >= p[:, None, 0]) & (q[None, :, 1] <= p[:, None, 1])
    gt = (q[None, :, 0] > p[:, None, 0]) | (q[None, :, 1] < p[:, None, 1])
    return np.asarray((ge & gt).any(axis=1), dtype=bool)


def smallest(vals: np.ndarray, target: float) -> float:
    ok = vals[vals[:, 0] >= target - 1e-12]
    return float(ok[:, 1].min()) if len(ok) else float("nan")


def measure(
    model: str, seed: int, args: argparse.Namespace, data: dict[str, Path]
) -> dict[str, Any]:
    setup = SETUPS[model]
    args.model_tag = model.replace("_", "")
    budget = args.budget * float_bytes(setup, data)
    where = data.get(setup.dataset)
    got: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    walls = {}
    for method in METHODS:
        folder, walls[method] = run_grid(
            method_study(method, setup, seed, args, budget), args.work, where
        )
        got[method] = points(folder, setup.eps)
    ref = [0.0, budget]
    feasible = {m: (v[v[:, 1] <= budget], u[v[:, 1] <= budget]) for m, (v, u) in got.items()}
    hv = {
        m: hypervolume(v, [True, False], ref) if len(v) else 0.0 for m, (v, _) in feasible.items()
    }
    pl, pl_uniform = feasible["per-layer"]
    on = nondominated(pl, [True, False]) if len(pl) else np.zeros(0, dtype=bool)
    front, front_uniform = pl[on], pl_uniform[on]
    beyond = ~front_uniform & ~dominated_by(front, feasible["uniform"][0])
    best = max((float(v[:, 0].max()) for v, _ in feasible.values() if len(v)), default=0.0)
    target = args.target * best
    return {
        "model": model, "seed": seed, "budget": budget, "hv": hv,
        "trials": {m: len(v) for m, (v, _) in got.items()},
        "infeasible": {m: int((v[:, 1] > budget).sum()) for m, (v, _) in got.items()},
        "share": float(beyond.mean()) if len(front) else float("nan"), "front": len(front),
        "target": target, "smallest": {m: smallest(v, target) for m, (v, _) in feasible.items()},
        "wall": walls,
    }  # fmt: skip


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]  # NaN out
    return statistics.fmean(xs) if xs else float("nan")


def _f(x: float, spec: str = ".3f") -> str:
    return "n/a" if x != x else format(x, spec)


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nper model: mean over seeds {args.seeds} [per seed]; hypervolume in (robust accuracy x "
        f"bytes) at reference (0, budget = {args.budget:g} x float32 bytes), feasible points only"
    )
    head = (
        f"{'model':<11}{'budget B':>9}{'trials pl/uni/ans/rnd':>23}{'HV per-layer':>14}"
        f"{'/uniform':>16}{'/ans_hybrid':>16}{'/random':>16}{'share':>16}"
    )
    print(head)
    for model in args.models:
        rs = [r for r in results if r["model"] == model]
        if not rs:
            continue
        ratios = {
            m: [_ratio(r["hv"]["per-layer"], r["hv"][m]) for r in rs]
            for m in ("uniform", "ans_hybrid", "random")
        }
        trials = "/".join(str(rs[0]["trials"][m]) for m in METHODS)
        cells = "".join(
            f"{_f(_mean(v)):>7} [{' '.join(_f(x, '.2f') for x in v)}]".rjust(16)
            for v in ratios.values()
        )
        share = [r["share"] for r in rs]
        print(
            f"{model:<11}{rs[0]['budget']:>9,.0f}{trials:>23}{_mean([r['hv']['per-layer'] for r in rs]):>14,.1f}"
            f"{cells}{_f(_mean(share), '.2f'):>6} [{' '.join(_f(x, '.2f') for x in share)}]"
        )
    print(
        f"\nsmallest footprint (B) reaching {args.target:g} x the best robust accuracy of the "
        "model and seed (mean over seeds; n/a: not reached in some seed)"
    )
    print(f"{'model':<11}{'target':>8}" + "".join(f"{m:>12}" for m in METHODS))
    for model in args.models:
        rs = [r for r in results if r["model"] == model]
        if not rs:
            continue
        cells = ""
        for m in METHODS:
            v = [r["smallest"][m] for r in rs]
            cells += f"{_f(statistics.fmean(v), ',.0f') if all(x == x for x in v) else 'n/a':>12}"
        print(f"{model:<11}{_mean([r['target'] for r in rs]):>8.3f}{cells}")
    walls = [sum(r["wall"].values()) for r in results]
    print(f"\nwall time: {sum(walls) / 60:.1f} min for {len(results)} (model, seed) pairs")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--models", default=",".join(SETUPS), help="comma-separated: " + ", ".join(SETUPS)
    )
    ap.add_argument(
        "--seeds", default="0,1", help="comma-separated study seeds (training and sampler)"
    )
    ap.add_argument("--trials", type=int, default=8, help="points per search (equal budgets)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--budget", type=float, default=0.15, help="flash budget, x the float32 bytes")
    ap.add_argument("--target", type=float, default=0.9, help="robust accuracy target, x the best")
    ap.add_argument("--sampler", default="tpe", choices=["tpe", "nsga2", "nsga3"])
    ap.add_argument("--work", type=Path, default=None, help="folder for studies, results, logs")
    args = ap.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    unknown = set(args.models) - set(SETUPS)
    if unknown:
        ap.error(f"--models: unknown {sorted(unknown)} (known: {', '.join(SETUPS)})")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.work = args.work or Path(tempfile.mkdtemp(prefix="mixed-precision-"))
    args.work.mkdir(parents=True, exist_ok=True)
    data = write_data(args.work / "data")
    print(f"work folder {args.work}; trials {args.trials} per search, epochs {args.epochs}, "
          f"sampler {args.sampler}, budget {args.budget:g} x float32 bytes")  # fmt: skip
    results = []
    for model in args.models:
        for seed in args.seeds:
            r = measure(model, seed, args, data)
            results.append(r)
            hv = ", ".join(f"{m} {r['hv'][m]:,.1f}" for m in METHODS)
            print(f"  {model} seed {seed}: HV {hv}; share {_f(r['share'], '.2f')} of {r['front']} "
                  f"front points; {sum(r['wall'].values()) / 60:.1f} min", flush=True)  # fmt: skip
    report(results, args)


if __name__ == "__main__":
    main()
