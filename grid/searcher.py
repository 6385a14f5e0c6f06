"""The Optuna search behind ``search.strategy: optuna``: Tune's OptunaSearch, one point at a time.

Imported only when a study searches with Optuna (it imports Ray and Optuna).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from grid import space
from grid.loggers import payload_attrs
from grid.planning import payload
from grid.spec import Study, StudyError
from grid.state import StudyState
from trainables.ray_adapter import CONFIG_KEY
from trainables.rows import STATUS_COMPLETE

CONSTRAINT_ATTR = "bytes_over_budget"  # bytes - objective.max_bytes (> 0: infeasible)
# Where Optuna keeps a trial's constraint named CONSTRAINT_ATTR (Trial.set_constraint's key;
# optuna.study._constrained_optimization._CONSTRAINTS_KEY + ":" + name).
CONSTRAINT_SYSTEM_ATTR = "constraints:bytes_over_budget"


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
        # Points outside Optuna's space run first, told to no sampler: the ans_hybrid seed.
        ans = state.ans if study.search.layers is not None and study.search.seeds else None
        self.extra = [ans] if ans is not None else []
        self.total = study.point_count + len(self.extra)  # distinct points there are

    def _record(self, tid: str, sent: dict[str, Any], answered: str) -> None:
        """The point's real axis values and keys as the Optuna trial's user attributes."""
        trial = self.inner._ot_trials[tid]  # OptunaSearch's optuna.Trial of this id (Ray 2.60)
        for name, value in {**payload_attrs(self.study, sent), "answered": answered}.items():
            trial.set_user_attr(name, value)

    def _tell(self, tid: str, result: dict[str, Any] | None, error: bool = False) -> None:
        """Tell OptunaSearch a trial's result, its bytes over the budget first (Optuna 5's
        ``Trial.set_constraint``: TPE and NSGA-II/III read every trial's constraints)."""
        if (
            result
            and self.study.objective.max_bytes is not None
            and result.get("bytes") is not None
        ):
            over = bytes_over(self.study, float(result["bytes"]))
            trial = self.inner._ot_trials[tid]
            trial.set_user_attr(CONSTRAINT_ATTR, over)  # readable in optuna-dashboard
            trial.set_constraint(CONSTRAINT_ATTR, over)
        self.inner.on_trial_complete(tid, result=result, error=error)

    def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
        return True  # the space comes from the study file

    def suggest(self, trial_id: str) -> Any:  # a config, None, or Searcher.FINISHED
        if len(self.known) + len(self.running) >= self.total:
            return Searcher.FINISHED  # every point is done or under way
        while self.extra:  # the seeds Optuna cannot propose run first
            point = self.extra.pop(0)
            label = self.state.meet(point)
            if label in self.known or label in self.running.values():
                continue
            self.running[trial_id] = label
            return payload(point, self.state.trials[label]).config()
        for attempt in range(self.MAX_REDRAWS):
            tid = f"{trial_id}/{attempt}"
            params = self.inner.suggest(tid)
            if not isinstance(params, dict):
                return params
            point = space.to_point(self.study, params)
            label = self.state.meet(point)
            config = payload(point, self.state.trials[label]).config()
            this = config[CONFIG_KEY]  # the payload as Tune carries it (JSON)
            if label in self.known:
                self.redraws += 1
                self._record(tid, this, "store")
                result = dict(zip(self.state.obj.names, self.known[label], strict=True))
                self._tell(tid, result)
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
        if label is None:
            return
        if result and not error and result.get("status") == STATUS_COMPLETE:
            self.known[label] = [float(result[n]) for n in self.state.obj.names]
        told = [tid] if tid is not None else []  # None: a seed outside Optuna's space
        for waiting in [*told, *self.waiting.pop(label, [])]:
            self._tell(waiting, result, error)
        if tid is None and label in self.known:  # the ans_hybrid seed: its widths, if in space
            for key in self.state.keys[label]:
                self.state.refresh(key)
            tell_ans_widths(self.study, self.state, self.inner._ot_study)

    def save(self, checkpoint_path: str) -> None:
        raise NotImplementedError  # the state lives in optuna.journal and the store

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError


def bytes_over(study: Study, nbytes: float) -> float:
    """A point's bytes over the study's flash budget (> 0: infeasible)."""
    assert study.objective.max_bytes is not None
    return float(nbytes) - float(study.objective.max_bytes)


