"""The row schema shared by the trainable (which fills rows) and the store
(which writes them as Parquet).  TF-free: importable by anyone.

One row per trial x fold x attack x eps.  Columns are flat and prefixed:
``cfg_*`` the trial's config, ``metric_*`` measured results, ``meta_*``
provenance and timings; ``key``, ``fold``, ``attack``, ``eps``,
``status`` and ``reason`` identify the row.  Units: accuracy is a fraction
in [0, 1], eps is on the input's 0-1 scale, sizes are bytes, times seconds.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1

STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"

# name -> logical type: string | int64 | float64 | bool
COLUMNS: dict[str, str] = {
    "schema_version": "int64",
    "key": "string",  # 16 hex digits: hash of the trial's config (less threads)
    "fold": "int64",  # 0..cfg_folds-1
    "attack": "string",  # trainables.config.AttackName, or 'none' (clean only); null on failed rows
    "attack_kind": "string",  # 'white' | 'black' | 'transfer' | 'none'
    "attack_norm": "string",  # 'inf' | '2': the norm of eps
    "eps": "float64",  # radius on the 0-1 input scale, in attack_norm; 0.0 for 'none'
    "status": "string",  # 'complete' | 'failed'
    "reason": "string",  # '' when complete, the error otherwise
    "cfg_dataset": "string",
    "cfg_model": "string",
    "cfg_bits": "string",  # '2'..'16', 'float', 'ternary', 'stochastic_ternary', 'binary'
    "cfg_weight_bits": "int64",  # storage bits per weight: 32 float, 2 ternary, 1 binary
    "cfg_activation_bits": "int64",  # null for float models
    "cfg_sparsity": "float64",
    "cfg_clusters": "int64",  # 0 = no clustering
    "cfg_jr_weight": "float64",  # input-output JR
    "cfg_jr_layers": "string",  # JSON {layer: weight} of per-layer JR; '{}' when none
    "cfg_layer_bits": "string",  # JSON {layer: bits} of per-layer quantizer overrides
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
    "cfg_attack_steps": "int64",  # PGD iterations; null for FGSM / none
    "metric_clean_acc": "float64",  # whole test split
    "metric_attack_clean_acc": "float64",  # the attacked examples, before the attack
    "metric_robust_acc": "float64",  # correct before and after the attack
    "metric_samples": "int64",  # examples attacked
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
    "meta_study": "string",
    "meta_git_rev": "string",
    "meta_config_json": "string",
    "meta_layers_json": "string",  # per-layer footprint
    "meta_versions_json": "string",
    "meta_host": "string",
    "meta_started_at": "string",  # ISO 8601, UTC
    "meta_train_s": "float64",
    "meta_attack_s": "float64",  # this row's attack at this eps
    "meta_total_s": "float64",  # whole trial
}


def empty_row() -> dict[str, Any]:
    return dict.fromkeys(COLUMNS)
