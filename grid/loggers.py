"""The ecosystem's own front ends: a point's real axis values, and Ray Tune's logger callbacks.

``loggers: [mlflow, tensorboard]`` in a study file (default: none) adds Ray
Tune's ``MLflowLoggerCallback`` and ``TBXLoggerCallback`` to the run, each
made to read like the study: a run per Tune trial named by its point, whose
params (MLflow) or hparams (TensorBoard) are the point's axis values
(``bits=8``, ``sparsity=0.5``, ..., not Optuna's ranks or the study's list
indices) and whose metrics are what the trial reported (``robust_acc``,
``bytes``, ``clean_acc``, ...; the mean over the point's folds).

- MLflow tracks to ``mlflow_uri`` (any MLflow tracking URI), by default the
  SQLite file ``<results>/<study>/mlflow.db`` (MLflow 3 keeps local runs in
  a database; its plain-folder store now needs ``MLFLOW_ALLOW_FILE_STORE``);
  the experiment is the study's name.  ``mlflow ui --backend-store-uri
  sqlite:///results/<study>/mlflow.db`` shows it.
- TensorBoard events go to ``<results>/<study>/tensorboard/<trial key>/``:
  ``tensorboard --logdir results/<study>/tensorboard``.

Results on object storage keep both in the driver's cache
(``~/.cache/robustgrid/mirror/``), as Tune's own state is.  The callbacks run
on the driver; workers log nothing themselves.

:func:`point_attrs` is also what the Optuna search records on each Optuna
trial (``grid.searcher``), so optuna-dashboard shows real values too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from grid.spec import Logger, StudyError
from trainables.modelspec import model_label
from trainables.ray_adapter import CONFIG_KEY

if TYPE_CHECKING:
    from grid.spec import Study
    from grid.store import Location

Attr = str | int | float


def describe_adversarial(adv: Any) -> str:
    """``none`` or e.g. ``pgd eps=0.03 steps=7 ratio=0.5``."""
    method = adv.method.value
    if method == "none":
        return "none"
    steps = f" steps={adv.steps}" if method == "pgd" else ""
    return f"{method} eps={adv.eps:g}{steps} ratio={adv.ratio:g}"


def describe_jr_layers(layers: Mapping[str, float]) -> str:
    """``none`` or e.g. ``all:0.01`` / ``conv1:0.1,act2:0.05``."""
    return ",".join(f"{k}:{v:g}" for k, v in layers.items()) or "none"


def point_attrs(study: Study, point: Mapping[str, Any]) -> dict[str, Attr]:
    """A point's axis values as a researcher reads them: bits ``8`` / ``binary``, sparsity 0.5, ...

    Indexed axes (adversarial training, per-layer JR, the model) become their
    description; ``model`` is always there (the study's single model when the
    point has no model axis).
    """
    a = study.axes
    # A per-layer point's overrides, as its label has them (optuna-dashboard, MLflow params).
    layers = {"layers": json.dumps(point["layers"], sort_keys=True)} if point.get("layers") else {}
    return {
        **layers,
        "bits": str(point["bits"]),
        "sparsity": float(point["sparsity"]),
        "clusters": int(point["clusters"]),
        "jr_weight": float(point["jr_weight"]),
        "adversarial": describe_adversarial(a.adversarial[int(point.get("adversarial", 0))]),
        "jr_layers": describe_jr_layers(a.jr_layers[int(point.get("jr_layers", 0))]),
        "model": model_label(study.models[int(point.get("model", 0))]),
    }


def payload_attrs(study: Study, payload: Mapping[str, Any]) -> dict[str, Attr]:
    """A Tune trial's payload (``config['payload']``, as JSON): its point's axis values, its
    folds and keys."""
    folds = [int(t["fold"]) for t in payload["trials"]]
    return {
        **point_attrs(study, payload["point"]),
        "folds": ",".join(map(str, folds)),
        "key": ",".join(payload["keys"]),  # one key per fold, in the rows' `key` column
        "point": str(payload["label"]),
    }


def _run_name(attrs: Mapping[str, Attr]) -> str:
    name = (
        f"bits={attrs['bits']} sparsity={attrs['sparsity']:g} clusters={attrs['clusters']} "
        f"jr={attrs['jr_weight']:g}"
    )
    for k in ("adversarial", "jr_layers"):
        if attrs[k] != "none":
            name += f" {k}={attrs[k]}"
    return f"{name} fold {attrs['folds']}"


def mlflow_uri(study: Study, results_dir: Location) -> str:
    """Where MLflow tracks: the study's ``mlflow_uri``, else ``<results>/<study>/mlflow.db``."""
    if study.mlflow_uri:
        return study.mlflow_uri
    db = results_dir.mirror_path("mlflow.db")
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def tensorboard_dir(results_dir: Location) -> Path:
    return results_dir.mirror_path("tensorboard")