def met(study: Study, state: StudyState, params: dict[str, Any]) -> str | None:
    """The label of the point a journal trial's parameters stand for, met by ``state``;
    None when they are not this study's (a journal of an earlier space: other layers or
    choices), so such a trial is left alone rather than failing the run."""
    try:
        return state.meet(space.to_point(study, params))
    except (KeyError, IndexError, ValueError):
        return None


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
        sampler=sampler(study),
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
    budget = study.objective.max_bytes is not None
    by_bytes = state.obj.names.index("bytes")
    # A trial left RUNNING: complete when the store has the point's values (it finished
    # meanwhile), else failed.  (WAITING trials are enqueued seeds not yet asked: kept.)
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        label = met(study, state, t.params)
        known = state.point_value(label) if label is not None else None
        if known is None:
            ostudy.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        else:
            if budget:
                over = bytes_over(study, known[by_bytes])
                ostudy._storage.set_trial_user_attr(t._trial_id, CONSTRAINT_ATTR, over)
                ostudy._storage.set_trial_system_attr(t._trial_id, CONSTRAINT_SYSTEM_ATTR, over)
            ostudy.tell(t.number, known, skip_if_finished=True)
    told = {
        met(study, state, t.params)
        for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    }
    values = state.point_values()
    dists = space.distributions(study)
    for label, vals in values.items():
        if label in told:
            continue
        point = state.point_of(label)
        try:
            params = space.to_params(study, point)
        except ValueError:
            continue  # a seed outside Optuna's space (the ans_hybrid point)
        this = payload(point, state.trials[label]).config()[CONFIG_KEY]
        attrs: dict[str, Any] = {**payload_attrs(study, this), "answered": "store"}
        system: dict[str, Any] = {}
        if budget:  # as Trial.set_constraint stores it
            attrs[CONSTRAINT_ATTR] = bytes_over(study, vals[by_bytes])
            system[CONSTRAINT_SYSTEM_ATTR] = attrs[CONSTRAINT_ATTR]
        ostudy.add_trial(
            create_trial(
                params=params, distributions=dists, values=vals, user_attrs=attrs,
                system_attrs=system,
            )
        )  # fmt: skip
    if study.search.layers is not None and study.search.seeds:
        enqueue_seeds(study, state, ostudy)
        tell_ans_widths(study, state, ostudy)
    return ostudy


ANS_ANSWER = "ans_hybrid's realised widths"  # the ``answered`` attribute of that told trial


def tell_ans_widths(study: Study, state: StudyState, ostudy: Any) -> bool:
    """Tell Optuna the ans_hybrid seed's realised per-layer widths with its values, once,
    when every width is among that layer's choices (``add_trial``): the search learns from
    the heuristic's assignment.  True when told (now or before)."""
    import json

    from optuna.trial import create_trial

    from grid.store import read_rows

    if state.ans is None or study.search.layers is None:
        return False
    label = space.point_label(state.ans)
    vals = state.point_value(label) if label in state.keys else None
    if vals is None:
        return False
    if any(t.user_attrs.get("answered") == ANS_ANSWER for t in ostudy.get_trials(deepcopy=False)):
        return True
    rows = read_rows(state.results_dir, state.keys[label][0]) or []
    widths = json.loads((rows[0].get("meta_layer_bits_json") or "{}") if rows else "{}")
    ls = study.layer_space()
    full: dict[str, dict[str, Any]] = {
        "bits": {n: widths.get(n) for n in ls.weight},
        "sparsity": {n: state.ans["sparsity"] for n in ls.weight},
        "clusters": {n: state.ans["clusters"] for n in ls.weight},
        "activation_bits": {n: 8 for n in ls.chosen("activation_bits")},  # ans: 8-bit activations
        "jr_weight": {n: 0.0 for n in ls.chosen("jr_weight")},
    }
    axes = {k: v for k, v in state.ans.items() if k != "bits"}
    try:
        point = space.canonical(study, ls, {"bits": "8", **axes}, full)
        params = space.to_params(study, point)
    except (ValueError, KeyError, TypeError):
        return False  # a width outside the choices: nothing Optuna's space can say
    attrs: dict[str, Any] = {"answered": ANS_ANSWER, "ans_key": state.keys[label][0]}
    system: dict[str, Any] = {}
    if study.objective.max_bytes is not None:
        attrs[CONSTRAINT_ATTR] = bytes_over(study, vals[state.obj.names.index("bytes")])
        system[CONSTRAINT_SYSTEM_ATTR] = attrs[CONSTRAINT_ATTR]
    ostudy.add_trial(
        create_trial(
            params=params, distributions=space.distributions(study), values=vals,
            user_attrs=attrs, system_attrs=system,
        )
    )  # fmt: skip
    return True


def enqueue_seeds(study: Study, state: StudyState, ostudy: Any) -> None:
    """Enqueue the uniform assignments not yet complete nor already waiting: Optuna's first
    trials (``enqueue_trial``), so the search starts from the uniform points."""
    from optuna.trial import TrialState

    waiting = {
        space.point_label(space.to_point(study, t.system_attrs.get("fixed_params", {})))
        for t in ostudy.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    }
    done = set(state.point_values()) | {  # in the store, or told Optuna before
        space.point_label(space.to_point(study, t.params))
        for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    }
    for point in state.seeds:
        label = space.point_label(point)
        if label not in done and label not in waiting:
            ostudy.enqueue_trial(space.to_params(study, point), user_attrs={"seed": "uniform"})


def sampler(study: Study) -> Any:
    """The study's sampler.  A flash budget needs nothing here: the searcher sets each
    trial's constraint (``Trial.set_constraint``) and Optuna 5's TPE and NSGA-II/III rank
    infeasible trials below feasible ones (``constraints_func``, deprecated in 5.0, unused)."""
    return space.make_sampler(study.search, study.search_seed)


def optuna_searcher(study: Study, state: StudyState) -> Any:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    journal = state.results_dir.mirror("optuna.journal")  # a local copy when results are remote
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    optuna_study(study, state, storage)
    inner = OptunaSearch(
        space=space.distributions(study), metric=list(state.obj.names), mode=state.obj.modes,
        sampler=sampler(study), study_name=study.name, storage=storage,
    )  # fmt: skip
    return PointSearcher(inner, study, state)
