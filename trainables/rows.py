"""The row schema shared by the trainable (which fills rows) and the store
(which writes them as Parquet).  TF-free: importable by anyone.

One row per trial x fold x attack x eps.  Columns are flat and prefixed:
``cfg_*`` the trial's config, ``metric_*`` measured results, ``meta_*``
provenance and timings; ``key``, ``fold``, ``attack``, ``eps``,
``status`` and ``reason`` identify the row.  Units: accuracy is a fraction
in [0, 1], eps is on the input's 0-1 scale, sizes are bytes, times seconds.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import math
import socket
from typing import Any

from trainables.config import DEFAULT_NORM, RESULTS_REVISION, AdvMethod, AttackName, TrialConfig

WORST = "worst"  # the attack (and attack_kind) of a trial's per-example worst-case rows
# The deployed model's worst case (attack_kind 'deployed'): every route on the int8 interpreter
# ANDed per example (trainables/deployed.py); the robustness of ``objective.model: deployed``.
DEPLOYED_WORST = "deployed_worst"

SCHEMA_VERSION = 2

STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"

# name -> logical type: string | int64 | float64 | bool
COLUMNS: dict[str, str] = {
    "schema_version": "int64",
    "revision": "int64",  # results revision (trainables.config.RESULTS_REVISION) the row was computed under
    "key": "string",  # 16 hex digits: hash of the trial's config (less threads)
    "fold": "int64",  # 0..cfg_folds-1
    # trainables.config.AttackName, 'worst' (per (norm, eps): every attack's mask ANDed over
    # the examples all of them attacked, trainables/worst.py), or 'none' (clean only); null on failed rows
    "attack": "string",
    "attack_kind": "string",  # 'white' | 'black' | 'transfer' | 'worst' | 'none'
    "attack_norm": "string",  # 'inf' | '2': the norm of eps
    "eps": "float64",  # radius on the 0-1 input scale, in attack_norm; 0.0 for 'none'
    "status": "string",  # 'complete' | 'failed'
    "reason": "string",  # '' when complete, the error otherwise
    "cfg_dataset": "string",
    "cfg_model": "string",  # the model's label: built-in name, layer list's name, or builder import path
    "cfg_model_spec": "string",  # JSON of the whole model spec ('"resnet8"' for a built-in; a builder's with its source digest)
    "cfg_bits": "string",  # '2'..'16', 'float', 'ternary', 'stochastic_ternary', 'binary', 'stochastic_binary', 'ans_hybrid'
    "cfg_weight_bits": "int64",  # storage bits per weight: 32 float, 2 ternary, 1 binary; ans_hybrid: its widest
    "cfg_activation_bits": "int64",  # null for float models
    "cfg_sparsity": "float64",
    "cfg_clusters": "int64",  # 0 = no clustering
    "cfg_jr_weight": "float64",  # input-output JR
    "cfg_jr_layers": "string",  # JSON {layer: weight} of per-layer JR; '{}' when none
    "cfg_layer_bits": "string",  # JSON {layer: bits} of per-layer quantizer overrides
    "cfg_layer_sparsity": "string",  # JSON {weight layer: pruning target} overriding cfg_sparsity; '{}' none
    "cfg_layer_clusters": "string",  # JSON {weight layer: clusters} overriding cfg_clusters (0: none); '{}' none
    "cfg_layer_activation_bits": "string",  # JSON {activation layer: width} overriding cfg_activation_bits; '{}' none
    "cfg_adv_training": "string",  # 'none' | 'fgsm' | 'pgd'
    "cfg_adv_eps": "float64",  # 0-1 input scale; null without adversarial training
    "cfg_adv_steps": "int64",
    "cfg_adv_ratio": "float64",  # share of each batch replaced by adversarial examples
    "cfg_epochs": "int64",
    "cfg_fine_tune_epochs": "int64",
    "cfg_batch_size": "int64",
    "cfg_learning_rate": "float64",
    "cfg_test_fraction": "float64",
    "cfg_seed": "int64",
    "cfg_folds": "int64",  # 1: holdout; k: k-fold cross-validation
    "cfg_attack_steps": "int64",  # PGD (autoattack: APGD) iterations; null for FGSM / none
    "cfg_attack_restarts": "int64",  # PGD random restarts (0: from the clean example; autoattack: APGD's); null otherwise
    "metric_clean_acc": "float64",  # whole test split
    "metric_clean_acc_lo": "float64",  # 95% Wilson interval of metric_clean_acc (n = metric_test_samples)
    "metric_clean_acc_hi": "float64",
    "metric_test_samples": "int64",  # examples in the test split
    "metric_attack_clean_acc": "float64",  # the attacked examples, before the attack
    "metric_attack_clean_acc_lo": "float64",  # 95% Wilson interval (n = metric_samples)
    "metric_attack_clean_acc_hi": "float64",
    "metric_robust_acc": "float64",  # correct before and after the attack
    "metric_robust_acc_lo": "float64",  # 95% Wilson interval (n = metric_samples)
    "metric_robust_acc_hi": "float64",
    "metric_samples": "int64",  # examples attacked
    "metric_robust_mask": "string",  # hex of np.packbits(robust per attacked example, subset order)
    "meta_attack_subset": "string",  # 16 hex digits: SHA-256 of the attacked examples' pool positions
    "metric_zero_grad_share": "float64",  # attacked examples whose input gradient is exactly zero
    "metric_masking_pgd_eps": "float64",  # L-inf radius of the masking check's PGD
    "metric_masking_pgd_acc": "float64",  # robust accuracy under it (must be ~0)
    "metric_masking_flags": "string",  # comma-separated masking diagnostics that fired; '' none; null without attacks
    "metric_adv_norm_median": "float64",  # median perturbation (attack_norm) of the successful attacks
    "metric_params": "int64",
    "metric_nonzero": "int64",  # non-zero deployed weights and biases
    "metric_sparsity": "float64",  # zero fraction of the stored kernels (weighted over layers)
    "metric_max_distinct": "int64",  # most distinct deployed kernel values in one layer
    "metric_bytes": "int64",  # smallest honest encoding (trainables/footprint.py)
    "metric_bytes_dense": "int64",
    "metric_bytes_sparse": "int64",
    "metric_bytes_clustered": "int64",
    "metric_jacobian_fro2": "float64",  # mean ||d logits / d x||_F^2 on test examples
    "metric_tflite_bytes": "int64",  # size of the deployable full-int8 TFLite flatbuffer
    "metric_tflite_acc": "float64",  # that flatbuffer's accuracy on the test split
    # deployed: true only (null otherwise): share of the clean attacked subset where the int8
    # interpreter and the Keras model predict the same class, its 95% Wilson interval and n
    "metric_deployed_agreement": "float64",
    "metric_deployed_agreement_lo": "float64",
    "metric_deployed_agreement_hi": "float64",
    "metric_deployed_agreement_samples": "int64",
    "meta_study": "string",
    "meta_git_rev": "string",
    "meta_config_json": "string",
    "meta_layers_json": "string",  # per-layer footprint
    "meta_layer_bits_json": "string",  # JSON {weight layer: bits label} as built (ans_hybrid: its assigned widths)
    "meta_layer_sparsity_json": "string",  # JSON {weight layer: pruning target} as built (every weight layer)
    "meta_layer_clusters_json": "string",  # JSON {weight layer: clusters asked, 0 none} as built (every weight layer)
    "meta_ans_json": "string",  # ans_hybrid: JSON {layer: adversarial noise sensitivity}; null otherwise
    "meta_versions_json": "string",
    "meta_host": "string",
    "meta_started_at": "string",  # ISO 8601, UTC
    "meta_train_s": "float64",
    "meta_attack_s": "float64",  # this row's attack at this eps (0 on 'worst' rows: its attacks' rows hold it)
    "meta_total_s": "float64",  # whole trial
}


def empty_row() -> dict[str, Any]:
    return dict.fromkeys(COLUMNS)


_PACKAGES = (
    "robustgrid",
    "tensorflow",
    "tf-keras",
    "qkeras",
    "tensorflow-model-optimization",
    "adversarial-robustness-toolbox",
    "ray",
    "numpy",
)


@functools.cache
def package_versions() -> str:
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return json.dumps(out, sort_keys=True)


def base_row(cfg: TrialConfig, started: str) -> dict[str, Any]:
    row = empty_row()
    row.update(
        schema_version=SCHEMA_VERSION,
        revision=RESULTS_REVISION,
        key=cfg.key,
        fold=cfg.fold,
        cfg_folds=cfg.folds,
        cfg_dataset=cfg.dataset.value,
        cfg_model=cfg.model_label,
        cfg_model_spec=model_spec_json(cfg),
        cfg_bits=cfg.bits,
        cfg_weight_bits=cfg.weight_bits,
        cfg_activation_bits=cfg.act_bits,
        cfg_sparsity=cfg.sparsity,
        cfg_clusters=cfg.clusters,
        cfg_jr_weight=cfg.jr_weight,
        cfg_jr_layers=json.dumps(cfg.jr_layers, sort_keys=True),
        cfg_layer_bits=json.dumps(cfg.layer_bits, sort_keys=True),
        cfg_layer_sparsity=json.dumps(cfg.layer_sparsity, sort_keys=True),
        cfg_layer_clusters=json.dumps(cfg.layer_clusters, sort_keys=True),
        cfg_layer_activation_bits=json.dumps(cfg.layer_activation_bits, sort_keys=True),
        cfg_adv_training=cfg.adversarial.method.value,
        cfg_adv_eps=cfg.adversarial.eps if cfg.adversarial.method is not AdvMethod.none else None,
        cfg_adv_steps=cfg.adversarial.steps if cfg.adversarial.method is AdvMethod.pgd else None,
        cfg_adv_ratio=cfg.adversarial.ratio
        if cfg.adversarial.method is not AdvMethod.none
        else None,
        cfg_epochs=cfg.epochs,
        cfg_fine_tune_epochs=cfg.fine_tune_epochs,
        cfg_batch_size=cfg.batch_size,
        cfg_learning_rate=cfg.learning_rate,
        cfg_test_fraction=cfg.test_fraction,
        cfg_seed=cfg.seed,
        meta_config_json=json.dumps(cfg.identity(), sort_keys=True),
        meta_versions_json=package_versions(),
        meta_host=socket.gethostname(),
        meta_started_at=started,
    )
    return row


def model_spec_json(cfg: TrialConfig) -> str:
    """The trial's model spec as canonical JSON; an imported builder's carries its source digest."""
    spec = cfg.model_dump(mode="json", include={"model"})["model"]
    if cfg.builder_digest is not None:
        spec = {**spec, "digest": cfg.builder_digest}
    return json.dumps(spec, sort_keys=True)


def wilson(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (``z`` for other levels).

    (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n); (nan, nan) for n = 0.
    """
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def failed_row(
    cfg: TrialConfig, reason: str, started: str, total_s: float | None = None, tb: str = ""
) -> dict[str, Any]:
    """The single row that records a trial which did not finish, with the reason."""
    row = base_row(cfg, started)
    row.update(status=STATUS_FAILED, reason=reason[:2000], meta_total_s=total_s)
    row["meta_layers_json"] = json.dumps({"traceback": tb[-4000:]})
    return row


