"""One robustgrid trial as a pure function: ``run_trial(config) -> rows``.

QKeras and tfmot need Keras 2, so every process that imports TensorFlow
through this package gets ``TF_USE_LEGACY_KERAS=1`` *before* the first
``import tensorflow`` (Ray workers get it from the runtime_env as well).
This package never imports ``grid`` or ``analysis``.
"""

from __future__ import annotations

import os
import warnings

os.environ["TF_USE_LEGACY_KERAS"] = "1"

# TensorFlow's C++ notices (cudart_stub, oneDNN, cuInit) out of the output unless asked for
# (ROBUSTGRID_TF_LOGS=1, `grid --verbose`, or the user's own TF_CPP_MIN_LOG_LEVEL): before
# the first `import tensorflow` of this process.
from trainables import tflogs

tflogs.configure()

# Known, harmless notices from the stack that would drown a study's progress:
# QKeras quantizers serialised through keras.constraints, tfmot re-calling
# unseeded initialisers while cloning, ART's optional PyTorch features.
for _pattern in (
    r"The `keras.constraints.serialize\(\)` API",
    r"The initializer \w+ is unseeded",
    r"PyTorch not found",
    r"`tf.keras.backend.learning_phase_scope` is deprecated",
    r".*tf.lite.Interpreter is deprecated",
    r"You are saving your model as an HDF5 file",
    r"Statistics for quantized inputs were expected",
):
    warnings.filterwarnings("ignore", message=_pattern, category=UserWarning)

from trainables.config import AttackName, AttackSpec, TrialConfig  # noqa: E402

__all__ = ["AttackName", "AttackSpec", "TrialConfig"]
