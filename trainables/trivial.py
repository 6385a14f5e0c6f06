"""A trivial trial kind, for measuring the driver (benchmarks/driver_memory.py): rows, no training.

:func:`trivial_trainable` is the Tune trainable of a run of trivial trials: a caller
hands it to :func:`grid.launch.run_study` (``trainable=``), and each fold then runs
:func:`trivial_trial` in place of :func:`trainables.trial.run_trial`: the trial
returns at once with rows in the real schema (complete, one per attack and eps of
the config, or one clean-only row), so everything around it is exercised as in a
study (Tune, the sink, the Parquet store, the driver's progress, front and search
state) at thousands of trials.  The figures are not a model's: accuracies and bytes
are drawn from the trial's key (repeatable, and spread, so that the front changes as
trials finish); ``meta_study`` is not set here (the sink sets it) and
``meta_layers_json`` says ``trivial``.  Its rows are not results: the store refuses
them for a study whose name does not start with ``trivial`` (grid.store.ParquetSink).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections.abc import Callable
from typing import Any

from trainables.config import AttackSpec, TrialConfig
from trainables.rows import STATUS_COMPLETE, WORST, base_row, wilson

TRIVIAL_LAYERS = json.dumps({"trivial": True})  # meta_layers_json of a trivial trial's rows
TRIVIAL_STUDY_PREFIX = "trivial"  # the only studies whose results may hold trivial rows


def trivial_trial(cfg: TrialConfig, artifacts: Any = None) -> list[dict[str, Any]]:
    """Rows of a trial that did nothing: complete, in the real schema, figures drawn from the key."""
    t0 = time.perf_counter()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    rng = random.Random(cfg.key)
    n = 100
    clean = rng.randint(50, n)
    params = 1000
    nbytes = rng.randint(100, 4 * params)
    row = base_row(cfg, started)
    lo, hi = wilson(clean, n)
    row.update(
        status=STATUS_COMPLETE, reason="", metric_clean_acc=clean / n, metric_clean_acc_lo=lo,
        metric_clean_acc_hi=hi, metric_test_samples=n, metric_params=params, metric_nonzero=params,
        metric_sparsity=0.0, metric_max_distinct=0, metric_bytes=nbytes, metric_bytes_dense=nbytes,
        metric_bytes_sparse=nbytes, metric_bytes_clustered=nbytes, meta_train_s=0.0,
        meta_layers_json=TRIVIAL_LAYERS, meta_layer_bits_json="{}", meta_layer_sparsity_json="{}",
        meta_layer_clusters_json="{}",
    )  # fmt: skip
    attacked: list[tuple[AttackSpec | None, float]] = [(a, e) for a in cfg.attacks for e in a.eps]
    # (attack, kind, norm, eps, robust count) per row
    drawn: list[tuple[str, str, str | None, float, int]] = [
        (a.name.value, a.kind, a.norm_value, e, rng.randint(0, clean)) if a is not None
        else ("none", "none", None, 0.0, rng.randint(0, clean))
        for a, e in attacked or [(None, 0.0)]
    ]  # fmt: skip
    # One worst row per (norm, eps), as a real trial writes: drawn no higher than its attacks'.
    lowest: dict[tuple[str, float], int] = {}
    for _, _, norm, e, k in drawn:
        if norm is not None:
            lowest[(norm, e)] = min(k, lowest.get((norm, e), k))
    drawn += [(WORST, WORST, nm, e, rng.randint(0, k)) for (nm, e), k in lowest.items()]
    rows = []
    for name, kind, norm, eps, robust in drawn:
        rlo, rhi = wilson(robust, n)
        rows.append(
            {
                **row,
                "attack": name,
                "attack_kind": kind,
                "attack_norm": norm,
                "eps": eps,
                "metric_attack_clean_acc": clean / n,
                "metric_attack_clean_acc_lo": lo,
                "metric_attack_clean_acc_hi": hi,
                "metric_robust_acc": robust / n,
                "metric_robust_acc_lo": rlo,
                "metric_robust_acc_hi": rhi,
                "metric_samples": n,
                "metric_masking_flags": "" if norm is not None else None,
                "meta_attack_s": 0.0,
            }
        )
    total = time.perf_counter() - t0
    for r in rows:
        r["meta_total_s"] = total
    return rows


def trivial_trainable(
    config: dict[str, Any],
    sink: Any,
    objective: Any = ("worst", None),
    artifacts: Callable[[str, dict[str, bytes]], Any] | None = None,
) -> None:
    """:func:`trainables.ray_adapter.trainable` with :func:`trivial_trial` as its trial function."""
    from trainables.ray_adapter import trainable

    trainable(config, sink, objective, artifacts, trial=trivial_trial)
