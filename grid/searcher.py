"""The Optuna search behind ``search.strategy: optuna``: Tune's OptunaSearch, one point at a time.

Imported only when a study searches with Optuna (it imports Ray and Optuna).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from grid import space
from grid.loggers import unit_attrs
from grid.planning import payload
from grid.spec import Study, StudyError
from grid.state import StudyState
from trainables.rows import STATUS_COMPLETE


class PointSearcher(Searcher):
    """Tune searcher around OptunaSearch that never hands Tune a point twice.

    Optuna (NSGA-II especially) re-proposes points it has seen.  A proposal
    whose point is already complete is told its stored values at once and
    another is asked for; one whose point is running waits and is told that
    point's values when it completes (failed if it fails).  So every Tune
    trial is a new point, the budget counts distinct points, a resumed search
    learns from everything in the store, and every Optuna trial reads like
    the study in optuna-dashboard: complete with its values, the point's real
    axis values and keys as user attributes (``answered``: ``trained``,
    ``store`` or ``same point as a running trial``).
    """

    MAX_REDRAWS = 1000

    def __init__(self, inner: Any, study: Study, state: StudyState) -> None:
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner, self.study, self.state = inner, study, state
        self.known = state.point_values()  # label -> values
        self.running: dict[str, str] = {}  # tune trial id -> label
        self.ids: dict[str, str] = {}  # tune trial id -> inner trial id
        self.waiting: dict[str, list[str]] = {}  # label -> inner trial ids of the same point
        self.redraws = 0

    def _record(self, tid: str, unit: dict[str, Any], answered: str) -> None:
        """The point's real axis values and keys as the Optuna trial's user attributes."""
        trial = self.inner._ot_trials[tid]  # OptunaSearch's optuna.Trial of this id (Ray 2.60)
        for name, value in {**unit_attrs(self.study, unit), "answered": answered}.items():
            trial.set_user_attr(name, value)

    def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
        return True  # the space comes from the study file

    def suggest(self, trial_id: str) -> Any:  # a config, None, or Searcher.FINISHED
        if len(self.known) + len(self.running) >= len(self.state.points):
            return Searcher.FINISHED  # every point is done or under way
        for attempt in range(self.MAX_REDRAWS):
            tid = f"{trial_id}/{attempt}"
            params = self.inner.suggest(tid)
            if not isinstance(params, dict):
                return params
            point = space.to_point(self.study, params)
            label = space.point_label(point)
            config = payload(point, self.state.trials[label]).config()
            this = config["unit"]  # the payload as Tune carries it (JSON)
            if label in self.known:
                self.redraws += 1
                self._record(tid, this, "store")
                result = dict(zip(self.state.obj.names, self.known[label], strict=True))
                self.inner.on_trial_complete(tid, result=result)
                continue
            if label in self.running.values():
                self.redraws += 1
                self._record(tid, this, "same point as a running trial")
                self.waiting.setdefault(label, []).append(tid)  # told when that trial ends
                continue
            self._record(tid, this, "trained")
            self.ids[trial_id], self.running[trial_id] = tid, label
            return config
        return Searcher.FINISHED  # the sampler keeps proposing known points

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        pass  # several objectives: only the final result counts

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        tid = self.ids.pop(trial_id, None)
        label = self.running.pop(trial_id, None)
        if tid is None or label is None:
            return
        if result and not error and result.get("status") == STATUS_COMPLETE:
            self.known[label] = [float(result[n]) for n in self.state.obj.names]
        for waiting in [tid, *self.waiting.pop(label, [])]:
            self.inner.on_trial_complete(waiting, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        raise NotImplementedError  # the state lives in optuna.journal and the store

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError


def optuna_study(study: Study, state: StudyState, storage: Any = None) -> Any:
    """The study's Optuna study, brought in line with the store (created on first use).

    Trials left RUNNING by a driver that died are marked failed; complete
    points the Optuna study does not know (run by another strategy, or whose
    result was stored just before a crash) are added, so a resumed search
    learns from everything stored.
    """
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions: list[Literal["maximize", "minimize"]] = [
        "maximize" if m else "minimize" for m in state.obj.maximize
    ]
    ostudy = optuna.create_study(
        storage=storage, study_name=study.name, directions=directions, load_if_exists=True,
        sampler=space.make_sampler(study.search, study.search_seed),
    )  # fmt: skip
    have = [d.name.lower() for d in ostudy.directions]
    if have != directions:
        raise StudyError(
            f"objective: the Optuna study in {state.results_dir} optimises {have}, this file asks for "
            f"{directions} (objective.clean changed?); use a new results folder"
        )
    # Names for optuna-dashboard (and study.trials_dataframe()), in place of "0", "1", "2".
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ostudy.set_metric_names(list(state.obj.names))
    values = state.point_values()
    stale = ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    for t in stale:  # complete when the store has the point's values (it finished meanwhile)
        known = values.get(space.point_label(space.to_point(study, t.params)))
        if known is None:
            ostudy.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        else:
            ostudy.tell(t.number, known, skip_if_finished=True)
    told = {
        space.point_label(space.to_point(study, t.params))
        for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    }
    dists = space.distributions(study)
    by_label = {space.point_label(p): p for p in state.points}
    for label, vals in values.items():
        if label not in told:
            point = by_label[label]
            this = payload(point, state.trials[label]).config()["unit"]
            ostudy.add_trial(
                create_trial(
                    params=space.to_params(study, point),
                    distributions=dists,
                    values=vals,
                    user_attrs={**unit_attrs(study, this), "answered": "store"},
                )
            )
    return ostudy


def optuna_searcher(study: Study, state: StudyState) -> Any:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    journal = state.results_dir.mirror("optuna.journal")  # a local copy when results are remote
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    optuna_study(study, state, storage)
    inner = OptunaSearch(
        space=space.distributions(study), metric=list(state.obj.names), mode=state.obj.modes,
        sampler=space.make_sampler(study.search, study.search_seed),
        study_name=study.name, storage=storage,
    )  # fmt: skip
    return PointSearcher(inner, study, state)
