from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tempfile

# Decoded-dataset caches of the tests stay out of the user's ~/.cache.
os.environ.setdefault("ROBUSTGRID_CACHE", tempfile.mkdtemp(prefix="robustgrid-test-cache-"))
