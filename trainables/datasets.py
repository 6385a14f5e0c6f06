"""Readers for each dataset's standard on-disk format.

Every reader returns a :class:`Pool`: all examples as float32 (NHWC; images
in [0, 1], Speech Commands as raw MFCCs that ``load_split`` scales with the
training split's range), int64 labels, the class names, which examples the
official test split holds (None where a dataset has none) and, where examples
share a source that must not cross a split (Speech Commands: the speaker),
a group id per example.  A missing, corrupt or truncated file raises
:class:`DatasetError` naming the file.

Nothing is unpickled unverified: CIFAR-10's python batches are read with
an unpickler that only builds numpy arrays, and an archive is checked
against its MD5 before anything in it is read.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import pickle
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Pool:
    x: np.ndarray  # (N, H, W, C) float32: 0-1 scale, or raw features where needs_scaling
    y: np.ndarray  # (N,) int64
    classes: tuple[str, ...]
    official_test: np.ndarray | None  # (N,) bool, or None
    # (N,) str: examples with the same id never sit on both sides of a split
    # (Speech Commands: the speaker); None where examples are independent.
    groups: np.ndarray | None = None
    # x holds unscaled features (MFCCs): load_split min-max scales each split
    # to [0, 1] with its training examples' min and max, never the test's.
    needs_scaling: bool = False


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_root() -> Path:
    return Path(os.environ.get("ROBUSTGRID_CACHE", Path.home() / ".cache" / "robustgrid"))


def fetch(url: str, dest: Path, md5: str) -> Path:
    """Download ``url`` to ``dest`` (atomically) and verify its MD5."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, tmp.open("wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"{url}: download failed: {err}") from None
    got = md5sum(tmp)
    if got != md5:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"{url}: checksum mismatch (md5 {got}, expected {md5})")
    os.replace(tmp, dest)
    return dest


def verified_archive(path: Path, md5: str) -> Path:
    got = md5sum(path)
    if got != md5:
        raise DatasetError(
            f"{path}: checksum mismatch (md5 {got}, expected {md5}); refusing to read it"
        )
    return path


def extract(archive: Path, into: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")  # no absolute paths, links out of the tree, devices
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DatasetError(f"{archive}: cannot extract: {err}") from None


# ---------------------------------------------------------------------------
# CIFAR-10: binary batches (preferred: no pickle at all) or python batches.

CIFAR_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR_ARCHIVES = {  # name -> (url, md5)
    "cifar-10-binary.tar.gz": (
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "c32a1d4ab5d03f1284b67883e8d87530",
    ),
    "cifar-10-python.tar.gz": (
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
    ),
}
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_RECORD = 1 + 32 * 32 * 3  # label byte + R, G, B planes of 32x32


def _cifar_images(flat: np.ndarray) -> np.ndarray:
    return flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3) uint8


