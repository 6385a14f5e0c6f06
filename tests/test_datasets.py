"""Each loader reads its real on-disk format (written here, small) and rejects bad files by name."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

import trainables  # noqa: F401
from trainables.data import load_pool, load_split
from trainables.datasets import KWS_CLASSES, DatasetError

RNG = np.random.default_rng(0)


def _cifar_batches(n: int = 6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {
        name: (RNG.integers(0, 256, (n, 3072), dtype=np.uint8), RNG.integers(0, 10, n))
        for name in names
    }


def _write_cifar_bin(root: Path, batches: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    for name, (data, labels) in batches.items():
        np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1).tofile(d / f"{name}.bin")
    return d


def test_cifar10_binary_batches(tmp_path: Path) -> None:
    batches = _cifar_batches()
    _write_cifar_bin(tmp_path, batches)
    pool = load_pool("cifar10", str(tmp_path))
    assert pool.x.shape == (36, 32, 32, 3) and pool.x.dtype == np.float32
    assert pool.x.min() >= 0.0 and pool.x.max() <= 1.0
    data, labels = batches["data_batch_1"]
    # Record layout: 1024 red, then green, then blue bytes, row-major 32x32.
    assert pool.x[0, 0, 1, 0] == pytest.approx(data[0, 1] / 255.0, abs=1e-6)
    assert pool.x[0, 0, 0, 2] == pytest.approx(data[0, 2048] / 255.0, abs=1e-6)
    assert list(pool.y[:6]) == list(labels)
    assert (
        pool.official_test is not None
        and pool.official_test.sum() == 6
        and pool.official_test[-6:].all()
    )
    split = load_split("cifar10", 0, 0.2, path=str(tmp_path))  # holdout = the official test batch
    assert split.x_test.shape == (6, 32, 32, 3) and split.num_classes == 10


def test_cifar10_python_batches_match_binary(tmp_path: Path) -> None:
    batches = _cifar_batches()
    _write_cifar_bin(tmp_path / "bin", batches)
    d = tmp_path / "py" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name, (data, labels) in batches.items():
        with (d / name).open("wb") as f:
            pickle.dump(
                {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": data},
                f,
                protocol=2,
            )
    a, b = load_pool("cifar10", str(tmp_path / "bin")), load_pool("cifar10", str(tmp_path / "py"))
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)


def test_cifar10_archive_checksum_is_checked_before_reading(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _write_cifar_bin(src, _cifar_batches())
    root = tmp_path / "root"
    root.mkdir()
    archive = root / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    with pytest.raises(DatasetError, match=r"cifar-10-binary\.tar\.gz: checksum mismatch"):
        load_pool("cifar10", str(root))  # the official MD5 does not match this archive
    assert not (root / "cifar-10-batches-bin").exists()  # nothing was extracted
    md5 = hashlib.md5(archive.read_bytes(), usedforsecurity=False).hexdigest()
    assert load_pool("cifar10", str(root), md5=md5).x.shape == (36, 32, 32, 3)


def test_cifar10_pickle_cannot_run_code(tmp_path: Path) -> None:
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        (d / name).write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(
        DatasetError,
        match=r"data_batch_1: corrupt CIFAR-10 python batch: refusing to load builtins\.print",
    ):
        load_pool("cifar10", str(tmp_path))


def test_cifar10_truncated_batch_named(tmp_path: Path) -> None:
    d = _write_cifar_bin(tmp_path, _cifar_batches())
    raw = (d / "data_batch_3.bin").read_bytes()
    (d / "data_batch_3.bin").write_bytes(raw[:-100])
    with pytest.raises(DatasetError, match=r"data_batch_3\.bin: truncated"):
        load_pool("cifar10", str(tmp_path))


def _write_svhn(root: Path, n_train: int = 12, n_test: int = 5) -> None:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        x = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(-1, 1)  # 1..10, 10 = digit 0
        savemat(root / name, {"X": x, "y": y})


def test_svhn_mat_files(tmp_path: Path) -> None:
    _write_svhn(tmp_path)
    pool = load_pool("svhn", str(tmp_path))
    assert pool.x.shape == (17, 32, 32, 3) and pool.x.dtype == np.float32
    assert list(pool.y[:12]) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]  # label 10 is digit 0
    assert pool.official_test is not None and pool.official_test.sum() == 5


def test_svhn_corrupt_file_named(tmp_path: Path) -> None:
    _write_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(DatasetError, match=r"test_32x32\.mat: corrupt SVHN file"):
        load_pool("svhn", str(tmp_path))


def _wav(path: Path, seconds: float = 1.0, rate: int = 16_000, freq: float = 440.0) -> None:
    from scipy.io import wavfile

    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    wavfile.write(path, rate, (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16))


def _write_kws(root: Path) -> None:
    for i, word in enumerate(
        ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
    ):
        for j in range(3):
            _wav(root / word / f"spk{j}_nohash_0.wav", seconds=0.8 + 0.1 * j, freq=200 + 50 * i)
    for word in ("bed", "cat"):
        for j in range(4):
            _wav(root / word / f"spk{j}_nohash_0.wav", freq=900)
    _wav(root / "_background_noise_" / "white.wav", seconds=3.0, freq=50)
    (root / "testing_list.txt").write_text("yes/spk0_nohash_0.wav\nno/spk0_nohash_0.wav\n")
    (root / "validation_list.txt").write_text("yes/spk1_nohash_0.wav\n")


def test_speech_commands_as_12_class_mfcc(tmp_path: Path) -> None:
    _write_kws(tmp_path)
    pool = load_pool("speech_commands", str(tmp_path))
    assert pool.classes == KWS_CLASSES and len(KWS_CLASSES) == 12
    assert pool.x.shape[1:] == (49, 10, 1) and pool.x.dtype == np.float32
    assert pool.x.min() >= 0.0 and pool.x.max() <= 1.0
    assert (pool.y >= 2).sum() == 30  # 10 words x 3 clips
    assert (pool.y == 1).sum() == 3  # unknown: 10% of 30 keyword clips, from 'bed' and 'cat'
    assert (pool.y == 0).sum() == 3  # silence: 10%, cut from _background_noise_
    assert pool.official_test is not None and pool.official_test[:30].sum() == 2


def test_mfcc_front_end_shape() -> None:
    from trainables.audio import fit_clip, mfcc

    clips = np.stack(
        [fit_clip(np.ones(12_000, np.float32)), fit_clip(np.zeros(20_000, np.float32))]
    )
    assert clips.shape == (2, 16_000)
    assert mfcc(clips).shape == (2, 49, 10)


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (
            lambda p: (p / "yes" / "spk2_nohash_0.wav").write_bytes(b"RIFF\x00\x00"),
            r"spk2_nohash_0\.wav: corrupt WAV",
        ),
        (
            lambda p: _wav(p / "no" / "spk2_nohash_0.wav", rate=8000),
            r"spk2_nohash_0\.wav: sample rate 8000",
        ),
    ],
)
def test_speech_commands_bad_wav_named(tmp_path: Path, breakage: object, expected: str) -> None:
    _write_kws(tmp_path)
    breakage(tmp_path)  # type: ignore[operator]
    with pytest.raises(DatasetError, match=expected):
        load_pool("speech_commands", str(tmp_path))


def test_object_storage_uri_is_copied_to_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROBUSTGRID_CACHE", str(tmp_path / "cache"))
    _write_svhn(tmp_path / "bucket")
    uri = (tmp_path / "bucket").as_uri()  # file:// goes through the same path as a local folder
    assert load_pool("svhn", uri).x.shape == (17, 32, 32, 3)
    from trainables.data import localize

    assert localize(uri) == tmp_path / "bucket"


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no such folder for dataset 'cifar10'.*download: true"):
        load_pool("cifar10", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="no CIFAR-10 here"):
        load_pool("cifar10", str(tmp_path))


def test_kfold_test_folds_partition_the_data() -> None:
    k = 5
    splits = [load_split("digits", 3, 0.2, folds=k, fold=f) for f in range(k)]
    tests = [set(s.test_index.tolist()) for s in splits]
    assert sum(len(t) for t in tests) == 1797
    assert set().union(*tests) == set(range(1797))  # every example is tested exactly once
    per_class = np.bincount(load_split("digits", 3, 0.2, folds=k, fold=0).y_train, minlength=10)
    per_class += np.bincount(splits[0].y_test, minlength=10)
    for s in splits:
        assert len(s.x_train) + len(s.x_test) == 1797
        assert len(set(s.test_index.tolist())) == len(s.test_index)
        counts = np.bincount(s.y_test, minlength=10)
        assert np.all(np.abs(counts - per_class / k) <= 1)  # stratified
    with pytest.raises(ValueError, match=r"fold: 5 is not in 0\.\.4"):
        load_split("digits", 3, 0.2, folds=5, fold=5)


def test_decoded_arrays_are_cached_on_disk_and_invalidated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainables import data

    monkeypatch.setenv("ROBUSTGRID_CACHE", str(tmp_path / "cache"))
    _write_svhn(tmp_path / "svhn")
    first = data._cached(
        "svhn", tmp_path / "svhn", lambda: data.load_svhn(tmp_path / "svhn", False, None)
    )
    (cached,) = (tmp_path / "cache" / "decoded").glob("svhn-*.npz")

    def must_not_read() -> object:
        raise AssertionError("decoded again although the cache is valid")

    again = data._cached("svhn", tmp_path / "svhn", must_not_read)  # type: ignore[arg-type]
    np.testing.assert_array_equal(first.x, again.x)
    assert again.classes == first.classes and again.official_test is not None
    _write_svhn(tmp_path / "svhn", n_train=14)  # the source changed: a new cache entry
    assert (
        data._cached(
            "svhn", tmp_path / "svhn", lambda: data.load_svhn(tmp_path / "svhn", False, None)
        ).x.shape[0]
        == 19
    )
    assert len(list((tmp_path / "cache" / "decoded").glob("svhn-*.npz"))) == 2
    assert cached.exists()
