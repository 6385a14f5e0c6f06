"""The thin Ray Tune adapter around :func:`trainables.trial.run_trial`.

A Tune trial runs one *payload* (:class:`TrialPayload`, under
``config["payload"]``): a grid point and the trial config of each fold it runs
(the grid gives one fold per Tune trial, a search all folds of a point).  It
reports each fold's summary (``trainables.rows.summarize``), which the driver
takes as it is.  Folds already complete in the store are read back, not run
again, so a retried or resumed payload never trains a fold twice.  A fold that fails is
stored as a failed row and then raised, so Tune retries it
(``FailureConfig``); the retry's rows replace the failed row.

The sink (where rows go) and the trial function (what runs a fold) are
injected by the caller, so this package never imports ``grid`` and carries no
test switch: Tune passes both with ``tune.with_parameters``.  The trial
function defaults to :func:`trainables.trial.run_trial`; tests and benchmarks
wrap it (fault injection, trivial trials: tests/injected.py,
trainables/trivial.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, model_validator

from trainables.config import RESULTS_REVISION, TrialConfig
from trainables.headline import DEFAULT as DEFAULT_HEADLINE
from trainables.headline import Headline
from trainables.rows import STATUS_COMPLETE, summarize

# The driver imports this module to build payloads and hand ``trainable`` to
# Tune: keep TensorFlow (about 8 s) out of it by importing the trial inside the
# worker, and Ray out of it until a trial reports (the driver plans without Ray).
Row = dict[str, Any]

# Where the payload sits in a Tune trial's config (param_space, a searcher's suggestion).
CONFIG_KEY = "payload"


class TrialPayload(BaseModel):
    """What the driver hands one Tune trial: a grid point and the trial config of each of its folds.

    It travels through Tune as plain JSON (:meth:`config`, :meth:`param_space`), so Tune can
    store, log and restore it like any config; the trainable reads it back with :meth:`of`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    point: dict[str, Any]  # axis -> value, as the driver's grid.space knows it (not read here)
    label: str  # the point's readable identity (grid.space.point_label)
    keys: tuple[str, ...]  # each fold's key as the driver computed it (a worker must agree)
    trials: tuple[TrialConfig, ...]  # one per fold

    @model_validator(mode="after")
    def _one_key_per_trial(self) -> TrialPayload:
        if len(self.keys) != len(self.trials) or not self.trials:
            raise ValueError(
                f"keys: {len(self.keys)} key(s) for {len(self.trials)} trial(s); "
                "a payload carries one key per trial, and at least one trial"
            )
        return self

    @classmethod
    def build(
        cls, point: Mapping[str, Any], label: str, trials: Iterable[TrialConfig]
    ) -> TrialPayload:
        trials = tuple(trials)
        return cls(point=dict(point), label=label, keys=tuple(t.key for t in trials), trials=trials)

    def config(self) -> dict[str, Any]:
        """This payload as one Tune trial's config (what a searcher suggests)."""
        return {CONFIG_KEY: self.model_dump(mode="json")}

    @staticmethod
    def param_space(payloads: Iterable[TrialPayload]) -> dict[str, Any]:
        """Tune's param_space for a run of these payloads, one Tune trial each."""
        from ray import tune

        return {CONFIG_KEY: tune.grid_search([p.model_dump(mode="json") for p in payloads])}

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> TrialPayload:
        """The payload in a Tune trial's config."""
        return cls.model_validate(config[CONFIG_KEY])


class RowSink(Protocol):
    def __call__(self, key: str, rows: list[Row]) -> Any: ...

    def read(self, key: str) -> list[Row] | None: ...


class TrialFunction(Protocol):
    """What runs one fold: its config in, its rows out (trainables.trial.run_trial's signature).

    Tune pickles it to the workers, so a wrapper must be importable there (a module-level
    function or an instance of a module-level class)."""

    def __call__(
        self, cfg: TrialConfig, /, artifacts: Callable[[str, dict[str, bytes]], Any] | None = None
    ) -> list[Row]: ...


class TrialFailed(RuntimeError):
    """A fold failed; its failed row is stored.  Raised so that Tune retries the trial."""


def run_payload(
    payload: TrialPayload,
    sink: RowSink,
    objective: Headline = DEFAULT_HEADLINE,
    artifacts: Callable[[str, dict[str, bytes]], Any] | None = None,
    trial: TrialFunction | None = None,
) -> dict[str, Any]:
    """Run (or read back) every fold of a payload; the mean over folds of each objective, and
    each fold's own summary (``folds``: the driver takes them as they are, without reading
    the store).

    ``trial`` runs a fold (default :func:`trainables.trial.run_trial`, imported here in the
    worker: TensorFlow stays out of the driver)."""
    if trial is None:
        from trainables.trial import run_trial as real_trial

        trial = real_trial
    folds, ran, compute = [], 0, 0.0
    for cfg, expected in zip(payload.trials, payload.keys, strict=True):
        if cfg.key != expected:  # the key hashes the results revision (trainables.config)
            raise TrialFailed(
                f"trial {expected}: this worker computes key {cfg.key} for it; the driver and the "
                f"worker run different robustgrid code (results revision {RESULTS_REVISION} here): "
                "install the same version on every node"
            )
        rows = sink.read(cfg.key)
        stale = rows is not None and (rows[0].get("revision") or 0) != RESULTS_REVISION
        if not rows or stale or any(r["status"] != STATUS_COMPLETE for r in rows):
            rows = trial(cfg, artifacts=artifacts)
            sink(cfg.key, rows)
            ran += 1
            compute += float(rows[0]["meta_total_s"] or 0.0)
        fold = summarize(rows, objective)
        if fold["status"] != STATUS_COMPLETE:
            raise TrialFailed(f"trial {cfg.key} (fold {cfg.fold}): {fold['reason']}")
        folds.append(fold)
    n = len(folds)
    return {
        "key": folds[0]["key"],
        "keys": [f["key"] for f in folds],
        "status": STATUS_COMPLETE,
        "reason": "",
        "clean_acc": sum(f["clean_acc"] for f in folds) / n,
        "robust_acc": sum(f["robust_acc"] for f in folds) / n,
        "bytes": sum(f["bytes"] for f in folds) / n,
        "params": max(f["params"] for f in folds),
        "masking_flags": ",".join(
            sorted({n for f in folds for n in f["masking_flags"].split(",") if n})
        ),
        "folds": folds,  # one trainables.rows.summarize dict per fold, in payload order
        "folds_run": ran,
        "total_s": compute,  # this attempt's own compute (folds read back cost nothing)
    }


def trainable(
    config: dict[str, Any],
    sink: RowSink,
    objective: Headline = DEFAULT_HEADLINE,
    artifacts: Callable[[str, dict[str, bytes]], Any] | None = None,
    trial: TrialFunction | None = None,
) -> None:
    from ray import tune

    tune.report(run_payload(TrialPayload.of(config), sink, objective, artifacts, trial))
