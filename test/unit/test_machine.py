"""The QMP wrapper against a real QEMU (-machine none starts in a fraction of a second)."""

import os
import signal
import time

import pytest

from clusteros.runner import CommandFailed
from clusteros.vm.machine import Machine, MachineError

QEMU_NONE = ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none", "-monitor", "none"]


@pytest.fixture
def vm(tmp_path):
    m = Machine("probe", tmp_path / "probe", qmp_timeout=0.5)
    yield m
    if m.is_alive():
        os.kill(m.pid(), signal.SIGKILL)


def test_launch_greets_and_reports_running(vm):
    pid = vm.launch(list(QEMU_NONE))
    assert pid == vm.pid() and vm.is_alive()
    assert vm.qmp_socket.exists()
    assert vm.greeting()["qemu"]["major"] >= 7
    assert vm.run_state() == "running"


def test_paused_state_is_reported(vm):
    vm.launch(QEMU_NONE + ["-S"])
    assert vm.run_state() == "prelaunch"
    vm.execute("cont")
    assert vm.run_state() == "running"


def test_stop_without_acpi_falls_back_to_quit_and_leaves_nothing(vm):
    vm.launch(list(QEMU_NONE) + ["-display", "none", "-vnc", f"unix:{vm.vnc_socket}"])
    started = time.monotonic()
    # -machine none has no ACPI: the powerdown request goes unanswered until the timeout.
    assert vm.stop(timeout=0.5) == "quit over QMP"
    assert time.monotonic() - started < 10
    assert not vm.is_alive()
    assert not vm.qmp_socket.exists() and not vm.pid_file.exists()
    assert not vm.vnc_socket.exists(), "QEMU leaves its VNC socket; the stop removes it"


def test_stop_with_no_time_for_a_powerdown_quits_without_asking_for_one(vm, monkeypatch):
    vm.launch(list(QEMU_NONE))

    def powerdown(timeout):
        raise AssertionError("no power button for a machine stopped with timeout 0")
    monkeypatch.setattr(vm, "powerdown", powerdown)
    assert vm.stop(timeout=0) == "quit over QMP"
    assert not vm.is_alive() and not vm.qmp_socket.exists()


def test_a_stuck_qemu_is_killed(vm):
    vm.launch(list(QEMU_NONE))
    os.kill(vm.pid(), signal.SIGSTOP)   # QMP cannot answer: powerdown and quit both time out
    assert vm.stop(timeout=0.5) == "killed"
    assert not vm.is_alive()


def test_qemu_that_dies_at_once_is_an_error_naming_its_log(vm):
    with pytest.raises(CommandFailed) as err:
        vm.launch(QEMU_NONE + ["-device", "no-such-device"])
    assert "no-such-device" in str(err.value)
    assert str(vm.log) in str(err.value)
    assert not vm.is_alive()


def test_state_of_a_dead_machine_is_down(vm):
    vm.launch(list(QEMU_NONE))
    os.kill(vm.pid(), signal.SIGKILL)
    time.sleep(0.3)
    assert vm.run_state() == "down"
    assert not vm.is_alive()


def test_stale_pid_file_does_not_name_another_process(vm):
    vm.directory.mkdir(parents=True)
    vm.pid_file.write_text(str(os.getpid()))   # a live pid, but not this machine's QEMU
    assert vm.pid() is None


def test_qmp_to_a_machine_that_is_not_there_is_a_clear_error(vm):
    vm.directory.mkdir(parents=True)
    with pytest.raises(MachineError, match="no QMP greeting"):
        vm.execute("query-status", timeout=0.5)


def test_qmp_to_a_stopped_qemu_times_out_instead_of_hanging(vm):
    vm.launch(list(QEMU_NONE))
    os.kill(vm.pid(), signal.SIGSTOP)
    started = time.monotonic()
    assert vm.run_state() == "unresponsive"
    assert time.monotonic() - started < 15
