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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from trainables import identity
from trainables.config import RESULTS_REVISION, AdvMethod, TrialConfig
from trainables.headline import DEPLOYED_WORST as DEPLOYED_WORST

# The status and attack words rows use, re-exported: the headline's module states them.
from trainables.headline import STATUS_COMPLETE as STATUS_COMPLETE
from trainables.headline import WORST as WORST
from trainables.headline import Headline

if TYPE_CHECKING:
    from trainables.footprint import ModelFootprint

# 3: the identity columns (meta_config_id, meta_baseline_pair_id, meta_jr_pair_id)
SCHEMA_VERSION = 3

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
    # Config identities (trainables/identity.py: 16 hex digits of SHA-256 over canonical JSON of
    # meta_config_json's config less some fields); analyses pair trials on them.
    "meta_config_id": "string",  # less the fold: one config over its folds
    "meta_baseline_pair_id": "string",  # less the fold and every reduction: pairs with its baseline
    "meta_jr_pair_id": "string",  # less the fold and JR: JR on and off at equal compression
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
    """A row with every column, all None: the builders below fill it (base_row, failed_row,
    complete_rows); no other module assembles rows."""
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
    config = cfg.identity()
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
        meta_config_json=json.dumps(config, sort_keys=True),
        **identity.id_columns(config),
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


