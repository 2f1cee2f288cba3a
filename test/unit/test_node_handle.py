"""The node handle's logic, with this machine's own shell standing in for SSH to a guest.

The transport is the only stand-in: commands really run, with their real exit
statuses, output and timeouts; the console is a real file where QEMU would write it.
"""

import subprocess
import threading
import time

import pytest

from clusteros.errors import ClusterOSError
from clusteros.vm import node as node_mod
from clusteros.vm.machine import Machine
from clusteros.vm.node import Node, NodeCommandFailed, retry
from clusteros.vm.ssh import NO_CONNECTION


class LocalShell:
    """Runs a command line here, as SSHTarget.run does on a node."""

    def run(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess([], NO_CONNECTION, "", "timed out")


@pytest.fixture
def node(tmp_path):
    machine = Machine("node1", tmp_path / "node1")
    machine.directory.mkdir()
    return Node("node1", machine, LocalShell(), scale=0.01, poll=0.1)   # timeouts are KVM seconds: shrink them


def test_succeed_returns_the_output_of_every_command(node):
    assert node.succeed("echo one", "echo two") == "one\ntwo\n"


def test_succeed_names_the_node_the_command_its_status_and_output(node):
    with pytest.raises(NodeCommandFailed) as failed:
        node.succeed("echo visible; echo also >&2; exit 3")
    message = str(failed.value)
    assert "node1: 'echo visible; echo also >&2; exit 3' exited 3 (expected exit 0)" in message
    assert "visible" in message and "also" in message
    assert isinstance(failed.value, AssertionError), "a failed check is a failed test"


def test_fail_wants_a_non_zero_exit_and_a_lost_connection_is_not_one(node):
    assert node.fail("echo no; false") == "no\n"
    with pytest.raises(NodeCommandFailed, match="expected a non-zero exit"):
        node.fail("true")
    with pytest.raises(NodeCommandFailed, match="could not connect or log in"):
        node.fail(f"exit {NO_CONNECTION}")


def test_wait_until_succeeds_retries_until_the_command_does(node, tmp_path):
    flag = tmp_path / "flag"
    subprocess.Popen(["sh", "-c", f"sleep 0.3; touch {flag}"])
    started = time.monotonic()
    assert node.wait_until_succeeds(f"test -e {flag} && echo there", timeout=500) == "there\n"
    assert time.monotonic() - started >= 0.25


def test_waiting_gives_up_with_the_last_failure(node):
    with pytest.raises(NodeCommandFailed, match="exited 1"):
        node.wait_until_succeeds("false", timeout=30)   # 0.3 s at this scale


def test_a_failed_unit_ends_the_wait_at_once(node, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "systemctl").write_text("#!/bin/sh\necho failed\nexit 3\n")
    (fake / "journalctl").write_text("#!/bin/sh\necho 'the unit said why'\n")
    (fake / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    for tool in fake.iterdir():
        tool.chmod(0o755)
    node.ssh = type("Shell", (), {"run": lambda self, c, timeout=60: LocalShell().run(f"PATH={fake}:$PATH; {c}",
                                                                                     timeout)})()
    started = time.monotonic()
    with pytest.raises(ClusterOSError, match="node1: munge.service failed:\nthe unit said why"):
        node.wait_for_unit("munge.service", timeout=10_000)
    assert time.monotonic() - started < 5


def test_console_text_is_matched_without_terminal_escapes(node):
    node.machine = RunningMachine("node1", node.machine.directory)
    node.machine.serial_log.write_bytes(b"\x1b[0;32m  OK  \x1b[0m] Reached target\r\nnode1 login: ")
    match = node.wait_for_console_text(r"(\w+) login:", timeout=100)
    assert match.group(1) == "node1"
    with pytest.raises(AssertionError, match="no 'never' on the console yet; its console ends:\n.*Reached target\n    node1 login:"):
        node.wait_for_console_text("never", timeout=20)


def test_a_machine_that_stopped_ends_a_console_wait_at_once_with_its_last_words(node):
    node.machine.serial_log.write_bytes(b"clusteros-installer: ERROR: could not fetch the image\r\n")
    started = time.monotonic()
    with pytest.raises(ClusterOSError, match="QEMU stopped before 'from RAM' was on the console; its console "
                                             "ends:\n    clusteros-installer: ERROR: could not fetch the image"):
        node.wait_for_console_text("from RAM", timeout=10_000)
    assert time.monotonic() - started < 5


def test_retry_scales_its_deadline():
    calls = []

    def never():
        calls.append(time.monotonic())
        raise AssertionError("not yet")
    started = time.monotonic()
    with pytest.raises(AssertionError, match="not yet"):
        retry(never, 10, scale=0.02, every=0.04)
    assert 0.18 < time.monotonic() - started < 1.5 and len(calls) >= 4


class RunningMachine(Machine):
    def is_alive(self) -> bool:
        return True


class CountingShell(LocalShell):
    """Every SSH try, timed: a node answers only once its sshd listens."""

    def __init__(self):
        self.tries: list[float] = []

    def run(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        self.tries.append(time.monotonic())
        return super().run(command, timeout)


@pytest.fixture
def booting(tmp_path, monkeypatch):
    machine = RunningMachine("node1", tmp_path / "node1")
    machine.directory.mkdir()
    machine.serial_log.write_text("[    2.1] Linux version ...\r\n")
    return Node("node1", machine, CountingShell(), scale=0.01, poll=0.1)


def say_ssh_ready_after(node: Node, seconds: float) -> None:
    def later():
        time.sleep(seconds)
        with node.machine.serial_log.open("a") as console:
            console.write("clusteros: SSH ready on node1: ED25519 SHA256:abc\r\n")
    threading.Thread(target=later, daemon=True).start()


def test_ssh_is_tried_when_the_console_says_it_is_ready_and_not_before(booting, monkeypatch):
    monkeypatch.setattr(node_mod, "BLIND_TRY_EVERY", 100.0)
    started = time.monotonic()
    say_ssh_ready_after(booting, 0.5)
    booting.wait_for_ssh(timeout=500)
    assert len(booting.ssh.tries) == 1 and 0.5 <= booting.ssh.tries[0] - started < 1.0


def test_a_console_that_never_says_so_still_gets_a_try_every_while(booting, monkeypatch):
    monkeypatch.setattr(node_mod, "BLIND_TRY_EVERY", 0.3)
    started = time.monotonic()
    booting.wait_for_ssh(timeout=500)
    assert len(booting.ssh.tries) == 1 and booting.ssh.tries[0] - started >= 0.3


def test_after_a_reboot_only_the_new_boot_saying_so_counts(booting, monkeypatch):
    monkeypatch.setattr(node_mod, "BLIND_TRY_EVERY", 100.0)
    say_ssh_ready_after(booting, 0)
    time.sleep(0.1)
    assert booting.ssh_announcements() == 1
    started = time.monotonic()
    say_ssh_ready_after(booting, 0.4)
    booting.wait_for_ssh(timeout=500, announced_before=1)
    assert len(booting.ssh.tries) == 1 and booting.ssh.tries[0] - started >= 0.4