def read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8) if path.is_file() else None
    if raw is None:
        raise DatasetError(f"{path}: missing CIFAR-10 binary batch")
    if raw.size == 0 or raw.size % CIFAR_RECORD:
        raise DatasetError(
            f"{path}: truncated or corrupt CIFAR-10 binary batch ({raw.size} bytes is not a multiple of {CIFAR_RECORD})"
        )
    rec = raw.reshape(-1, CIFAR_RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DatasetError(f"{path}: corrupt CIFAR-10 binary batch (label {labels.max()} > 9)")
    return _cifar_images(rec[:, 1:]), labels


class _ArraysOnly(pickle.Unpickler):
    """Builds dicts, lists, bytes and numpy arrays; refuses every other global."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DatasetError(f"{path}: missing CIFAR-10 python batch")
    try:
        d = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except (
        pickle.UnpicklingError,
        EOFError,
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
    ) as err:
        raise DatasetError(f"{path}: corrupt CIFAR-10 python batch: {err}") from None
    if data.ndim != 2 or data.shape[1] != CIFAR_RECORD - 1 or len(labels) != len(data):
        raise DatasetError(
            f"{path}: corrupt CIFAR-10 python batch (data {data.shape}, {len(labels)} labels)"
        )
    return _cifar_images(data), labels


def load_cifar10(root: Path, download: bool, md5: str | None) -> Pool:
    bin_dir, py_dir = root / "cifar-10-batches-bin", root / "cifar-10-batches-py"
    if not bin_dir.is_dir() and not py_dir.is_dir():
        for name, (url, official) in CIFAR_ARCHIVES.items():
            archive = root / name
            if not archive.is_file() and download and name == "cifar-10-binary.tar.gz":
                fetch(url, archive, official)
            if archive.is_file():
                extract(verified_archive(archive, md5 or official), root)
                break
    if bin_dir.is_dir():
        parts = [read_cifar_bin(bin_dir / f"{n}.bin") for n in [*CIFAR_TRAIN, "test_batch"]]
    elif py_dir.is_dir():
        parts = [read_cifar_py(py_dir / n) for n in [*CIFAR_TRAIN, "test_batch"]]
    else:
        raise DatasetError(
            f"{root}: no CIFAR-10 here (expected cifar-10-batches-bin/, cifar-10-batches-py/ or "
            f"cifar-10-binary.tar.gz); set dataset.download: true to fetch it"
        )
    x = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    y = np.concatenate([p[1] for p in parts])
    test = np.zeros(len(y), bool)
    test[len(y) - len(parts[-1][1]) :] = True
    return Pool(x, y, CIFAR_CLASSES, test)


# ---------------------------------------------------------------------------
# SVHN: MATLAB files train_32x32.mat / test_32x32.mat (X: 32x32x3xN, y: Nx1, 10 = digit 0).

SVHN_FILES = {  # name -> (url, md5)
    "train_32x32.mat": (
        "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
        "e26dedcc434d2e4c54c9b2d4a06d0373",
    ),
    "test_32x32.mat": (
        "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
        "eb5a983be6a315427106f1b164d9cef3",
    ),
}


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    if not path.is_file():
        raise DatasetError(f"{path}: missing SVHN file")
    try:
        m = loadmat(path)
        x, y = np.asarray(m["X"]), np.asarray(m["y"]).reshape(-1).astype(np.int64)
    except Exception as err:  # scipy raises many kinds on a damaged file
        raise DatasetError(f"{path}: corrupt SVHN file: {err}") from None
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y) or len(y) == 0:
        raise DatasetError(f"{path}: corrupt SVHN file (X {x.shape}, y {y.shape})")
    if y.min() < 1 or y.max() > 10:
        raise DatasetError(
            f"{path}: corrupt SVHN file (labels {y.min()}..{y.max()}, expected 1..10)"
        )
    return x.transpose(3, 0, 1, 2), np.where(y == 10, 0, y)


def load_svhn(root: Path, download: bool, md5: str | None) -> Pool:
    parts = []
    for name, (url, official) in SVHN_FILES.items():
        path = root / name
        if not path.is_file() and download:
            fetch(url, path, official)
        parts.append(read_svhn_mat(path))
    x = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    y = np.concatenate([p[1] for p in parts])
    test = np.zeros(len(y), bool)
    test[len(parts[0][1]) :] = True
    return Pool(x, y, tuple(str(i) for i in range(10)), test)


# ---------------------------------------------------------------------------
# Google Speech Commands v2 as 12-class keyword spotting (MLPerf Tiny):
# 10 words + silence (1 s crops of _background_noise_) + unknown (other words),
# through the MFCC front end (49 x 10).  The pool keeps the raw MFCCs and a
# group per clip (its speaker); trainables.data.load_split keeps speakers on
# one side of every split and min-max scales to [0, 1] with the training
# examples' range only.

KWS_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
KWS_CLASSES = ("_silence_", "_unknown_", *KWS_WORDS)
KWS_ARCHIVE = (
    "https://storage.googleapis.com/download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
    "6b74f3901214cb2c2934e98196829835",
)
SILENCE_SHARE = UNKNOWN_SHARE = 0.10  # of the keyword clips, as in MLPerf Tiny
BACKGROUND_VOLUME = 0.1
# Silence crops come from the background recordings (v2: six of ~1-1.5 min).  Each
# recording is cut into contiguous 3 s segments and every crop lies inside one
# segment, which is its group: a crop of one fold never shares a sample with a
# crop of another (random 1 s crops of a whole file would overlap across
# folds), while the many segments (~130 in v2) keep silence in every fold.  Grouping
# by whole file would instead test on unseen noise types and, with 6 files,
# leave folds beyond the sixth without silence; the official test split also
# draws its silence from the same recordings.
SILENCE_SEGMENT = 3 * 16_000  # samples
SILENCE_TEST_EVERY = 10  # every 10th segment is in the official test split (~10%)
NOHASH = "_nohash_"


def speaker_of(name: str) -> str:
    """A clip's speaker id: its file name's prefix before ``_nohash_`` (the dataset's convention).

    A name without ``_nohash_`` is taken as a speaker of its own (its stem).
    """
    stem = name.removesuffix(".wav")
    speaker, sep, _ = stem.partition(NOHASH)
    return speaker if sep else stem


def noise_segments(path: Path, audio: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """``audio`` cut into contiguous, non-overlapping segments of at least SILENCE_SEGMENT
    samples (one segment if it is shorter), each named ``_background_noise_/<file>#<k>``."""
    parts = max(1, len(audio) // SILENCE_SEGMENT)
    cuts = np.linspace(0, len(audio), parts + 1).astype(np.int64)
    return [
        (f"_background_noise_/{path.name}#{k}", audio[a:b])
        for k, (a, b) in enumerate(itertools.pairwise(cuts))
    ]


def read_wav(path: Path) -> np.ndarray:
    from scipy.io import wavfile

    try:
        rate, data = wavfile.read(path)
    except Exception as err:  # scipy raises ValueError, struct.error, ... on a damaged file
        raise DatasetError(f"{path}: corrupt WAV file: {err}") from None
    if rate != 16_000:
        raise DatasetError(f"{path}: sample rate {rate} Hz, expected 16000")
    if data.ndim != 1:
        raise DatasetError(f"{path}: {data.shape[1]} channels, expected mono")
    if data.dtype == np.int16:
        return data.astype(np.float32) / 32768.0
    return data.astype(np.float32)


def load_speech_commands(root: Path, download: bool, md5: str | None, seed: int = 0) -> Pool:
    from trainables.audio import CLIP_SAMPLES, fit_clip, mfcc

    if not (root / "testing_list.txt").is_file():
        archive = root / "speech_commands_v0.02.tar.gz"
        if not archive.is_file() and download:
            fetch(KWS_ARCHIVE[0], archive, KWS_ARCHIVE[1])
        if archive.is_file():
            extract(verified_archive(archive, md5 or KWS_ARCHIVE[1]), root)
    if not (root / "testing_list.txt").is_file():
        raise DatasetError(
            f"{root}: no Speech Commands here (expected word folders and testing_list.txt); "
            f"set dataset.download: true to fetch it"
        )
    testing = set((root / "testing_list.txt").read_text().split())
    rng = np.random.default_rng(seed)
    words = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    files, labels = [], []
    unknown = []
    for word in words:
        for wav in sorted((root / word).glob("*.wav")):
            rel = f"{word}/{wav.name}"
            if word in KWS_WORDS:
                files.append(rel)
                labels.append(KWS_CLASSES.index(word))
            else:
                unknown.append(rel)
    if not files:
        raise DatasetError(f"{root}: no keyword clips (folders {', '.join(KWS_WORDS)})")
    n_unknown = min(len(unknown), max(1, round(UNKNOWN_SHARE * len(files)))) if unknown else 0
    for rel in rng.choice(unknown, size=n_unknown, replace=False) if n_unknown else []:
        files.append(str(rel))
        labels.append(1)
    clips = [fit_clip(read_wav(root / rel)) for rel in files]
    # The official split (testing_list.txt) assigns clips by a hash of the
    # speaker id, so it is speaker-disjoint by construction; load_split checks it.
    is_test = [rel in testing for rel in files]
    groups = [speaker_of(rel.rpartition("/")[2]) for rel in files]
    segments = [
        seg
        for path in sorted((root / "_background_noise_").glob("*.wav"))
        if len(audio := read_wav(path)) >= CLIP_SAMPLES
        for seg in noise_segments(path, audio)
    ]
    if segments:
        for _ in range(max(1, round(SILENCE_SHARE * len(files)))):
            k = int(rng.integers(len(segments)))
            name, seg = segments[k]
            start = rng.integers(0, len(seg) - CLIP_SAMPLES + 1)
            clips.append(seg[start : start + CLIP_SAMPLES] * rng.uniform(0, BACKGROUND_VOLUME))
            labels.append(0)
            groups.append(name)
            # Whole segments go to the official test split, so its silence shares
            # no audio with the training silence.
            is_test.append(k % SILENCE_TEST_EVERY == SILENCE_TEST_EVERY - 1)
    x = mfcc(np.stack(clips))[..., None]  # (N, 49, 10, 1) raw MFCCs, scaled per split
    return Pool(
        x.astype(np.float32),
        np.asarray(labels, np.int64),
        KWS_CLASSES,
        np.asarray(is_test),
        groups=np.asarray(groups, dtype=str),
        needs_scaling=True,
    )
