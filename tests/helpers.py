"""What several test modules share (test modules import this, never each other):

the ``grid`` command line in a subprocess, synthetic rows in the real schema,
datasets written small in their real on-disk formats, a user's model package,
and brute-force oracles (Pareto front, hypervolume).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainables.config import RESULTS_REVISION
from trainables.rows import SCHEMA_VERSION, empty_row

TESTS = Path(__file__).parent
STUDIES = TESTS / "studies"  # the tests' own study files
SMOKE = STUDIES / "smoke.yaml"
GRID = [sys.executable, "-m", "grid.cli"]
# `grid` with faults injected into its trials or its storage (tests/injected.py)
INJECTED = [sys.executable, "-m", "tests.injected"]


def grid_cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: int = 900,
    faults: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run the ``grid`` command line in a subprocess, as a user would (``env`` adds variables;
    ``faults``, tests/injected.py's options, inject faults into its trials)."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [*INJECTED, *faults, "--", *args] if faults else [*GRID, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full)


# ---------------------------------------------------------------------------
# Ray nodes started by hand (`ray start`), each in a process group of its own

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def stand_in_driver(seconds: int = 120) -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose command line names grid, as ``grid.state.live_driver`` takes a
    driver to be; killed on exit.  Popen can return while the child is still inside exec
    (an empty /proc/PID/cmdline, which live_driver takes for a recycled pid; seen under
    load): wait until the kernel shows the command line a driver would have."""
    proc = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})", "grid"])
    try:
        deadline = time.monotonic() + 30
        while b"grid" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "the stand-in driver never started"
            time.sleep(0.01)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def plain_env(**extra: str) -> dict[str, str]:
    """The user's environment with no RAY_* variable (a local ray.init earlier in this test
    process leaves RAY_AUTH_MODE set), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


@contextmanager
def ray_node(
    args: list[str], env: dict[str, str], log: Path, wrap: list[str] | None = None
) -> Iterator[None]:
    """``ray start ARGS --block`` in its own process group; the group is killed afterwards."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*(wrap or []), RAY, "start", *args, "--block"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                time.sleep(1)  # the group's other processes (raylet, GCS) end with it
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left


def stop_cluster(address: str, timeout: float = 30.0) -> None:
    """End the processes of the Ray cluster whose GCS is at ``address`` (``host:port``) and
    no other: its GCS (``--gcs_server_port=PORT``) and every process that names the address
    (raylets, the monitor and its fake nodes, agents, workers).  ``ray stop`` would end
    every Ray on the machine, the session's shared head (conftest.ray_head) included."""
    import psutil

    port = address.rsplit(":", 1)[1]
    marks = (address, f"--gcs_server_port={port}")

    def ours() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info.get("cmdline") or [])
            if any(m in cmd for m in marks) and proc.pid != os.getpid():
                found.append(proc)
        return found

    for sig in (signal.SIGTERM, signal.SIGKILL):
        procs = ours()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        _, alive = psutil.wait_procs(procs, timeout=timeout if sig == signal.SIGTERM else 5)
        if not alive:
            return


@dataclass
class S3:
    """A local S3 endpoint (moto's server) that pyarrow's real S3 client talks to over HTTP."""

    uri: str  # s3://<bucket>
    endpoint: str
    log: list[str]  # the server's access log: 'GET /bucket/key ...' per request

    def requests(self, method: str, key_part: str) -> int:
        plain = (re.sub(r"\x1b\[[0-9;]*m", "", line) for line in self.log)  # colour codes out
        return sum(1 for line in plain if f'"{method} /' in line and key_part in line)


# ---------------------------------------------------------------------------
# Rows

# Attacks whose eps is an L2 radius unless a row says otherwise (trainables.config.DEFAULT_NORM).
_L2 = {"cw_l2", "deepfool", "hopskipjump", "boundary"}


def mask_hex(robust: Sequence[bool]) -> str:
    """``metric_robust_mask`` of per-example robust booleans: hex of np.packbits."""
    return np.packbits(np.asarray(robust, dtype=bool)).tobytes().hex()


