"""The ecosystem's own front ends: optuna-dashboard, MLflow, TensorBoard, LaTeX/CSV tables, SVG/PDF.

The search and the export checks run without Ray; one tiny Optuna study runs on
a real local Ray with ``loggers: [mlflow, tensorboard]``, and its journal, its
MLflow store and its TensorBoard events are read back with each tool's own
reader (optuna-dashboard's HTTP API on 127.0.0.1, MlflowClient, TensorFlow's
event reader), against the rows in its Parquet files.
"""

from __future__ import annotations

import glob
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from analysis.compare import latex_table
from analysis.report import write_report
from analysis.report_html import Export
from grid import space
from grid.cli import main
from grid.launch import StudyState
from grid.searcher import PointSearcher, optuna_searcher, optuna_study
from grid.spec import StudyError, parse_study
from grid.store import ParquetSink
from tests.helpers import grid_cli, rows_for

STUDIES = Path(__file__).parent / "studies"

# ---- the Optuna study as optuna-dashboard shows it (no Ray) -----------------------------------

TWO_POINTS: dict[str, Any] = {
    "name": "two",
    "axes": {"bits": ["float", 4]},
    "attacks": [{"name": "fgsm", "eps": [0.1]}],
    "search": {"strategy": "optuna", "startup_trials": 5},
}


def _journal_study(path: Path, name: str) -> Any:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return optuna.load_study(study_name=name, storage=storage)


def test_search_names_objectives_and_records_real_values(tmp_path: Path) -> None:
    """A proposal of a running point waits and is told that point's values: never 'pruned'."""
    study = parse_study(TWO_POINTS)
    searcher = optuna_searcher(study, StudyState(study, tmp_path))
    first = searcher.suggest("t0")["payload"]
    second = searcher.suggest("t1")["payload"]  # Optuna re-proposes t0's point till the other
    assert {first["label"], second["label"]} == {space.point_label(p) for p in space.points(study)}
    assert searcher.redraws > 0  # the seeded sampler did re-propose t0's running point
    values = {first["label"]: (0.61, 1200.0), second["label"]: (0.42, 39720.0)}
    for tid, u in (("t0", first), ("t1", second)):
        searcher.on_trial_complete(
            tid, result={"robust_acc": values[u["label"]][0], "bytes": values[u["label"]][1],
                         "status": "complete"}
        )  # fmt: skip

    ostudy = _journal_study(tmp_path / "optuna.journal", "two")
    assert ostudy.metric_names == ["robust_acc", "bytes"]
    trials = ostudy.get_trials(deepcopy=False)
    assert len(trials) == 2 + searcher.redraws
    assert {t.state.name for t in trials} == {"COMPLETE"}
    answered = [t.user_attrs["answered"] for t in trials]
    assert answered.count("trained") == 2
    assert answered.count("same point as a running trial") == searcher.redraws
    by_bits = {"float": first if "bits=float" in first["label"] else second}
    by_bits["4"] = second if by_bits["float"] is first else first
    for t in trials:
        attrs = t.user_attrs
        assert attrs["bits"] in ("float", "4")  # the value, not Optuna's rank 0/1
        assert (attrs["sparsity"], attrs["clusters"], attrs["jr_weight"]) == (0.0, 0, 0.0)
        assert (attrs["adversarial"], attrs["jr_layers"], attrs["model"]) == (
            "none", "none", "digits_cnn"
        )  # fmt: skip
        unit = by_bits[attrs["bits"]]
        assert attrs["key"] == unit["keys"][0] and attrs["point"] == unit["label"]
        # The key is the trial the real values stand for, not a rank's.
        real = {"bits": attrs["bits"], "sparsity": 0.0, "clusters": 0, "jr_weight": 0.0,
                "adversarial": 0, "jr_layers": 0}  # fmt: skip
        assert attrs["key"] == study.point_trials(real)[0].key
        assert tuple(t.values) == pytest.approx(values[unit["label"]])


