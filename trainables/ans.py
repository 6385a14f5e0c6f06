"""ANS-driven hybrid quantization, Quanos-style (``bits: ans_hybrid``).

Definitions:

- *ANS* (adversarial noise sensitivity) of weight layer l, on examples x_1..x_n:

      ANS_l = mean_i ||f_l(x_i') - f_l(x_i)||_2 / ||f_l(x_i)||_2

  where f_l(x) is layer l's output (its pre-activation: the conv / dense result)
  when the network's input is x, and x_i' = FGSM(x_i) at L-inf radius ``eps``
  (ART's FastGradientMethod on the warm-up model, true labels).  Layer l's input
  a_l' then carries the perturbation that reaches it, so this is the relative change
  of the layer's output when its input carries an FGSM perturbation.  Examples whose
  clean output is all zero are left out of that layer's mean.
- *warm-up*: the same architecture in float (no per-layer widths, no defences,
  no compression), seeded like the trial, trained ``warmup_epochs`` on the
  trial's training split with plain cross-entropy.  ANS is measured on its first
  ``samples`` training examples (the split's own seeded order).
- *assignment*: the weight layers not fixed by ``layer_bits`` are ranked by ANS,
  most sensitive first (ties by name); the ranking is cut into ``len(bits)``
  contiguous groups of near-equal size (``numpy.array_split``: the first groups
  take the remainder); the widths are ordered widest first, reversed when
  ``most_sensitive`` is ``narrowest``; group g gets width g.

What this is not: the Quanos paper (Panda, 2020, arXiv 2004.11233) defines ANS and
scales each layer's precision by it, but its exact formula, the data it is
measured on and the direction of the mapping could not be checked here (only the
abstract was reachable).  The default direction, ``narrowest`` for the most
sensitive layers, is our reading of its premise that low precision damps the
adversarial noise a layer passes on; ``most_sensitive: widest`` gives the other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainables.config import AnsHybrid, Sensitive, TrialConfig


def assign_bits(
    ans: dict[str, float], widths: list[str], most_sensitive: Sensitive | str
) -> dict[str, str]:
    """Layer -> width label: the ranking by ANS cut into ``len(widths)`` groups (see module doc).

    ``widths`` are ordered widest first (``AnsHybrid.ordered``).
    """
    ranked = sorted(ans, key=lambda name: (-ans[name], name))
    order = list(widths) if Sensitive(most_sensitive) is Sensitive.widest else list(widths)[::-1]
    groups = np.array_split(np.arange(len(ranked)), len(order))
    return {ranked[i]: order[g] for g, idx in enumerate(groups) for i in idx}


def layer_sensitivity(
    model: Any, x: np.ndarray, x_adv: np.ndarray, names: list[str]
) -> dict[str, float]:
    """ANS of each named layer of ``model`` between clean ``x`` and perturbed ``x_adv`` inputs."""
    import tf_keras

    probe = tf_keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    clean = probe(x, training=False)
    adv = probe(x_adv, training=False)
    if len(names) == 1:
        clean, adv = [clean], [adv]
    out: dict[str, float] = {}
    for name, c, a in zip(names, clean, adv, strict=True):
        c = np.asarray(c, dtype=np.float64).reshape(len(x), -1)
        a = np.asarray(a, dtype=np.float64).reshape(len(x), -1)
        norm = np.linalg.norm(c, axis=1)
        keep = norm > 0
        ratio = np.linalg.norm(a - c, axis=1)[keep] / norm[keep]
        out[name] = float(ratio.mean()) if ratio.size else 0.0
    return out


def fgsm(model: Any, x: np.ndarray, y: np.ndarray, num_classes: int, eps: float) -> np.ndarray:
    """ART's FGSM (L-inf, true labels) on ``model``'s logits, inputs clipped to [0, 1]."""
    from art.attacks.evasion import FastGradientMethod

    from trainables.attacks import classifier

    clf = classifier(model, num_classes, tuple(x.shape[1:]))
    return FastGradientMethod(clf, norm=np.inf, eps=eps).generate(x=x, y=np.eye(num_classes)[y])


@dataclass(frozen=True)
class AnsAssignment:
    """The widths an ans_hybrid trial builds with, and how they were found."""

    layer_bits: dict[str, str]  # every weight layer -> width label
    ans: dict[str, float]  # measured ANS of each ranked layer
    seconds: float  # warm-up and measurement

    @property
    def report(self) -> dict[str, Any]:
        return {"ans": self.ans, "layer_bits": self.layer_bits}


def assign_widths(cfg: TrialConfig) -> AnsAssignment:
    """Warm up the float architecture, measure ANS, assign the study's widths (module doc)."""
    import tf_keras

    from trainables.data import trial_split
    from trainables.models import WEIGHT_LAYERS, build_model
    from trainables.train import dataset, fit

    settings: AnsHybrid = cfg.ans or AnsHybrid()
    t0 = time.perf_counter()
    split = trial_split(cfg)
    warm = cfg.model_copy(update={"bits": "float", "layer_bits": {}, "ans": None})
    tf_keras.utils.set_random_seed(cfg.seed)
    model = build_model(warm, split.input_shape, split.num_classes)
    data = dataset(split.x_train, split.y_train, cfg.batch_size, cfg.seed)
    fit(model, data, settings.warmup_epochs, cfg.learning_rate)
    names = [layer.name for layer in model.layers if isinstance(layer, WEIGHT_LAYERS)]
    ranked = [n for n in names if n not in cfg.layer_bits]
    x, y = split.x_train[: settings.samples], split.y_train[: settings.samples]
    x_adv = fgsm(model, x, y, split.num_classes, settings.eps)
    ans = layer_sensitivity(model, x, x_adv, ranked) if ranked else {}
    assigned = assign_bits(ans, settings.ordered, settings.most_sensitive)
    layer_bits = {n: cfg.layer_bits.get(n) or assigned[n] for n in names}
    return AnsAssignment(layer_bits, ans, time.perf_counter() - t0)


def resolved(cfg: TrialConfig, p: AnsAssignment) -> TrialConfig:
    """The config the quantized model is built from: every weight layer at its assigned width."""
    return cfg.model_copy(update={"layer_bits": p.layer_bits})