class AttackOutcome(Protocol):
    """What a row takes from one attack's result at one eps (trainables.attacks.AttackResult)
    or one worst case (trainables.worst.WorstCase)."""

    @property
    def attack(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def norm(self) -> str: ...
    @property
    def eps(self) -> float: ...
    @property
    def steps(self) -> int | None: ...
    @property
    def restarts(self) -> int | None: ...
    @property
    def median_norm(self) -> float | None: ...
    @property
    def clean_acc(self) -> float: ...
    @property
    def clean_correct(self) -> int: ...
    @property
    def robust_acc(self) -> float: ...
    @property
    def robust_correct(self) -> int: ...
    @property
    def samples(self) -> int: ...
    @property
    def robust_mask(self) -> str: ...
    @property
    def subset_hash(self) -> str: ...
    @property
    def seconds(self) -> float: ...


class Masking(Protocol):
    """A trial's gradient-masking diagnostics (trainables.masking.MaskingReport)."""

    @property
    def pgd_eps(self) -> float: ...
    @property
    def pgd_acc(self) -> float: ...
    @property
    def zero_grad_share(self) -> float: ...
    @property
    def flags_text(self) -> str: ...


class DeployedChecks(Protocol):
    """The int8 model's checks beside its routes' rows (trainables.deployed.DeployedReport)."""

    @property
    def agreement(self) -> float: ...
    @property
    def agreed(self) -> int: ...
    @property
    def agreement_samples(self) -> int: ...
    @property
    def flags(self) -> tuple[str, ...]: ...


def _interval(prefix: str, successes: int, n: int) -> dict[str, Any]:
    lo, hi = wilson(successes, n)
    return {f"{prefix}_lo": lo, f"{prefix}_hi": hi}


def layer_sparsity(cfg: TrialConfig, fp: ModelFootprint) -> dict[str, float]:
    """Each weight layer's pruning target as the trial built it (its override, else ``sparsity``)."""
    return {lf.name: cfg.sparsity_of(lf.name) for lf in fp.layers if lf.kernel_params}


def layer_clusters(cfg: TrialConfig, fp: ModelFootprint) -> dict[str, int]:
    """Each weight layer's cluster count as the trial asked it (0: unclustered; a layer with
    fewer weights than centroids is left as it is, see compress.cluster)."""
    return {lf.name: cfg.clusters_of(lf.name) for lf in fp.layers if lf.kernel_params}


def complete_rows(
    cfg: TrialConfig,
    started: str,
    *,
    clean_correct: int,
    n_test: int,
    footprint: ModelFootprint,
    jacobian_fro2: float,
    results: Sequence[AttackOutcome],
    train_s: float,
    total_s: float,
    masking: Masking | None = None,
    tflite: tuple[int | None, float | None] = (None, None),
    layer_bits: Mapping[str, str],
    ans: Mapping[str, float] | None = None,
    deployed: DeployedChecks | None = None,
) -> list[dict[str, Any]]:
    """A finished trial's rows: one per attack result (and worst case, attack 'worst', in
    ``results`` after the attacks'; then, for ``deployed: true``, the routes on the int8
    interpreter and their worst cases, attack 'deployed_worst'), or one clean-only row when
    the study has no attacks.  ``deployed``: the int8 model's agreement with the Keras model
    and its flags (trainables.deployed.DeployedReport).

    ``tflite``: the deployable flatbuffer's (bytes, test accuracy), None where it failed;
    ``layer_bits``: each weight layer's bits label as built; ``ans``: ans_hybrid's
    per-layer noise sensitivity (None otherwise).
    """
    fp = footprint
    pruned = [lf for lf in fp.layers if lf.kernel_params]
    zeros = sum(lf.zero_fraction_stored * lf.kernel_params for lf in pruned)
    clean_acc = clean_correct / n_test
    common = base_row(cfg, started)
    common.update(
        status=STATUS_COMPLETE,
        reason="",
        metric_clean_acc=clean_acc,
        **_interval("metric_clean_acc", clean_correct, n_test),
        metric_test_samples=n_test,
        metric_params=fp.params,
        metric_nonzero=fp.nonzero,
        metric_sparsity=zeros / max(1, sum(lf.kernel_params for lf in pruned)),
        metric_max_distinct=max((lf.distinct for lf in fp.layers), default=0),
        metric_bytes=fp.bytes,
        metric_bytes_dense=fp.bytes_dense,
        metric_bytes_sparse=fp.bytes_sparse,
        metric_bytes_clustered=fp.bytes_clustered,
        metric_jacobian_fro2=jacobian_fro2,
        metric_tflite_bytes=tflite[0],
        metric_tflite_acc=tflite[1],
        meta_layers_json=json.dumps(fp.layer_dicts()),
        meta_layer_bits_json=json.dumps(dict(layer_bits), sort_keys=True),
        meta_layer_sparsity_json=json.dumps(layer_sparsity(cfg, fp), sort_keys=True),
        meta_layer_clusters_json=json.dumps(layer_clusters(cfg, fp), sort_keys=True),
        meta_ans_json=None if ans is None else json.dumps(dict(ans), sort_keys=True),
        meta_train_s=train_s,
        meta_total_s=total_s,
    )
    if masking is not None:
        common.update(
            metric_masking_pgd_eps=masking.pgd_eps,
            metric_masking_pgd_acc=masking.pgd_acc,
            metric_zero_grad_share=masking.zero_grad_share,
            metric_masking_flags=masking.flags_text,
        )
    if deployed is not None:
        common.update(
            metric_deployed_agreement=deployed.agreement,
            **_interval("metric_deployed_agreement", deployed.agreed, deployed.agreement_samples),
            metric_deployed_agreement_samples=deployed.agreement_samples,
            metric_masking_flags=",".join(
                dict.fromkeys(
                    [f for f in (common.get("metric_masking_flags") or "").split(",") if f]
                    + [f for f in deployed.flags if f]
                )
            ),
        )
    if not results:  # no attacks in the study: one clean-only row
        return [
            {
                **common,
                "attack": "none",
                "attack_kind": "none",
                "eps": 0.0,
                "metric_attack_clean_acc": clean_acc,
                **_interval("metric_attack_clean_acc", clean_correct, n_test),
                "metric_robust_acc": clean_acc,
                **_interval("metric_robust_acc", clean_correct, n_test),
                "metric_samples": n_test,
                "meta_attack_s": 0.0,
            }
        ]
    return [
        {
            **common,
            "attack": r.attack,
            "attack_kind": r.kind,
            "attack_norm": r.norm,
            "eps": r.eps,
            "cfg_attack_steps": r.steps,
            "cfg_attack_restarts": r.restarts,
            "metric_adv_norm_median": r.median_norm,
            "metric_attack_clean_acc": r.clean_acc,
            **_interval("metric_attack_clean_acc", r.clean_correct, r.samples),
            "metric_robust_acc": r.robust_acc,
            **_interval("metric_robust_acc", r.robust_correct, r.samples),
            "metric_samples": r.samples,
            "metric_robust_mask": r.robust_mask,
            "meta_attack_subset": r.subset_hash,
            "meta_attack_s": r.seconds,
        }
        for r in results
    ]


def summarize(rows: list[dict[str, Any]], headline: Headline) -> dict[str, Any]:
    """One trial's result as the driver and the search see it (from its rows, fresh or stored)."""
    complete = all(r["status"] == STATUS_COMPLETE for r in rows)
    robust = headline.pick(rows) if complete else None
    attacked = any(r["attack"] not in (None, "none") for r in rows)
    return summary(rows[0], complete, robust, attacked, headline)


def summary(
    first: Mapping[str, Any],
    complete: bool,
    robust: float | None,
    attacked: bool,
    headline: Headline,
) -> dict[str, Any]:
    """A trial's summary from its first row, whether every row is complete, its headline
    value (``headline.pick``) and whether it has attack rows: the one rule
    :func:`summarize` and the store's scan (which finds these in SQL) share."""
    stale = (first.get("revision") or 0) != RESULTS_REVISION
    if complete and stale:
        complete, reason = (
            False,
            f"stale: computed under results revision {first.get('revision') or 0}, now {RESULTS_REVISION}",
        )
    elif complete and robust is None and attacked:
        complete, reason = (
            False,
            f"no rows for the objective's attack {headline.attack} at eps {headline.eps}",
        )
    else:
        reason = first.get("reason") or ""
    clean = first.get("metric_clean_acc")
    return {
        "key": first["key"],
        "status": STATUS_COMPLETE if complete else STATUS_FAILED,
        "reason": reason,
        "clean_acc": clean,
        # A study without attacks: clean accuracy is the robust accuracy at eps 0.
        "robust_acc": robust if robust is not None or not complete else clean,
        "bytes": first.get(headline.size_column),
        "params": first.get("metric_params"),
        "masking_flags": first.get("metric_masking_flags") or "",
        "train_s": first.get("meta_train_s"),
        "total_s": first.get("meta_total_s"),
    }
