"""Errors a user can act on, told apart from bugs.

A :class:`UserError` is a problem with what the user gave or where they pointed us: the
study file or a command-line value (:class:`StudyError`), a results folder or store
(:class:`ResultsError`), a Ray cluster that cannot be joined (:class:`ClusterError`).
``grid`` prints one line for it and exits 2.  Anything else is a bug: a traceback and
exit 1, so an internal error never passes for a bad study file.

The exit codes of ``grid`` (``EXIT_*``; the README's CLI section lists them):
0 done, 1 internal error or every trial failed, 2 user error, 130 interrupted.

This module imports nothing of the project, so any grid module can raise these without an
import circle.  ``trainables`` and ``analysis`` never import grid (tests/test_layout.py):
they raise ``ValueError`` / ``FileNotFoundError`` for their own input problems, and
:func:`is_user_error` recognises those by where they were raised.
"""

from __future__ import annotations

from types import TracebackType

EXIT_OK = 0
EXIT_INTERNAL = 1  # a traceback: a bug (or, for `grid run`, every trial failed)
EXIT_USER = 2  # one line on stderr: fix the input and run again
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as a shell reports it


class UserError(Exception):
    """A problem the user can fix; its message is the one line ``grid`` prints."""


class StudyError(UserError, ValueError):
    """A study file or a command-line value that cannot run; the message names the field
    (as a dotted path) and the value.  Also a ValueError, as it was before this family."""


class ResultsError(UserError, ValueError):
    """A results folder or store that cannot be read or written as asked (missing, empty,
    an unsupported URI, a driver still running on it)."""


class ClusterError(UserError, ConnectionError):
    """A Ray cluster that cannot be joined: nothing listening, a token refused, a version
    mismatch.  The message says what to fix."""


# The packages whose own ValueError / FileNotFoundError mean bad input (they cannot import
# this module): a raise statement there is a deliberate message about the user's input.
INPUT_PACKAGES = ("analysis",)


def raised_in(err: BaseException) -> str:
    """The module of the innermost frame of ``err``'s traceback ('' when it has none)."""
    tb: TracebackType | None = err.__traceback__
    name = ""
    while tb is not None:
        name = str(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    return name


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is the user's to fix (one line, exit 2) rather than a bug (traceback).

    A :class:`UserError`, or a plain ``ValueError`` / ``FileNotFoundError`` (or a subclass)
    raised by a statement in an input package (``analysis``: an unknown ``--eps``, a bad
    ``--where``, no results at a path).  The same types raised inside a library (pandas,
    numpy, DuckDB) or in grid itself are bugs: grid raises UserError for its users.
    """
    if isinstance(err, UserError):
        return True
    if isinstance(err, (ValueError, FileNotFoundError)):
        where = raised_in(err)
        return any(where == p or where.startswith(p + ".") for p in INPUT_PACKAGES)
    return False
