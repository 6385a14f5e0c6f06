"""Attacks on the deployed int8 flatbuffer (trainables/deployed.py), checked against plain
``tf.lite.Interpreter`` code written here, one example per invoke."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import trainables  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from trainables.attacks import AttackResult
from trainables.config import AttackName, AttackSpec, TrialConfig


def _hand_scores(flatbuffer: bytes, x: np.ndarray) -> np.ndarray:
    """The oracle: one example per invoke, quantized and dequantized by hand (no runner code)."""
    import tensorflow as tf

    it = tf.lite.Interpreter(model_content=flatbuffer)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    s_in, z_in = inp["quantization"]
    s_out, z_out = out["quantization"]
    rows = []
    for example in x:
        it.set_tensor(
            inp["index"], np.clip(np.round(example[None] / s_in + z_in), -128, 127).astype(np.int8)
        )
        it.invoke()
        rows.append((it.get_tensor(out["index"])[0].astype(np.float32) - z_out) * s_out)
    return np.array(rows)


def _trained(cfg: TrialConfig) -> tuple[Any, bytes, Any]:
    from trainables.artifacts import tflite_int8
    from trainables.trial import train_compressed, trial_split

    model, _ = train_compressed(cfg)
    split = trial_split(cfg)
    return model, tflite_int8(model, split.x_train[:200]), split


PGD = AttackSpec(name=AttackName.pgd, eps=(0.1,), steps=5, restarts=1, samples=80)
FGSM = AttackSpec(name=AttackName.fgsm, eps=(0.05, 0.1), samples=80)


@pytest.fixture(scope="module")
def trained() -> tuple[Any, bytes, Any]:
    return _trained(TrialConfig(bits="4", epochs=2, attacks=(FGSM, PGD)))


@pytest.mark.slow
def test_batched_runner_equals_per_example_invoke(trained: tuple[Any, bytes, Any]) -> None:
    from trainables.int8 import Int8Runner

    _, flatbuffer, split = trained
    x = split.x_test[:45]
    runner = Int8Runner(flatbuffer, batch=16)  # 16, 16, 13 -> buckets 16 and 16 (padded)
    np.testing.assert_array_equal(runner.scores(x), _hand_scores(flatbuffer, x))
    assert runner.invokes == 3
    # a repeated int8 batch is answered from memory, the same scores; another one is run
    np.testing.assert_array_equal(runner.scores(x), _hand_scores(flatbuffer, x))
    assert runner.invokes == 3 and runner.examples == 90
    np.testing.assert_array_equal(runner.scores(x[:5]), _hand_scores(flatbuffer, x[:5]))
    assert runner.invokes == 4


@pytest.mark.slow
def test_hand_interpreter_reproduces_the_deployed_counts(
    trained: tuple[Any, bytes, Any], tmp_path: Path
) -> None:
    from trainables.attacks import evaluate_attacks
    from trainables.deployed import evaluate_deployed

    model, flatbuffer, split = trained
    keras = evaluate_attacks(
        model, split.x_test, split.y_test, split.num_classes, (FGSM, PGD), keep_adv=True
    )
    report = evaluate_deployed(
        model, flatbuffer, split.x_test, split.y_test, split.num_classes, (FGSM, PGD),
        keras_results=keras, routes=("transfer", "bpda"),
    )  # fmt: skip
    names = sorted({r.attack for r in report.results})
    assert names == ["deployed_bpda_pgd", "deployed_transfer_fgsm", "deployed_transfer_pgd"]
    for k, r in zip(keras, report.routes["transfer"], strict=True):
        assert (r.attack, r.eps) == (f"deployed_transfer_{k.attack}", k.eps)
        # the saved adversarial batch, reloaded: the oracle reads only the file and the labels
        assert k.x_adv is not None
        np.savez(
            tmp_path / "batch.npz",
            x=split.x_test[r.positions],
            x_adv=k.x_adv,
            y=split.y_test[r.positions],
        )
        with np.load(tmp_path / "batch.npz") as z:
            clean = np.argmax(_hand_scores(flatbuffer, z["x"]), axis=1) == z["y"]
            robust = clean & (np.argmax(_hand_scores(flatbuffer, z["x_adv"]), axis=1) == z["y"])
        assert r.clean_correct == int(clean.sum())
        assert r.robust_correct == int(robust.sum())
        np.testing.assert_array_equal(r.robust, robust)
    # deployed_worst: the AND of the routes' masks on their common prefix (80 examples each)
    w = next(w for w in report.worst if abs(w.eps - 0.1) < 1e-9)
    at = [r for r in report.results if abs(r.eps - 0.1) < 1e-9]
    assert w.attack == "deployed_worst" and len(at) == 3
    np.testing.assert_array_equal(w.robust, np.logical_and.reduce([r.robust for r in at]))
    assert 0 < report.agreement_samples == 80 and report.agreed <= 80


@pytest.mark.slow
def test_bpda_never_takes_a_step_that_lowers_the_interpreters_loss(
    trained: tuple[Any, bytes, Any],
) -> None:
    from trainables.deployed import bpda_pgd, keras_gradient
    from trainables.int8 import Int8Runner, cross_entropy

    model, flatbuffer, split = trained
    x, y = split.x_test[:40], split.y_test[:40]
    runner = Int8Runner(flatbuffer)
    honest = keras_gradient(model)
    for gradient in (
        honest,
        lambda a, b: -honest(a, b),
    ):  # the second climbs down: all rejected or flat
        run = bpda_pgd(
            gradient, runner, x, y, eps=0.1, steps=8, step_ratio=0.25, restarts=0, seed=0
        )
        # by hand: every accepted candidate's interpreter loss is >= the point it replaced
        for t in range(8):
            took = run.accepted[0, t]
            assert np.all(run.proposed[0, t][took] >= run.losses[0, t][took])
            np.testing.assert_array_equal(run.losses[0, t + 1][~took], run.losses[0, t][~took])
        assert np.all(np.diff(run.losses[0], axis=0) >= 0)
        assert np.max(np.abs(run.x_adv - x)) <= 0.1 + 1e-6
        assert run.x_adv.min() >= 0.0 and run.x_adv.max() <= 1.0
        # the reported loss is the interpreter's at the returned point (hand oracle)
        np.testing.assert_allclose(
            cross_entropy(_hand_scores(flatbuffer, run.x_adv), y), run.losses[0, -1]
        )
    # the honest gradient does move the interpreter's loss up somewhere
    up = bpda_pgd(honest, runner, x, y, eps=0.1, steps=8, step_ratio=0.25, restarts=0, seed=0)
    assert np.any(up.losses[0, -1] > up.losses[0, 0])


def _result(name: str, robust: np.ndarray, positions: np.ndarray | None = None) -> AttackResult:
    pos = np.arange(len(robust)) if positions is None else positions
    clean = np.ones(len(robust), bool)
    return AttackResult(
        attack=name, kind="deployed", norm="inf", eps=0.1, samples=len(robust),
        clean_acc=1.0, robust_acc=float(np.mean(robust)), median_norm=None, seconds=0.0,
        positions=pos, clean=clean, robust=np.asarray(robust, bool), subset_hash="",
    )  # fmt: skip


def test_query_above_transfer_fires_and_its_mirror_does_not() -> None:
    from trainables.deployed_checks import FLAG_QUERY_ABOVE, compare_routes, deployed_flags

    rng = np.random.default_rng(0)
    other = rng.random(100) < 0.5  # ~50 robust under the transfer route
    query = other | (rng.random(100) < 0.5)  # robust wherever transfer left it robust, and more
    fired = compare_routes(
        [_result("deployed_square", query)], [_result("deployed_transfer_pgd", other)]
    )
    assert len(fired) == 1 and fired[0].diff > 0.15 and fired[0].fires
    assert FLAG_QUERY_ABOVE in deployed_flags(fired, 100, 100)
    mirror = compare_routes(
        [_result("deployed_square", other)], [_result("deployed_transfer_pgd", query)]
    )
    assert mirror[0].diff == -fired[0].diff and not mirror[0].fires
    assert deployed_flags(mirror, 100, 100) == ()
    # a gap of 2 examples in 100 is within the interval: no flag
    near = other.copy()
    near[np.flatnonzero(~other)[:2]] = True
    assert not compare_routes([_result("q", near)], [_result("t", other)])[0].fires
    # the subsets pair by position: a longer route compares on the common prefix only
    longer = _result("t", np.concatenate([other, np.zeros(50, bool)]), np.arange(150))
    assert compare_routes([_result("q", query)], [longer])[0].samples == 100


def test_newcombe_interval_brackets_the_difference() -> None:
    from trainables.deployed_checks import newcombe_paired

    a = np.array([1] * 30 + [0] * 70, bool)
    d, lo, hi = newcombe_paired(a, a)
    assert d == 0.0 and lo < 0.0 < hi  # identical outcomes: 0 inside, nothing fires
    b = np.array([1] * 10 + [0] * 90, bool)
    d, lo, hi = newcombe_paired(a, b)
    assert d == pytest.approx(0.2) and 0.0 < lo < d < hi
    # swapping the arguments mirrors the interval
    d2, lo2, hi2 = newcombe_paired(b, a)
    assert (d2, lo2, hi2) == pytest.approx((-d, -hi, -lo))


def test_agreement_flag() -> None:
    from trainables.deployed_checks import FLAG_DISAGREES, deployed_flags

    assert FLAG_DISAGREES in deployed_flags([], 85, 100)  # upper bound ~0.91 < 0.95
    assert deployed_flags([], 98, 100) == ()


@pytest.mark.slow
@pytest.mark.parametrize("bits", ["ternary", "binary", "stochastic_ternary", "stochastic_binary"])
def test_low_bit_quantizers_through_the_converter(bits: str) -> None:
    from trainables.artifacts import tflite_predict
    from trainables.deployed import evaluate_deployed
    from trainables.int8 import Int8Runner

    fgsm = AttackSpec(name=AttackName.fgsm, eps=(0.1,), samples=40)
    square = AttackSpec(name=AttackName.square, eps=(0.1,), max_iter=20, samples=20)
    model, flatbuffer, split = _trained(TrialConfig(bits=bits, epochs=1, attacks=(fgsm, square)))
    runner = Int8Runner(flatbuffer)
    np.testing.assert_array_equal(
        runner.predict(split.x_test), tflite_predict(flatbuffer, split.x_test)
    )
    report = evaluate_deployed(
        model, flatbuffer, split.x_test, split.y_test, split.num_classes, (fgsm, square)
    )
    assert sorted(r.attack for r in report.results) == [
        "deployed_bpda_pgd", "deployed_square", "deployed_transfer_fgsm"
    ]  # fmt: skip
    assert report.agreement_samples == 40 and 0 <= report.agreed <= 40
    for r in report.results:
        assert r.robust_correct <= r.clean_correct <= r.samples


DEPLOYED_STUDY = """
name: deployed-smoke
dataset: digits
model: digits_cnn
seed: 1
deployed: true
train: {epochs: 1, fine_tune_epochs: 1, batch_size: 128}
axes: {bits: [float, ternary]}
attacks:
  - {name: fgsm, eps: [0.1], samples: 60}
  - {name: pgd, eps: [0.1], steps: 3, samples: 60}
  - {name: square, eps: [0.1], max_iter: 30, samples: 30}
