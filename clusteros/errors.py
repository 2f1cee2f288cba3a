"""Errors a user can act on. The CLI and doit print them without a traceback.

Every error ClusterOS raises on purpose is a ClusterOSError: its message says
what went wrong and where, and `fix` what to do about it. exit_code 2 means
bad input (a spec, an argument); 1 means the work failed.
"""

from __future__ import annotations


class ClusterOSError(Exception):
    """A failure with a message meant for the user."""

    exit_code = 1

    def __init__(self, message: str, fix: str | None = None):
        self.message, self.fix = message, fix
        super().__init__(message + (f"\n  fix: {fix}" if fix else ""))


class UsageError(ClusterOSError):
    """Bad input: the user must change an argument or the spec."""

    exit_code = 2
