"""``run_trial(config) -> rows``: one readable path, load -> compress/train ->
footprint -> attack -> record.  No Ray here."""

from __future__ import annotations

import datetime as dt
import json
import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf
import tf_keras

from trainables import ans, compress
from trainables.artifacts import MANIFEST_FILE, TFLITE_FILE
from trainables.attacks import (
    AttackResult,
    adversarial_examples,
    evaluate_attacks,
    subset_digest,
)
from trainables.config import AdvMethod, TrialConfig
from trainables.data import Split, trial_split
from trainables.footprint import ModelFootprint, model_footprint
from trainables.gpu import configure_gpus
from trainables.jacobian import logits_and_jr
from trainables.masking import masking_diagnostics
from trainables.models import BIAS_BITS, WEIGHT_LAYERS, build_model
from trainables.rows import complete_rows, failed_row, package_versions
from trainables.train import dataset, fit, jr_layer_names, predict_logits, steps_per_epoch
from trainables.worst import worst_cases

if TYPE_CHECKING:
    from trainables.deployed import DeployedReport

Row = dict[str, Any]

# Fine-tuning after clustering moves centroids, not weights: a gentler rate.
FINE_TUNE_LR_FACTOR = 0.1


def set_threads(threads: int) -> None:
    """Match TF's thread pools to the trial's CPUs (only possible before TF starts)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    except RuntimeError:
        pass  # already initialised in this (reused) worker: keep its setting


def _fit(
    cfg: TrialConfig,
    model: tf_keras.Model,
    data: tf.data.Dataset,
    split: Split,
    epochs: int,
    learning_rate: float,
    hold_zeros: list[tuple[Any, np.ndarray]] | None = None,
) -> None:
    """One training phase with the trial's defences: JR (input-output and per layer) and adversarial training."""
    adversary = None
    if cfg.adversarial.method is not AdvMethod.none:
        adversary = adversarial_examples(
            model, split.num_classes, split.input_shape, cfg.adversarial
        )
    fit(
        model,
        data,
        epochs,
        learning_rate,
        cfg.jr_weight,
        cfg.jr_projections,
        jr_layers=jr_layer_names(model, cfg.jr_layers),
        adversary=adversary,
        adv_ratio=cfg.adversarial.ratio,
        hold_zeros=hold_zeros,
    )


def weight_layer_names(model: tf_keras.Model) -> list[str]:
    """The model's weight layers (the ones bits, pruning and clustering apply to), in order."""
    return [layer.name for layer in model.layers if isinstance(layer, WEIGHT_LAYERS)]


def train_compressed(cfg: TrialConfig) -> tuple[tf_keras.Model, float]:
    """Build, prune, cluster and quantization-aware train; returns the stripped model.

    Each weight layer is pruned to its own target (``cfg.sparsity_of``) and clustered to its
    own count (``cfg.clusters_of``; sparsity preserved where that layer was pruned).
    """
    split = trial_split(cfg)
    tf_keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg, split.input_shape, split.num_classes)
    names = weight_layer_names(model)
    pruned = {n for n in names if cfg.sparsity_of(n) > 0}
    clusters = {n: cfg.clusters_of(n) for n in names if cfg.clusters_of(n) > 0}
    data = dataset(split.x_train, split.y_train, cfg.batch_size, cfg.seed)
    t0 = time.perf_counter()
    if pruned:
        total = steps_per_epoch(len(split.x_train), cfg.batch_size) * cfg.epochs
        if cfg.layer_sparsity:
            model = compress.prune_layers(model, {n: cfg.sparsity_of(n) for n in pruned}, total)
        else:  # one target: tfmot's whole-model wrapping, as every config before per-layer sparsity
            model = compress.prune(model, cfg.sparsity, total)
    _fit(cfg, model, data, split, cfg.epochs, cfg.learning_rate)
    if pruned:
        model = compress.strip_pruning(model)
    if clusters:
        masks = compress.zero_masks(model, pruned)  # the pruned layers' zeros
        model = compress.cluster(model, clusters, preserve_sparsity=pruned)
        if cfg.fine_tune_epochs:
            _fit(
                cfg,
                model,
                data,
                split,
                cfg.fine_tune_epochs,
                cfg.learning_rate * FINE_TUNE_LR_FACTOR,
                # pruned layers clustering left unwrapped (unclustered or too few weights)
                hold_zeros=compress.unclustered_pruned(model, masks),
            )
        model = compress.strip_clustering(model)
        # only clustered layers hold centroids to move strays onto
        compress.keep_pruned_zeros_only(model, {n: m for n, m in masks.items() if n in clusters})
    return model, time.perf_counter() - t0


