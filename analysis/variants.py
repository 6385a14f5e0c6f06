"""What the papers' comparisons compare: attack kinds and cells, variants and their labels,
each dataset's MLPerf Tiny reference model (``analysis.compare``'s definitions)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from trainables.config import BLACK_BOX, TRANSFER, WHITE_BOX
from trainables.rows import WORST

# 'worst': the trials' stored worst rows (per example, robust under every attack of the
# cell's norm and eps, over the examples all of them attacked: trainables/worst.py).
KINDS = ("white", "black", "transfer", "worst")
KIND_NAMES = {"white": "white-box", "black": "black-box", "transfer": "transfer",
              "worst": "worst case over the attacks"}  # fmt: skip
_KIND_MARK = {"white": "w:", "black": "b:", "transfer": "t:", "worst": ""}  # column header prefix
REFERENCE_MODELS = {
    "cifar10": "resnet8",
    "svhn": "resnet8",
    "speech_commands": "ds_cnn",
    "digits": "digits_cnn",
}
DEFAULT_A_BITS = "stochastic_ternary"
ALPHA = 0.05

_KIND_OF = {
    **{str(a): "white" for a in WHITE_BOX},
    **{str(a): "black" for a in BLACK_BOX},
    **{str(a): "transfer" for a in TRANSFER},
    WORST: "worst",
}
_VARIANT_COLUMNS = [
    "model", "bits", "layer_bits", "sparsity", "clusters", "jr_layers", "jr_weight",
    "adv_training", "adv_eps", "layer_sparsity", "layer_clusters", "layer_activation_bits",
]  # fmt: skip
_REDUCTION_ORDER = {"quantization": 0, "pruning": 1, "clustering": 2}


class CompareError(ValueError):
    """A comparison that the results cannot support; the message says why."""


# ---- labels --------------------------------------------------------------------------------


def _json_map(text: object) -> dict[str, object]:
    if text is None or (isinstance(text, float) and math.isnan(text)) or text == "":
        return {}
    value = json.loads(str(text))
    return dict(value) if isinstance(value, dict) else {}


def _num(v: object) -> str:
    return f"{v:g}" if isinstance(v, int | float) else str(v)


def variant_label(
    model: str,
    bits: str,
    *,
    jr_layers: object = "{}",
    jr_weight: float = 0.0,
    adv_training: str = "none",
    adv_eps: float | None = None,
    sparsity: float = 0.0,
    clusters: int = 0,
    layer_bits: object = "{}",
    layer_sparsity: object = "{}",
    layer_clusters: object = "{}",
    layer_activation_bits: object = "{}",
) -> str:
    """The readable label of a variant: ``'<model> <bits>'`` plus what it adds.

    ``bits{conv1:8}`` per-layer bits, ``act{act1:4}`` per-layer activation widths,
    ``sparsity 0.5``, ``sparsity{conv2:0.75}`` per-layer, ``clusters 16``,
    ``clusters{conv2:4}`` per-layer,
    ``+JR(all=0.01)`` per-layer JR, ``+ioJR(0.1)`` input-output JR,
    ``+adv(pgd 0.03)`` adversarial training.
    """
    parts = [str(model), str(bits)]
    lb = _json_map(layer_bits)
    if lb:
        parts.append("bits{" + ",".join(f"{k}:{_num(v)}" for k, v in sorted(lb.items())) + "}")
    la = _json_map(layer_activation_bits)
    if la:
        parts.append("act{" + ",".join(f"{k}:{_num(v)}" for k, v in sorted(la.items())) + "}")
    if sparsity and sparsity > 0:
        parts.append(f"sparsity {sparsity:g}")
    ls = _json_map(layer_sparsity)
    if ls:
        parts.append("sparsity{" + ",".join(f"{k}:{_num(v)}" for k, v in sorted(ls.items())) + "}")
    if clusters and clusters > 0:
        parts.append(f"clusters {int(clusters)}")
    lc = _json_map(layer_clusters)
    if lc:
        parts.append("clusters{" + ",".join(f"{k}:{_num(v)}" for k, v in sorted(lc.items())) + "}")
    jl = _json_map(jr_layers)
    if jl:
        parts.append("+JR(" + ",".join(f"{k}={_num(v)}" for k, v in sorted(jl.items())) + ")")
    if jr_weight and jr_weight > 0:
        parts.append(f"+ioJR({jr_weight:g})")
    if adv_training and adv_training != "none":
        eps = "" if adv_eps is None or pd.isna(adv_eps) else f" {adv_eps:g}"
        parts.append(f"+adv({adv_training}{eps})")
    return " ".join(parts)


def cell_label(attack: str, norm: str, eps: float) -> str:
    """``pgd@0.031``; L2 cells say so: ``cw_l2@0.5(L2)``."""
    return f"{attack}@{eps:g}" + ("" if norm == "inf" else f"(L{norm})")


def _is_undefended_float(r: Any) -> bool:
    """``r``: a row (a Series or an itertuples row) with the ``_VARIANT_COLUMNS``."""
    return bool(
        r.bits == "float"
        and not _json_map(r.layer_bits)
        and not _json_map(r.jr_layers)
        and not (r.jr_weight and r.jr_weight > 0)
        and r.adv_training == "none"
        and not (r.sparsity and r.sparsity > 0)
        and not (r.clusters and r.clusters > 0)
        and not any(
            float(str(v)) > 0 for v in _json_map(getattr(r, "layer_sparsity", "{}")).values()
        )
        and not any(
            float(str(v)) > 0 for v in _json_map(getattr(r, "layer_clusters", "{}")).values()
        )
    )


def match_label(wanted: str, known: Sequence[str], flag: str) -> str:
    """The known label ``wanted`` names: exact, then case-insensitive, then a unique substring.

    Otherwise a :class:`CompareError` naming ``flag``, the value and the known labels.
    """
    if wanted in known:
        return wanted
    low = wanted.strip().lower()
    same = [k for k in known if k.lower() == low]
    if len(same) == 1:
        return same[0]
    hits = [k for k in known if low in k.lower()]
    if len(hits) == 1:
        return hits[0]
    listing = "; ".join(repr(k) for k in sorted(known))
    if hits:
        raise CompareError(
            f"{flag}: {wanted!r} matches {len(hits)} variants: "
            + "; ".join(repr(k) for k in sorted(hits))
            + ": give more of the label"
        )
    raise CompareError(f"{flag}: no variant {wanted!r}; known variants: {listing}")
