"""Per-layer search spaces (issue 22): the study file's ``search.layers`` and flash budget,
canonical per-layer points, seeds, and a study's state over them.

The fast tests resolve the space against digits_cnn's layers as built (the list below,
checked against the real build in the slow test), so they import no TensorFlow.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from grid import space
from grid.spec import Study, StudyError, parse_study
from grid.state import StudyState
from grid.store import ParquetSink
from tests.helpers import config_rows

# digits_cnn as trainables.models builds it: (name, normalised kind)
DIGITS = [
    ("conv1", "conv2d"),
    ("act1", "activation"),
    ("conv2", "conv2d"),
    ("act2", "activation"),
    ("flatten", "flatten"),
    ("logits", "dense"),
]
WEIGHT = ["conv1", "conv2", "logits"]
REAL_MODEL_LAYERS = space.model_layers  # before the fixture below replaces it


@pytest.fixture(autouse=True)
def _digits_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(space, "model_layers", lambda study: list(DIGITS))


def layered(layers: dict[str, Any], **extra: Any) -> Study:
    search = {"strategy": "optuna", "budget": 8, "layers": layers, **extra.pop("search", {})}
    return parse_study({"name": "pl", "dataset": "digits", "model": "digits_cnn",
                        "train": {"epochs": 1}, "search": search, **extra})  # fmt: skip


SHOWCASE = {
    "all": {"bits": [8, 4, "ternary"], "sparsity": [0.0, 0.5], "clusters": [0, 16]},
    "dense": {"bits": [8, 4]},
    "conv1": {"bits": [8]},
    "act1": {"activation_bits": [8, 4]},
    "act2": {"jr_weight": [0.0, 0.001]},
}


def errors(data: dict[str, Any]) -> str:
    with pytest.raises(StudyError) as err:
        study = parse_study(data)
        study.layer_space()
    return str(err.value)


def test_showcase_space_resolves_with_overrides_by_type_and_name() -> None:
    study = layered(SHOWCASE, objective={"max_bytes": 4096})
    ls = study.layer_space()
    c = ls.choices
    assert c[("conv1", "bits")] == ("8",)  # name over all
    assert c[("conv2", "bits")] == ("8", "4", "ternary")  # all
    assert c[("logits", "bits")] == ("8", "4")  # type over all
    assert c[("conv2", "sparsity")] == (0.0, 0.5) and c[("logits", "clusters")] == (0, 16)
    assert c[("act1", "activation_bits")] == (8, 4) and ("act2", "activation_bits") not in c
    assert c[("act2", "jr_weight")] == (0.0, 0.001)
    # every weight layer's own fields, none for flatten: 1*3*2 bits x (2*2)^3 x 2 act x 2 jr
    assert ls.size == 1 * 3 * 2 * 4**3 * 2 * 2 == study.point_count
    names = space.distributions(study)
    assert "conv2.bits" in names and "conv1.bits" not in names  # a single choice is no parameter
    assert not {"bits", "sparsity", "clusters"} & set(names)  # every weight layer has its own
    table = ls.table().splitlines()
    assert [ln.split()[0] for ln in table] == ["layer", "conv1", "act1", "conv2", "act2", "logits"]
    assert study.objective.max_bytes == 4096
    assert space.objectives(study).reference[1] == 4096  # the hypervolume box ends at the budget


def test_validate_prints_space_size_and_the_layer_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from grid import cli

    monkeypatch.setattr(Study, "check_models", lambda self, builtin=False: [])  # no TF here
    f = tmp_path / "pl.yaml"
    f.write_text(
        "name: pl\nmodel: digits_cnn\n"
        "search:\n  strategy: optuna\n  budget: 40\n  layers:\n"
        "    all: {bits: [8, 4, ternary], sparsity: [0.0, 0.5, 0.75], clusters: [0, 16]}\n"
        "    dense: {bits: [8, 4]}\n    conv1: {bits: [8]}\n"
        "    act1: {activation_bits: [8, 4]}\n    act2: {jr_weight: [0.0, 0.001]}\n"
        "objective: {max_bytes: 4096}\n"
    )
    assert cli.main(["validate", str(f)]) == 0
    out = capsys.readouterr().out
    size = (1 * 3 * 2) * (3 * 2) ** 3 * 2 * 2
    assert f"{size:,} distinct points" in out
    rows = {ln.split()[0]: re.split(r"\s{2,}", ln.strip()) for ln in out.splitlines() if ln.strip()}
    assert rows["layer"] == ["layer", "type", *space.LAYER_FIELDS]
    assert rows["conv2"] == [
        "conv2",
        "conv2d",
        "[8, 4, ternary]",
        "[0, 0.5, 0.75]",
        "[0, 16]",
        "-",
        "-",
    ]
    assert rows["act1"] == ["act1", "activation", "-", "-", "-", "[8, 4]", "-"]
    assert rows["logits"][:3] == ["logits", "dense", "[8, 4]"] and "flatten" not in rows
    assert "flash budget: 4,096 B (encoded)" in out
    assert "seeds: 6 uniform + ans_hybrid" in out  # 8 bits x 3 sparsities x 2 cluster counts


@pytest.mark.parametrize(
    ("layers", "extra", "want"),
    [
        ({"conv3": {"bits": [8]}}, {}, "search.layers.conv3: no layer or layer type 'conv3'"),
        ({"logit": {"bits": [8]}}, {}, "did you mean 'logits'?"),
        ({"Dens": {"bits": [8]}}, {}, "did you mean 'dense'?"),
        ({"all": {"bits": [8, "7x"]}}, {}, "search.layers.all.bits[1] = '7x'"),
        ({"all": {"bits": [8, 1]}}, {}, "use 'binary' for 1-bit weights"),
        ({"all": {"sparsity": [1.0]}}, {}, "search.layers.all.sparsity[0] = 1.0"),
        ({"all": {"clusters": [1]}}, {}, "search.layers.all.clusters[0] = 1"),
        ({"all": {"bits": [8, 8]}}, {}, "duplicate value '8'"),
        ({"all": {"bits": ["ans_hybrid"]}}, {}, "'ans_hybrid' is not a width a layer can be given"),
        ({"all": {}}, {}, "search.layers.all: no choices"),
        ({"dense": {"activation_bits": [4]}}, {}, "search.layers.dense.activation_bits = [4]: logits is a weight layer"),
        ({"act1": {"bits": [4]}}, {}, "search.layers.act1.bits = ['4']: act1 is an activation layer"),
        ({"flatten": {"bits": [4]}}, {}, "search.layers.flatten: layer 'flatten' (flatten) has no weights"),
        ({"all": {"bits": [8, 4]}}, {"search": {"strategy": "grid", "budget": None}}, "search.layers: a per-layer space is searched"),
        ({"all": {"bits": [8, 4]}}, {"search": {"budget": None}}, "search.budget: a per-layer space needs a budget"),
        ({"all": {"bits": [8, 4]}}, {"search": {"budget": 9}}, "search.budget: 9 is more than the 8 distinct points"),
        ({"all": {"bits": [8, 4]}}, {"axes": {"bits": [8, 2]}}, "axes.bits: ['8', '2'] varies, but search.layers gives every weight layer its own bits"),
        ({"all": {"bits": [8]}}, {"objective": {"max_bytes": 0}}, "objective.max_bytes = 0: Input should be greater than or equal to 1"),
        ({"all": {"bits": [8]}}, {"objective": {"max_bytes": -5}}, "objective.max_bytes = -5"),
        ({"act2": {"jr_weight": [0.0, 0.1]}}, {"train": {"jr_layers": {"all": 0.1}}}, "give per-layer JR in one place"),
    ],
)  # fmt: skip
def test_bad_per_layer_input_names_the_field_and_the_value(
    layers: dict[str, Any], extra: dict[str, Any], want: str
) -> None:
    search = {"strategy": "optuna", "budget": 2, "layers": layers, **extra.pop("search", {})}
    search = {k: v for k, v in search.items() if v is not None}
    msg = errors({"name": "bad", "model": "digits_cnn", "search": search, **extra})
    assert want in msg, msg


def test_a_budget_without_layers_is_allowed_and_constrains_the_front(tmp_path: Path) -> None:
    study = parse_study({"name": "b", "axes": {"bits": [8, 4]}, "objective": {"max_bytes": 100}})
    assert study.layer_space() is None and study.point_count == 2
    state = StudyState(study, tmp_path)
    state.params = 1000
    a, b = (space.point_label(p) for p in state.points)
    for label, values in ((a, [0.9, 150.0]), (b, [0.5, 80.0])):
        for key in state.keys[label]:
            state.values[key] = values
    f = state.front()
    assert f.labels == (b,) and f.points == 1  # a is over the budget: never on the front
    assert state.infeasible() == 1
    assert (
        state.budget_line()
        == "budget 100 B (encoded): 1 of 2 complete point(s) over it, off the front"
    )


def _full(ls: space.LayerSpace, params: dict[str, int], axes: dict[str, Any]) -> tuple[Any, ...]:
    """A full assignment straight from the ranks (no canonical form): the oracle's view."""
    out = []
    for name, _, weight in ls.layers:
        for field in space.FITS[weight]:
            values = ls.choices.get((name, field))
            if values is not None:
                out.append((name, field, values[params.get(f"{name}.{field}", 0)]))
            elif field in space.WEIGHT_FIELDS:
                out.append((name, field, axes[field]))
    return tuple(out)


