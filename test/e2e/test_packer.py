"""image.builder: packer with Debian's Packer 1.6.6, on the native base, booted afterwards."""

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

from .conftest import ROOT

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
    assert "packer 1.6.6: booting the base" in out.stderr
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
