"""TensorFlow's C++ log lines kept out of a user's terminal unless asked for.

On a machine without a GPU, ``import tensorflow`` writes ``cudart_stub`` and oneDNN
notices (and, from TensorFlow 2.21's two shared libraries, each twice), and the first
device query ``E0000 ... failed call to cuInit``: they read as failures and are not.
Checked on this stack (TensorFlow 2.21, CPU): ``TF_CPP_MIN_LOG_LEVEL=3`` silences the
``cuInit`` error (logged after absl's log init), but not the import's own lines: those
are written by the libraries' static initialisers *before* absl's ``InitializeLog``
("WARNING: All log messages before absl::InitializeLog() is called are written to
STDERR"), which no environment variable reaches.  So in quiet mode the first
``import tensorflow`` runs with file descriptor 2 caught in a file, and the lines that
are not such notices are written back (anything else, an import error's output
included, still shows).

Modes, decided once per process from the environment (so Ray workers, which inherit it
or get it through the runtime_env, decide as their driver did):

- ``ROBUSTGRID_TF_LOGS=1`` (``grid --verbose`` sets it): TensorFlow logs as it would.
- ``TF_CPP_MIN_LOG_LEVEL`` set by the user: their level wins, nothing is caught.
- otherwise quiet: ``TF_CPP_MIN_LOG_LEVEL=3``, the import's notices dropped, the
  ``tensorflow`` and absl Python loggers at ERROR; ``ROBUSTGRID_TF_LOGS=0`` marks the
  level as ours.  (The TFLite converter's own printf lines in a worker's log stay.)

TF-free: this module imports nothing of TensorFlow (it runs before it).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from types import ModuleType

ENV = "ROBUSTGRID_TF_LOGS"  # "1": show TensorFlow's logs; "0": quiet, set by this module
LEVEL = "TF_CPP_MIN_LOG_LEVEL"
QUIET_LEVEL = "3"  # errors too: the only one on a CPU machine is cuInit's

# The import-time notices (absl's pre-init lines): INFO lines of the C++ core, absl's banner
# and cpu_feature_guard's continuation line.  Warnings and errors are written back.
NOISE = re.compile(
    r"^(?:WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|I\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\]"
    r"|To enable the following instructions:)"
)


def mode() -> str:
    """'verbose', 'user' (the user's own TF_CPP_MIN_LOG_LEVEL) or 'quiet'."""
    flag = os.environ.get(ENV)
    if flag == "1":
        return "verbose"
    if flag != "0" and LEVEL in os.environ:
        return "user"
    return "quiet"


def drop_noise(text: str) -> str:
    """``text`` without the import's notices (the lines :data:`NOISE` matches)."""
    return "".join(line for line in text.splitlines(keepends=True) if not NOISE.match(line))


class _QuietLoader(importlib.abc.Loader):
    """Runs tensorflow's ``__init__`` with file descriptor 2 caught; writes back what is not
    a notice (all of it when the import fails)."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        sys.stderr.flush()
        saved = os.dup(2)
        failed = True
        with tempfile.TemporaryFile(mode="w+b") as caught:
            os.dup2(caught.fileno(), 2)
            try:
                self.inner.exec_module(module)
                failed = False
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                caught.seek(0)
                text = caught.read().decode("utf-8", "replace")
                os.write(2, (text if failed else drop_noise(text)).encode())
        # TensorFlow's Python loggers ("Compiled the loaded model, but the compiled metrics
        # have yet to be built" from tf_keras on every model load): errors only.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        try:
            import absl.logging

            absl.logging.set_verbosity(absl.logging.ERROR)
        except ImportError:
            pass


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` the usual way, once, and wraps its loader in :class:`_QuietLoader`."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        uninstall()  # one import to wrap; and find_spec below must not find us again
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


_FINDER = _QuietFinder()


def uninstall() -> None:
    while _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def configure(verbose: bool | None = None) -> str:
    """Set this process's mode (``verbose``: True forces TensorFlow's logs on, as
    ``grid --verbose``); returns it.  Call before TensorFlow is imported: after, only
    absl's Python logger can still change."""
    if verbose:
        if os.environ.get(ENV) == "0":  # the level was ours: give TensorFlow its default back
            os.environ.pop(LEVEL, None)
        os.environ[ENV] = "1"
    got = mode()
    if got == "quiet":
        os.environ[ENV] = "0"
        os.environ[LEVEL] = QUIET_LEVEL
        if "tensorflow" not in sys.modules and _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)
    else:
        uninstall()
    return got


def worker_env() -> dict[str, str]:
    """The variables that give Ray workers this process's mode (their runtime_env)."""
    return {k: os.environ[k] for k in (ENV, LEVEL) if k in os.environ}
