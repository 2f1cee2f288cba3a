"""The installer's /init, sourced by busybox sh (as in the initramfs) on a made-up machine.

SYS and DEV point at a folder with block devices as plain files, so the disk
choice and the prompts run for real without touching a disk of this machine.
"""

import contextlib
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INIT = ROOT / "images" / "installer" / "init"
MIB = 1024 * 1024
pytestmark = pytest.mark.needs("/bin/busybox")


class Machine:
    def __init__(self, root: Path):
        self.root = root
        (root / "sys" / "block").mkdir(parents=True)
        (root / "dev").mkdir()

    def disk(self, name: str, mib: int, model: str = "QEMU HARDDISK", data_at: tuple[int, ...] = (),
             serial: str = "") -> None:
        block = self.root / "sys" / "block" / name
        (block / "device").mkdir(parents=True)
        (block / "size").write_text(f"{mib * MIB // 512}\n")
        (block / "device" / "model").write_text(model + "   \n")
        if serial:
            (block / "device" / "serial").write_text(f"  {serial}\n")
        with open(self.root / "dev" / name, "wb") as f:
            f.truncate(mib * MIB)
            for offset in data_at:
                f.seek(offset)
                f.write(b"data")

    def run(self, script: str, answers: str = "") -> subprocess.CompletedProcess:
        """Source /init with the console and power-off replaced, then run `script`."""
        prelude = (f"SYS={self.root}/sys DEV={self.root}/dev LOG={self.root}/log CREDENTIAL={self.root}/credential "
                   "CLUSTEROS_INIT_SOURCED=1\n"
                   f". {INIT}\n"
                   "say() { echo \"$*\"; }\n"
                   "finish() { echo \"FINISH $1\"; exit 3; }\n"
                   "INSTALL=${INSTALL:-auto} TARGET=${TARGET:-auto} IMAGE_NAME=lab\n"
                   f"RUN_DIR={self.root}/run; mkdir -p $RUN_DIR\n")
        return subprocess.run(["/bin/busybox", "sh", "-c", prelude + script], input=answers, capture_output=True,
                              text=True, timeout=30)


@pytest.fixture
def machine(tmp_path):
    return Machine(tmp_path)


def test_candidates_leave_out_the_installers_own_disk_and_devices_that_are_not_disks(machine):
    for name in ("vda", "vdb", "loop0", "ram0", "sr0"):
        machine.disk(name, 8)
    machine.disk("vdc", 0)
    out = machine.run("MEDIUM_DISK=vdb; candidate_disks")
    assert out.stdout.split() == ["vda"]


def test_a_disk_with_data_at_either_end_is_not_empty(machine):
    machine.disk("vda", 8)
    machine.disk("vdb", 8, data_at=(0,))
    machine.disk("vdc", 8, data_at=(8 * MIB - 512,))   # a backup GPT lives there
    out = machine.run("for d in vda vdb vdc; do is_empty $d && echo $d empty || echo $d data; done")
    assert out.stdout.split("\n")[:3] == ["vda empty", "vdb data", "vdc data"]


def test_unattended_auto_takes_the_only_empty_disk(machine):
    machine.disk("vda", 8, data_at=(0,))
    machine.disk("vdb", 8)
    out = machine.run("choose_target_unattended; echo TARGET=$TARGET_DISK")
    assert "TARGET=vdb" in out.stdout


@pytest.mark.parametrize("disks,message", [
    ({"vda": (), "vdb": ()}, "more than one empty disk ( vda vdb )"),
    ({"vda": (0,)}, "no empty disk here"),
])
def test_unattended_auto_refuses_when_the_choice_is_not_clear(machine, disks, message):
    for name, data in disks.items():
        machine.disk(name, 8, data_at=data)
    out = machine.run("choose_target_unattended; echo TARGET=$TARGET_DISK")
    assert message in out.stdout and "FINISH poweroff" in out.stdout and "TARGET=" not in out.stdout


def test_an_explicit_target_may_not_be_the_installers_own_disk(machine):
    machine.disk("vda", 8)
    out = machine.run("TARGET=/dev/vda MEDIUM_DISK=vda; choose_target_unattended; echo TARGET=$TARGET_DISK")
    assert "is the disk this installer runs from" in out.stdout and "TARGET=" not in out.stdout