def export_artifacts(
    cfg: TrialConfig, model: tf_keras.Model, split: Split, clean_acc: float, fp: ModelFootprint
) -> dict[str, bytes]:
    from trainables.artifacts import export

    weight_layers = [lf for lf in fp.layers if lf.kernel_params]
    manifest = {
        "key": cfg.key, "config": cfg.identity(), "clean_acc": clean_acc, "bytes": fp.bytes,
        "weight_bits": {lf.name: lf.weight_bits for lf in weight_layers},
        "per_channel_scale": [lf.name for lf in weight_layers if lf.per_channel_scale],
        "batchnorm_bytes": sum(lf.bytes for lf in fp.layers if not lf.kernel_params),
        "layers": fp.layer_dicts(), "versions": json.loads(package_versions()),
        # Features scaled from training data (Speech Commands' MFCCs): a deployment applies
        # (x - lo) / (hi - lo), clipped to [0, 1], with these constants; null: inputs as loaded.
        "feature_range": list(split.feature_range) if split.feature_range is not None else None,
    }  # fmt: skip
    return export(model, manifest, split.x_train, split.x_test, split.y_test)


def float_surrogate(cfg: TrialConfig) -> tf_keras.Model:
    """The transfer attacks' source: the same architecture in float, uncompressed and undefended,
    trained on the same fold with the same seed and epochs."""
    plain = cfg.model_copy(
        update={
            "bits": "float",
            "layer_bits": {},
            "layer_sparsity": {},
            "layer_clusters": {},
            "layer_activation_bits": {},
            "ans": None,
            "sparsity": 0.0,
            "clusters": 0,
            "jr_weight": 0.0,
            "jr_layers": {},
        }
    )
    plain = TrialConfig.model_validate({**plain.model_dump(), "adversarial": {"method": "none"}})
    model, _ = train_compressed(plain)
    return model


def jacobian_fro2(model: tf_keras.Model, x: np.ndarray, projections: int = 16) -> float:
    """Estimate of mean ||J||_F^2 on up to 256 examples (a diagnostic, not a loss)."""
    _, est = logits_and_jr(lambda t: model(t, training=False), tf.constant(x[:256]), projections)
    return float(est)


def layer_bits(
    cfg: TrialConfig, fp: ModelFootprint, hybrid: ans.AnsAssignment | None
) -> dict[str, str]:
    """Each weight layer's bits label as built: an ans_hybrid plan's, else the override or the trial's."""
    if hybrid is not None:
        return dict(hybrid.layer_bits)
    return {lf.name: cfg.layer_bits.get(lf.name, cfg.bits) for lf in fp.layers if lf.kernel_params}


def deployable(files: Mapping[str, bytes]) -> tuple[int | None, float | None]:
    """Size in bytes and test accuracy of the full-int8 TFLite flatbuffer (None: TFLite failed)."""
    if TFLITE_FILE not in files:
        return None, None
    acc = json.loads(files[MANIFEST_FILE]).get("tflite_test_acc")
    return len(files[TFLITE_FILE]), None if acc is None else float(acc)