def rows_for(
    key: str,
    robust: dict[tuple[str, float], float],
    clean: float,
    nbytes: int,
    status: str = "complete",
    fold: int = 0,
    *,
    revision: int | None = RESULTS_REVISION,
    norms: dict[str, str] | None = None,
    samples: int | None = None,
    test_samples: int | None = None,
    masks: dict[tuple[str, float], Sequence[bool]] | None = None,
    subset: str | None = None,
    tflite_bytes: int | None = None,
    extra: dict[str, Any] | None = None,
    **cfg: Any,
) -> list[dict[str, Any]]:
    """One row per (attack, eps) of ``robust``; every other keyword fills the columns it names.

    An attack 'worst' is a stored per-example worst row (kind 'worst'), given by hand
    like any other (the readers take it; nothing here derives it from the others).
    ``norms`` maps an attack to its norm ('inf' default, '2' for the L2 attacks);
    ``masks`` gives the per-example robust booleans of an (attack, eps) (their
    count is then ``metric_samples`` and their mean must be the robust accuracy);
    ``extra`` sets any column on every row; ``revision=None`` writes no revision.
    """
    out = []
    for (attack, eps), acc in robust.items():
        r = empty_row()
        mask = (masks or {}).get((attack, eps))
        norm = (norms or {}).get(attack, "2" if attack in _L2 else "inf")
        r.update(
            schema_version=SCHEMA_VERSION,
            revision=revision,
            key=key,
            fold=fold,
            attack=attack,
            attack_kind="worst" if attack == "worst" else None,
            attack_norm=None if attack == "none" else norm,
            eps=eps,
            status=status,
            reason="" if status == "complete" else "boom",
            metric_clean_acc=clean,
            metric_robust_acc=acc,
            metric_attack_clean_acc=clean,
            metric_samples=len(mask) if mask is not None else samples,
            metric_test_samples=test_samples,
            metric_robust_mask=mask_hex(mask) if mask is not None else None,
            meta_attack_subset=subset,
            metric_bytes=nbytes,
            metric_tflite_bytes=tflite_bytes,
            cfg_bits=str(cfg.get("bits", "4")),
            cfg_sparsity=float(cfg.get("sparsity", 0.0)),
            cfg_clusters=int(cfg.get("clusters", 0)),
            cfg_jr_weight=float(cfg.get("jr_weight", 0.0)),
            cfg_jr_layers=cfg.get("jr_layers", "{}"),
            cfg_layer_bits=cfg.get("layer_bits", "{}"),
            cfg_layer_sparsity=cfg.get("layer_sparsity", "{}"),
            cfg_layer_clusters=cfg.get("layer_clusters", "{}"),
            cfg_layer_activation_bits=cfg.get("layer_activation_bits", "{}"),
            cfg_dataset=cfg.get("dataset", "digits"),
            cfg_model=cfg.get("model", "digits_cnn"),
            cfg_adv_training=cfg.get("adv_training", "none"),
            cfg_seed=int(cfg.get("seed", 0)),
            cfg_folds=int(cfg.get("folds", 1)),
            metric_params=int(cfg.get("params", 1000)),
            meta_study=cfg.get("study", "t"),
        )
        if mask is not None:
            assert abs(float(np.mean(mask)) - acc) < 1e-12, (key, attack, eps)
        r.update(extra or {})
        out.append(r)
    return out


# ---------------------------------------------------------------------------
# Oracles


def brute_force_front(points: list[tuple[str, float, int]]) -> set[str]:
    """Keys of (key, robust, bytes) points that no other point dominates."""
    keys = [p[0] for p in points]
    acc = np.array([p[1] for p in points])
    size = np.array([p[2] for p in points])
    front = set()
    for i in range(len(points)):
        dominated = (acc >= acc[i]) & (size <= size[i]) & ((acc > acc[i]) | (size < size[i]))
        if not dominated.any():
            front.add(keys[i])
    return front


def brute_force_hv(values: np.ndarray, maximize: list[bool], ref: list[float]) -> float:
    """Union of the boxes [point, ref] by counting the cells of the grid of all coordinates."""
    sign = np.where(maximize, -1.0, 1.0)
    v, r = np.asarray(values, float) * sign, np.asarray(ref, float) * sign
    v = v[(v < r).all(axis=1)]
    if not len(v):
        return 0.0
    axes = [np.unique(np.append(v[:, d], r[d])) for d in range(v.shape[1])]
    total = 0.0
    for cell in itertools.product(*(range(len(a) - 1) for a in axes)):
        lo = np.array([axes[d][i] for d, i in enumerate(cell)])
        if (v <= lo).all(axis=1).any():  # some point dominates the cell's lower corner
            total += float(np.prod([axes[d][i + 1] - axes[d][i] for d, i in enumerate(cell)]))
    return total


def config_rows(
    cfg: Any, robust: float, nbytes: int, *, study: str = "t", samples: int = 300
) -> list[dict[str, Any]]:
    """One complete pgd (L-inf, eps 0.1) row of a real ``TrialConfig`` and its worst row (one
    attack: the same figures), as the trainable writes them.

    The config columns and ``meta_config_json`` come from ``trainables.rows.base_row``
    (TF-free), so the analysis sees the production JSON; the metrics are filled in here.
    """
    from trainables.rows import base_row

    r = base_row(cfg, "t")
    r.update(
        attack="pgd",
        attack_norm="inf",
        eps=0.1,
        status="complete",
        reason="",
        metric_clean_acc=0.9,
        metric_robust_acc=robust,
        metric_attack_clean_acc=0.9,
        metric_samples=samples,
        metric_test_samples=samples,
        metric_bytes=nbytes,
        metric_params=1000,
        meta_study=study,
    )
    return [r, {**r, "attack": "worst", "attack_kind": "worst"}]


