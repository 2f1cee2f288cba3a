"""image.builder: packer with Debian's Packer 1.6.6, on the native base, booted afterwards.

The build runs as a user runs it: from the checkout, with dist/ a relative path
(Packer works in its own folder, so every path it is given must still hold there).
"""

import json
import os
import shutil
import subprocess

import pytest

from clusteros import credentials, accel, secrets
from clusteros.spec import load_spec
from clusteros.vm import qemu
from clusteros.vm.layout import VMNode
from clusteros.vm.machine import Machine
from clusteros.vm.node import Node
from clusteros.vm.ssh import SSHTarget
from clusteros.vm.switch import Switch

from .conftest import ROOT, build

pytestmark = pytest.mark.e2e
PACKER_DIST = "dist/e2e/packer"    # relative, as the default dist/ is


# First: the module's one short test, so that the worker asks for its next unit early (test/conftest.py).
def test_provision_turns_a_stock_system_into_a_node(image, spec, tmp_path):
    """The iso base's provisioning, for real, on a stock tree: the native build's package set without any
    ClusterOS file stands in for a fresh Ubuntu install (Ubuntu's ISO cannot be reached from here).
    It needs no Packer: provision.sh runs in a chroot."""
    from clusteros import packer, rootfs
    from clusteros import image as image_stage
    from clusteros.customize import AGENT_DIR
    from clusteros.spec import rootfs_view
    from tasks.image import image_inputs
    tree = tmp_path / "root"
    tree.mkdir()
    os.chmod(tree, 0o755)
    subprocess.run(["tar", "--extract", "--numeric-owner", "--file", rootfs.rootfs_path(rootfs_view(spec)),
                    "--directory", tree], check=True)
    assert not (tree / AGENT_DIR).exists(), "the stand-in must start without ClusterOS"
    image_stage.write_node_files_tar(tree / "tmp" / "clusteros-node-files.tar", image_inputs(spec, native=False))
    shutil.copy(packer.provision_script("debian"), tree / "tmp" / "provision.sh")
    out = subprocess.run(["chroot", tree, "env", *packer.provision_environment(spec, "iso"), "sh", "/tmp/provision.sh"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "provision: done" in out.stdout
    agent = tree / AGENT_DIR / "node-agent"
    assert (agent / "__main__.py").exists() and (tree / "usr/local/bin/k3s").exists()
    assert list((agent / "clusteros_node" / "__pycache__").glob("agent.*.pyc")), "the agent was compiled on the target"
    assert (tree / "etc/clusteros/owner.pub").read_text().startswith("ssh-ed25519 "), "the owner's public key"
    assert not (tree / "etc/clusteros/cluster.secret").exists(), "and no secret: nodes get the credential"
    assert json.loads((tree / "etc/clusteros/spec.json").read_text())["cluster"]["name"] == "democluster"
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    for unit in ("node-agent.service", "clusteros-identity.service", "ssh.service"):
        assert (wants / unit).is_symlink(), unit
    assert os.readlink(tree / "etc/systemd/system/apt-daily.timer") == "/dev/null"
    assert (tree / "etc/systemd/system/node-agent.service").exists()
    # Unpacking over / kept the system's own directories as they were.
    assert oct(tree.stat().st_mode & 0o777) == "0o755" and oct((tree / "etc").stat().st_mode & 0o777) == "0o755"
    assert not (tree / "tmp/clusteros-node-files.tar").exists()
    assert (tree / "etc/machine-id").read_text() == "" and not list((tree / "etc/ssh").glob("ssh_host_*"))


@pytest.fixture(scope="module")
def packer_image():
    work = ROOT / PACKER_DIST
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec_file = work / "cluster.yaml"
    spec_file.write_text((ROOT / "cluster.yaml").read_text().replace("builder: native", "builder: packer"))
    out = build("image", env={"CLUSTEROS_SPEC": str(spec_file), "CLUSTEROS_DIST": f"{PACKER_DIST}/dist"})
    return work, load_spec(spec_file), out


@pytest.mark.needs("packer")
def test_packer_provisions_the_native_base(packer_image):
    work, spec, out = packer_image
    assert (work / "dist" / "democluster-base.qcow2").exists(), "the native base is built first"
    assert "packer 1.6.6: booting the native base (direct kernel boot (democluster-base.vmlinuz))" in out.stderr
    manifest = json.loads((work / "dist" / "democluster.manifest.json").read_text())
    assert manifest["builder"]["name"] == "packer" and manifest["outputs"]["qcow2"]["file"] == "democluster.qcow2"
    assert (work / "dist" / "logs" / "packer-serial.log").stat().st_size > 0, "QEMU found its relative serial log"


@pytest.mark.needs("packer")
def test_packer_image_boots_and_passes_the_smoke_checks(packer_image):
    work, spec, _ = packer_image
    acc = accel.choose("auto")
    vm = VMNode(index=1, name="packer-boot", lan_mac="52:54:00:ee:ef:01", uplink_mac="52:54:01:ee:ef:01",
                lan_address="10.42.0.251", ssh_port=2297, cpus=1, memory=1024)
    lan = Switch(work / "lan")
    lan.ensure_running()
    machine = Machine(vm.name, work / vm.name, stop_timeout=acc.scale(30))
    machine.directory.mkdir()
    overlay = machine.directory / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(work / "dist" / "democluster.qcow2"), str(overlay)], check=True)
    try:
        with machine:
            # The image holds no key: the test key comes as a test VM's does, through fw_cfg.
            keys = machine.directory / "ssh-keys"
            keys.write_text(credentials.ssh_keys_text(spec))
            keys.chmod(0o600)
            machine.launch(qemu.node_argv(vm, machine.directory, overlay, acc, qemu.Boot("bios"), lan.sock)
                           + qemu.fw_cfg_args({"clusteros-ssh-keys": keys}))
            node = Node(vm.name, machine, SSHTarget(vm.ssh_port, "admin", secrets.test_key_path(spec)), acc.scale(1))
            node.wait_for_ssh(timeout=150)
            assert node.succeed("ps -p 1 -o comm=").strip() == "systemd"
            assert "builder=packer" in node.succeed("cat /etc/clusteros/build-info")
            node.succeed("command -v wg", "test -x /usr/sbin/slurmd")
            assert node.succeed("systemctl is-enabled node-agent").strip() == "enabled"
    finally:
        lan.stop()