def test_distinct_assignments_have_distinct_keys_and_equal_ones_one_key() -> None:
    """Over a whole small space: points, labels and trial keys are in one-to-one
    correspondence with the full assignments (computed here from the ranks alone)."""
    study = layered({"all": {"bits": [8, 4, "float"], "sparsity": [0.0, 0.5]},
                     "act1": {"activation_bits": [8, 4]}},
                    axes={"clusters": [0, 4]}, search={"budget": 4})  # fmt: skip
    ls = study.layer_space()
    dists = space.distributions(study)
    sizes = {n: d.high + 1 for n, d in dists.items() if getattr(d, "high", 0) > 0}
    assignments, labels, keys = set(), set(), set()
    for combo in itertools.product(*(range(k) for k in sizes.values())):
        params = {**{n: 0 for n in dists}, **dict(zip(sizes, combo, strict=True))}
        axes = {"clusters": space.ordered_values(study)["clusters"][params["clusters"]]}
        point = space.to_point(study, params)
        full = _full(ls, params, axes)
        # a float model has no quantized activations: its activation choices collapse
        if all(v == "float" for n, f, v in full if f == "bits"):
            full = tuple(x for x in full if x[1] != "activation_bits")
        assignments.add(full)
        labels.add(space.point_label(point))
        keys.add(study.point_trials(point)[0].key)
    assert len(labels) == len(keys) == len(assignments) > 100


