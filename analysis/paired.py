"""Pairing trials example by example: each trial's per-example robust mask, the exact
McNemar test of two trials, and trials as points with the ids they pair on.

The masks are the rows' ``metric_robust_mask`` on the attack's subset
(``meta_attack_subset``); 'worst' reads the trial's stored worst rows (every attack's
mask ANDed over the examples all of them attacked, trainables/worst.py).  The rows a
mask is read from are the headline's rule (trainables/headline.py), at one attack,
norm and eps.  TF-free; reads the DuckDB views of :func:`analysis.query.connect`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import duckdb
import numpy as np
import pandas as pd

from analysis.inference import McNemar, mcnemar_exact, unpack_mask
from analysis.pareto import describe, resolve, trial_points
from trainables.headline import reads_sql

# A trial's identity less its reductions and fold (trainables/identity.py): trials that
# differ only in bits / sparsity / clusters and the quantization settings (per-layer bits,
# activation width, ans_hybrid's settings, per-layer pruning and clustering), and fold,
# share it, so each can be paired with the uncompressed baseline of the same fold.
# Everything else stays in it: JR (input-output and per layer), adversarial training,
# seed, training settings, folds and the results revision.  A column: written by the
# worker, filled on read for older rows (analysis.query.fill_identities).
PAIR_ID = "meta_baseline_pair_id"
# The config less its JR settings (and fold): JR on and off at equal compression share it.
JR_PAIR_ID = "meta_jr_pair_id"


def _json_values(text: object) -> list[float]:
    """The values of a per-layer override column (JSON object; NULL / '' / NaN: none)."""
    if not isinstance(text, str) or not text:
        return []
    value = json.loads(text)
    return [float(v) for v in value.values()] if isinstance(value, dict) else []


def reductions_of(
    bits: str,
    sparsity: float,
    clusters: int,
    layer_sparsity: object = "{}",
    layer_clusters: object = "{}",
) -> str:
    """'quantization', 'pruning', 'clustering', combined with '+', or 'none'.

    A per-layer override counts: a layer pruned (``cfg_layer_sparsity``) is pruning even at
    ``sparsity`` 0, a layer clustered is clustering.
    """
    parts = [
        name
        for name, on in (
            ("quantization", bits != "float"),
            ("pruning", sparsity > 0 or any(v > 0 for v in _json_values(layer_sparsity))),
            ("clustering", clusters > 0 or any(v > 0 for v in _json_values(layer_clusters))),
        )
        if on
    ]
    return "+".join(parts) or "none"


def robust_masks(
    con: duckdb.DuckDBPyConnection, keys: Sequence[str], attack: str, eps: float, norm: str
) -> dict[str, tuple[str, np.ndarray] | str]:
    """Per trial: (attack subset hash, per-example robust booleans), or why there are none.

    'worst': the trial's stored worst row (every attack's mask ANDed over the
    examples all of them attacked, trainables/worst.py), so two trials whose
    attacks used different sample counts still pair on the common prefix.
    """
    want = pd.DataFrame({"key": list(dict.fromkeys(keys))})
    con.register("_mask_keys", want)
    try:
        df = con.execute(
            f"""
            SELECT key, attack, meta_attack_subset AS subset, metric_robust_mask AS mask,
                   metric_samples AS n
            FROM rows JOIN _mask_keys USING (key)
            WHERE {reads_sql("$attack", "$norm", "$eps", row_norm="attack_norm")}
            ORDER BY key, attack
            """,
            {"eps": eps, "norm": norm, "attack": attack},
        ).df()
    finally:
        con.unregister("_mask_keys")
    out: dict[str, tuple[str, np.ndarray] | str] = {
        k: "no complete rows at this attack, eps and norm" for k in want.key
    }
    # Column lists, not a pandas group per key: a report asks for 10^4-10^5 masks.
    got, subs, hexes, ns = (df[c].tolist() for c in ("key", "subset", "mask", "n"))
    lo = 0
    while lo < len(got):
        hi = lo + 1
        while hi < len(got) and got[hi] == got[lo]:
            hi += 1
        key = str(got[lo])
        if any(is_missing(v) for col in (hexes, subs, ns) for v in col[lo:hi]):
            out[key] = "no metric_robust_mask / meta_attack_subset"
        elif len(set(subs[lo:hi])) > 1:
            out[key] = f"its rows used different subsets {sorted(set(subs[lo:hi]))}"
        else:
            masks = [unpack_mask(m, int(n)) for m, n in zip(hexes[lo:hi], ns[lo:hi], strict=True)]
            if len({len(m) for m in masks}) > 1:
                out[key] = "its attacks' masks differ in length"
            else:
                out[key] = (subs[lo], np.logical_and.reduce(masks))
        lo = hi
    return out


def is_missing(v: object) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def discordant(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    return int(np.sum(a & ~b)), int(np.sum(~a & b))


def mcnemar(
    con: duckdb.DuckDBPyConnection,
    key_a: str,
    key_b: str,
    attack: str = "worst",
    eps: float | None = None,
    *,
    norm: str | None = None,
) -> McNemar:
    """Exact McNemar test of two trials' per-example robustness on the same attacked examples.

    ``b``: examples robust under ``key_a`` but not ``key_b``; ``c`` the
    reverse; p-value two-sided, exact binomial (:func:`analysis.inference.mcnemar_exact`).
    It conditions on the two trained models (the examples vary, the training
    does not).  The two trials must have attacked the same examples
    (``meta_attack_subset``): a ValueError names both otherwise.  'worst':
    the stored worst rows, robust under every attack of the norm at eps on
    the examples all of them attacked (the shortest attacked prefix: the same
    for every trial of a study).
    """
    eps, norm = resolve(con, attack, eps, norm)
    masks = robust_masks(con, [key_a, key_b], attack, eps, norm)
    got = []
    for key in (key_a, key_b):
        m = masks[key]
        if isinstance(m, str):
            raise ValueError(f"mcnemar: trial {key!r} at {describe(attack, eps, norm)}: {m}")
        got.append(m)
    (sa, ma), (sb, mb) = got
    if sa != sb or len(ma) != len(mb):
        raise ValueError(
            f"mcnemar: trials {key_a!r} and {key_b!r} attacked different examples "
            f"(subsets {sa} and {sb}, {len(ma)} and {len(mb)} examples): no pairing"
        )
    b, c = discordant(ma, mb)
    return McNemar(b, c, mcnemar_exact(b, c))


def paired_points(
    con: duckdb.DuckDBPyConnection, attack: str, eps: float, norm: str, where: str | None
) -> pd.DataFrame:
    pts = trial_points(con, attack, eps, where, norm=norm)
    ids = con.execute(
        f"""SELECT key, any_value({PAIR_ID}) AS pair_id,
                   any_value(cfg_layer_bits) AS layer_bits,
                   any_value(cfg_layer_sparsity) AS layer_sparsity,
                   any_value(cfg_layer_clusters) AS layer_clusters,
                   any_value(cfg_layer_activation_bits) AS layer_activation_bits,
                   any_value(cfg_activation_bits) AS activation_bits, any_value(cfg_seed) AS seed,
                   any_value(cfg_test_fraction) AS test_fraction,
                   min(meta_attack_subset) AS test_subset
            FROM rows GROUP BY key"""
    ).df()
    pts = pts.merge(ids, on="key")
    pts["cfg_folds"] = pts["cfg_folds"].fillna(1).astype(int)
    pts["reductions"] = [
        reductions_of(b, s, c, ls, lc)
        for b, s, c, ls, lc in zip(
            pts.bits,
            pts.sparsity,
            pts.clusters,
            pts.layer_sparsity,
            pts.layer_clusters,
            strict=True,
        )
    ]
    return pts
