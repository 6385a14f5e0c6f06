"""Model-size reductions with tfmot, in the order prune -> cluster.

Quantization is part of the QKeras layers themselves, so every training
phase (plain, pruning, cluster fine-tune) is quantization-aware.
"""

from __future__ import annotations

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras

from trainables.models import CUSTOM_OBJECTS, WEIGHT_LAYERS, kernel_of


def pruning_schedule(sparsity: float, total_steps: int) -> tfmot.sparsity.keras.PruningSchedule:
    """Polynomial ramp 0 -> ``sparsity`` over the first ~70% of the steps.

    The last mask update falls exactly on ``end_step`` (a multiple of the
    update frequency), so the final zero fraction is the target up to
    rounding of one weight per layer.
    """
    freq = max(1, total_steps // 20)
    end = max(freq, freq * int(0.7 * total_steps / freq))
    return tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0, end_step=end, frequency=freq
    )


def prune(model: tf_keras.Model, sparsity: float, total_steps: int) -> tf_keras.Model:
    """Wrap every prunable layer for magnitude pruning to ``sparsity``."""
    with tf_keras.utils.custom_object_scope(CUSTOM_OBJECTS):
        return tfmot.sparsity.keras.prune_low_magnitude(
            model, pruning_schedule=pruning_schedule(sparsity, total_steps)
        )


def prune_layers(
    model: tf_keras.Model, targets: dict[str, float], total_steps: int
) -> tf_keras.Model:
    """Wrap each weight layer for magnitude pruning to ITS target (per-layer sparsity).

    ``targets``: weight layer name -> final zero fraction; a layer at 0 (or not named) is left
    unwrapped.  Each wrapped layer ramps to its own target on the same step schedule
    (:func:`pruning_schedule`), so every layer reaches its target at the same step.
    """

    def wrap(layer: tf_keras.layers.Layer) -> tf_keras.layers.Layer:
        target = targets.get(layer.name, 0.0)
        if not isinstance(layer, WEIGHT_LAYERS) or target <= 0.0:
            return layer
        return tfmot.sparsity.keras.prune_low_magnitude(
            layer, pruning_schedule=pruning_schedule(target, total_steps)
        )

    with tf_keras.utils.custom_object_scope(CUSTOM_OBJECTS):
        return tf_keras.models.clone_model(model, clone_function=wrap)


def strip_pruning(model: tf_keras.Model) -> tf_keras.Model:
    with tf_keras.utils.custom_object_scope(CUSTOM_OBJECTS):
        return tfmot.sparsity.keras.strip_pruning(model)


def cluster(
    model: tf_keras.Model, clusters: int | dict[str, int], preserve_sparsity: bool | set[str]
) -> tf_keras.Model:
    """Wrap clusterable kernels in ``clusters`` centroids.

    ``clusters``: one count for every weight layer, or weight layer name -> its count (0 or not
    named: left unwrapped).  ``preserve_sparsity``: for every layer, or the set of layers that
    were pruned.  With it (after pruning) the pruned zeros stay zero and
    tfmot forces the smallest centroid to 0, so zero is one of the
    ``clusters`` values and a few small surviving weights may join it.

    A layer whose kernel already has fewer candidate weights than centroids
    (say 10 survivors of 90% pruning for 16 clusters) holds at most
    ``clusters`` values as it is: it is left unwrapped, since tfmot's k-means++
    cannot draw more centroids than there are weights.
    """
    init = tfmot.clustering.keras.CentroidInitialization.KMEANS_PLUS_PLUS

    def wrap(layer: tf_keras.layers.Layer) -> tf_keras.layers.Layer:
        if not isinstance(layer, WEIGHT_LAYERS):
            return layer
        k = clusters if isinstance(clusters, int) else clusters.get(layer.name, 0)
        keep_zeros = (
            preserve_sparsity
            if isinstance(preserve_sparsity, bool)
            else layer.name in preserve_sparsity
        )
        if k <= 0:
            return layer
        kernel = kernel_of(layer).numpy()
        # tfmot splits the non-zero centroids between the negative and positive weights in
        # proportion to their counts: enough weights for k-1 of them is always enough.
        candidates = int(np.count_nonzero(kernel)) if keep_zeros else kernel.size
        needed = k - 1 if keep_zeros else k
        if candidates < needed:
            return layer
        return tfmot.clustering.keras.cluster_weights(
            layer,
            number_of_clusters=k,
            cluster_centroids_init=init,
            preserve_sparsity=keep_zeros,
        )

    with tf_keras.utils.custom_object_scope(CUSTOM_OBJECTS):
        return tf_keras.models.clone_model(model, clone_function=wrap)


def strip_clustering(model: tf_keras.Model) -> tf_keras.Model:
    with tf_keras.utils.custom_object_scope(CUSTOM_OBJECTS):
        return tfmot.clustering.keras.strip_clustering(model)


def zero_masks(model: tf_keras.Model, names: set[str] | None = None) -> dict[str, np.ndarray]:
    """Where each prunable kernel is zero (the pruning result), by layer name
    (``names``: only those layers, the pruned ones; None: every weight layer)."""
    return {
        layer.name: kernel_of(layer).numpy() == 0
        for layer in model.layers
        if isinstance(layer, WEIGHT_LAYERS) and (names is None or layer.name in names)
    }


def keep_pruned_zeros_only(model: tf_keras.Model, masks: dict[str, np.ndarray]) -> None:
    """Move surviving weights that clustering sent to the zero centroid onto the
    nearest non-zero centroid, in place.

    tfmot's sparsity-preserving clustering reserves one of the k centroids for
    zero and lets small surviving weights join it, which would push the zero
    fraction above the pruning target.  Afterwards the zeros are exactly the
    pruned weights and the layer still holds at most k distinct values.
    """
    for layer in model.layers:
        if layer.name not in masks:
            continue
        kernel = kernel_of(layer).numpy()
        stray = (kernel == 0) & ~masks[layer.name]
        centroids = np.unique(kernel[kernel != 0])
        if not stray.any() or centroids.size == 0:
            continue
        # Zero is equidistant-ish: pick the smallest-magnitude non-zero centroid.
        kernel[stray] = centroids[np.argmin(np.abs(centroids))]
        kernel_of(layer).assign(kernel)


def unclustered_pruned(
    model: tf_keras.Model, masks: dict[str, np.ndarray]
) -> list[tuple[tf_keras.Variable, np.ndarray]]:
    """(kernel, keep mask) of pruned layers that clustering left unwrapped (too few weights).

    Clustering preserves the zeros of the layers it wraps; these need them
    held during fine-tuning (``train.fit(hold_zeros=...)``).
    """
    return [
        (kernel_of(layer), ~masks[layer.name])
        for layer in model.layers
        if isinstance(layer, WEIGHT_LAYERS) and layer.name in masks
    ]
