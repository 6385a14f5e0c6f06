"""Config identities: which trials are the same config, and which pair in an analysis.

Each id is 16 hex digits of SHA-256 over the canonical JSON (sorted keys, no
spaces) of a trial's config (``TrialConfig.identity()``, the dict stored as
``meta_config_json``: it holds the results revision) less some fields:

- ``meta_config_id``: less the fold: a config over its folds (``analysis.query.CONFIG_ID``);
- ``meta_baseline_pair_id``: less the fold and every reduction (bits and the quantization
  settings, sparsity, clusters and their per-layer overrides): a reduced trial and the
  uncompressed baseline of the same fold share it (``analysis.effects``);
- ``meta_jr_pair_id``: less the fold and JR (input-output and per layer): JR on and off at
  equal compression share it (``analysis.effects.jr_effects``).

The worker writes them into every row (``trainables.rows.base_row``); rows written before
the columns existed get them on read from ``meta_config_json``, by the same functions
(``analysis.query``).  TF-free, standard library only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

FOLD = frozenset({"fold"})
# A float baseline has activation_bits null and layer_bits {} (TrialConfig forbids layer_bits
# with bits float), so they go with bits; ``ans`` is ans_hybrid's quantization settings.
REDUCTIONS = frozenset(
    {
        "bits", "activation_bits", "layer_bits", "ans", "sparsity", "layer_sparsity",
        "clusters", "layer_clusters", "layer_activation_bits",
    }
)  # fmt: skip
JR = frozenset({"jr_weight", "jr_layers"})

# column -> the config fields it leaves out
IDS: dict[str, frozenset[str]] = {
    "meta_config_id": FOLD,
    "meta_baseline_pair_id": FOLD | REDUCTIONS,
    "meta_jr_pair_id": FOLD | JR,
}


def digest(config: Mapping[str, Any], without: frozenset[str] = frozenset()) -> str:
    """16 hex digits of SHA-256 over the canonical JSON of ``config`` less ``without``."""
    rest = {k: v for k, v in config.items() if k not in without}
    blob = json.dumps(rest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def id_columns(config: Mapping[str, Any]) -> dict[str, str]:
    """Every identity column of a trial's config dict (``TrialConfig.identity()``, or
    ``json.loads(meta_config_json)``: the same dict)."""
    return {column: digest(config, without) for column, without in IDS.items()}