def row_norm(row: dict[str, Any]) -> str:
    """A row's norm; rows written before the column existed get the attack's default norm."""
    if row.get("attack_norm"):
        return str(row["attack_norm"])
    try:
        return DEFAULT_NORM.get(AttackName(row["attack"]), "inf")
    except ValueError:
        return "inf"


def headline(
    rows: list[dict[str, Any]], attack: str, eps: float | None, norm: str | None = None
) -> float | None:
    """Robust accuracy under ``attack`` at ``eps`` (None: the largest) under one norm.

    'worst' reads the trial's stored worst rows (attack 'worst': the AND of
    its attacks' per-example masks over the examples all of them attacked,
    ``trainables.worst``), under ``norm`` (default 'inf'); a named attack is
    taken under ``norm`` when given (Square, HopSkipJump and AutoAttack run
    under either), else under its own.  L-inf and L2 radii are never mixed.
    """
    want = norm if norm is not None else ("inf" if attack in (WORST, DEPLOYED_WORST) else None)
    ok = [
        r
        for r in rows
        if r["status"] == STATUS_COMPLETE
        and r["attack"] == attack
        and (want is None or row_norm(r) == want)
    ]
    if eps is None and ok:
        eps = max(r["eps"] for r in ok)
    hits = [r["metric_robust_acc"] for r in ok if abs(r["eps"] - (eps or 0.0)) < 1e-9]
    return min(hits) if hits else None  # one row per (attack, norm, eps): the min is that row


