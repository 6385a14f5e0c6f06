"""The first paper's models and baselines: the STQ-class stand-in's budget, stochastic
binary (random in training, deterministic in inference), and the ANS-driven hybrid."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from grid.spec import StudyError, parse_study
from trainables import ans
from trainables.config import AnsHybrid, TrialConfig
from trainables.footprint import model_footprint
from trainables.models import BIAS_BITS, CQConv2D, CQDense, build_model, kernel_quantizer_of
from trainables.train import predict_logits
from trainables.trial import run_trial


def test_existing_keys_stay() -> None:
    assert TrialConfig().key == "a6f03792212f1beb"
    assert (
        TrialConfig(
            model="resnet8", dataset="cifar10", bits="stochastic_ternary",
            layer_bits={"conv1": "8"}, jr_layers={"all": 0.01},
        ).key
        == "712a50faa22a49b2"
    )  # fmt: skip


@pytest.mark.parametrize(("shape", "classes"), [((32, 32, 3), 10), ((49, 10, 1), 12)])
def test_stq_cnn_fits_the_papers_budget(shape: tuple[int, ...], classes: int) -> None:
    cfg = TrialConfig(
        model="stq_cnn", bits="stochastic_ternary", layer_bits={"conv1": "8", "logits": "8"},
        activation_bits=8,
    )  # fmt: skip
    model = build_model(cfg, shape, classes)
    fp = model_footprint(model, BIAS_BITS)
    # By hand: every kernel coded at its width (8 bits conv1/logits, 2 bits ternary), an
    # 8-bit power-of-two exponent per output channel of a stochastic-ternary layer, 8-bit
    # biases (convs have none), batch norm folded to 2 x 32 bits per channel.
    c = shape[-1]
    convs = [(9 * c, 64, 8, False), (9 * 64, 64, 2, True), (9 * 64, 128, 2, True),
             (9 * 128, 128, 2, True), (9 * 128, 256, 2, True), (9 * 256, 256, 2, True)]  # fmt: skip
    expected = sum(
        math.ceil((k * n * w + (8 * n if scaled else 0)) / 8) for k, n, w, scaled in convs
    )
    expected += sum(math.ceil(2 * n * 32 / 8) for _, n, _, _ in convs)  # batch norms
    expected += math.ceil((256 * 256 * 2 + 8 * 256 + 8 * 256) / 8)  # dense1
    expected += math.ceil((256 * classes * 8 + 8 * classes) / 8)  # logits
    assert fp.bytes_dense == expected
    assert 300_000 <= fp.bytes_dense <= 410_000
    assert fp.bytes <= fp.bytes_dense
    assert model.output_shape == (None, classes)


def test_stochastic_binary_trains_stochastically_and_evaluates_deterministically() -> None:
    cfg = TrialConfig(bits="stochastic_binary", activation_bits=8)
    tf_keras.utils.set_random_seed(0)
    model = build_model(cfg, (8, 8, 1), 10)
    layer = model.get_layer("conv2")
    q = kernel_quantizer_of(layer)
    assert type(q).__name__ == "stochastic_binary"
    # Training mode: the quantized kernel is sampled, so two draws differ.
    with tf_keras.backend.learning_phase_scope(1):
        a, b = np.asarray(q(layer.kernel)), np.asarray(q(layer.kernel))
    assert not np.array_equal(a, b)
    # Inference: the sign with one power-of-two scale per output channel, every call.
    with tf_keras.backend.learning_phase_scope(0):
        d1, d2 = np.asarray(q(layer.kernel)), np.asarray(q(layer.kernel))
    np.testing.assert_array_equal(d1, d2)
    kernel = layer.kernel.numpy()
    scale = np.abs(d1).max(axis=(0, 1, 2))
    assert np.all(np.log2(scale) == np.round(np.log2(scale)))  # powers of two
    np.testing.assert_array_equal(d1, np.where(kernel >= 0, 1.0, -1.0) * scale)
    # The whole model's logits in inference mode are a function of the input.
    x = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    np.testing.assert_array_equal(predict_logits(model, x), predict_logits(model, x))
    # 1 bit a weight plus its channel exponents in the footprint.
    fp = {lf.name: lf for lf in model_footprint(model, BIAS_BITS).layers}
    assert fp["conv2"].weight_bits == 1 and fp["conv2"].per_channel_scale


@pytest.mark.parametrize(
    ("direction", "expected"),
    [
        # ranking c (0.9) > a (0.5) > d (0.3) > b (0.1) > e (0.05); 5 layers into 3 groups: 2, 2, 1
        ("widest", {"c": "8", "a": "8", "d": "4", "b": "4", "e": "ternary"}),
        ("narrowest", {"c": "ternary", "a": "ternary", "d": "4", "b": "4", "e": "8"}),
    ],
)
def test_assign_bits_by_ranking(direction: str, expected: dict[str, str]) -> None:
    sens = {"a": 0.5, "b": 0.1, "c": 0.9, "d": 0.3, "e": 0.05}
    widths = AnsHybrid(bits=("ternary", "8", "4")).ordered
    assert widths == ["8", "4", "ternary"]
    assert ans.assign_bits(sens, widths, direction) == expected
    # more widths than layers: the widest groups (or narrowest) are used first
    assert ans.assign_bits({"x": 1.0}, widths, direction) == {
        "x": "8" if direction == "widest" else "ternary"
    }


def _dominated_model() -> tf_keras.Model:
    """Three dense layers whose sensitivities are known in advance.

    ``first`` (bias 10) and ``mid`` (bias 100) have outputs dominated by their constant
    biases, so a perturbation barely changes them relative to their size (``mid`` least);
    ``last`` takes differences of neighbouring inputs, which cancel the constant: its output
    moves with the perturbation as much as with the input, by far the largest relative change.
    """
    const = tf_keras.initializers.Constant
    inp = tf_keras.Input((4,))
    first = tf_keras.layers.Dense(4, name="first", kernel_initializer="identity", bias_initializer=const(10.0))(inp)  # fmt: skip
    mid = tf_keras.layers.Dense(4, name="mid", kernel_initializer="identity", bias_initializer=const(100.0))(first)  # fmt: skip
    diff = np.array(
        [[1, 0, 0], [-1, 1, 0], [0, -1, 1], [0, 0, -1]], dtype=np.float32
    )  # m_i - m_(i+1)
    last = tf_keras.layers.Dense(3, name="last", kernel_initializer=const(diff))(mid)
    return tf_keras.Model(inp, last)


def test_ans_measures_the_formula_and_the_dominant_layer_gets_the_studys_width() -> None:
    model = _dominated_model()
    rng = np.random.default_rng(0)
    x = rng.random((32, 4)).astype(np.float32)
    x_adv = np.clip(x + 0.05 * np.sign(rng.standard_normal(x.shape)), 0, 1).astype(np.float32)
    got = ans.layer_sensitivity(model, x, x_adv, ["first", "mid", "last"])
    # Oracle: the same formula in a few lines of numpy on the layers' own weights.
    w = {layer.name: layer.get_weights() for layer in model.layers[1:]}

    def forward(v: np.ndarray) -> dict[str, np.ndarray]:
        f = v @ w["first"][0] + w["first"][1]
        m = f @ w["mid"][0] + w["mid"][1]
        return {"first": f, "mid": m, "last": m @ w["last"][0] + w["last"][1]}

    clean, adv = forward(x.astype(np.float64)), forward(x_adv.astype(np.float64))
    for name in ("first", "mid", "last"):
        ratio = np.linalg.norm(adv[name] - clean[name], axis=1) / np.linalg.norm(
            clean[name], axis=1
        )
        assert got[name] == pytest.approx(ratio.mean(), rel=1e-4)  # float32 layers
    assert max(got, key=got.__getitem__) == "last"
    assert got["last"] > 10 * got["first"] and got["first"] > 5 * got["mid"]
    widths = AnsHybrid(bits=("8", "4", "2")).ordered
    assert ans.assign_bits(got, widths, "narrowest")["last"] == "2"
    assert ans.assign_bits(got, widths, "widest")["last"] == "8"
    assert ans.assign_bits(got, widths, "widest")["mid"] == "2"


def test_an_ans_hybrid_trial_records_its_widths_and_builds_with_them() -> None:
    cfg = TrialConfig(
        bits="ans_hybrid", epochs=1, fine_tune_epochs=0, layer_bits={"logits": "8"},
        ans={"bits": [4, "ternary"], "most_sensitive": "widest", "samples": 64, "eps": 0.1},
        attacks=({"name": "fgsm", "eps": [0.1], "samples": 20},),
    )  # fmt: skip
    rows = run_trial(cfg)
    assert rows[0]["status"] == "complete", rows[0]["reason"]
    row = rows[0]
    sens = json.loads(row["meta_ans_json"])
    assigned = json.loads(row["meta_layer_bits_json"])
    assert set(sens) == {"conv1", "conv2"}  # logits is fixed by layer_bits, not ranked
    top = max(sens, key=sens.__getitem__)
    other = ({"conv1", "conv2"} - {top}).pop()
    assert assigned == {top: "4", other: "ternary", "logits": "8"}
    widths = {lf["name"]: lf["weight_bits"] for lf in json.loads(row["meta_layers_json"])}
    assert widths == {top: 4, other: 2, "logits": 8}
    assert row["cfg_bits"] == "ans_hybrid" and row["cfg_weight_bits"] == 4


def test_ans_settings_are_checked_and_keyed() -> None:
    base = {"name": "s", "axes": {"bits": [4]}, "train": {"ans_hybrid": {"bits": [8, 4]}}}
    with pytest.raises(StudyError, match=r"train.ans_hybrid: settings for bits 'ans_hybrid'"):
        parse_study(base)
    with pytest.raises(StudyError, match=r"train.ans_hybrid.most_sensitive"):
        parse_study(
            {
                **base,
                "axes": {"bits": ["ans_hybrid"]},
                "train": {"ans_hybrid": {"most_sensitive": "top"}},
            }
        )
    with pytest.raises(StudyError, match=r"'float' is not a width"):
        parse_study(
            {
                **base,
                "axes": {"bits": ["ans_hybrid"]},
                "train": {"ans_hybrid": {"bits": [8, "float"]}},
            }
        )
    study = parse_study({**base, "axes": {"bits": ["ans_hybrid", 4]}})
    hybrid, plain = study.trials()
    assert hybrid.ans == AnsHybrid(bits=("8", "4")) and plain.ans is None
    default = TrialConfig(bits="ans_hybrid")
    assert default.ans == AnsHybrid()  # defaults filled in, so they are part of the key
    assert default.key != TrialConfig(bits="ans_hybrid", ans={"most_sensitive": "widest"}).key
    with pytest.raises(ValueError, match="ans: hybrid settings belong to bits 'ans_hybrid'"):
        TrialConfig(bits="4", ans={})


def test_stq_cnn_is_built_from_clusterable_quantized_layers() -> None:
    # CQ layers are what the footprint and clustering see in stq_cnn
    model = build_model(TrialConfig(model="stq_cnn"), (32, 32, 3), 10)
    kinds = {type(layer) for layer in model.layers}
    assert CQConv2D in kinds and CQDense in kinds
    assert tf.reduce_all(tf.math.is_finite(model(np.zeros((1, 32, 32, 3), np.float32))))


def test_an_ans_hybrid_config_pairs_with_its_float_baseline() -> None:
    from trainables.identity import id_columns

    def pair_id(cfg: TrialConfig) -> str:
        return id_columns(cfg.identity())["meta_baseline_pair_id"]

    hybrid = TrialConfig(bits="ans_hybrid", layer_bits={"logits": "8"})
    assert pair_id(hybrid) == pair_id(TrialConfig()) == pair_id(TrialConfig(bits="4"))
    assert pair_id(hybrid) != pair_id(TrialConfig(epochs=3))
