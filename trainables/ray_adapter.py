"""The thin Ray Tune adapter around :func:`trainables.trial.run_trial`.

The sink (where rows go) is injected by the caller, so this package never
imports ``grid``: Tune passes it with ``tune.with_parameters``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray import tune

from trainables.config import TrialConfig

# The driver imports this module only to hand ``trainable`` to Tune: keep
# TensorFlow out of it (about 8 s) by importing the trial inside the worker.
Row = dict[str, Any]


def headline(rows: list[Row], attack: str, eps: float | None) -> float | None:
    """Robust accuracy under ``attack`` ('worst': min over attacks) at ``eps``."""
    ok = [r for r in rows if r["status"] == "complete"]
    if not ok:
        return None
    if eps is None:
        return min(r["metric_robust_acc"] for r in ok)
    hits = [
        r["metric_robust_acc"]
        for r in ok
        if abs(r["eps"] - eps) < 1e-12 and (attack == "worst" or r["attack"] == attack)
    ]
    return min(hits) if hits else None


def trainable(
    config: dict[str, Any],
    sink: Callable[[str, list[Row]], Any],
    objective: tuple[str, float | None] = ("worst", None),
    artifacts: Callable[[str, dict[str, bytes]], Any] | None = None,
) -> None:
    from trainables.trial import run_trial

    cfg = TrialConfig.from_dict(config["trial"])
    rows = run_trial(cfg, artifacts=artifacts)
    sink(cfg.key, rows)
    first = rows[0]
    tune.report(
        {
            "key": cfg.key,
            "status": first["status"],
            "reason": first["reason"],
            "clean_acc": first["metric_clean_acc"],
            "robust_acc": headline(rows, *objective),
            "bytes": first["metric_bytes"],
            "train_s": first["meta_train_s"],
            "total_s": first["meta_total_s"],
        }
    )