def evaluate_deployed_model(
    cfg: TrialConfig,
    model: tf_keras.Model,
    split: Split,
    files: Mapping[str, bytes],
    results: Sequence[AttackResult],
) -> DeployedReport:
    """``deployed: true``: every route on the trial's int8 flatbuffer (trainables/deployed.py),
    on the Keras attacks' subsets, reusing their adversarial inputs."""
    from trainables.deployed import evaluate_deployed  # TFLite interpreter code only when asked

    if TFLITE_FILE not in files:
        why = (
            json.loads(files[MANIFEST_FILE]).get("tflite_error") if MANIFEST_FILE in files else None
        )
        raise RuntimeError(
            f"deployed: no int8 TFLite flatbuffer to attack ({why or 'export failed'})"
        )
    return evaluate_deployed(
        model, files[TFLITE_FILE], split.x_test, split.y_test, split.num_classes, cfg.attacks,
        keras_results=results, test_index=split.test_index,
    )  # fmt: skip


ArtifactSink = Callable[[str, dict[str, bytes]], Any]


def run_trial(
    config: TrialConfig | Mapping[str, Any], artifacts: ArtifactSink | None = None
) -> list[Row]:
    """Run one trial and return its rows; a failure becomes one row with status 'failed'.

    ``artifacts``, when given, receives the trial key and its files
    (``trainables.artifacts``): the model, its deployed weights, TFLite, manifest.
    """
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(dict(config))
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    set_threads(cfg.threads)
    configure_gpus(cfg.gpus, cfg.gpu_memory)  # a shared GPU: memory capped before TF allocates
    try:
        # ans_hybrid: each layer's width from its measured noise sensitivity (trainables/ans.py)
        hybrid = ans.assign_widths(cfg) if cfg.bits == "ans_hybrid" else None
        model, train_s = train_compressed(ans.resolved(cfg, hybrid) if hybrid else cfg)
        train_s += hybrid.seconds if hybrid else 0.0
        split = trial_split(cfg)
        logits = predict_logits(model, split.x_test)
        clean_correct = int(np.sum(np.argmax(logits, axis=1) == split.y_test))
        clean_acc = clean_correct / len(split.y_test)
        if not math.isfinite(clean_acc):
            raise FloatingPointError("clean accuracy is not finite")
        fp = model_footprint(model, BIAS_BITS)
        jac = jacobian_fro2(model, split.x_test)
        surrogate = float_surrogate(cfg) if any(a.kind == "transfer" for a in cfg.attacks) else None
        results = evaluate_attacks(
            model,
            split.x_test,
            split.y_test,
            split.num_classes,
            cfg.attacks,
            surrogate=surrogate,
            test_index=split.test_index,
            keep_adv=cfg.deployed,  # the deployed transfer route scores them on the interpreter
        )
        # Per (norm, eps): the AND of the attacks' masks over the examples all of them attacked.
        worst = worst_cases(results, lambda pos: subset_digest(split.test_index[pos]))
        masking = (
            masking_diagnostics(
                model, split.x_test, split.y_test, split.num_classes, cfg.attacks, results
            )
            if cfg.attacks
            else None
        )
        # Built for every trial (the deployable size and accuracy are row metrics);
        # the sink only decides whether the files are kept.  Without a sink an
        # export that fails leaves those two columns empty, as a TFLite failure does.
        tflite: tuple[int | None, float | None] = (None, None)
        files: dict[str, bytes] = {}
        try:
            files = export_artifacts(cfg, model, split, clean_acc, fp)
            tflite = deployable(files)
        except Exception:
            if artifacts is not None:
                raise
        else:
            if artifacts is not None:
                artifacts(cfg.key, files)
        deployed = None
        if cfg.deployed and cfg.attacks:
            deployed = evaluate_deployed_model(cfg, model, split, files, results)
        return complete_rows(
            cfg,
            started,
            clean_correct=clean_correct,
            n_test=len(split.x_test),
            footprint=fp,
            jacobian_fro2=jac,
            results=[*results, *worst, *(deployed.all_outcomes if deployed else [])],
            train_s=train_s,
            total_s=time.perf_counter() - t0,
            masking=masking,
            tflite=tflite,
            layer_bits=layer_bits(cfg, fp, hybrid),
            ans=None if hybrid is None else hybrid.ans,
            deployed=deployed,
        )
    except Exception as exc:  # recorded, not raised: the study goes on
        reason = f"{type(exc).__name__}: {exc}"
        return [failed_row(cfg, reason, started, time.perf_counter() - t0, traceback.format_exc())]
