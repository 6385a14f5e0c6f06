"""Each loader reads its real on-disk format (written here, small) and rejects bad files by name."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

import trainables  # noqa: F401
from tests.helpers import cifar_batches, wav, write_cifar_bin, write_kws, write_svhn
from trainables.data import load_pool, load_split
from trainables.datasets import KWS_CLASSES, DatasetError


def test_cifar10_binary_batches(tmp_path: Path) -> None:
    batches = cifar_batches()
    write_cifar_bin(tmp_path, batches)
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
    batches = cifar_batches()
    write_cifar_bin(tmp_path / "bin", batches)
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
    write_cifar_bin(src, cifar_batches())
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
    d = write_cifar_bin(tmp_path, cifar_batches())
    raw = (d / "data_batch_3.bin").read_bytes()
    (d / "data_batch_3.bin").write_bytes(raw[:-100])
    with pytest.raises(DatasetError, match=r"data_batch_3\.bin: truncated"):
        load_pool("cifar10", str(tmp_path))


def test_svhn_mat_files(tmp_path: Path) -> None:
    write_svhn(tmp_path)
    pool = load_pool("svhn", str(tmp_path))
    assert pool.x.shape == (17, 32, 32, 3) and pool.x.dtype == np.float32
    assert list(pool.y[:12]) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]  # label 10 is digit 0
    assert pool.official_test is not None and pool.official_test.sum() == 5


def test_svhn_corrupt_file_named(tmp_path: Path) -> None:
    write_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(DatasetError, match=r"test_32x32\.mat: corrupt SVHN file"):
        load_pool("svhn", str(tmp_path))


def test_speech_commands_as_12_class_mfcc(tmp_path: Path) -> None:
    write_kws(tmp_path)
    pool = load_pool("speech_commands", str(tmp_path))
    assert pool.classes == KWS_CLASSES and len(KWS_CLASSES) == 12
    assert pool.x.shape[1:] == (49, 10, 1) and pool.x.dtype == np.float32
    assert pool.needs_scaling and pool.x.min() < 0.0  # raw MFCCs: scaled per split, not here
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
            lambda p: wav(p / "no" / "spk2_nohash_0.wav", rate=8000),
            r"spk2_nohash_0\.wav: sample rate 8000",
        ),
    ],
)
def test_speech_commands_bad_wav_named(tmp_path: Path, breakage: object, expected: str) -> None:
    write_kws(tmp_path)
    breakage(tmp_path)  # type: ignore[operator]
    with pytest.raises(DatasetError, match=expected):
        load_pool("speech_commands", str(tmp_path))


def test_object_storage_uri_is_copied_to_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROBUSTGRID_CACHE", str(tmp_path / "cache"))
    write_svhn(tmp_path / "bucket")
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
    write_svhn(tmp_path / "svhn")
    first = data._cached(
        "svhn", tmp_path / "svhn", lambda: data.load_svhn(tmp_path / "svhn", False, None)
    )
    (cached,) = (tmp_path / "cache" / "decoded").glob("svhn-*.npz")

    def must_not_read() -> object:
        raise AssertionError("decoded again although the cache is valid")

    again = data._cached("svhn", tmp_path / "svhn", must_not_read)  # type: ignore[arg-type]
    np.testing.assert_array_equal(first.x, again.x)
    assert again.classes == first.classes and again.official_test is not None
    write_svhn(tmp_path / "svhn", n_train=14)  # the source changed: a new cache entry
    assert (
        data._cached(
            "svhn", tmp_path / "svhn", lambda: data.load_svhn(tmp_path / "svhn", False, None)
        ).x.shape[0]
        == 19
    )
    assert len(list((tmp_path / "cache" / "decoded").glob("svhn-*.npz"))) == 2
    assert cached.exists()


# ---------------------------------------------------------------------------
# Speech Commands: speakers never cross a split; scaling comes from training data only.

SPEAKERS = tuple(f"{0xA0B1C2D0 + i:08x}" for i in range(6))  # the dataset's hex speaker hashes


def _write_kws_speakers(root: Path) -> None:
    """6 speakers, each with one clip of every keyword and of 'bed' and 'cat' (real file
    layout and names); a 12 s background recording; the last speaker is the official test."""
    for j, spk in enumerate(SPEAKERS):
        for i, word in enumerate([*KWS_CLASSES[2:], "bed", "cat"]):
            wav(root / word / f"{spk}_nohash_0.wav", seconds=0.9, freq=200 + 60 * i + 7 * j)
    wav(root / "_background_noise_" / "pink.wav", seconds=12.0, freq=50)
    test = [f"{w}/{SPEAKERS[-1]}_nohash_0.wav" for w in [*KWS_CLASSES[2:], "bed", "cat"]]
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    (root / "validation_list.txt").write_text(f"yes/{SPEAKERS[-2]}_nohash_0.wav\n")


def _loud_noise(path: Path) -> None:
    from scipy.io import wavfile

    noise = np.random.default_rng(1).uniform(-1, 1, 16_000)
    wavfile.write(path, 16_000, (noise * 32767).astype(np.int16))


def test_speech_commands_pool_groups_are_speakers(tmp_path: Path) -> None:
    _write_kws_speakers(tmp_path)
    pool = load_pool("speech_commands", str(tmp_path))
    assert pool.groups is not None and len(pool.groups) == len(pool.y)
    words = pool.y >= 2
    assert sorted(pool.groups[words]) == sorted(SPEAKERS * 10)  # the prefix before _nohash_
    assert set(pool.groups[pool.y == 1]) <= set(SPEAKERS)  # unknown clips: their speakers too
    silence = pool.groups[pool.y == 0]
    assert len(silence) == 7 and all(g.startswith("_background_noise_/pink.wav#") for g in silence)
    assert len(set(silence)) > 1  # 12 s cut into 3 s segments: several groups
    assert not pool.x.flags.writeable and not pool.groups.flags.writeable


@pytest.mark.parametrize(("seed", "k"), [(0, 2), (0, 3), (7, 3)])
def test_speech_commands_folds_keep_speakers_apart(tmp_path: Path, seed: int, k: int) -> None:
    _write_kws_speakers(tmp_path)
    pool = load_pool("speech_commands", str(tmp_path))
    assert pool.groups is not None
    splits = [load_split("speech_commands", seed, 0.2, k, f, str(tmp_path)) for f in range(k)]
    tested = np.concatenate([s.test_index for s in splits])
    assert sorted(tested) == list(range(len(pool.y)))  # the test folds partition the pool
    shares = np.bincount(pool.y, minlength=12) / len(pool.y)
    for s in splits:
        train, test = set(pool.groups[s.train_index]), set(pool.groups[s.test_index])
        assert not train & test, f"groups in train and test: {train & test}"
        assert len(test & set(SPEAKERS)) >= 1
        counts = np.bincount(s.y_test, minlength=12)
        assert np.all(counts[2:] >= 1)  # every keyword is tested in every fold
        assert np.all(np.bincount(s.y_train, minlength=12) >= 1)  # and every class trained
        assert np.all(np.abs(counts / counts.sum() - shares) <= 0.1)  # stratified as groups allow


@pytest.mark.parametrize("folds", [1, 2])
def test_speech_commands_scaling_uses_training_data_only(tmp_path: Path, folds: int) -> None:
    _write_kws_speakers(tmp_path)
    pool = load_pool("speech_commands", str(tmp_path))
    s = load_split("speech_commands", 0, 0.2, folds, 0, str(tmp_path))
    assert pool.groups is not None
    if folds == 1:  # the official split: testing_list.txt, speaker-disjoint by construction
        assert set(pool.groups[s.test_index]) == {SPEAKERS[-1]}
    raw = pool.x[s.train_index]
    lo, hi = raw.min(), raw.max()
    assert s.feature_range == (float(lo), float(hi))
    assert s.x_train.min() == 0.0 and s.x_train.max() == 1.0  # exactly, by the training range
    np.testing.assert_allclose(s.x_train, (raw - lo) / (hi - lo), atol=1e-6)
    assert s.x_test.min() >= 0.0 and s.x_test.max() <= 1.0
    assert not s.x_train.flags.writeable and not s.x_test.flags.writeable

    # A test clip becomes loud noise, far outside the training range: the training
    # inputs of this split do not move, and the test input is clipped into [0, 1].
    speaker = next(g for g in pool.groups[s.test_index] if g in SPEAKERS)
    _loud_noise(tmp_path / "yes" / f"{speaker}_nohash_0.wav")
    load_pool.cache_clear()
    load_split.cache_clear()
    pool2 = load_pool("speech_commands", str(tmp_path))
    s2 = load_split("speech_commands", 0, 0.2, folds, 0, str(tmp_path))
    np.testing.assert_array_equal(s2.test_index, s.test_index)
    assert pool2.x[s2.test_index].max() > hi  # the new clip is out of the training range
    np.testing.assert_array_equal(s2.x_train, s.x_train)
    assert s2.feature_range == s.feature_range
    assert not np.array_equal(s2.x_test, s.x_test) and s2.x_test.max() <= 1.0


def test_speech_commands_official_split_must_not_share_speakers(tmp_path: Path) -> None:
    write_kws(tmp_path)  # its testing_list.txt holds only some of spk0's clips
    with pytest.raises(DatasetError, match=r"official test split shares 1 group.*'spk0'"):
        load_split("speech_commands", 0, 0.2, 1, 0, str(tmp_path))
    s = load_split("speech_commands", 0, 0.2, 2, 0, str(tmp_path))  # grouped folds still work
    assert s.x_train.max() == 1.0


def test_grouped_holdout_without_official_test() -> None:
    from trainables.data import _split_indices
    from trainables.datasets import Pool

    y = np.tile(np.arange(4), 30)  # 120 examples, 4 classes
    groups = np.repeat([f"g{i}" for i in range(20)], 6)  # 20 groups of 6, every class in each
    pool = Pool(np.zeros((120, 1, 1, 1), np.float32), y, ("a", "b", "c", "d"), None, groups)
    train, test = _split_indices(pool, 0, 0.2, 1, 0)
    assert not set(groups[train]) & set(groups[test])
    assert len(test) == 24 and sorted(np.bincount(y[test])) == [6, 6, 6, 6]


def test_independent_datasets_keep_their_splits() -> None:
    from sklearn.model_selection import StratifiedKFold, train_test_split

    pool = load_pool("digits")
    assert pool.groups is None and not pool.needs_scaling
    folds = list(StratifiedKFold(5, shuffle=True, random_state=3).split(pool.x, pool.y))
    for f, (_, test) in enumerate(folds):
        s = load_split("digits", 3, 0.2, 5, f)
        np.testing.assert_array_equal(s.test_index, test)
        np.testing.assert_array_equal(s.x_test, pool.x[test])  # no rescaling
        assert s.feature_range is None
    _, test = train_test_split(np.arange(1797), test_size=0.2, random_state=0, stratify=pool.y)
    np.testing.assert_array_equal(load_split("digits", 0, 0.2).test_index, test)


def test_decoded_cache_round_trips_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainables import data
    from trainables.datasets import load_speech_commands

    monkeypatch.setenv("ROBUSTGRID_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "kws"
    _write_kws_speakers(root)
    reads = []

    def read() -> object:
        reads.append(1)
        return load_speech_commands(root, False, None)

    first = data._cached("speech_commands", root, read)  # type: ignore[arg-type]
    (cached,) = (tmp_path / "cache" / "decoded").glob("speech_commands-*.npz")
    assert f"-v{data.CACHE_FORMAT}-" in cached.name  # a layout change makes a new file name
    again = data._cached("speech_commands", root, read)  # type: ignore[arg-type]
    assert len(reads) == 1 and again.groups is not None and first.groups is not None
    np.testing.assert_array_equal(again.groups, first.groups)
    np.testing.assert_array_equal(again.x, first.x)
    assert again.needs_scaling and again.official_test is not None

    # A cache of the old layout (no groups, no format) under the current name is decoded again.
    assert first.official_test is not None
    np.savez(cached, x=first.x, y=first.y, classes=np.array(first.classes),
             official_test=first.official_test, has_official_test=True)  # fmt: skip
    third = data._cached("speech_commands", root, read)  # type: ignore[arg-type]
    assert len(reads) == 2 and third.groups is not None
    svhn = tmp_path / "svhn"
    write_svhn(svhn)
    pool = data._cached("svhn", svhn, lambda: data.load_svhn(svhn, False, None))
    again_svhn = data._cached("svhn", svhn, lambda: data.load_svhn(svhn, False, None))
    assert pool.groups is None and again_svhn.groups is None and not again_svhn.needs_scaling