def test_store_answers_and_left_running_trials_are_complete(tmp_path: Path) -> None:
    """Points from the store join as complete trials with their values and real axis values;
    a trial a dead driver left running is complete when the store has its point, failed if not."""
    study = parse_study({**TWO_POINTS, "axes": {"bits": ["float", 4, "ternary"]}})
    dead = optuna_searcher(study, StudyState(study, tmp_path))
    left = dead.suggest("left")["payload"]  # asked, never told: the driver died
    other = dead.suggest("other")["payload"]
    key = left["keys"][0]
    ParquetSink(str(tmp_path), study.name, "t")(
        key,
        rows_for(
            key,
            {("fgsm", 0.1): 0.5, ("worst", 0.1): 0.5},
            clean=0.9,
            nbytes=1234,
            bits=left["point"]["bits"],
        ),
    )
    state = StudyState(study, tmp_path)
    ostudy = optuna_study(study, state, dead.inner._storage)
    trials = ostudy.get_trials(deepcopy=False)
    states = {t.user_attrs["point"]: t.state.name for t in trials}
    assert states == {left["label"]: "COMPLETE", other["label"]: "FAIL"}  # none added twice
    done = next(t for t in trials if t.state.name == "COMPLETE")
    assert done.values == [0.5, 1234.0] and done.user_attrs["key"] == key
    # Known to the store but not to Optuna: added, complete, with the real values.
    (tmp_path / "optuna.journal").unlink()
    fresh = optuna_searcher(study, state)
    assert isinstance(fresh, PointSearcher)
    added = _journal_study(tmp_path / "optuna.journal", study.name).trials
    assert [(t.state.name, t.values, t.user_attrs["answered"]) for t in added] == [
        ("COMPLETE", [0.5, 1234.0], "store")
    ]
    assert added[0].user_attrs["bits"] == left["point"]["bits"]


# ---- loggers in the study file ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"loggers": ["mlflow", "tensorbord"]},
         "loggers[1] = 'tensorbord': unknown logger 'tensorbord' (known: mlflow, tensorboard)"),
        ({"loggers": ["mlflow", "mlflow"]}, "duplicate value 'mlflow'"),
        ({"loggers": "mlflow"}, "loggers = 'mlflow': Input should be a valid array"),
        ({"mlflow_uri": "sqlite:///x.db"},
         "mlflow_uri: 'sqlite:///x.db' is set but loggers [] has no 'mlflow'"),
    ],
)  # fmt: skip
def test_bad_loggers_named(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(StudyError) as err:
        parse_study({"name": "x", **extra})
    assert message in str(err.value)


def test_bad_logger_stops_grid_run_before_ray(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "loggers": ["wandb"]}))
    proc = grid_cli("run", str(bad), "--results", str(tmp_path / "r"), timeout=120)
    assert proc.returncode == 2
    assert "loggers[0] = 'wandb': unknown logger 'wandb'" in proc.stderr
    assert not (tmp_path / "r").exists()  # nothing ran


