"""Synthetic rows in the real schema, for store and analysis tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from trainables.config import RESULTS_REVISION
from trainables.rows import SCHEMA_VERSION, empty_row

# Attacks whose eps is an L2 radius unless a row says otherwise (trainables.config.DEFAULT_NORM).
_L2 = {"cw_l2", "deepfool", "hopskipjump", "boundary"}


def mask_hex(robust: Sequence[bool]) -> str:
    """``metric_robust_mask`` of per-example robust booleans: hex of np.packbits."""
    return np.packbits(np.asarray(robust, dtype=bool)).tobytes().hex()


def rows_for(
    key: str,
    robust: dict[tuple[str, float], float],
    clean: float,
    nbytes: int,
    status: str = "complete",
    fold: int = 0,
    *,
    revision: int | None = RESULTS_REVISION,
    norms: dict[str, str] | None = None,
    samples: int | None = None,
    test_samples: int | None = None,
    masks: dict[tuple[str, float], Sequence[bool]] | None = None,
    subset: str | None = None,
    tflite_bytes: int | None = None,
    extra: dict[str, Any] | None = None,
    **cfg: Any,
) -> list[dict[str, Any]]:
    """One row per (attack, eps) of ``robust``; every other keyword fills the columns it names.

    ``norms`` maps an attack to its norm ('inf' default, '2' for the L2 attacks);
    ``masks`` gives the per-example robust booleans of an (attack, eps) (their
    count is then ``metric_samples`` and their mean must be the robust accuracy);
    ``extra`` sets any column on every row; ``revision=None`` writes no revision.
    """
    out = []
    for (attack, eps), acc in robust.items():
        r = empty_row()
        mask = (masks or {}).get((attack, eps))
        norm = (norms or {}).get(attack, "2" if attack in _L2 else "inf")
        r.update(
            schema_version=SCHEMA_VERSION,
            revision=revision,
            key=key,
            fold=fold,
            attack=attack,
            attack_norm=None if attack == "none" else norm,
            eps=eps,
            status=status,
            reason="" if status == "complete" else "boom",
            metric_clean_acc=clean,
            metric_robust_acc=acc,
            metric_attack_clean_acc=clean,
            metric_samples=len(mask) if mask is not None else samples,
            metric_test_samples=test_samples,
            metric_robust_mask=mask_hex(mask) if mask is not None else None,
            meta_attack_subset=subset,
            metric_bytes=nbytes,
            metric_tflite_bytes=tflite_bytes,
            cfg_bits=str(cfg.get("bits", "4")),
            cfg_sparsity=float(cfg.get("sparsity", 0.0)),
            cfg_clusters=int(cfg.get("clusters", 0)),
            cfg_jr_weight=float(cfg.get("jr_weight", 0.0)),
            cfg_jr_layers=cfg.get("jr_layers", "{}"),
            cfg_layer_bits=cfg.get("layer_bits", "{}"),
            cfg_dataset=cfg.get("dataset", "digits"),
            cfg_model=cfg.get("model", "digits_cnn"),
            cfg_adv_training=cfg.get("adv_training", "none"),
            cfg_seed=int(cfg.get("seed", 0)),
            cfg_folds=int(cfg.get("folds", 1)),
            metric_params=int(cfg.get("params", 1000)),
            meta_study=cfg.get("study", "t"),
        )
        if mask is not None:
            assert abs(float(np.mean(mask)) - acc) < 1e-12, (key, attack, eps)
        r.update(extra or {})
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


def config_rows(
    cfg: Any, robust: float, nbytes: int, *, study: str = "t", samples: int = 300
) -> list[dict[str, Any]]:
    """One complete pgd (L-inf, eps 0.1) row of a real ``TrialConfig``, as the trainable writes it.

    The config columns and ``meta_config_json`` come from ``trainables.rows.base_row``
    (TF-free), so the analysis sees the production JSON; the metrics are filled in here.
    """
    from trainables.rows import base_row

    r = base_row(cfg, "t")
    r.update(
        attack="pgd",
        attack_norm="inf",
        eps=0.1,
        status="complete",
        reason="",
        metric_clean_acc=0.9,
        metric_robust_acc=robust,
        metric_attack_clean_acc=0.9,
        metric_samples=samples,
        metric_test_samples=samples,
        metric_bytes=nbytes,
        metric_params=1000,
        meta_study=study,
    )
    return [r]
