"""GPU memory for a trial that shares its GPU (a fractional ``gpus_per_trial``).

Ray schedules fractions of a GPU (``num_gpus=0.25``: four trials per GPU) but does not
divide its memory: by default TensorFlow maps nearly all of a visible GPU's memory in its
first session, so the second trial on that GPU fails with out-of-memory.  Before TensorFlow
allocates, a trial with a fraction ``f`` of a GPU gets one of two settings:

- ``limit`` (the default): a logical device of ``f x total - CUDA_CONTEXT_MB`` MB
  (``tf.config.set_logical_device_configuration``).  A hard cap per process: trials that
  share a GPU cannot take each other's memory, whichever starts first and however they grow.
  ``CUDA_CONTEXT_MB`` is left for each process's CUDA context and cuDNN/cuBLAS workspaces,
  which live outside TensorFlow's allocator.
- ``growth``: ``tf.config.experimental.set_memory_growth``: each process maps memory as it
  needs it.  No cap: a trial whose peak is larger than its share can starve the others (and
  TensorFlow never gives memory back), but it lets uneven trials share well.

Whole GPUs (``gpus_per_trial`` 1, 2, ...) keep TensorFlow's default: the trial owns them.
Unmeasured here (no GPU on the development machine): benchmarks/gpu_share.py measures it.
"""

from __future__ import annotations

import enum
import os
import shutil
import subprocess
from typing import NamedTuple

# Per process, outside TensorFlow's allocator: the CUDA context plus cuDNN/cuBLAS handles
# (a few hundred MB on current drivers).
CUDA_CONTEXT_MB = 512
MIN_LIMIT_MB = 256  # below this a share is too small to train anything


class GpuMemory(enum.StrEnum):
    limit = "limit"
    growth = "growth"


class GpuSettings(NamedTuple):
    growth: bool  # set_memory_growth on every visible GPU
    limit_mb: int | None  # one logical device of this many MB per visible GPU (None: no cap)


def is_fractional(gpus: float) -> bool:
    return 0 < gpus < 1


def gpu_settings(gpus: float, total_mb: int | None, mode: GpuMemory | str) -> GpuSettings | None:
    """The memory settings of a trial holding ``gpus`` GPUs of ``total_mb`` MB each; None for
    none (no GPU, or whole GPUs: TensorFlow's default).  ``limit`` without a known total
    falls back to growth."""
    if not is_fractional(gpus):
        return None
    if GpuMemory(mode) == GpuMemory.growth or total_mb is None:
        return GpuSettings(growth=True, limit_mb=None)
    return GpuSettings(growth=False, limit_mb=memory_limit_mb(gpus, total_mb))


def memory_limit_mb(fraction: float, total_mb: int, context_mb: int = CUDA_CONTEXT_MB) -> int:
    """TensorFlow's memory limit for a process holding ``fraction`` of a ``total_mb`` GPU."""
    if not 0 < fraction <= 1:
        raise ValueError(f"gpus_per_trial: {fraction!r} is not a fraction of a GPU in (0, 1]")
    limit = int(fraction * total_mb) - context_mb
    if limit < MIN_LIMIT_MB:
        raise ValueError(
            f"gpus_per_trial: {fraction:g} of a {total_mb:,} MB GPU leaves {limit:,} MB per trial "
            f"after {context_mb} MB of CUDA context (at least {MIN_LIMIT_MB} MB needed); "
            "share the GPU between fewer trials, or use resources.gpu_memory: growth"
        )
    return limit


def visible_gpu_memory_mb() -> int | None:
    """Total memory (MB) of the first GPU this process may use (Ray sets CUDA_VISIBLE_DEVICES),
    from ``nvidia-smi``; None when it cannot tell."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    cmd = [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
    if visible:
        cmd.append(f"--id={visible}")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout
        return int(float(out.split()[0]))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def configure_gpus(gpus: float, mode: GpuMemory | str) -> GpuSettings | None:
    """Apply :func:`gpu_settings` to every GPU TensorFlow sees, before it allocates any.

    In a reused worker TensorFlow is already initialised with the settings of the study's
    first trial (the same study, so the same settings): they stay.
    """
    if not is_fractional(gpus):
        return None
    import tensorflow as tf

    devices = tf.config.list_physical_devices("GPU")
    if not devices:
        return None
    settings = gpu_settings(gpus, visible_gpu_memory_mb(), mode)
    if settings is None:
        return None
    try:
        for dev in devices:
            if settings.limit_mb is not None:
                tf.config.set_logical_device_configuration(
                    dev, [tf.config.LogicalDeviceConfiguration(memory_limit=settings.limit_mb)]
                )
            else:
                tf.config.experimental.set_memory_growth(dev, True)
    except RuntimeError:
        pass  # already initialised in this (reused) worker: it keeps its settings
    return settings
