"""The errors fedseg reports to a person: one line, an exit code, never a traceback.

Every error a user can cause (bad input, a refused run, a failed check) derives from
:class:`FedsegError`. The command line (:mod:`fedseg.cli`) prints ``error: <message>`` and exits
with :attr:`FedsegError.exit_code`: 2 for bad input or usage (the default), 1 for a check that
ran and failed (an audit rule, a tampered trail). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FedsegError(Exception):
    """A user-facing error: its message says what is wrong, where, and what to do."""

    exit_code: int = 2


class CheckFailed(FedsegError):
    """A check ran and its result is negative (exit 1)."""

    exit_code = 1
