"""A handle on one running VM, for tests and for a user's own checks of their cluster.

In the spirit of the NixOS test driver's Machine: every call names the node,
runs a shell command line on it over SSH, and fails with what the command
printed. Timeouts are given as they would be with KVM and stretched by the
node's `scale` (the accelerator's slowdown), so one number serves both.

    node.succeed("systemctl is-active node-agent")      # its output, or an error
    node.fail("test -e /etc/clusteros/cluster.secret")   # must exit non-zero
    node.wait_until_succeeds("sinfo -h -t idle | grep -q .", timeout=60)
    node.wait_for_unit("slurmd.service")
    node.wait_for_console_text(r"login:")                 # the serial console
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from clusteros.errors import ClusterOSError
from clusteros.vm.machine import Machine
from clusteros.vm.ssh import NO_CONNECTION, SSHTarget

T = TypeVar("T")
DEFAULT_TIMEOUT = 120.0     # seconds with KVM; scaled for TCG
COMMAND_TIMEOUT = 60.0
# What the image's ssh.service prints on the console once sshd listens (clusteros-ssh-ready).
SSH_READY = "clusteros: SSH ready on "
BLIND_TRY_EVERY = 10.0      # seconds between SSH tries while the console has not said so
CONSOLE_POLL = 0.25         # seconds between reads of the console log while waiting for SSH


class NodeCommandFailed(ClusterOSError, AssertionError):
    """A command did not end as the caller required. An AssertionError, so `retry` retries it."""


def retry(check: Callable[[], T], timeout: float, *, scale: float = 1.0, every: float = 2.0) -> T:
    """Call `check` until it returns without raising AssertionError; give up after `timeout` x `scale` s.

    The last AssertionError is raised again at the deadline, so the failure says what was last seen.
    """
    deadline = time.monotonic() + timeout * scale
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(max(0.05, min(every, deadline - time.monotonic())))


@dataclass(frozen=True)
class Result:
    status: int
    stdout: str
    stderr: str


@dataclass(eq=False)   # a handle is itself: hashable, equal only to itself
class Node:
    name: str
    machine: Machine
    ssh: SSHTarget
    scale: float = 1.0
    poll: float = 2.0     # seconds between tries while waiting

    # -- one command ---------------------------------------------------------

    def execute(self, command: str, timeout: float = COMMAND_TIMEOUT) -> Result:
        out = self.ssh.run(command, timeout=timeout * self.scale)
        return Result(out.returncode, out.stdout, out.stderr)

    def succeed(self, *commands: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run each command; all must exit 0. Returns their output, joined."""
        output = ""
        for command in commands:
            result = self.execute(command, timeout)
            if result.status != 0:
                raise NodeCommandFailed(self._describe(command, result))
            output += result.stdout
        return output

    def fail(self, *commands: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run each command; each must exit non-zero (an SSH failure does not count)."""
        output = ""
        for command in commands:
            result = self.execute(command, timeout)
            if result.status == 0 or result.status == NO_CONNECTION:
                raise NodeCommandFailed(self._describe(command, result, expected="a non-zero exit"))
            output += result.stdout
        return output

    def _describe(self, command: str, result: Result, expected: str = "exit 0") -> str:
        what = "could not connect or log in" if result.status == NO_CONNECTION else f"exited {result.status}"
        return (f"{self.name}: {command!r} {what} (expected {expected})\n"
                f"--- stdout\n{result.stdout.rstrip()}\n--- stderr\n{result.stderr.rstrip()}")

    # -- waiting ---------------------------------------------------------------

    def retry(self, check: Callable[[], T], timeout: float = DEFAULT_TIMEOUT, every: float | None = None) -> T:
        return retry(check, timeout, scale=self.scale, every=self.poll if every is None else every)

    def wait_until_succeeds(self, command: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        return self.retry(lambda: self.succeed(command), timeout)

    def wait_until_fails(self, command: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        return self.retry(lambda: self.fail(command), timeout)

    def ssh_announcements(self) -> int:
        """How many times the console has said SSH is ready (once a boot, from the image's ssh.service)."""
        return self.machine.console_text().count(SSH_READY)

    def wait_for_ssh(self, timeout: float = DEFAULT_TIMEOUT, *, announced_before: int = 0) -> None:
        """Until a command runs over SSH, tried as soon as the console says sshd listens.

        The console is read every CONSOLE_POLL s, which costs the guest nothing; a try at the port
        before sshd listens is held by QEMU's user network until the guest's network is up, and
        then costs the guest an sshd for a client long gone. Until the console has said it more
        than `announced_before` times (its count before a reboot), SSH is tried only every
        BLIND_TRY_EVERY s, for an image or a console that never says it.
        """
        started = time.monotonic()
        next_blind = started + BLIND_TRY_EVERY
        next_try = started

        def reachable() -> None:
            nonlocal next_blind, next_try
            if not self.machine.is_alive():
                raise ClusterOSError(f"{self.name}: QEMU is not running", fix=f"see {self.machine.log}")
            now = time.monotonic()
            if self.ssh_announcements() > announced_before:
                assert now >= next_try, f"{self.name}: SSH is ready but did not answer yet"
            elif now >= next_blind:
                next_blind = now + BLIND_TRY_EVERY
            else:
                raise AssertionError(f"{self.name}: the console has not said SSH is ready yet")
            next_try = now + self.poll
            self.succeed("true", timeout=30)
        self.retry(reachable, timeout, every=CONSOLE_POLL)

    def wait_for_unit(self, unit: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Until `unit` is active. A unit that has failed ends the wait at once, with its journal."""
        def active() -> None:
            state = self.execute(f"systemctl is-active {unit}").stdout.strip()
            if state == "failed":   # not an AssertionError: retrying cannot help
                journal = self.execute(f"sudo journalctl -u {unit} -n 30 --no-pager").stdout
                raise ClusterOSError(f"{self.name}: {unit} failed:\n{journal}")
            assert state == "active", f"{self.name}: {unit} is {state or 'unknown'}"
        self.retry(active, timeout)

    def wait_for_console_text(self, regex: str, timeout: float = DEFAULT_TIMEOUT) -> re.Match:
        """Until the serial console has printed a line matching `regex`; returns the match."""
        pattern = re.compile(regex)

        def printed() -> re.Match:
            alive = self.machine.is_alive()   # before the read: its last words are in the file then
            match = pattern.search(self.machine.console_text())
            if match:
                return match
            if not alive:   # powered off (an installer that failed does) or crashed: no use waiting
                raise ClusterOSError(f"{self.name}: QEMU stopped before {regex!r} was on the console; "
                                     f"its console ends:\n{self._console_tail()}", fix=f"see {self.machine.log}")
            raise AssertionError(f"{self.name}: no {regex!r} on the console yet")
        try:
            return self.retry(printed, timeout, every=min(1.0, self.poll))
        except AssertionError as failed:   # what the machine was doing instead is the diagnosis
            raise AssertionError(f"{failed}; its console ends:\n{self._console_tail()}") from None

    def _console_tail(self) -> str:
        return "\n".join(f"    {line}" for line in self.machine.serial_tail(15))

    # -- power -----------------------------------------------------------------

    def reboot(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Reboot the guest as its owner would (systemctl reboot); returns once it is back on SSH."""
        boot_id = self.succeed("cat /proc/sys/kernel/random/boot_id").strip()
        announced = self.ssh_announcements()
        self.execute("sudo systemctl reboot", timeout=30)   # the connection may drop before it answers
        self.wait_for_ssh(timeout, announced_before=announced)

        def rebooted() -> None:   # an SSH-ready line can come before the old boot has gone (seen in a clean-clone run)
            if not self.machine.is_alive():
                raise ClusterOSError(f"{self.name}: QEMU stopped while rebooting", fix=f"see {self.machine.log}")
            now = self.succeed("cat /proc/sys/kernel/random/boot_id", timeout=30).strip()
            assert now != boot_id, f"{self.name} has not rebooted yet"
        self.retry(rebooted, timeout)

    def shutdown(self, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """ACPI power button; True once the guest has powered off."""
        return self.machine.powerdown(timeout * self.scale)
