"""Errors a user can act on. The CLI and doit print them without a traceback."""


class ClusterOSError(Exception):
    """A failure with a message meant for the user. exit_code 2 means bad input."""

    exit_code = 1


class UsageError(ClusterOSError):
    exit_code = 2
