"""Model artifacts: reloading reproduces the trial; the footprint in the rows matches the files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import trainables  # noqa: F401
from grid.store import artifacts_dir, write_artifacts
from tests.helpers import cifar_batches, write_cifar_bin
from trainables.config import TrialConfig


@pytest.mark.slow
@pytest.mark.parametrize(
    "cfg",
    [
        TrialConfig(bits="4", sparsity=0.5, clusters=4, epochs=2),
        TrialConfig(bits="stochastic_ternary", layer_bits={"logits": 8}, epochs=2),
        TrialConfig(model="resnet8", dataset="cifar10", bits="ternary", epochs=1, batch_size=16),
    ],
    ids=["4bit-pruned-clustered", "stq-last-8bit", "resnet8-batchnorm"],
)
def test_reloaded_artifact_reproduces_the_trial(tmp_path: Path, cfg: TrialConfig) -> None:
    from trainables.artifacts import footprint_from_npz, load_model, tflite_predict
    from trainables.data import trial_split
    from trainables.trial import run_trial

    if cfg.dataset.value == "cifar10":  # a small CIFAR-10 in its real binary format
        write_cifar_bin(tmp_path / "cifar", cifar_batches(n=12))
        cfg = TrialConfig.model_validate({**cfg.model_dump(), "data_path": str(tmp_path / "cifar")})
    rows = run_trial(cfg, artifacts=lambda key, files: write_artifacts(tmp_path, key, files))
    assert rows[0]["status"] == "complete", rows[0]["reason"]
    folder = artifacts_dir(tmp_path, cfg.key)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["key"] == cfg.key and manifest["config"] == cfg.identity()
    assert manifest["feature_range"] is None  # digits are used as loaded
    split = trial_split(cfg)
    model = load_model(folder)
    acc = float(
        np.mean(np.argmax(model(split.x_test, training=False).numpy(), axis=1) == split.y_test)
    )
    assert acc == rows[0]["metric_clean_acc"]
    assert (
        footprint_from_npz(folder, manifest).bytes == rows[0]["metric_bytes"] == manifest["bytes"]
    )
    flatbuffer = (folder / "model_int8.tflite").read_bytes()
    tfl = float(np.mean(tflite_predict(flatbuffer, split.x_test) == split.y_test))
    assert tfl == manifest["tflite_test_acc"]
    # Oracle for the batched interpreter: one example per invoke, by hand.
    import tensorflow as tf

    it = tf.lite.Interpreter(model_content=flatbuffer)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    scale, zero = inp["quantization"]
    one_by_one = []
    for example in split.x_test[:40]:
        q = np.clip(np.round(example[None] / scale + zero), -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], q)
        it.invoke()
        one_by_one.append(int(np.argmax(it.get_tensor(out["index"]))))
    np.testing.assert_array_equal(
        tflite_predict(flatbuffer, split.x_test[:40], batch=16), one_by_one
    )
    if cfg.model.value == "digits_cnn":  # enough test data for the comparison to mean something
        # int8 with ReLU in place of the activation quantizer: close, not equal
        assert abs(tfl - acc) < 0.15
        with np.load(folder / "weights.npz", allow_pickle=False) as z:
            kernel = z["conv2/kernel"]
        assert np.unique(kernel).size <= (4 if cfg.clusters else 3 * kernel.shape[-1])


def test_rewrite_replaces_the_folder(tmp_path: Path) -> None:
    write_artifacts(tmp_path, "k", {"a.txt": b"1", "b.txt": b"2"})
    write_artifacts(tmp_path, "k", {"a.txt": b"3"})
    folder = artifacts_dir(tmp_path, "k")
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]
    assert (folder / "a.txt").read_bytes() == b"3"
    assert [p.name for p in folder.parent.iterdir()] == ["k"]  # no temporary folders left
    with pytest.raises(ValueError, match="plain file name"):
        write_artifacts(tmp_path, "k", {"../x": b"1"})
    assert (folder / "a.txt").read_bytes() == b"3"  # the failed write left the old set alone
