"""Study validation: bad input fails fast, names the field and the value, starts no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import yaml

from grid.cli import main
from grid.spec import MAX_TRIALS, StudyError, load_study, parse_study

SMOKE = Path(__file__).parent / "studies" / "smoke.yaml"


def _with(path: list[str | int], value: object) -> dict:
    data = yaml.safe_load(SMOKE.read_text())
    cur = data
    for part in path[:-1]:
        cur = cur[part]
    cur[path[-1]] = value
    return data


BAD = [
    # (path, value, text the message must contain)
    (["axes", "bits"], [0, 4], "axes.bits[0] = 0"),
    (["axes", "bits"], [1], "use 'binary'"),
    (["axes", "bits"], ["trinary"], "axes.bits[0] = 'trinary'"),
    (["axes", "bits"], [True], "axes.bits[0] = True"),
    (["axes", "sparsity"], [0.0, 1.0], "axes.sparsity[1] = 1.0"),
    (["axes", "sparsity"], [-0.1], "axes.sparsity[0] = -0.1"),
    (["axes", "clusters"], [1], "axes.clusters[0] = 1"),
    (["axes", "jr_weight"], [-0.5], "axes.jr_weight[0] = -0.5"),
    (["axes", "jr_weight"], [0.1, 0.1], "duplicate value 0.1"),
    (["axes", "bits"], [], "axes.bits"),
    (["attacks", 0, "eps"], [0.0], "attacks[0].eps[0] = 0.0"),
    (["attacks", 0, "eps"], [-0.1], "attacks[0].eps[0] = -0.1"),
    (["attacks", 0, "eps"], [1.5], "attacks[0]: eps: 1.5 > 1 for an L-inf attack"),
    (["attacks", 0, "eps"], [1001.0], "attacks[0].eps[0] = 1001.0"),
    (["attacks", 0, "name"], "carlini", "attacks[0].name = 'carlini'"),
    (["train", "epochs"], "ten", "train.epochs = 'ten'"),
    (["train", "epochs"], 2.5, "train.epochs = 2.5"),
    (["train", "epochs"], 0, "train.epochs = 0"),
    (["train", "epoch"], 3, "did you mean 'epochs'"),
    (["axes", "bitz"], [4], "axes.bitz: unknown key"),
    (["dataset"], "cifar100", "unknown dataset 'cifar100'"),
    (["model"], "resnet9000", "unknown model 'resnet9000'"),
    (["name"], "../escape", "name = '../escape'"),
    (["objective"], {"attack": "cw"}, "objective.attack: 'cw'"),
    (["objective"], {"eps": 0.3}, "objective.eps: 0.3"),
    (["axes", "sparsity"], [i / 1000 for i in range(64)], "more than"),
    (["axes", "jr_layers"], ["all"], "axes.jr_layers[0] = 'all'"),
    (["axes", "jr_layers"], [{"act1": -1.0}], "axes.jr_layers[0].act1 = -1.0"),
    (["axes", "jr_layers"], ["none", "none"], "duplicate value {}"),
    (["attacks", 1, "restarts"], -1, "attacks[1].restarts = -1"),
    (["objective"], {"norm": "1"}, "objective.norm = '1'"),
    (["objective"], {"norm": "2"}, "objective.norm: no attack of the study has norm '2'"),
    (
        ["objective"],
        {"attack": "pgd", "norm": "2"},
        "objective.norm: '2' is not the norm of attack 'pgd'",
    ),
    (["objective"], {"size": "flash"}, "objective.size = 'flash'"),
]


@pytest.mark.parametrize(("path", "value", "expected"), BAD, ids=[str(b[2]) for b in BAD])
def test_bad_study_names_field_and_value(path: list, value: object, expected: str) -> None:
    data = _with(path, value)
    if expected == "more than":  # 64^4 trials > MAX_TRIALS
        data["axes"] = {
            k: [i / 1000 for i in range(64)] if k != "bits" else list(range(2, 17)) * 1
            for k in ("bits", "sparsity", "jr_weight")
        }
        data["axes"]["clusters"] = [0, *range(2, 60)]
        assert MAX_TRIALS < 15 * 64 * 64 * 59
    with pytest.raises(StudyError) as info:
        parse_study(data, "bad.yaml")
    assert expected in str(info.value)
    assert "bad.yaml" in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\naxes: {bits: [4, 4}\n", "not valid YAML"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("name: a\nname: b\n", "key 'name' appears twice"),
        ("", "must be a YAML mapping"),
        ("name: x\nresults: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ],
)
def test_malformed_files_fail_cleanly(tmp_path: Path, text: str, expected: str) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(text)
    with pytest.raises(StudyError, match=expected):
        load_study(f)


@pytest.mark.parametrize("cmd", ["run", "validate"])
def test_cli_exits_nonzero_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cmd: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_with(["axes", "sparsity"], [0.5, 1.0])))
    rc = main([cmd, str(bad), *(["--results", str(tmp_path / "r")] if cmd == "run" else [])])
    err = capsys.readouterr().err
    assert rc == 2
    assert "axes.sparsity[1] = 1.0" in err
    assert not ray.is_initialized()
    assert not (tmp_path / "r").exists()  # nothing written


def test_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "/no/such/study.yaml"]) == 2
    assert "no such study file" in capsys.readouterr().err


def test_a_study_is_found_by_file_by_embedded_file_name_and_by_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from grid.spec import embedded_studies

    default = load_study(None)
    assert default.name == "digits-default"  # what `grid run` prints
    assert load_study("default") == load_study("digits-default") == default
    assert load_study("stq_showcase") == load_study("stq-showcase")
    copy = tmp_path / "default"  # a file of that name wins over the embedded study
    copy.write_text("name: mine\ndataset: digits\nmodel: digits_cnn\n")
    assert load_study(copy).name == "mine"
    assert embedded_studies()["stq_showcase"] == "stq-showcase"
    assert main(["validate", "no-such-study"]) == 2
    err = capsys.readouterr().err
    assert "no-such-study: no such study file" in err and "default (digits-default)" in err


def test_every_command_that_takes_a_study_defaults_to_the_default_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate"]) == 0
    assert "ok: study digits-default" in capsys.readouterr().out
    assert main(["status", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'digits-default'} holds no results yet (`grid run`)" in err
    assert main(["status", "digits-default", "--results", str(tmp_path)]) == 2
    assert "(`grid run digits-default`)" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_a_point_is_described_by_the_values_of_the_axes_that_vary() -> None:
    from grid.space import describe_point, point_label, points

    study = load_study("stq_showcase")  # bits x jr_layers x model vary; the rest do not
    texts = [describe_point(study, point_label(p)) for p in points(study)]
    assert texts[0] == "bits=float jr_layers=none model=digits_cnn"
    assert texts[1] == 'bits=float jr_layers={"all": 3e-05} model=digits_cnn'
    assert texts[-1] == 'bits=ans_hybrid jr_layers={"all": 3e-05} model=stq_digits'
    assert len(set(texts)) == len(texts) == study.grid_size // study.folds
    single = load_study("compound_showcase")
    assert (
        describe_point(single, point_label(points(single)[-1])) == "bits=4 sparsity=0.5 clusters=8"
    )


def test_default_study_is_a_real_cross_product() -> None:
    study = load_study(None)
    a = study.axes
    assert all(len(v) >= 2 for v in (a.bits, a.sparsity, a.clusters, a.jr_weight))
    trials = study.trials()
    assert len(trials) == study.grid_size >= 16
    assert len({t.key for t in trials}) == len(trials)  # every point is its own trial


def test_trial_key_ignores_threads_only() -> None:
    t = load_study(SMOKE).trials()[0]
    assert t.model_copy(update={"threads": 8}).key == t.key
    assert t.model_copy(update={"sparsity": 0.25}).key != t.key


def test_unwritable_results_fails_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = main(["run", str(SMOKE), "--results", str(blocker)])
    assert rc == 2
    assert f"results: cannot write to {blocker}" in capsys.readouterr().err
    assert not ray.is_initialized()
    assert blocker.read_text() == "not a folder"


def test_attack_options_are_checked_against_art(tmp_path: Path) -> None:
    data = _with(
        ["attacks"], [{"name": "cw_l2", "eps": [0.5], "options": {"binary_search_step": 3}}]
    )
    with pytest.raises(
        StudyError,
        match=r"options: \['binary_search_step'\] are not parameters of ART's CarliniL2Method",
    ):
        parse_study(data, "s.yaml")
    ok = _with(
        ["attacks"], [{"name": "cw_l2", "eps": [0.5], "options": {"binary_search_steps": 3}}]
    )
    assert parse_study(ok, "s.yaml").trials()[0].attacks[0].options == {"binary_search_steps": 3}


def test_standard_autoattack_options_and_arts_l2_square_on_mfccs() -> None:
    bad = _with(["attacks"], [{"name": "autoattack", "eps": [0.1], "options": {"p_init": 0.3}}])
    with pytest.raises(
        StudyError,
        match=r"options: \['p_init'\] are not parameters of the standard AutoAttack \(known: square_queries\)",
    ):
        parse_study(bad, "s.yaml")
    ok = _with(
        ["attacks"], [{"name": "autoattack", "eps": [0.1], "options": {"square_queries": 100}}]
    )
    assert parse_study(ok, "s.yaml").trials()[0].attacks[0].options == {"square_queries": 100}
    kws = _with(["dataset"], "speech_commands")
    for name in ("square", "autoattack_art"):
        study = parse_study(
            {**kws, "attacks": [{"name": name, "eps": [0.5], "norm": "2"}]}, "s.yaml"
        )
        with pytest.raises(
            StudyError,
            match=r"attacks\[0\]\.norm: ART's L2 Square needs square inputs, and speech_commands's are 49 x 10",
        ):
            study.check_models()
    fine = parse_study(
        {**kws, "attacks": [{"name": "autoattack", "eps": [0.5], "norm": "2"}]}, "s.yaml"
    )
    fine.check_models()  # the standard AutoAttack's own Square fits 49 x 10


def test_per_layer_jr_is_an_axis_with_an_undefended_value() -> None:
    data = _with(["axes", "jr_layers"], ["none", {"all": 0.01}])
    study = parse_study(data)
    assert study.point_count == 2 * load_study(SMOKE).point_count
    layered = [t.jr_layers for t in study.trials()]
    assert layered.count({}) == layered.count({"all": 0.01}) == study.grid_size // 2
    # keys differ between the two values, labels name the axis
    assert len({t.key for t in study.trials()}) == study.grid_size
    both = _with(["axes", "jr_layers"], ["none", {"all": 0.01}])
    both["train"]["jr_layers"] = {"act1": 0.1}
    with pytest.raises(StudyError, match=r"train\.jr_layers and axes\.jr_layers"):
        parse_study(both)


def test_layer_bits_apply_to_quantized_points_only() -> None:
    data = _with(["train", "layer_bits"], {"conv1": 8})
    for t in parse_study(data).trials():
        assert t.layer_bits == ({} if t.bits == "float" else {"conv1": "8"}), t.bits
    from trainables.config import TrialConfig

    with pytest.raises(ValueError, match=r"layer_bits: .* bits .float. is float in every layer"):
        TrialConfig(bits="float", layer_bits={"conv1": 8})


def test_worst_objective_takes_one_norm() -> None:
    from trainables.headline import Headline

    data = _with(["attacks"], [
        {"name": "pgd", "eps": [0.1]},
        {"name": "deepfool", "eps": [0.5, 1.0]},
    ])  # fmt: skip
    study = parse_study(data)
    assert study.headline == Headline("worst", 0.1, "inf", "encoded")  # not 1.0, DeepFool's L2
    data["objective"] = {"norm": "2", "size": "tflite"}
    assert parse_study(data).headline == Headline("worst", 1.0, "2", "tflite")

    def headline(
        rows: list[dict[str, object]], attack: str, eps: float | None, norm: str
    ) -> float | None:
        return Headline(attack, eps, norm).pick(rows)

    rows = [  # with the trial's worst rows, one per (norm, eps): a single attack each, so equal
        {"status": "complete", "attack": "pgd", "attack_norm": "inf", "eps": 0.1, "metric_robust_acc": 0.4},
        {"status": "complete", "attack": "deepfool", "attack_norm": "2", "eps": 0.1, "metric_robust_acc": 0.2},
        {"status": "complete", "attack": "worst", "attack_norm": "inf", "eps": 0.1, "metric_robust_acc": 0.4},
        {"status": "complete", "attack": "worst", "attack_norm": "2", "eps": 0.1, "metric_robust_acc": 0.2},
    ]  # fmt: skip
    assert (
        headline(rows, "worst", 0.1, "inf") == 0.4
    )  # the L2 row at the same number is not mixed in
    assert headline(rows, "worst", 0.1, "2") == 0.2
    square = [
        {
            "status": "complete",
            "attack": "square",
            "attack_norm": n,
            "eps": e,
            "metric_robust_acc": a,
        }
        for n, e, a in (("inf", 0.1, 0.6), ("2", 0.1, 0.2), ("2", 0.5, 0.3))
    ]
    assert headline(square, "square", None, "inf") == 0.6  # a named attack keeps to the norm too
    assert headline(square, "square", 0.1, "inf") == 0.6
    legacy = [  # rows from before attack_norm: cw_l2 is L2 by default
        {"status": "complete", "attack": "cw_l2", "eps": 0.1, "metric_robust_acc": 0.05},
        {"status": "complete", "attack": "pgd", "eps": 0.1, "metric_robust_acc": 0.6},
    ]
    assert (
        headline(legacy, "cw_l2", 0.1, "2") == 0.05
        and headline(legacy, "cw_l2", 0.1, "inf") is None
    )
    # ... and from before the worst rows (revision < 3, stale): no worst, never a min
    assert headline(legacy, "worst", 0.1, "inf") is None


def test_a_stored_config_rebuilds_the_same_trial() -> None:
    """meta_config_json (and a manifest's config) carry the revision; they rebuild the trial."""
    import json

    from trainables.config import RESULTS_REVISION, TrialConfig

    cfg = TrialConfig(bits="4", sparsity=0.5, jr_layers={"all": 0.01})
    stored = json.loads(json.dumps(cfg.identity()))
    assert stored["revision"] == RESULTS_REVISION
    assert TrialConfig.model_validate(stored).key == cfg.key


def test_grid_schema_accepts_every_shipped_study_and_rejects_bad_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    import jsonschema

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    check = jsonschema.Draft202012Validator(schema)
    root = Path(__file__).parent.parent
    files = [
        *(root / "grid" / "studies").rglob("*.yaml"),
        *(root / "tests" / "studies").glob("*.yaml"),
    ]
    assert len(files) >= 15
    for f in files:  # as written, shorthands included (dataset: digits, bits: 4, jr_layers: none)
        errors = [
            f"{list(e.absolute_path)}: {e.message}"
            for e in check.iter_errors(yaml.safe_load(f.read_text()))
        ]
        assert not errors, (f.name, errors)
    base = yaml.safe_load((root / "grid" / "studies" / "stq_showcase.yaml").read_text())
    bad = {
        ("axes", "bits"): [1],  # below 2 bits (binary is a name)
        ("axes", "sparsity"): [1.0],  # < 1
        ("dataset",): "mnist",
        ("axes", "jr_layers"): ["nope"],
        ("train", "epochz"): 3,  # unknown key
        ("axes", "adversarial"): ["pgdd"],
    }
    for path, value in bad.items():
        data = json.loads(json.dumps(base))
        node = data
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        assert not check.is_valid(data), path
        with pytest.raises(StudyError):  # the schema rejects what the loader rejects
            parse_study(data, "t")


def test_the_study_file_reference_is_the_schemas() -> None:
    from grid.docs import study_reference
    from grid.spec import Study

    page = (Path(__file__).parent.parent / "docs" / "study-file.md").read_text()
    assert page == study_reference(), (
        "docs/study-file.md is stale: grid schema --reference --out docs/study-file.md"
    )
    # every field of every object of the study appears in the page, with its bounds
    for name in Study.model_fields:
        assert f"| `{name}` |" in page
    assert "| `folds` | integer | `1` | >= 1, <= 20 |" in page
    assert "| `attacks` | list of [Attack](#attack) | optional (computed) | items <= 32 |" in page


# A trial field -> where the study file sets it (a list: an axis, the value is one entry).
STUDY_PATH = {
    "epochs": ("train", "epochs"), "fine_tune_epochs": ("train", "fine_tune_epochs"),
    "batch_size": ("train", "batch_size"), "learning_rate": ("train", "learning_rate"),
    "test_fraction": ("train", "test_fraction"), "activation_bits": ("train", "activation_bits"),
    "jr_projections": ("train", "jr_projections"), "seed": ("seed",), "folds": ("folds",),
    "data_md5": ("dataset", "md5"), "threads": ("resources", "cpus_per_trial"),
    "sparsity": ("axes", "sparsity", []), "clusters": ("axes", "clusters", []),
    "jr_weight": ("axes", "jr_weight", []), "bits": ("axes", "bits", []),
}  # fmt: skip


def _probes(schema: dict) -> list[object]:
    """Values on and just past every bound the trial config's schema states, and a typical one."""
    options = schema.get("anyOf", [schema])
    out: list[object] = []
    for o in options:
        if o.get("type") == "integer":
            for k, step in (("minimum", 0), ("maximum", 0), ("exclusiveMinimum", 1),
                            ("exclusiveMaximum", -1)):  # fmt: skip
                if k in o:
                    out += [o[k] + step - 1, o[k] + step, o[k] + step + 1]
        elif o.get("type") == "number":
            for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                if k in o:
                    out += [o[k] - 1e-9, float(o[k]), o[k] + 1e-9]
        elif o.get("type") == "string" and "pattern" in o:
            out += ["0" * 32, "f" * 32, "F" * 32, "0" * 31, "g" * 32]
    return out


@pytest.mark.parametrize("field", sorted(STUDY_PATH))
def test_study_file_and_trial_config_accept_and_reject_the_same_values(field: str) -> None:
    from pydantic import ValidationError

    from trainables.config import TrialConfig

    schema = TrialConfig.model_json_schema()["properties"][field]
    probes = _probes(schema)
    if field == "bits":
        probes = [1, 2, 16, 17, "ternary", "binary", "ans_hybrid", "tern", "8"]
    if field == "clusters":
        probes += [1, 2, -1]  # 1 and negatives: rejected by a validator, not a bound
    assert len(probes) >= 3, (field, schema)
    for value in probes:
        try:
            TrialConfig.model_validate({field: value})
            trial_ok = True
        except ValidationError:
            trial_ok = False
        data: dict = {"name": "t", "dataset": {"name": "digits"}, "model": "digits_cnn"}
        *parents, leaf = [p for p in STUDY_PATH[field] if p != []]
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = [value] if STUDY_PATH[field][-1] == [] else value
        try:
            parse_study(data, "t")
            study_ok = True
        except StudyError:
            study_ok = False
        assert study_ok == trial_ok, (field, value, "study" if study_ok else "trial", "accepts it")


def test_every_axis_is_wired_through() -> None:
    """One axis table (trainables.config.AXES): the study file, the grid points, the trial
    config, the rows and the analysis all know each axis by it."""
    from analysis import pareto
    from analysis.query import AXIS_COLUMNS
    from grid.space import points
    from grid.spec import Axes
    from trainables.config import AXES, TrialConfig
    from trainables.rows import COLUMNS, base_row

    assert set(Axes.model_fields) == {a.name for a in AXES}
    assert {a.name for a in AXES} <= set(TrialConfig.model_fields)
    every = load_study("stq_showcase")
    assert set(points(every)[0]) == {a.name for a in AXES}  # several models: model too
    row = base_row(every.trials()[-1], "t")
    sql = pareto._PER_TRIAL
    for a in AXES:
        assert set(a.columns) <= set(COLUMNS) and set(a.columns) <= set(AXIS_COLUMNS), a
        assert all(c in row for c in a.columns), a
        assert f"AS {a.columns[0].removeprefix('cfg_')}" in sql, a  # trial_points carries it
    # the last point of the showcase, as its rows name it
    assert (row["cfg_bits"], row["cfg_model"], row["cfg_jr_layers"]) == (
        "ans_hybrid",
        "stq_digits",
        '{"all": 3e-05}',
    )