def callbacks(study: Study, results_dir: Location, out: TextIO | None = None) -> list[Any]:
    """The study's ``loggers`` as Tune callbacks (none by default), saying where each writes."""
    found: list[Any] = []
    if Logger.mlflow in study.loggers:
        uri = mlflow_uri(study, results_dir)
        found.append(_mlflow_callback(study, uri))
        if out is not None:
            out.write(f"mlflow: experiment {study.name!r} at {uri}\n")
    if Logger.tensorboard in study.loggers:
        folder = tensorboard_dir(results_dir)
        found.append(_tensorboard_callback(study, folder))
        if out is not None:
            out.write(f"tensorboard: tensorboard --logdir {folder}\n")
    return found


def _mlflow_callback(study: Study, uri: str) -> Any:
    try:
        import mlflow  # noqa: F401  (Tune's callback imports it only in setup: fail here, clearly)
    except ImportError:
        raise StudyError(
            "loggers: 'mlflow' needs MLflow on the driver (pip install mlflow-skinny; "
            "robustgrid's dev extra has it)"
        ) from None
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class StudyMLflow(MLflowLoggerCallback):
        """A run per Tune trial, named by its point; params are the axis values and keys."""

        def log_trial_start(self, trial: Any) -> None:
            attrs = payload_attrs(study, trial.config[CONFIG_KEY])
            if trial not in self._trial_runs:
                tags = {**(self.tags or {}), "trial_name": str(trial), "study": study.name}
                run = self.mlflow_util.start_run(tags=tags, run_name=_run_name(attrs))
                self._trial_runs[trial] = run.info.run_id
            # A retried trial logs the same values again (MLflow refuses changed ones only).
            self.mlflow_util.log_params(run_id=self._trial_runs[trial], params_to_log=attrs)

    return StudyMLflow(tracking_uri=uri, experiment_name=study.name)


def _tensorboard_callback(study: Study, root: Path) -> Any:
    from ray.tune.logger import TBXLoggerCallback

    class StudyTensorBoard(TBXLoggerCallback):
        """Events per trial under ``root/<key>``; hparams are the axis values, not Tune's config."""

        def log_trial_start(self, trial: Any) -> None:
            if trial in self._trial_writer:
                self._trial_writer[trial].close()
            folder = root / "_".join(trial.config[CONFIG_KEY]["keys"])
            folder.mkdir(parents=True, exist_ok=True)
            self._trial_writer[trial] = self._summary_writer_cls(str(folder), flush_secs=30)
            self._trial_result[trial] = {}

        def _try_log_hparams(self, trial: Any, result: dict[str, Any]) -> None:
            from tensorboardX.summary import hparams

            attrs = payload_attrs(study, trial.config[CONFIG_KEY])
            for tag in hparams(hparam_dict=dict(attrs), metric_dict=result):
                self._trial_writer[trial].file_writer.add_summary(tag)

    return StudyTensorBoard()
