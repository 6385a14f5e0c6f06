"""The headline robust accuracy: one definition, read in Python and generated as SQL.

A study's headline (``objective`` in the study file) is the robust accuracy under
one attack (or ``worst``: the trial's stored worst rows, the AND of its attacks'
per-example masks, trainables/worst.py) at one eps under one norm, beside one size
measure.  Every reader takes it from here: the worker's summary
(``trainables.rows.summarize``), the store's scan (grid), the fronts, the search
and the report (analysis).  :meth:`Headline.pick` is the rule over row dicts;
:meth:`Headline.sql` / :func:`reads_sql` / :func:`norm_sql` generate the same rule
in DuckDB SQL, so a change here reaches every reader (tests/test_headline.py).

The rule:

- a row counts when it is complete, its attack is the headline's, and its norm is
  the headline's; a row without ``attack_norm`` (written before the column existed)
  has its attack's default norm (``trainables.config.DEFAULT_NORM``, else L-inf);
- eps None means the largest eps among the rows that count (per trial);
- one row per (attack, norm, eps) in a trial: the value is that row's
  ``metric_robust_acc`` (the minimum, should a hand-built trial hold two).

TF-free: imports only ``trainables.config`` (pydantic).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trainables import config

WORST = "worst"  # the attack (and attack_kind) of a trial's per-example worst-case rows
# The deployed model's worst case (attack_kind 'deployed'): every route on the int8 interpreter
# ANDed per example (trainables/deployed.py); the robustness of ``objective.model: deployed``.
DEPLOYED_WORST = "deployed_worst"
MODELS = ("keras", "deployed")  # whose robustness: the QKeras model's, or the int8 flatbuffer's
STATUS_COMPLETE = (
    "complete"  # a row's status when its trial finished (trainables.rows re-exports it)
)
NORMS = ("inf", "2")
SIZES = {"encoded": "metric_bytes", "tflite": "metric_tflite_bytes"}  # size measure -> column
WORST_NORM = "inf"  # 'worst' without a named norm: L-inf (L-inf and L2 radii are never mixed)
FALLBACK_NORM = "inf"  # a row's norm when neither the row nor DEFAULT_NORM names one
EPS_TOL = 1e-9  # eps are floats from a study file: equal within this


def default_norm(attack: str) -> str:
    """The norm an attack runs under when none is named: ``DEFAULT_NORM``'s, else L-inf.

    Read at call time (not import time): every reader, Python or SQL, follows the table.
    """
    try:
        return config.DEFAULT_NORM.get(config.AttackName(attack), FALLBACK_NORM)
    except ValueError:  # 'worst', 'none', or an attack this version does not know
        return WORST_NORM if attack in (WORST, DEPLOYED_WORST) else FALLBACK_NORM


def row_norm(row: Mapping[str, Any]) -> str:
    """A row's norm; rows written before ``attack_norm`` existed get the attack's default."""
    if row.get("attack_norm"):
        return str(row["attack_norm"])
    return default_norm(str(row.get("attack")))


def norm_sql(attack: str = "attack", attack_norm: str = "attack_norm") -> str:
    """SQL of :func:`row_norm` over the columns ``attack`` and ``attack_norm`` (SQL expressions)."""
    cases = " ".join(
        f"WHEN '{a.value}' THEN '{n}'" for a, n in config.DEFAULT_NORM.items() if n != FALLBACK_NORM
    )
    default = f"CASE {attack} {cases} ELSE '{FALLBACK_NORM}' END" if cases else f"'{FALLBACK_NORM}'"
    return f"CASE WHEN coalesce({attack_norm}, '') <> '' THEN {attack_norm} ELSE {default} END"


def quote(value: str) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def reads_sql(
    attack: str, norm: str, eps: str | None = None, *, row_norm: str | None = None
) -> str:
    """SQL predicate: the rows a headline of ``attack`` under ``norm`` (at ``eps``) reads.

    ``attack``, ``norm`` and ``eps`` are SQL expressions (a literal from :func:`quote`, or a
    bound parameter such as ``$attack``); ``row_norm`` the rows' norm (default
    :func:`norm_sql`; a view whose ``attack_norm`` is already filled may pass that column).
    """
    at = f" AND abs(eps - {eps}) < {EPS_TOL!r}" if eps is not None else ""
    return (
        f"(status = '{STATUS_COMPLETE}' AND attack = {attack} "
        f"AND {row_norm or norm_sql()} = {norm}{at})"
    )


@dataclass(frozen=True)
class Headline:
    """Robust accuracy under ``attack`` ('worst' or an attack name) at ``eps`` (None: the
    largest) under ``norm`` ('inf' | '2'), with ``size`` ('encoded' | 'tflite') as the bytes,
    of ``model``: 'keras' (the QKeras model's rows) or 'deployed' (the int8 flatbuffer on the
    interpreter: 'worst' reads the trial's ``deployed_worst`` rows; size is 'tflite').
    """

    attack: str = WORST
    eps: float | None = None
    norm: str = WORST_NORM
    size: str = "encoded"
    model: str = "keras"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"headline norm: {self.norm!r} must be one of {NORMS}")
        if self.size not in SIZES:
            raise ValueError(f"headline size: {self.size!r} must be one of {sorted(SIZES)}")
        if self.model not in MODELS:
            raise ValueError(f"headline model: {self.model!r} must be one of {MODELS}")
        if self.model == "deployed" and self.size != "tflite":
            raise ValueError(
                f"headline size: {self.size!r} with model 'deployed'; the deployed model's size "
                "is its flatbuffer's ('tflite')"
            )

    @property
    def row_attack(self) -> str:
        """The ``attack`` of the rows read: the deployed model's 'worst' is 'deployed_worst'."""
        return DEPLOYED_WORST if self.model == "deployed" and self.attack == WORST else self.attack

    @classmethod
    def of(
        cls, attack: str = WORST, eps: float | None = None, norm: str | None = None,
        size: str | None = None, model: str = "keras",
    ) -> Headline:  # fmt: skip
        """A headline whose norm defaults to the attack's own (``default_norm``) and size to
        the model's ('encoded'; 'tflite' for the deployed model)."""
        size = size or ("tflite" if model == "deployed" else "encoded")
        return cls(attack, eps, norm or default_norm(attack), size, model)

    @property
    def size_column(self) -> str:
        """The row column holding the headline's size measure."""
        return SIZES[self.size]

    def reads(self, row: Mapping[str, Any]) -> bool:
        """Whether the headline reads ``row`` (at any eps): Python twin of :func:`reads_sql`."""
        return (
            row.get("status") == STATUS_COMPLETE
            and row.get("attack") == self.row_attack
            and row_norm(row) == self.norm
        )

    def pick(self, rows: Iterable[Mapping[str, Any]]) -> float | None:
        """One trial's headline robust accuracy from its rows; None when no row is read."""
        ok = [r for r in rows if self.reads(r)]
        if not ok:
            return None
        eps = self.eps if self.eps is not None else max(float(r["eps"]) for r in ok)
        hits = [r["metric_robust_acc"] for r in ok if abs(float(r["eps"]) - eps) < EPS_TOL]
        return min(hits) if hits else None

    def rows_sql(self) -> str:
        """SQL predicate: the rows :meth:`pick` reads (at ``eps`` when it is set)."""
        eps = None if self.eps is None else repr(float(self.eps))
        return reads_sql(quote(self.row_attack), quote(self.norm), eps)

    def sql(self, table: str) -> str:
        """SQL: one row per key of ``table`` holding rows :meth:`pick` reads, with ``robust``
        (:meth:`pick`'s value, NULL when no row is at the eps) and ``hits`` (rows at it)."""
        target = "max(eps) OVER (PARTITION BY key)" if self.eps is None else repr(float(self.eps))
        at = f"abs(eps - target) < {EPS_TOL!r}"
        return f"""
            SELECT key, min(metric_robust_acc) FILTER (WHERE {at}) AS robust,
                   count(*) FILTER (WHERE {at}) AS hits
            FROM (SELECT key, eps, metric_robust_acc, {target} AS target
                  FROM {table} WHERE {self.rows_sql()})
            GROUP BY key"""


DEFAULT = Headline()  # the worst case over the attacks, L-inf, at the largest eps, encoded bytes