# ---------------------------------------------------------------------------
# Datasets, small, in their real on-disk formats


def cifar_batches(n: int = 6, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10's five training batches and its test batch, ``n`` random images each."""
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {
        name: (rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n))
        for name in names
    }


def write_cifar_bin(root: Path, batches: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """The batches in CIFAR-10's binary version (``cifar-10-batches-bin/*.bin``)."""
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    for name, (data, labels) in batches.items():
        np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1).tofile(d / f"{name}.bin")
    return d


def write_svhn(root: Path, n_train: int = 12, n_test: int = 5, seed: int = 0) -> None:
    """SVHN's cropped-digits ``.mat`` files (labels 1..10, 10 = digit 0)."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(-1, 1)  # 1..10, 10 = digit 0
        savemat(root / name, {"X": x, "y": y})


def wav(path: Path, seconds: float = 1.0, rate: int = 16_000, freq: float = 440.0) -> None:
    """A 16-bit PCM sine tone."""
    from scipy.io import wavfile

    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    wavfile.write(path, rate, (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16))


def write_kws(root: Path) -> None:
    """Speech Commands v2 in miniature: the ten keywords, two unknown words, background noise
    and the official test and validation lists."""
    for i, word in enumerate(
        ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
    ):
        for j in range(3):
            wav(root / word / f"spk{j}_nohash_0.wav", seconds=0.8 + 0.1 * j, freq=200 + 50 * i)
    for word in ("bed", "cat"):
        for j in range(4):
            wav(root / word / f"spk{j}_nohash_0.wav", freq=900)
    wav(root / "_background_noise_" / "white.wav", seconds=3.0, freq=50)
    (root / "testing_list.txt").write_text("yes/spk0_nohash_0.wav\nno/spk0_nohash_0.wav\n")
    (root / "validation_list.txt").write_text("yes/spk1_nohash_0.wav\n")


# ---------------------------------------------------------------------------
# A user's own model package (bring your own model)

BUILDER = """
import tf_keras

from trainables.models import CQConv2D, CQDense


def build(b, input_shape, num_classes):
    inp = tf_keras.Input(input_shape, name="image")  # (B, H, W, C)
    x = CQConv2D(4, 3, padding="same", name="conv1", **b.q("conv1", 9 * input_shape[-1]))(inp)
    x = b.act("act1")(x)
    x = tf_keras.layers.Flatten(name="flatten")(x)
    return tf_keras.Model(inp, CQDense(num_classes, name="logits", **b.q("logits", int(x.shape[-1])))(x))


def wrong_output(b, input_shape, num_classes):
    inp = tf_keras.Input(input_shape)
    x = tf_keras.layers.Flatten()(inp)
    return tf_keras.Model(inp, CQDense(num_classes + 1, name="logits", **b.q("logits", int(x.shape[-1])))(x))


def plain_dense(b, input_shape, num_classes):
    inp = tf_keras.Input(input_shape)
    x = tf_keras.layers.Flatten()(inp)
    return tf_keras.Model(inp, tf_keras.layers.Dense(num_classes, name="head")(x))
"""


def write_builder_package(root: Path, name: str = "byom_pkg") -> Path:
    """A user's package ``name`` with ``name.models:build`` under ``root`` (not installed)."""
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""A researcher\'s own models."""\n')
    (pkg / "models.py").write_text(textwrap.dedent(BUILDER))
    return pkg


# A layer list with every layer type (tests/test_byom.py, tests/test_layerwise.py).
EVERY_LAYER: dict[str, Any] = {
    "name": "every_layer",
    "layers": [
        {"type": "conv", "filters": 8, "kernel": 3},  # conv1   8x8x8   3*3*1*8+8 = 80
        {"type": "batch_norm"},  # bn1     4*8 = 32 (2 trainable x 8, 2 moving x 8)
        {"type": "activation"},  # act1
        {"type": "depthwise_conv", "kernel": [3, 3]},  # dw1     3*3*8+8 = 80
        {"type": "activation"},  # act2
        {"type": "add", "from": "act1"},  # add1    act1 + act2
        {"type": "max_pool", "pool": 2},  # maxpool1 4x4x8
        {"type": "conv", "filters": 8, "kernel": 1, "strides": 1},  # conv2  1*1*8*8+8 = 72
        {"type": "avg_pool", "pool": 2},  # avgpool1 2x2x8
        {"type": "global_avg_pool", "name": "gap"},  # gap  8
        {"type": "dropout", "rate": 0.1},  # drop1
        {"type": "flatten"},  # flatten1 8
        {"type": "dense", "units": 12},  # dense1  8*12+12 = 108
        {"type": "activation"},  # act3
        {"type": "dense"},  # logits  12*10+10 = 130
    ],
}