def test_an_explicit_target_with_data_needs_its_serial_named_to_be_erased(machine):
    machine.disk("vda", 8, data_at=(0,), serial="S4EVNX0M1")
    refused = machine.run("TARGET=/dev/vda; choose_target_unattended; echo TARGET=$TARGET_DISK")
    assert "holds data (or cannot be read)" in refused.stdout and "TARGET=" not in refused.stdout
    assert 'installer.overwrite: "S4EVNX0M1"' in refused.stdout
    wrong = machine.run("TARGET=/dev/vda OVERWRITE=OTHER; choose_target_unattended; echo TARGET=$TARGET_DISK")
    assert "TARGET=" not in wrong.stdout
    named = machine.run("TARGET=/dev/vda OVERWRITE=S4EVNX0M1; choose_target_unattended; echo TARGET=$TARGET_DISK")
    assert "TARGET=vda" in named.stdout and "erasing it" in named.stdout


def test_an_empty_explicit_target_needs_no_serial_and_an_unreadable_disk_is_not_empty(machine):
    machine.disk("vda", 8)
    assert "TARGET=vda" in machine.run("TARGET=/dev/vda; choose_target_unattended; echo TARGET=$TARGET_DISK").stdout
    machine.disk("vdb", 8)
    (machine.root / "dev" / "vdb").unlink()          # listed by the kernel, but no device to read
    out = machine.run("is_empty vdb && echo empty || echo not-empty; TARGET=/dev/vdb; choose_target_unattended; "
                      "echo TARGET=$TARGET_DISK")
    assert "not-empty" in out.stdout and "TARGET=" not in out.stdout


def test_a_fetch_gets_the_image_over_http(machine, tmp_path):
    from test.local_http import serve_directory
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "image.data.zst").write_bytes(b"image bytes")
    with serve_directory(tmp_path / "www") as url:
        out = machine.run(f"IMAGE_URL={url.rstrip('/')}/image.data.zst; fetch_image; cat $IMAGE_FILE; echo; echo FETCHED")
    assert "image bytes\nFETCHED" in out.stdout, out.stdout + out.stderr


def test_a_fetch_that_fails_is_retried_then_ends_in_a_message(machine):
    out = machine.run("IMAGE_URL=http://127.0.0.1:9/image.data.zst FETCH_TRIES=2; sleep() { :; }; fetch_image; echo FETCHED")
    assert "try 1 of 2" in out.stdout and "try 2 of 2" in out.stdout
    assert "could not fetch http://127.0.0.1:9/image.data.zst in 2 tries" in out.stdout and "FETCHED" not in out.stdout


