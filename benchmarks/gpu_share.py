"""Trials per hour on one GPU when 1, 2, 4 and 8 trials share it (fractional gpus_per_trial).

Each trial trains the MLPerf Tiny ResNet-8 (trainables.models.resnet8, float) on
CIFAR-shaped random data (``--images`` 32x32x3 images, 10 classes) for ``--epochs``
epochs, in a Ray task holding ``1/k`` of the GPU, after ``trainables.gpu.configure_gpus``
set its memory (``--gpu-memory limit`` caps each process at its share, ``growth`` lets it
grow): the same settings a study's trial gets.  For each k it runs ``--rounds x k`` trials
on a local Ray with one GPU and prints trials per hour and the gain over k = 1.  Tiny
models leave most of a GPU idle: the gain says how much sharing recovers.

It needs an NVIDIA GPU and refuses to run without one (exit 2).

    python benchmarks/gpu_share.py [--shares 1 2 4 8] [--images 10000] [--epochs 2] \\
        [--rounds 2] [--gpu-memory limit]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def gpus_here() -> int:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    proc = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return sum(1 for line in proc.stdout.splitlines() if line.startswith("GPU "))


def one_trial(share: float, images: int, epochs: int, gpu_memory: str, seed: int) -> float:
    """Train ResNet-8 for ``epochs`` on random CIFAR-shaped data; its own wall time (s)."""
    t0 = time.perf_counter()
    from trainables.gpu import configure_gpus

    configure_gpus(share, gpu_memory)  # before TensorFlow allocates, as run_trial does
    import numpy as np
    import tf_keras

    from trainables.config import TrialConfig
    from trainables.models import build_model

    rng = np.random.default_rng(seed)
    x = rng.random((images, 32, 32, 3), dtype=np.float32)  # (N, 32, 32, 3)
    y = rng.integers(0, 10, images)
    model = build_model(TrialConfig(dataset="cifar10", model="resnet8"), (32, 32, 3), 10)
    model.compile(
        optimizer=tf_keras.optimizers.Adam(1e-3),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shares", type=int, nargs="+", default=[1, 2, 4, 8], help="trials per GPU")
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="trials per slot (k x rounds trials)")
    p.add_argument("--gpu-memory", choices=["limit", "growth"], default="limit")
    args = p.parse_args()
    if gpus_here() < 1:
        print("gpu_share: no NVIDIA GPU here (nvidia-smi lists none); run it on a GPU machine",
              file=sys.stderr)  # fmt: skip
        return 2
    import ray

    ray.init(num_gpus=1, include_dashboard=False, runtime_env={"env_vars": {
        "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}})  # fmt: skip
    print(f"ResNet-8, {args.images:,} CIFAR-shaped images x {args.epochs} epochs per trial; "
          f"gpu_memory {args.gpu_memory}; one GPU")  # fmt: skip
    print(f"{'per GPU':>8} {'trials':>7} {'wall s':>8} {'trial s':>8} {'trials/h':>9} {'gain':>6}")
    base = None
    for k in args.shares:
        share = 1.0 / k
        task = ray.remote(num_gpus=share, num_cpus=0, max_retries=0)(one_trial)
        n = k * args.rounds
        t0 = time.perf_counter()
        own = ray.get([task.remote(share if k > 1 else 1.0, args.images, args.epochs,
                                   args.gpu_memory, i) for i in range(n)])  # fmt: skip
        wall = time.perf_counter() - t0
        per_hour = n / wall * 3600
        base = base or per_hour
        print(f"{k:>8} {n:>7} {wall:>8.1f} {sum(own) / n:>8.1f} {per_hour:>9.0f} "
              f"{per_hour / base:>5.2f}x")  # fmt: skip
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
