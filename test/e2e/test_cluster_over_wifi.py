"""A node whose cluster LAN is WiFi joins the running 3-node cluster over it.

The e2e spec sets network.wifi (conftest.py): every credential carries the network's key. A
variant of that spec lists a fourth node by the MAC of a WLAN device, mac80211_hwsim's second
radio; the node's image is built from it (so its identity table knows that MAC), and its
credential is the cluster's own (same cluster, same state folder).

In that node's VM the test plays the access point that would stand beside a rack: hwsim's
first radio and the VM's wired NIC (on the cluster's switch) go into a network namespace of
their own, bridged, and hostapd (fetched from the image's archive for the test only; the
image has none) serves the network on that radio. The rest is the node's own doing: udev
starts clusteros-wifi@ on its radio, which joins with the credential's key; networkd gives
the radio the node's LAN address; the agent finds the cluster through it. In the node's own
namespace no NIC is on the switch: whatever reaches the cluster went over WiFi.
"""

import dataclasses
import os
import re
import shutil
import subprocess
from concurrent.futures import Future
from pathlib import Path

import pytest

from clusteros import accel, wifi
from clusteros.spec import load_spec, rootfs_view
from clusteros.vm import cluster as lifecycle
from clusteros.vm import qemu
from clusteros.vm.layout import layout

from . import archive
from .conftest import DIST, ROOT, WIFI, agent_status, build, forget_everywhere, in_background, live_member, relocatable

pytestmark = pytest.mark.e2e

NODE_RADIO = "02:00:00:00:01:00"   # mac80211_hwsim gives radio N the MAC 02:00:00:00:NN:00
AP_RADIO = "02:00:00:00:00:00"
AP_WIRED = "52:54:02:00:00:04"     # the VM's NIC on the switch: the access point's, never the node's
VARIANT = DIST / "wifi-node"


def variant_spec() -> Path:
    """The e2e spec, listing node1-3 as the count form names them and node4 by its radio's MAC."""
    text = relocatable(Path(os.environ["CLUSTEROS_SPEC"]).read_text())
    listed = "".join(f"  - name: node{i}\n" for i in (1, 2, 3)) + f"  - name: node4\n    mac: {NODE_RADIO}\n"
    text, count = re.subn(r"\nnodes:\n  count: 3[^\n]*\n", lambda _: "\nnodes:\n" + listed, text)
    assert count == 1, "cluster.yaml's nodes block changed: update variant_spec"
    VARIANT.mkdir(parents=True, exist_ok=True)
    (VARIANT / "cluster.yaml").write_text(text)
    return VARIANT / "cluster.yaml"


def boot_with_radios(spec: dict) -> qemu.Boot:
    """The variant image's direct boot, with mac80211_hwsim's two radios there from the start."""
    boot = qemu.boot_of(spec, lifecycle.read_manifest(VARIANT / "democluster.manifest.json"), VARIANT)
    assert boot.direct, "the test VMs boot their kernel directly (vm.boot: direct)"
    return dataclasses.replace(boot, cmdline=boot.cmdline + " modules-load=mac80211_hwsim")


def variant_image_building() -> Future:
    """The variant's image build (the spec file when done): started by test_cluster_compute.py, so
    that it is built behind that module's tests, which mostly wait on SLURM (the build, ~25 s of
    this worker's time, is niced like the installers'), or here."""
    return in_background("wifi-image", _build_variant)


def _build_variant() -> Path:
    spec_file = variant_spec()
    build("image", env={"CLUSTEROS_DIST": str(VARIANT.relative_to(ROOT)), "CLUSTEROS_SPEC": str(spec_file)},
          behind=True)
    return spec_file


@pytest.fixture(scope="module", autouse=True)
def pxe_set_meanwhile(running):
    """The next module's PXE server (test_cluster_trust.py), node1 taking the set while this one's node boots."""
    from .test_cluster_trust import pxe_set_serving
    pxe_set_serving()


@pytest.fixture(scope="module")
def wifi_node(running):
    spec = load_spec(variant_image_building().result())
    vm = layout(spec, 4)[3]
    assert (vm.name, vm.lan_mac) == ("node4", NODE_RADIO)
    machine = lifecycle.machine(vm)
    machine.directory.mkdir(parents=True, exist_ok=True)
    overlay = machine.directory / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str((VARIANT / "democluster.qcow2").resolve()), str(overlay)], check=True)
    acc = accel.choose("auto")
    wired = dataclasses.replace(vm, lan_mac=AP_WIRED)
    with lifecycle.credential_files(spec, machine.directory) as handed:
        machine.launch(qemu.node_argv(wired, machine.directory, overlay, acc, boot_with_radios(spec),
                                      lifecycle.switch().sock) + qemu.fw_cfg_args(handed))
    yield spec, lifecycle.node_handle(spec, vm, acc.scale(1.0))
    machine.stop(0)   # nothing on it to keep: not worth an ACPI power-down under emulation
    forget_everywhere(running, "node4")
    shutil.rmtree(machine.directory)
    shutil.rmtree(VARIANT)