def test_uniform_assignment_is_the_uniform_grid_point_and_its_key() -> None:
    study = layered({"all": {"bits": [8, 4, "ternary"], "sparsity": [0.0, 0.5]}},
                    axes={"clusters": [0, 16]})  # fmt: skip
    # A per-layer search holds activations at train.activation_bits, else 8, at every
    # quantized point: a uniform one is the grid point of a study that says so.
    plain = parse_study({"name": "u", "dataset": "digits", "model": "digits_cnn",
                         "train": {"epochs": 1, "activation_bits": 8},
                         "axes": {"bits": [8, 4, "ternary"],
                         "sparsity": [0.0, 0.5], "clusters": [0, 16]}})  # fmt: skip
    grid_keys = {space.point_label(p): plain.point_trials(p)[0].key for p in space.points(plain)}
    ls = study.layer_space()
    for b, s, c in itertools.product(["8", "4", "ternary"], [0.0, 0.5], [0, 16]):
        params = {space.param_name(n, f): ls.choices[(n, f)].index(v)
                  for n in WEIGHT for f, v in (("bits", b), ("sparsity", s))}  # fmt: skip
        params["clusters"] = space.ordered_values(study)["clusters"].index(c)
        point = space.to_point(study, {**params, "jr_weight": 0, "adversarial": 0, "jr_layers": 0})
        assert "layers" not in point  # no overrides
        label = space.point_label(point)
        assert study.point_trials(point)[0].key == grid_keys[label]
        cfg = study.point_trials(point)[0]
        assert (cfg.bits, cfg.sparsity, cfg.clusters, cfg.activation_bits) == (b, s, c, 8)


def test_the_same_assignment_written_with_any_base_is_one_point() -> None:
    """A full assignment written as base + overrides with a non-canonical base (any of its
    values) maps back to the one canonical point and key."""
    study = layered(SHOWCASE)
    ls = study.layer_space()
    rng = random.Random(5)
    for p in space.random_points(study, 40, seed=1):
        full = space.full_assignment(study, ls, p)
        want = study.point_trials(p)[0].key
        for field in space.WEIGHT_FIELDS:
            values = [full[field][n] for n in WEIGHT]
            base = rng.choice(values)
            over = {n: v for n, v in zip(WEIGHT, values, strict=True) if v != base}
            other = json.loads(json.dumps(p))
            other[field] = base
            layers = other.setdefault("layers", {})
            layers.pop(field, None)
            if over:
                layers[field] = over
            again = space.canonical(study, ls, {k: other[k] for k in space.AXIS_NAMES if k in other},
                                    {**space.full_assignment(study, ls, other),
                                     "activation_bits": full["activation_bits"]})  # fmt: skip
            assert again == p and study.point_trials(again)[0].key == want