# ---- one tiny Optuna study on a real Ray with MLflow and TensorBoard ----------------------------


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("frontends")
    spec = yaml.safe_load((STUDIES / "optuna.yaml").read_text())
    spec |= {"name": "frontends", "loggers": ["mlflow", "tensorboard"]}
    study_file = root / "frontends.yaml"
    study_file.write_text(yaml.safe_dump(spec))
    proc = grid_cli("run", str(study_file), "--results", str(root / "results"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = root / "results" / "frontends"
    assert f"mlflow: experiment 'frontends' at sqlite:///{folder}/mlflow.db" in proc.stdout
    return folder


def _stored(folder: Path) -> dict[str, dict[str, Any]]:
    """Per key, straight from its Parquet file: the axis values and the objectives (one fgsm
    eps, one fold: the worst attack's robust accuracy is that row's)."""
    out = {}
    for path in glob.glob(str(folder / "rows" / "*.parquet")):
        rows = pq.read_table(path).to_pylist()
        # one attack at one eps, and its worst-case row: equal, with one attack
        (row,) = [r for r in rows if r["attack"] == "fgsm"]
        (worst,) = [r for r in rows if r["attack"] == "worst"]
        assert row["status"] == "complete" and len(rows) == 2
        assert worst["metric_robust_acc"] == row["metric_robust_acc"]
        out[row["key"]] = {
            "bits": row["cfg_bits"], "sparsity": row["cfg_sparsity"],
            "clusters": row["cfg_clusters"], "jr_weight": row["cfg_jr_weight"],
            "robust_acc": row["metric_robust_acc"], "bytes": float(row["metric_bytes"]),
            "clean_acc": row["metric_clean_acc"],
        }  # fmt: skip
    assert len(out) == 3  # the budget: 3 distinct points, one fold each
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_optuna_dashboard_reads_like_the_study(logged_run: Path) -> None:
    stored = _stored(logged_run)
    port = _free_port()
    exe = Path(sys.executable).with_name("optuna-dashboard")
    server = subprocess.Popen(
        [str(exe), str(logged_run / "optuna.journal"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = _get(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "optuna-dashboard did not answer in 60 s"
                time.sleep(0.5)
        (entry,) = studies
        assert entry["study_name"] == "frontends"
        detail = _get(f"{base}/api/studies/{entry['study_id']}")
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert detail["objective_names"] == ["robust_acc", "bytes", "clean_acc"]
    assert detail["directions"] == ["maximize", "minimize", "maximize"]
    trials = detail["trials"]
    assert {t["state"] for t in trials} == {"Complete"}  # no "Pruned"
    seen = set()
    for t in trials:
        attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
        row = stored[attrs["key"]]
        seen.add(attrs["key"])
        assert attrs["bits"] == row["bits"]  # 'float' / 'ternary', not the rank '0' / '1'
        assert float(attrs["sparsity"]) == row["sparsity"]
        assert int(attrs["clusters"]) == row["clusters"]
        assert attrs["model"] == "digits_cnn" and attrs["answered"] in (
            "trained",
            "store",
            "same point as a running trial",
        )
        assert t["values"] == pytest.approx([row["robust_acc"], row["bytes"], row["clean_acc"]])
    assert seen == set(stored)


def test_mlflow_runs_hold_axis_values_and_metrics(logged_run: Path) -> None:
    from mlflow.tracking import MlflowClient

    stored = _stored(logged_run)
    client = MlflowClient(tracking_uri=f"sqlite:///{logged_run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("frontends")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.params["key"] for r in runs} == set(stored)
    for r in runs:
        row = stored[r.data.params["key"]]
        p, m = r.data.params, r.data.metrics
        assert p["bits"] == row["bits"] and float(p["sparsity"]) == row["sparsity"]
        assert int(p["clusters"]) == row["clusters"] and float(p["jr_weight"]) == row["jr_weight"]
        assert (p["adversarial"], p["jr_layers"], p["model"], p["folds"]) == (
            "none", "none", "digits_cnn", "0"
        )  # fmt: skip
        assert m["robust_acc"] == pytest.approx(row["robust_acc"])
        assert m["bytes"] == pytest.approx(row["bytes"])
        assert m["clean_acc"] == pytest.approx(row["clean_acc"])
        assert r.info.run_name.startswith(f"bits={row['bits']} sparsity={row['sparsity']:g}")


def test_tensorboard_events_per_trial_with_axis_hparams(logged_run: Path) -> None:
    import tensorflow as tf
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    stored = _stored(logged_run)
    folders = sorted(p.name for p in (logged_run / "tensorboard").iterdir())
    assert folders == sorted(stored)  # one run per trial key
    for key in folders:
        scalars: dict[str, float] = {}
        hparams: dict[str, Any] = {}
        for path in glob.glob(str(logged_run / "tensorboard" / key / "events.out.tfevents.*")):
            for event in tf.compat.v1.train.summary_iterator(path):
                for v in event.summary.value:
                    if v.metadata.plugin_data.plugin_name == "hparams":
                        data = HParamsPluginData.FromString(v.metadata.plugin_data.content)
                        if data.HasField("session_start_info"):
                            for name, value in data.session_start_info.hparams.items():
                                kind = value.WhichOneof("kind")
                                hparams[name] = getattr(value, kind)
                    elif v.HasField("simple_value"):
                        scalars[v.tag] = v.simple_value
        row = stored[key]
        assert scalars["ray/tune/robust_acc"] == pytest.approx(row["robust_acc"], rel=1e-6)
        assert scalars["ray/tune/bytes"] == pytest.approx(row["bytes"], rel=1e-6)
        assert hparams["bits"] == row["bits"] and hparams["key"] == key
        assert hparams["sparsity"] == pytest.approx(row["sparsity"])


# ---- tables as CSV and LaTeX, figures as SVG and PDF ----------------------------------------------

JR = '{"all": 0.01}'
# variant -> (bits, jr_layers, fold accuracies at fgsm eps 0.1, bytes)
VARIANTS = {
    "A": ("stochastic_ternary", JR, (0.6, 0.5), 2000),
    "B": ("float", "{}", (0.5, 0.3), 40000),
    "C": ("4", "{}", (0.45, 0.2), 5000),
}


def _results(tmp_path: Path) -> Path:
    root = tmp_path / "results" / "t"
    sink = ParquetSink(str(root), "t", "r")
    for name, (bits, jr, accs, nbytes) in VARIANTS.items():
        for fold, acc in enumerate(accs):
            key = f"{name}{fold}"
            rows = rows_for(key, {("fgsm", 0.1): acc}, 0.9, nbytes, fold=fold, folds=2, bits=bits,
                            jr_layers=jr, extra={"attack_kind": "white"})  # fmt: skip
            # its worst row (one attack: equal to it)
            rows += rows_for(key, {("worst", 0.1): acc}, 0.9, nbytes, fold=fold, folds=2,
                             bits=bits, jr_layers=jr)  # fmt: skip
            sink(key, rows)
    return root


def _check_tex(text: str) -> None:
    """Balanced environments, no unescaped specials: what a LaTeX run would trip over."""
    for env in ("table", "tabular"):
        assert text.count(f"\\begin{{{env}}}") == text.count(f"\\end{{{env}}}") == 1
    assert text.count("{") == text.count("}")
    body = re.sub(r"\\[A-Za-z]+|\\[_%&#$]", "", text)  # commands and escaped specials out
    assert not re.search(r"[_%&#$]", body.replace("&", "")), body
    for line in text.splitlines():
        if "&" in line:  # a table row: every cell separated, the row ended
            assert line.rstrip().endswith("\\\\"), line


def test_compare_writes_latex_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _results(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["compare", str(root), "--csv", str(tmp_path / "csv"),
                   "--latex", str(tmp_path / "tex")])  # fmt: skip
    assert rc == 0, capsys.readouterr()
    tex = {p.name: p.read_text() for p in (tmp_path / "tex").iterdir()}
    assert sorted(tex) == ["paper1_digits.tex", "paper1_gain.tex", "paper2.tex"]
    for text in tex.values():
        _check_tex(text)
    wide = tex["paper1_digits.tex"]
    # Hand-computed: A's folds 0.6, 0.5 -> 0.550 ± sd 0.071; B's 0.5, 0.3 -> 0.400 ± 0.141.
    a_row = next(
        line for line in wide.splitlines() if line.startswith("digits\\_cnn stochastic\\_ternary")
    )
    assert "0.550 ± 0.071" in a_row and "2,000" in a_row and " A " in a_row
    b_row = next(line for line in wide.splitlines() if line.startswith("digits\\_cnn float"))
    assert "0.400 ± 0.141" in b_row and "40,000" in b_row
    assert "w:fgsm@0.1" in wide
    # The gain of A over B: (0.55 - 0.40) / 0.40 = +37.5%, escaped; abs diff +15.0 points.
    assert "+37.5\\%" in tex["paper1_gain.tex"] and "+15.0" in tex["paper1_gain.tex"]
    # Paper 2: 4 bits alone against float, fold by fold: (0.45-0.5, 0.2-0.3) -> delta -0.075.
    p2_row = next(line for line in tex["paper2.tex"].splitlines() if "quantization" in line)
    assert "-0.075" in p2_row and "0.325" in p2_row
    gain = pd.read_csv(tmp_path / "csv" / "paper1_gain.csv")
    # per kind: white-box, and the worst rows (a kind of their own; one attack here: the same)
    assert gain.kind.tolist() == ["white", "worst"]
    assert gain.gain.tolist() == pytest.approx([0.375, 0.375])


def test_latex_table_escapes_and_formats() -> None:
    df = pd.DataFrame({"name_x": ["a_b", "50% & #1"], "bytes": [1234.0, None], "acc": [0.5, 0.25]})
    text = latex_table(df)
    assert "name\\_x" in text and "a\\_b" in text and "50\\% \\& \\#1" in text
    assert "1,234 & 0.500" in text and "n/a & 0.250" in text
    assert "\\toprule" in text and "\\bottomrule" in text and "\\begin{tabular}{lrr}" in text


def test_report_exports_tables_and_figures_in_each_format(tmp_path: Path) -> None:
    root = _results(tmp_path)
    export = Export(csv=tmp_path / "csv", latex=tmp_path / "tex", figures=tmp_path / "fig",
                    formats=("png", "svg", "pdf"))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_report(root, tmp_path / "report.html", "fgsm", 0.1, export=export)
    # A's JR has no JR-off twin at its compression: the section says so (it raised KeyError).
    assert (
        "jr_effects: no config with JR has a JR-off trial" in (tmp_path / "report.html").read_text()
    )
    figures = sorted(p.name for p in (tmp_path / "fig").iterdir())
    stems = {p.rsplit(".", 1)[0] for p in figures}
    assert {"pareto", "robustness", "paper1_variants"} <= stems
    assert figures == sorted(f"{s}.{f}" for s in stems for f in ("png", "svg", "pdf"))
    for stem in stems:
        assert (tmp_path / "fig" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / "fig" / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
        svg = ET.parse(tmp_path / "fig" / f"{stem}.svg").getroot()
        assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    # The front: A (0.55, 2,000 B) dominates C (0.325, 5,000 B) and B (0.40, 40,000 B).
    front = pd.read_csv(tmp_path / "csv" / "pareto_front.csv")
    assert front.robust_acc.tolist() == pytest.approx([0.55]) and front.bytes.tolist() == [2000]
    tex = (tmp_path / "tex" / "pareto_front.tex").read_text()
    _check_tex(tex)
    assert "2,000" in tex and "0.550" in tex
    assert set(p.name for p in (tmp_path / "csv").iterdir()) == {
        p.name.replace(".tex", ".csv") for p in (tmp_path / "tex").iterdir()
    }
    with pytest.raises(ValueError, match="formats: jpg: figures are written as png, svg, pdf"):
        Export(figures=tmp_path / "x", formats=("jpg",))


def test_report_cli_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _results(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["report", str(root), "--out", str(tmp_path / "r.html"), "--figures",
                   str(tmp_path / "fig"), "--formats", "svg,pdf"])  # fmt: skip
        out = capsys.readouterr().out
        assert rc == 0 and f"wrote {tmp_path / 'fig' / 'pareto.svg'}" in out
        assert not list((tmp_path / "fig").glob("*.png"))
        rc = main(["report", str(root), "--out", str(tmp_path / "r.html"), "--figures",
                   str(tmp_path / "fig"), "--formats", "svg,eps"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "formats: eps: figures are written as png, svg, pdf" in err
