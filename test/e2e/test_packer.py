"""image.builder: packer with Debian's Packer 1.6.6, on the native base, booted afterwards."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from clusteros import accel
from clusteros.spec import load_spec
from clusteros.vm import cluster
from clusteros.vm.machine import Machine

from .conftest import DIST, ROOT

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not shutil.which("packer"), reason="scripts/install-prereqs.sh installs packer")]


@pytest.fixture(scope="module")
def packer_image(tmp_path_factory):
    work = tmp_path_factory.mktemp("packer")
    spec_file = work / "cluster.yaml"
    spec_file.write_text((ROOT / "cluster.yaml").read_text().replace("builder: native", "builder: packer"))
    env = dict(os.environ, CLUSTEROS_SPEC=str(spec_file), CLUSTEROS_DIST=str(work / "dist"))
    out = subprocess.run([sys.executable, "-m", "doit", "image"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1800)
    print(out.stdout, out.stderr)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return work, load_spec(spec_file), out


def test_packer_provisions_the_native_base(packer_image):
    work, spec, out = packer_image
    assert (work / "dist" / "democluster-base.qcow2").exists(), "the native base is built first"
    assert "packer 1.6.6: booting the native base" in out.stderr
    manifest = (work / "dist" / "democluster.manifest.json").read_text()
    assert '"name": "packer"' in manifest


def test_packer_image_boots_and_passes_the_smoke_checks(packer_image):
    work, spec, _ = packer_image
    acc = accel.choose("auto")
    node = cluster.VMNode(index=1, name="packer-boot", lan_mac="52:54:00:ee:ef:01", uplink_mac="52:54:01:ee:ef:01",
                          lan_address="10.42.0.251", ssh_port=2297, vnc_port=5997, cpus=1, memory=1024)
    lan = cluster.Switch(work / "lan")
    lan.ensure_running()
    m = Machine(node.name, work / node.name)
    m.directory.mkdir()
    overlay = m.directory / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(work / "dist" / "democluster.qcow2"), str(overlay)], check=True)
    try:
        m.launch(cluster.qemu_argv(node, m, overlay, acc, "bios", lan.sock))
        deadline = time.monotonic() + acc.scale(150)
        while cluster.ssh_run(spec, node, ["true"], timeout=30).returncode != 0:
            assert time.monotonic() < deadline, "no SSH:\n" + "\n".join(m.serial_tail())
            time.sleep(3)
        out = cluster.ssh_run(spec, node, ["sh", "-c", "ps -p 1 -o comm=; cat /etc/clusteros/build-info; "
                                                       "command -v wg; test -x /usr/sbin/slurmd && echo slurmd; "
                                                       "systemctl is-enabled node-agent"], timeout=60)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.split()
        assert lines[0] == "systemd" and "builder=packer" in lines and "slurmd" in lines and lines[-1] == "enabled"
    finally:
        m.stop(timeout=acc.scale(30))
        lan.stop()


def test_provision_turns_a_stock_system_into_a_node(image, spec, tmp_path):
    """The iso base's provisioning, for real, on a stock tree: the native build's package set without any
    ClusterOS file stands in for a fresh Ubuntu install (Ubuntu's ISO cannot be reached from here)."""
    from clusteros import image as image_stage
    from clusteros import k3s, packer, rootfs, secrets
    from clusteros.spec import node_view, rootfs_view
    tree = tmp_path / "root"
    tree.mkdir()
    os.chmod(tree, 0o755)
    subprocess.run(["tar", "--extract", "--numeric-owner", "--file", rootfs.rootfs_path(rootfs_view(spec)),
                    "--directory", tree], check=True)
    assert not (tree / image_stage.AGENT_PATH).exists(), "the stand-in must start without ClusterOS"
    image_stage.write_node_files_tar(tree / "tmp" / "clusteros-node-files.tar", distro="debian",
                                     node_spec=node_view(spec), agent_pyz=DIST / "node-agent.pyz",
                                     secret=secrets.cluster_secret_path(spec), k3s_binary=k3s.binary(spec).cache_path)
    shutil.copy(packer.provision_script("debian"), tree / "tmp" / "provision.sh")
    out = subprocess.run(["chroot", tree, "env", *packer.provision_environment(spec, "iso"), "sh", "/tmp/provision.sh"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "provision: done" in out.stdout
    assert (tree / image_stage.AGENT_PATH).exists() and (tree / "usr/local/bin/k3s").exists()
    assert oct((tree / "etc/clusteros/cluster.secret").stat().st_mode & 0o777) == "0o600"
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