def interface_with(mac: str) -> str:
    return f"grep -lx {mac} /sys/class/net/*/address | cut -d/ -f5"


def hostapd_conf(ssid: str, psk: str) -> str:
    """The access point names no country: the regulatory domain seen on the node is its own doing."""
    return "\n".join(["interface=@RADIO@", "bridge=br0", "driver=nl80211", f"ssid={ssid}", "hw_mode=g", "channel=1", "wpa=2", "wpa_key_mgmt=WPA-PSK", "rsn_pairwise=CCMP",
                      f"wpa_psk={psk}", ""])


ACCESS_POINT = f"""set -eu
cd /run/test-ap
dpkg-deb -x hostapd.deb root
radio=$({interface_with(AP_RADIO)}); wired=$({interface_with(AP_WIRED)})
phy=$(cat /sys/class/net/$radio/phy80211/name)
sed -i "s/@RADIO@/$radio/" hostapd.conf
ip netns add ap
ip link set "$radio" down
iw phy "$phy" set netns name ap
ip link set "$wired" netns ap
ip netns exec ap sh -eu -c "ip link add br0 type bridge; ip link set $wired master br0; ip link set $wired up
    ip link set br0 up; root/usr/sbin/hostapd -B -f /run/test-ap/hostapd.log /run/test-ap/hostapd.conf"
"""


def send(node, path: str, data: bytes) -> None:
    out = subprocess.run(node.ssh.argv(f"sudo sh -c 'umask 077; mkdir -p /run/test-ap; cat > {path}'"), input=data,
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr


def start_access_point(node, spec: dict) -> None:
    """hostapd on the VM's first radio, bridged to its wired NIC, both in the namespace `ap`."""
    conf = spec["network"]["wifi"]
    passphrase = wifi.read_passphrase(conf)[1]
    deb = archive.download(rootfs_view(spec), "hostapd", DIST / "test-debs")
    send(node, "/run/test-ap/hostapd.deb", deb.read_bytes())
    send(node, "/run/test-ap/hostapd.conf",
         hostapd_conf(conf["ssid"], wifi.derive_psk(conf["ssid"], passphrase)).encode())
    send(node, "/run/test-ap/start", ACCESS_POINT.encode())
    node.succeed("sudo sh /run/test-ap/start")


def test_a_node_whose_lan_is_wifi_joins_the_cluster_over_it(running, wifi_node):
    spec, node = wifi_node
    node.wait_for_ssh(timeout=240)
    assert node.succeed("hostname").strip() == "node4", "named by its radio's MAC, as the spec lists it"
    radio = node.succeed(interface_with(NODE_RADIO)).strip()
    node.wait_until_succeeds(f"sudo iw reg get | grep -q '^country {WIFI['country']}:'", timeout=60)  # the credential's
    start_access_point(node, spec)
    node.wait_until_succeeds(f"sudo iw dev {radio} link | grep -q 'SSID: {WIFI['ssid']}'", timeout=120)
    node.wait_until_succeeds(f"ip -4 -o address show dev {radio} | grep -q ' 10.42.0.14/24 '", timeout=60)
    assert AP_WIRED not in node.succeed("ip -o link"), "no NIC of the node's own is on the switch"
    # The LAN's route follows the address once the radio's link is up (seen: the address there and
    # the route still by the uplink, for a moment): waited for, not raced.
    node.wait_until_succeeds(f"ip route get 10.42.0.11 | grep -q ' dev {radio} '", timeout=30)

    node1 = running["node1"]
    running.retry(lambda: live_member(agent_status(node1), "node4"), 150)
    assert sorted(node1.wait_until_succeeds("srun -w node4 hostname", timeout=150).split()) == ["node4"]
    assert len(node.succeed("sudo wg show wg0 peers").split()) == 3, "in the mesh with all three, over WiFi"


def test_the_key_stays_in_a_0600_file_in_ram_and_the_other_radio_is_left_alone(wifi_node):
    spec, node = wifi_node
    radio = node.succeed(interface_with(NODE_RADIO)).strip()
    conf = f"/run/clusteros/wifi/{radio}.conf"
    assert node.succeed(f"sudo stat -c '%a %U' {conf}").split() == ["600", "root"]
    node.fail(f"cat {conf}")
    passphrase = wifi.read_passphrase(spec["network"]["wifi"])[1]
    key = wifi.derive_psk(spec["network"]["wifi"]["ssid"], passphrase)
    args = node.succeed("ps -eo args")
    assert passphrase not in args and key not in args
    assert key in node.succeed(f"sudo cat {conf}") and passphrase not in node.succeed(f"sudo cat {conf}")
    log = node.succeed("sudo journalctl -b --no-pager -u 'clusteros-wifi@*'")
    assert f"joining the credential's network on {radio}" in log
    assert f"is not this node's WLAN device ({radio} is)" in log, "the access point's radio, before it moved"