def test_to_point_inverts_to_params_over_random_assignments() -> None:
    study = layered(SHOWCASE, search={"budget": 50})
    picked = space.random_points(study, 50, seed=11)
    assert len({space.point_label(p) for p in picked}) == 50  # distinct
    assert picked == space.random_points(study, 50, seed=11)  # seeded
    assert picked != space.random_points(study, 50, seed=12)
    dists = space.distributions(study)
    for p in picked:
        params = space.to_params(study, p)
        assert set(params) == set(dists)
        assert all(dists[k]._contains(v) for k, v in params.items())  # type: ignore[attr-defined]
        assert space.to_point(study, params) == p
        assert space.in_space(study, p)
    bad = {**picked[0], "layers": {"bits": {"conv1": "4"}}}  # conv1 takes 8 bits only
    assert not space.in_space(study, bad)


def test_seeds_are_uniform_at_most_half_the_budget_and_ans_hybrid() -> None:
    study = layered(SHOWCASE, search={"budget": 8})
    uniform, ans = space.seed_points(study)
    # uniform: conv1 takes 8 bits only, so bits 8 x sparsity 2 x clusters 2 = 4 = 8 // 2
    assert len(uniform) == 4
    for p in uniform:
        assert p["bits"] == "8" and not set(p.get("layers") or {}) & {
            "bits",
            "sparsity",
            "clusters",
        }
    assert ans is not None and ans["bits"] == "ans_hybrid"
    cfg = study.point_trials(ans)[0]
    assert cfg.ans is not None and not cfg.layer_bits
    few = layered(SHOWCASE, search={"budget": 4})
    two, _ = space.seed_points(few)
    # four uniform ones, sampled evenly in order of compression: the least and most compressed
    assert [(p["sparsity"], p["clusters"]) for p in two] == [(0.0, 0), (0.5, 16)]


def test_state_meets_stored_configs_of_its_space_and_counts_infeasible(tmp_path: Path) -> None:
    """The store's per-layer configs map back to their points (key checked), other studies'
    rows are left alone, and points over the budget are counted and kept off the front."""
    study = layered(SHOWCASE, objective={"max_bytes": 5000}, search={"budget": 12})
    folder = tmp_path / study.name
    sink = ParquetSink(str(folder), study.name, "test")
    stored = space.random_points(study, 6, seed=2)
    nbytes = [3000, 6000, 4000, 7000, 5000, 9000]
    for p, b, r in zip(stored, nbytes, [0.5, 0.6, 0.4, 0.7, 0.45, 0.9], strict=True):
        cfg = study.point_trials(p)[0]
        sink(cfg.key, config_rows(cfg, r, b, study=study.name))
    other = parse_study({"name": "o", "axes": {"bits": [2]}, "train": {"epochs": 3}})
    cfg = other.trials()[0]
    sink(cfg.key, config_rows(cfg, 0.99, 10, study="o"))  # another study's trial, same folder
    state = StudyState(study, folder)
    values = state.point_values()
    assert set(values) == {space.point_label(p) for p in stored}
    assert state.infeasible() == 3  # 6000, 7000, 9000 > 5000
    # brute force over the stored figures: feasible and not dominated
    rows = [(space.point_label(p), r, b) for p, b, r in
            zip(stored, nbytes, [0.5, 0.6, 0.4, 0.7, 0.45, 0.9], strict=True) if b <= 5000]  # fmt: skip
    brute = {a for a, ra, ba in rows
             if not any(rb >= ra and bb <= ba and (rb > ra or bb < ba) for _, rb, bb in rows)}  # fmt: skip
    assert set(state.front().labels) == brute and brute
    saved = state.save("optuna")
    doc = json.loads((folder / "search.json").read_text())
    assert doc["points_infeasible"] == 3 and doc["max_bytes"] == 5000
    assert {f["point"] for f in doc["front"]} == set(saved.labels) == brute


