"""doit's console reporter, with ClusterOS's own errors shown as their message alone.

An error ClusterOS raises on purpose (clusteros.errors.ClusterOSError) already
names the step, the place and the fix; a Python traceback in front of it buries
that. Anything else is a bug, and keeps its traceback.
"""

from doit.reporter import ConsoleReporter

from clusteros.errors import ClusterOSError

def _all_subclasses(cls: type) -> set[type]:
    return {cls} | {s for sub in cls.__subclasses__() for s in _all_subclasses(sub)}


def own_error_message(traceback_lines: list[str]) -> str | None:
    """The message of a ClusterOSError at the end of a formatted traceback, else None.

    doit keeps the traceback as text, which ends with "<module>.<Class>: <message>".
    """
    if not traceback_lines:
        return None
    name, sep, message = traceback_lines[-1].partition(": ")
    known = {f"{c.__module__}.{c.__qualname__}" for c in _all_subclasses(ClusterOSError)}
    return message if sep and name in known else None


class Reporter(ConsoleReporter):
    def add_failure(self, task, fail):
        message = own_error_message(fail.traceback)
        if message is not None:
            fail.traceback = [message]
        super().add_failure(task, fail)