@contextlib.contextmanager
def dribbling_server(chunks: int, chunk: bytes, pause: float, length: int):
    """An HTTP server on 127.0.0.1 that says `length` bytes are coming, then sends `chunks` x `chunk`
    `pause` seconds apart and holds the connection open without a word until the test is done."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def answer() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % length)
            for _ in range(chunks):
                connection.sendall(chunk)
                time.sleep(pause)
            done.wait(30)
    threading.Thread(target=answer, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/image.data.zst"
    finally:
        done.set()
        listener.close()


def test_a_fetch_says_how_far_it_is(machine):
    with dribbling_server(4, b"x" * MIB, 0.3, 4 * MIB) as url:
        out = machine.run(f"MIB={MIB} PROGRESS_POLL=0.1 PROGRESS_POLLS_PER_LINE=2 DATA_FILE_BYTES={4 * MIB}\n"
                          f"IMAGE_URL={url}; fetch_image; echo FETCHED $(stat -c %s $IMAGE_FILE)")
    said = [line for line in out.stdout.splitlines() if line.startswith("clusteros-installer: fetched ")]
    assert len(set(said)) > 1 and said[-1] == "clusteros-installer: fetched 4 of 4 MiB", out.stdout + out.stderr
    assert f"FETCHED {4 * MIB}" in out.stdout


def test_a_console_that_cannot_be_written_fails_nothing(machine):
    """A board without a UART still has a ttyS0 (console=ttyS0 is on every installer's command line):
    what the installer says must not turn a whole fetch into a failed try."""
    (machine.root / "consoles").write_text("tty0 -WU (EC p  ) 4:1\nfull -W- (E  p a) 1:7\n")
    out = machine.run(f"CONSOLES={machine.root}/consoles; . {INIT}; say hello && echo SAID")
    assert out.stdout.splitlines() == ["SAID"], out.stdout + out.stderr
    assert (machine.root / "log").read_text() == "hello\n"


def test_a_fetch_that_stops_getting_data_is_given_up_at_once_not_after_its_whole_timeout(machine):
    with dribbling_server(1, b"x" * MIB, 0, 4 * MIB) as url:
        started = time.monotonic()
        out = machine.run(f"MIB={MIB} PROGRESS_POLL=0.1 FETCH_STALL=1 FETCH_TRIES=1 DATA_FILE_BYTES={4 * MIB}\n"
                          f"IMAGE_URL={url}; fetch_image; echo FETCHED")
    assert "no data for 1s after 1 MiB: this try is given up" in out.stdout, out.stdout + out.stderr
    assert "could not fetch" in out.stdout and "FETCHED" not in out.stdout
    assert time.monotonic() - started < 10, "given up when the data stopped, not at FETCH_TIMEOUT (1800 s)"


def nics(machine: Machine, **macs: str) -> None:
    for name, mac in macs.items():
        (machine.root / "sys" / "class" / "net" / name).mkdir(parents=True)
        (machine.root / "sys" / "class" / "net" / name / "address").write_text(mac + "\n")


LEASES = 'ip() { :; }\nudhcpc() { echo "udhcpc $2"; [ "$2" = "$LEASING" ]; }\n'   # its output: to the log


def asked(machine: Machine) -> list[str]:
    return (machine.root / "log").read_text().splitlines()


def test_the_nic_named_by_bootif_is_the_one_asked_for_a_lease(machine):
    nics(machine, eth0="52:54:00:00:00:01", eth1="52:54:00:9f:20:0a")
    (machine.root / "cmdline").write_text("quiet clusteros.install=ram BOOTIF=01-52-54-00-9F-20-0A\n")
    (machine.root / "installer.conf").write_text("INSTALL=auto\n")
    out = machine.run(f"CMDLINE={machine.root}/cmdline SETTINGS={machine.root}/installer.conf LEASING=eth1\n"
                      f"{LEASES}read_settings; network_up && echo UP $INSTALL")
    assert out.stdout.splitlines() == ["clusteros-installer: DHCP on eth1 (the NIC this machine netbooted from)",
                                       "UP ram"], out.stderr
    assert asked(machine) == ["udhcpc eth1"]


def test_without_its_lease_no_other_nic_is_asked(machine):
    """The other NIC's lease (a VM's user network, a second LAN) would not reach the server."""
    nics(machine, eth0="52:54:00:00:00:01", eth1="52:54:00:9f:20:0a")
    out = machine.run(f"BOOT_MAC=52:54:00:9f:20:0a LEASING=eth0\n{LEASES}network_up && echo UP")
    assert asked(machine) == ["udhcpc eth1"] and "UP" not in out.stdout


def test_a_bootif_no_nic_has_is_an_error_that_names_it(machine):
    nics(machine, eth0="52:54:00:00:00:01")
    out = machine.run(f"BOOT_MAC=52:54:00:9f:20:0a\n{LEASES}network_up")
    assert "no network interface has the MAC 52:54:00:9f:20:0a this machine netbooted from" in out.stdout


def test_the_installer_waits_for_the_nic_it_netbooted_from_though_another_came_first(machine):
    nics(machine, eth0="52:54:00:00:00:01")
    late = machine.root / "sys" / "class" / "net" / "eth1"
    out = machine.run(f"IMAGE_URL=http://10.42.0.11/image.data.zst BOOT_MAC=52:54:00:9f:20:0a; sleep() {{ :; }}\n"
                      f"loads=0; load_drivers() {{ loads=$((loads + 1)); [ $loads -lt 3 ] || "
                      f"{{ mkdir -p {late}; echo 52:54:00:9f:20:0a > {late}/address; }}; }}\n"
                      "network_up() { echo \"UP after $loads loads\"; }; fetch_image() { :; }\nfind_image")
    assert "UP after 3 loads" in out.stdout, out.stdout + out.stderr


def test_without_bootif_each_nic_is_asked_in_turn(machine):
    nics(machine, eth0="52:54:00:00:00:01", eth1="52:54:00:9f:20:0a")
    out = machine.run(f"LEASING=eth1\n{LEASES}network_up && echo UP")
    assert asked(machine) == ["udhcpc eth0", "udhcpc eth1"] and out.stdout.splitlines()[-1] == "UP"


def image_on_the_medium(machine: Machine, data: bytes, built_with: bytes) -> str:
    """Shell settings for an image file holding `data`, in an installer built for `built_with`."""
    import hashlib
    (machine.root / "image.data.zst").write_bytes(data)
    return f"IMAGE_FILE={machine.root}/image.data.zst DATA_SHA256={hashlib.sha256(built_with).hexdigest()}"


def test_a_damaged_image_is_found_after_the_disk_is_chosen_and_before_it_is_written(machine):
    machine.disk("vda", 8, data_at=(0,))     # the installed system, say: not a candidate
    machine.disk("vdb", 8)
    settings = image_on_the_medium(machine, b"flipped bit", built_with=b"the image")
    # install_to_disk stands for the writing: reaching it would be the failure
    out = machine.run(f"{settings}; install_to_disk() {{ echo WRITING; }}; choose_and_install")
    assert out.stdout.index("target auto: /dev/vdb, the only empty disk") < out.stdout.index("checking the image before")
    assert "the image on the installer is damaged (sha256 mismatch)" in out.stdout
    assert "WRITING" not in out.stdout and "FINISH poweroff" in out.stdout
    fetched = machine.run(f"{settings} IMAGE_URL=http://10.0.0.1/image.data.zst; check_image; echo PASSED")
    assert "the image fetched from http://10.0.0.1/image.data.zst is not the one this installer was built with" \
        in fetched.stdout and "PASSED" not in fetched.stdout


def test_a_refusal_comes_before_the_image_is_hashed_and_a_sound_image_passes(machine):
    machine.disk("vda", 8)
    machine.disk("vdb", 8)
    settings = image_on_the_medium(machine, b"the image", built_with=b"the image")
    refused = machine.run(f"{settings}; choose_and_install")
    assert "more than one empty disk ( vda vdb )" in refused.stdout
    assert "checking the image" not in refused.stdout
    assert "PASSED" in machine.run(f"{settings}; check_image && echo PASSED").stdout


def test_asking_takes_a_listed_disk_after_yes(machine):
    machine.disk("vda", 8, model="Samsung SSD")
    out = machine.run("INSTALL=ask; choose_target_asking; echo TARGET=$TARGET_DISK", answers="vda\nyes\n")
    assert "ALL DATA on /dev/vda (8 MiB Samsung SSD) will be erased." in out.stdout
    assert "TARGET=vda" in out.stdout


@pytest.mark.parametrize("answers,expected", [
    ("\n", "Cancelled: nothing was written."),
    ("vda\nno\n", "Cancelled: nothing was written."),
    ("vd.\n", "'vd.' is not one of the disks listed"),     # matched literally, not as a pattern
    ("/dev/vdz\n", "'vdz' is not one of the disks listed"),
])
def test_asking_writes_nothing_without_a_listed_disk_and_a_yes(machine, answers, expected):
    machine.disk("vda", 8)
    out = machine.run("INSTALL=auto; choose_target_asking; echo TARGET=$TARGET_DISK", answers=answers)
    assert expected in out.stdout and "TARGET=" not in out.stdout
    assert "FINISH poweroff" in out.stdout


def test_the_list_shows_size_model_and_state(machine):
    machine.disk("vda", 8, model="QEMU HARDDISK")
    machine.disk("vdb", 16, data_at=(0,))
    out = machine.run("MEDIUM_DISK=; list_disks")
    assert "/dev/vda  8 MiB  QEMU HARDDISK  serial ?  (empty)" in out.stdout
    assert "/dev/vdb  16 MiB  QEMU HARDDISK  serial ?  (has data)" in out.stdout


@pytest.mark.needs("shellcheck")
def test_every_shell_script_passes_shellcheck():
    shells = (b"#!/bin/sh", b"#!/bin/bash", b"#!/usr/bin/env bash")
    scripts = sorted({p for p in (ROOT / "images").rglob("*") if p.is_file() and p.read_bytes().startswith(shells)}
                     | {INIT, ROOT / "images/installer/udhcpc.script", ROOT / "scripts/install-prereqs.sh",
                        ROOT / ".ci/run"})
    assert ROOT / "images/common/overlay/usr/local/sbin/clusteros-ssh-ready" in scripts
    out = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout



def test_the_owners_part_of_a_stick_is_found_after_the_image_and_put_into_the_installed_system(machine):
    from clusteros.installer import owner_part
    image_bytes = 3 * MIB + 4096                     # an "ISO" whose volume descriptor says where it ends
    stick = machine.root / "dev" / "sdb"
    machine.disk("sdb", 16)
    with open(stick, "r+b") as f:
        f.seek(32848)
        f.write((image_bytes // 2048).to_bytes(4, "little"))
        f.seek(owner_part.offset_after(image_bytes))
        f.write(owner_part.block(b'{"credential": "signed"}', "admin ssh-ed25519 AAAA test\n"))
    target = machine.root / "installed"
    out = machine.run(f"MEDIUM_DISK=sdb; find_credential && echo FOUND; put_credential {target}; "
                      f"ls -l {target}/var/lib/clusteros/credential.json")
    assert "FOUND" in out.stdout, out.stdout + out.stderr
    assert (target / "var/lib/clusteros/credential.json").read_bytes() == b'{"credential": "signed"}'
    assert "-rw-------" in out.stdout, "the credential is 0600 on the installed system"
    assert (target / "var/lib/clusteros/ssh-keys").read_text() == "admin ssh-ed25519 AAAA test\n"


def test_a_shareable_stick_has_no_owners_part(machine):
    machine.disk("sdb", 16)
    with open(machine.root / "dev" / "sdb", "r+b") as f:
        f.seek(32848)
        f.write((3 * MIB // 2048).to_bytes(4, "little"))
    assert "NONE" in machine.run("MEDIUM_DISK=sdb; find_credential || echo NONE").stdout


def test_the_image_takes_over_with_its_own_module_loader_and_every_nic_but_lo_bare_and_down(machine):
    for name in ("lo", "eth0", "eth1"):
        (machine.root / "sys" / "class" / "net" / name).mkdir(parents=True)
    loader = machine.root / "modprobe"
    loader.write_text("/bin/modprobe\n")
    out = machine.run(f'KERNEL_MODPROBE={loader}\nip() {{ echo "ip $*"; }}\nhand_over')
    assert out.stdout.splitlines() == ["ip address flush dev eth0", "ip link set eth0 down",
                                       "ip address flush dev eth1", "ip link set eth1 down"], out.stderr
    assert loader.read_text() == "/sbin/modprobe\n", "the kernel's own default: the image has no /bin/modprobe"


def progress_said(machine, verb: str, total_mib: int, counted: str, work: str, every: float = 0.05) -> list[str]:
    """What with_progress says while `work` runs, measured by `counted` (shell function bodies)."""
    script = (f"MIB=1048576 PROGRESS_POLL={every} PROGRESS_POLLS_PER_LINE=1\n"
              f"counted() {{ {counted}; }}\n"
              f"work() {{ {work}; }}\n"
              f"with_progress {verb} $(( {total_mib} * MIB )) counted -- work && echo ok")
    out = machine.run(script)
    lines = out.stdout.splitlines()
    assert lines and lines[-1] == "ok", out.stderr
    return [line for line in lines if line.startswith(f"clusteros-installer: {verb} ")]


def test_a_long_step_says_how_far_it_is_as_its_measure_counts(machine):
    done = machine.root / "done"
    said = progress_said(machine, "writing", 3, f"echo $(( $(cat {done} 2>/dev/null || echo 0) * MIB ))",
                         f"for n in 1 2 3; do sleep 0.1; echo $n > {done}; done")
    assert said and said[-1] == "clusteros-installer: writing 3 of 3 MiB", said
    assert len(set(said)) > 1, "it moves"


def test_the_last_line_is_counted_after_the_work_ends_even_when_it_ends_during_a_count(machine):
    """A count taken just before the work's last write must not be the last word ("2 of 3 MiB" on a busy CI)."""
    done = machine.root / "done"
    said = progress_said(machine, "writing", 3, f"n=$(cat {done} 2>/dev/null || echo 0); sleep 0.3; echo $(( n * MIB ))",
                         f"sleep 0.1; echo 3 > {done}", every=0.02)
    assert said[0] == "clusteros-installer: writing 0 of 3 MiB", "the count in flight when the work ended"
    assert said[-1] == "clusteros-installer: writing 3 of 3 MiB", said