@pytest.mark.slow
def test_per_layer_search_with_a_budget_validates_runs_resumes_and_keeps_infeasible_off(
    tmp_path: Path,
) -> None:
    """issue 22, what it must show (1): validate, run, resume from the journal exactly once;
    points over the budget are counted and never on the front (brute force over the rows)."""
    import optuna

    from analysis.query import connect
    from grid.searcher import ANS_ANSWER, CONSTRAINT_ATTR
    from grid.spec import load_study
    from tests.helpers import GRID, STUDIES, grid_cli

    study_file = tmp_path / "perlayer.yaml"
    study_file.write_text((STUDIES / "perlayer.yaml").read_text())
    study = load_study(study_file)
    real = REAL_MODEL_LAYERS(study)  # the fast tests' layer list is the real build
    assert [(n, k) for n, k, _ in real] == DIGITS
    assert [n for n, _, takes in real if takes == "weight"] == WEIGHT
    assert [n for n, _, takes in real if takes == "activation"] == ["act1", "act2"]

    checked = grid_cli("validate", str(study_file))
    assert checked.returncode == 0, checked.stderr
    assert "per-layer space of perlayer-smoke (digits_cnn): 18 distinct points" in checked.stdout
    assert "seeds: 2 uniform + ans_hybrid" in checked.stdout
    assert "flash budget: 5,000 B (encoded)" in checked.stdout

    # Killed (-9) mid-search, then resumed: the budget's points, each once.
    folder = tmp_path / study.name
    stored = lambda: list((folder / "rows").glob("*.parquet"))  # noqa: E731
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(
        [*GRID, "run", str(study_file), "--results", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while len(stored()) < 2:
            assert driver.poll() is None, driver.stdout.read() if driver.stdout else ""
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):  # the killed driver's local Ray
            os.killpg(driver.pid, signal.SIGKILL)
    killed = len(stored())
    assert 2 <= killed < 4
    first = grid_cli("resume", str(study_file), "--results", str(tmp_path))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert f"4 trials, {killed} already complete, {4 - killed} to run" in first.stdout
    assert len(stored()) == 4
    # A bigger budget resumes the same Optuna study from its journal.
    study_file.write_text(study_file.read_text().replace("budget: 4", "budget: 6"))
    second = grid_cli("resume", str(study_file), "--results", str(tmp_path))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "6 trials, 4 already complete, 2 to run" in second.stdout
    study = load_study(study_file)

    con = connect(folder)
    rows = con.execute(
        "SELECT key, min(metric_robust_acc) FILTER (WHERE attack = 'worst'), "
        "any_value(metric_bytes), count(*), any_value(cfg_bits), any_value(cfg_layer_bits), "
        "any_value(meta_layer_bits_json) "
        "FROM rows GROUP BY key"
    ).fetchall()
    assert len(rows) == 6 and all(r[3] == 2 for r in rows)  # exactly once: fgsm + worst
    assert sum(r[4] == "ans_hybrid" for r in rows) == 1  # the ans_hybrid seed ran
    uniform = {r[4] for r in rows if r[5] == "{}" and r[4] != "ans_hybrid"}
    assert uniform == {"8", "ternary"}  # the uniform seeds (logits takes no 4 bits)
    over = {r[0] for r in rows if r[2] > 5000}
    feasible = [(r[0], r[1], r[2]) for r in rows if r[2] <= 5000]
    assert over and feasible  # the 8-bit model is over 5,000 B, ternary within
    brute = {
        k for k, ra, ba in feasible
        if not any(rb >= ra and bb <= ba and (rb > ra or bb < ba) for _, rb, bb in feasible)
    }  # fmt: skip
    saved = json.loads((folder / "search.json").read_text())
    assert {k for f in saved["front"] for k in f["keys"]} == brute
    assert saved["points_infeasible"] == len(over) and saved["points_complete"] == len(feasible)
    assert saved["reference"][1] == 5000  # the box ends at the budget

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "optuna.journal"))
    )
    trials = optuna.load_study(study_name=study.name, storage=storage).trials
    done = [t for t in trials if t.state.name == "COMPLETE"]
    told = [t for t in done if t.user_attrs.get("answered") != ANS_ANSWER]
    keys = {study.point_trials(space.to_point(study, t.params))[0].key for t in told}
    assert keys == {r[0] for r in rows if r[4] != "ans_hybrid"}  # told each stored point
    ans = next(r for r in rows if r[4] == "ans_hybrid")
    for t in done:  # ans_hybrid's widths, when within the choices, told with its values
        if t.user_attrs.get("answered") == ANS_ANSWER:
            assert t.user_attrs["ans_key"] == ans[0] and t.values == pytest.approx(ans[1:3])
            point = space.to_point(study, t.params)
            widths = space.full_assignment(study, study.layer_space(), point)["bits"]
            assert widths == json.loads(ans[6])  # the widths ans_hybrid built
    for t in done:  # the constraint Optuna stored: bytes over the budget
        assert t.constraints == {CONSTRAINT_ATTR: pytest.approx(t.values[1] - 5000)}
    # the uniform seeds, each complete once (one killed while running is enqueued again)
    seeded = [space.to_point(study, t.params) for t in done if t.user_attrs.get("seed")]
    assert sorted(p["bits"] for p in seeded) == ["8", "ternary"]
    assert not any(p.get("layers") for p in seeded)

    status = grid_cli("status", str(study_file), "--results", str(tmp_path))
    assert "6 done, 0 running, 0 failed, 0 to do" in status.stdout
    assert f"budget 5,000 B (encoded): {len(over)} of 6 complete point(s) over it" in status.stdout
    pareto = grid_cli("pareto", str(folder))
    assert pareto.returncode == 0, pareto.stderr
    assert f"budget 5,000 B (encoded): {len(over)} of 6 complete trial(s) over it" in pareto.stdout
    assert not any(k in pareto.stdout for k in over) and all(k in pareto.stdout for k in brute)