# (attack or 'worst', eps or None, norm, size measure 'encoded' | 'tflite'); the first two suffice.
Objective = tuple[Any, ...]


def summarize(rows: list[dict[str, Any]], objective: Objective) -> dict[str, Any]:
    """One trial's result as the driver and the search see it (from its rows, fresh or stored)."""
    attack, eps = objective[0], objective[1]
    norm = objective[2] if len(objective) > 2 else None
    size = objective[3] if len(objective) > 3 else "encoded"
    first = rows[0]
    complete = all(r["status"] == STATUS_COMPLETE for r in rows)
    stale = (first.get("revision") or 0) != RESULTS_REVISION
    robust = headline(rows, attack, eps, norm) if complete else None
    if complete and stale:
        complete, reason = (
            False,
            f"stale: computed under results revision {first.get('revision') or 0}, now {RESULTS_REVISION}",
        )
    elif complete and robust is None and any(r["attack"] not in (None, "none") for r in rows):
        complete, reason = (
            False,
            f"no rows for the objective's attack {attack} at eps {eps}",
        )
    else:
        reason = first["reason"] or ""
    nbytes = first.get("metric_tflite_bytes") if size == "tflite" else first["metric_bytes"]
    return {
        "key": first["key"],
        "status": STATUS_COMPLETE if complete else STATUS_FAILED,
        "reason": reason,
        "clean_acc": first["metric_clean_acc"],
        # A study without attacks: clean accuracy is the robust accuracy at eps 0.
        "robust_acc": robust if robust is not None or not complete else first["metric_clean_acc"],
        "bytes": nbytes,
        "params": first["metric_params"],
        "masking_flags": first.get("metric_masking_flags") or "",
        "train_s": first["meta_train_s"],
        "total_s": first["meta_total_s"],
    }