def test_the_install_goes_on_once_the_work_ends_not_at_the_next_line(machine):
    """Lines every 5 s (100 polls of 0.05 s), work of 0.1 s: done in a poll or so, and its one line is the end's."""
    done = machine.root / "done"
    script = ("MIB=1048576 PROGRESS_POLL=0.05 PROGRESS_POLLS_PER_LINE=100\n"
              f"counted() {{ echo $(( $(cat {done} 2>/dev/null || echo 0) * MIB )); }}\n"
              f"work() {{ sleep 0.1; echo 3 > {done}; }}\n"
              "with_progress writing $(( 3 * MIB )) counted -- work && echo ok")
    began = time.monotonic()
    out = machine.run(script)
    took = time.monotonic() - began
    assert out.stdout.splitlines() == ["clusteros-installer: writing 3 of 3 MiB", "ok"], out.stderr
    assert took < 2.5, f"with_progress returned {took:.1f} s after its 0.1 s of work: it waited for a line"


def test_a_failed_step_keeps_its_status(machine):
    out = machine.run("MIB=1048576 PROGRESS_POLL=0.02\ncounted() { echo 0; }\n"
                      "with_progress writing $MIB counted -- sh -c 'exit 7'; echo status=$?")
    assert "status=7" in out.stdout, out.stderr