objective: {attack: worst, model: deployed}
"""


@pytest.mark.slow
def test_deployed_study_runs_on_ray_and_stores_every_route(tmp_path: Path) -> None:
    import json

    from analysis.query import connect
    from grid.store import artifacts_dir
    from tests.helpers import grid_cli
    from trainables.attacks import stratified_order
    from trainables.trial import trial_split

    study = tmp_path / "deployed.yaml"
    study.write_text(DEPLOYED_STUDY)
    proc = grid_cli("run", str(study), "--results", str(tmp_path / "results"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = tmp_path / "results" / "deployed-smoke"
    con = connect(folder)
    rows = con.execute(
        "SELECT key, attack, attack_kind, eps, metric_samples, metric_robust_mask, metric_robust_acc, "
        "metric_attack_clean_acc, metric_robust_acc_lo, metric_deployed_agreement, meta_config_json "
        "FROM rows WHERE status = 'complete' ORDER BY key, attack"
    ).df()
    assert rows.key.nunique() == 2
    for key, trial in rows.groupby("key"):
        by = {a: r for a, r in zip(trial.attack, trial.itertuples(), strict=True)}
        assert set(by) >= {
            "fgsm", "pgd", "square", "worst", "deployed_transfer_fgsm", "deployed_transfer_pgd",
            "deployed_bpda_pgd", "deployed_square", "deployed_worst",
        }  # fmt: skip
        routes = [a for a in by if a.startswith("deployed_") and a != "deployed_worst"]
        assert all(by[a].attack_kind == "deployed" for a in [*routes, "deployed_worst"])
        assert 0.0 <= by["deployed_worst"].metric_deployed_agreement <= 1.0
        # deployed_worst = AND of the stored route masks over the common prefix (30: square's)
        n = int(by["deployed_worst"].metric_samples)
        assert n == 30

        def bits(attack: str, n: int = n, by: dict[str, Any] = by) -> np.ndarray:
            raw = bytes.fromhex(by[attack].metric_robust_mask)
            return np.unpackbits(np.frombuffer(raw, np.uint8))[:n].astype(bool)

        np.testing.assert_array_equal(
            bits("deployed_worst"), np.logical_and.reduce([bits(a) for a in routes])
        )
        # the stored interpreter clean count, reproduced by hand from the stored flatbuffer
        flatbuffer = (artifacts_dir(folder, str(key)) / "model_int8.tflite").read_bytes()
        cfg = TrialConfig.from_dict(json.loads(by["deployed_square"].meta_config_json))
        split = trial_split(cfg)
        pos = stratified_order(split.y_test, 0)[:30]
        hand = np.argmax(_hand_scores(flatbuffer, split.x_test[pos]), axis=1) == split.y_test[pos]
        assert round(by["deployed_square"].metric_attack_clean_acc * 30) == int(hand.sum())
    # the deployed front and the report's section
    par = grid_cli("pareto", str(folder), "--model", "deployed")
    assert par.returncode == 0 and "deployed_worst" in par.stdout, par.stdout + par.stderr
    rep = grid_cli("report", str(folder), "--out", str(tmp_path / "r.html"))
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert "Keras against deployed (int8 TFLite) robustness" in (tmp_path / "r.html").read_text()


def test_deployed_field_keeps_existing_keys_and_validates() -> None:
    from grid.spec import StudyError, parse_study
    from trainables.headline import Headline

    base = TrialConfig(bits="4")
    assert "deployed" not in base.identity()  # false: every existing key is unchanged
    assert TrialConfig(bits="4", deployed=False).key == base.key
    assert TrialConfig(bits="4", deployed=True).key != base.key
    study = {
        "name": "d",
        "attacks": [{"name": "pgd", "eps": [0.1]}],
        "deployed": True,
        "objective": {"model": "deployed"},
    }
    s = parse_study(study, "t")
    assert s.headline == Headline("worst", 0.1, "inf", "tflite", "deployed")
    assert (
        s.headline.row_attack == "deployed_worst"
        and s.headline.size_column == "metric_tflite_bytes"
    )
    point = {"bits": "4", "sparsity": 0.0, "clusters": 0, "jr_weight": 0.0, "adversarial": 0}
    assert all(t.deployed for t in s.point_trials(point))
    for bad in (
        {**study, "deployed": False},  # the objective needs the deployed rows
        {**study, "objective": {"model": "deployed", "attack": "pgd"}},
        {**study, "objective": {"model": "deployed", "size": "encoded"}},
    ):
        with pytest.raises(StudyError, match="objective"):
            parse_study(bad, "t")
    assert parse_study({**study, "objective": {}}, "t").headline == Headline("worst", 0.1)


def test_report_table_compares_keras_and_deployed_per_config(tmp_path: Path) -> None:
    import analysis
    from analysis.deployed import keras_vs_deployed
    from grid.store import ParquetSink
    from tests.helpers import rows_for

    sink = ParquetSink(str(tmp_path), "t", "r")
    for key, bits, fold, (keras, worst, square) in (
        ("a0", "4", 0, (0.5, 0.4, 0.6)),
        ("a1", "4", 1, (0.6, 0.5, 0.6)),  # the same config's second fold
        ("b0", "ternary", 0, (0.3, 0.3, 0.5)),
    ):
        flags = "pgd_large_eps,deployed_query_above_transfer" if bits == "ternary" else ""
        sink(key, rows_for(
            key, {("worst", 0.1): keras, ("deployed_transfer_pgd", 0.1): worst,
                  ("deployed_square", 0.1): square, ("deployed_worst", 0.1): worst},
            0.9, 100, fold=fold, bits=bits, folds=2, samples=100,
            extra={"metric_deployed_agreement": 0.97, "metric_masking_flags": flags},
        ))  # fmt: skip
    table = keras_vs_deployed(analysis.connect(tmp_path), 0.1)
    assert list(table.bits) == ["4", "ternary"]
    four, ternary = table.iloc[0], table.iloc[1]
    assert four.keras_worst == pytest.approx(0.55) and four.deployed_worst == pytest.approx(0.45)
    assert four.gap == pytest.approx(-0.1) and four.deployed_square == pytest.approx(0.6)
    assert four.deployed_worst_lo < 0.45 < four.deployed_worst_hi  # 90 of 200, pooled
    assert four.deployed_flags == "" and ternary.deployed_flags == "deployed_query_above_transfer"
    # results without deployed rows: no table (the report leaves the section out)
    other = tmp_path / "plain"
    ParquetSink(str(other), "t", "r")("c0", rows_for("c0", {("worst", 0.1): 0.5}, 0.9, 100))
    assert keras_vs_deployed(analysis.connect(other), 0.1).empty