def _bytes(study: Study, point: dict[str, Any]) -> float:
    """A made-up footprint: storage bits per weight layer (stands in for training)."""
    if point["bits"] == "ans_hybrid":
        return 300.0
    full = space.full_assignment(study, study.layer_space(), point)
    width = {"8": 8, "4": 4, "ternary": 2}
    return sum(width[b] * 10 * (1 - full["sparsity"][n]) for n, b in full["bits"].items())


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "nsga3"])
def test_searcher_runs_seeds_first_and_tells_the_budget_constraint(
    sampler: str, tmp_path: Path
) -> None:
    from grid.searcher import CONSTRAINT_ATTR, optuna_searcher

    study = layered({"all": {"bits": [8, 4, "ternary"], "sparsity": [0.0, 0.5]}},
                    objective={"max_bytes": 150},
                    search={"budget": 12, "sampler": sampler, "population": 4})  # fmt: skip
    state = StudyState(study, tmp_path)
    searcher = optuna_searcher(study, state)
    uniform, ans = space.seed_points(study)
    assert ans is not None and len(uniform) == 6  # 3 widths x 2 sparsities = 12 // 2
    seen = []
    for i in range(study.budget):
        config = searcher.suggest(f"t{i}")
        unit = config["payload"]
        assert unit["keys"] == [t.key for t in study.point_trials(unit["point"])]
        seen.append(unit["label"])
        result = {"robust_acc": 0.5, "bytes": _bytes(study, unit["point"]), "status": "complete"}
        searcher.on_trial_complete(f"t{i}", result=result)
    assert len(set(seen)) == study.budget
    assert seen[0] == space.point_label(ans)  # outside Optuna's space: handed out first
    assert set(seen[1:7]) == {space.point_label(p) for p in uniform}  # then the enqueued seeds
    trials = searcher.inner._ot_study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(done) >= study.budget - 1
    for t in done:  # feasible iff bytes <= max_bytes, as the sampler reads it
        want = t.values[1] - 150
        assert t.constraints == {CONSTRAINT_ATTR: pytest.approx(want)}
    assert any(t.values[1] > 150 for t in done) and any(t.values[1] <= 150 for t in done)
    # a new driver on the same journal: the seeds are not enqueued again
    before = len(trials)
    again = StudyState(study, tmp_path)
    from grid.searcher import optuna_study

    optuna_study(study, again, searcher.inner._storage)
    assert len(searcher.inner._ot_study.get_trials(deepcopy=False)) == before


def test_random_strategy_plans_distinct_per_layer_points(tmp_path: Path) -> None:
    from grid.planning import plan

    study = layered(SHOWCASE, search={"strategy": "random", "budget": 7})
    state = StudyState(study, tmp_path)
    planned = plan(study, state)
    assert planned.total == 7 and len(planned.payloads) == 7
    labels = [u.label for u in planned.payloads]
    assert len(set(labels)) == 7
    assert set(labels) == {space.point_label(p) for p in space.random_points(study, 7, 0)}
    for u in planned.payloads:
        assert list(u.keys) == [study.point_trials(u.point)[0].key]
