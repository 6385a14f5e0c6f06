"""Synthetic rows in the real schema, for store and analysis tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from trainables.rows import SCHEMA_VERSION, empty_row


def rows_for(
    key: str,
    robust: dict[tuple[str, float], float],
    clean: float,
    nbytes: int,
    status: str = "complete",
    fold: int = 0,
    **cfg: Any,
) -> list[dict[str, Any]]:
    out = []
    for (attack, eps), acc in robust.items():
        r = empty_row()
        r.update(
            schema_version=SCHEMA_VERSION,
            key=key,
            fold=fold,
            attack=attack,
            eps=eps,
            status=status,
            reason="" if status == "complete" else "boom",
            metric_clean_acc=clean,
            metric_robust_acc=acc,
            metric_attack_clean_acc=clean,
            metric_bytes=nbytes,
            cfg_bits=str(cfg.get("bits", "4")),
            cfg_sparsity=float(cfg.get("sparsity", 0.0)),
            cfg_clusters=int(cfg.get("clusters", 0)),
            cfg_jr_weight=float(cfg.get("jr_weight", 0.0)),
            cfg_dataset=cfg.get("dataset", "digits"),
            cfg_model=cfg.get("model", "digits_cnn"),
            cfg_adv_training=cfg.get("adv_training", "none"),
            metric_params=int(cfg.get("params", 1000)),
            meta_study=cfg.get("study", "t"),
        )
        out.append(r)
    return out


def brute_force_front(points: list[tuple[str, float, int]]) -> set[str]:
    """Keys of (key, robust, bytes) points that no other point dominates."""
    keys = [p[0] for p in points]
    acc = np.array([p[1] for p in points])
    size = np.array([p[2] for p in points])
    front = set()
    for i in range(len(points)):
        dominated = (acc >= acc[i]) & (size <= size[i]) & ((acc > acc[i]) | (size < size[i]))
        if not dominated.any():
            front.add(keys[i])
    return front