def test_a_measure_that_counts_more_than_the_whole_says_the_whole(machine):
    """A disk's read count also holds udev's probes of the new partitions: "checking 638 of 627 MiB" no more."""
    done = machine.root / "done"
    said = progress_said(machine, "checking", 3, f"echo $(( $(cat {done} 2>/dev/null || echo 0) * MIB ))",
                         f"echo 5 > {done}; sleep 0.3")
    assert set(said) == {"clusteros-installer: checking 3 of 3 MiB"}, said


def test_a_measure_with_nothing_to_count_says_nothing(machine):
    """The RAM load's measure follows zstd: before it starts and once it is gone, no "0 of N MiB"."""
    reading = machine.root / "reading"
    said = progress_said(machine, "loading", 4, f"[ -e {reading} ] && echo $(( 2 * MIB )); return 0",
                         f"sleep 0.05; touch {reading}; sleep 0.15; rm {reading}; sleep 0.1", every=0.02)
    assert said and set(said) == {"clusteros-installer: loading 2 of 4 MiB"}, said


@pytest.mark.needs("zstd", "xxhsum")
def test_the_image_lands_at_its_extents_with_zeros_between_and_a_changed_byte_fails_the_read_back(machine):
    """write_image and verify_image on a disk that is a file: the real zstd, dd (O_DIRECT) and xxhsum."""
    from clusteros.installer import payload
    raw = machine.root / "image.raw"
    with open(raw, "wb") as f:   # two extents far enough apart to stay two, the second ending the disk
        f.truncate(12 * MIB)
        f.write(b"boot" * 2048)
        f.seek(12 * MIB - 8192)
        f.write(b"\xee" * 8192)
    payload.build_payload(raw, machine.root / "image.data.zst", machine.root / "payload.json")
    (machine.root / "image.map").write_text(payload.render_map(payload.load_payload(machine.root / "payload.json").extents))
    machine.disk("vda", 16, data_at=(4 * MIB, 12 * MIB + 5))   # an old install's leftovers
    script = (f"IMAGE_FILE={machine.root}/image.data.zst IMAGE_MAP={machine.root}/image.map IMAGE_BYTES={12 * MIB} "
              "TARGET_DISK=vda; write_image && verify_image && echo VERIFIED")
    assert "VERIFIED" in machine.run(script).stdout
    disk = (machine.root / "dev" / "vda").read_bytes()
    assert disk[:12 * MIB] == raw.read_bytes(), "the image, its holes written as zeros"
    assert disk[12 * MIB + 5:12 * MIB + 9] == b"data", "past the image, the disk is left as it was"

    with open(machine.root / "dev" / "vda", "r+b") as f:   # a disk that did not keep one byte
        f.seek(12 * MIB - 1)
        f.write(b"\x00")
    out = machine.run(f"IMAGE_MAP={machine.root}/image.map TARGET_DISK=vda; verify_image || cat $RUN_DIR/mismatch")
    assert out.stdout.startswith(f"{12 * MIB - 8192} 8192 "), out.stdout + out.stderr
