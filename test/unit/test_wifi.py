"""network.wifi: the key read and derived on the owner's machine, carried in the signed credential,
checked by the node, and written into wpa_supplicant's configuration for the node's WLAN device."""

import json
import os
from pathlib import Path

import pytest

from clusteros import credentials, secrets, wifi
from clusteros.errors import UsageError
from clusteros.spec import load_spec
from clusteros_node import credential, identity
from clusteros_node import wifi as node_wifi
from clusteros_node.places import Places

ROOT = Path(__file__).resolve().parents[2]
HEX = "ab" * 32


def test_the_key_is_wpa2s_derivation_of_the_passphrase_and_a_hex_key_is_taken_as_it_is():
    # IEEE 802.11i, annex H.4: passphrase "password", SSID "IEEE".
    assert wifi.derive_psk("IEEE", "password") == "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"
    assert wifi.derive_psk("IEEE", HEX.upper()) == HEX


@pytest.mark.parametrize("passphrase, says", [("short", "this one has 5 characters"), ("x" * 64, "64 characters"),
                                              ("pass\nword123", "some not printable ASCII"),
                                              ("pässwörter", "some not printable ASCII")])
def test_a_passphrase_wpa2_cannot_take_is_refused_with_its_place(passphrase, says):
    with pytest.raises(UsageError, match=says) as refused:
        wifi.derive_psk("lab", passphrase, "network.wifi.psk_env")
    assert refused.value.exit_code == 2 and str(refused.value).startswith("network.wifi.psk_env: ")


def test_the_passphrase_comes_from_the_environment_or_a_0600_file(tmp_path, monkeypatch):
    monkeypatch.delenv("LAB_PSK", raising=False)
    with pytest.raises(UsageError, match="network.wifi.psk_env: the environment variable LAB_PSK is not set"):
        wifi.read_passphrase({"ssid": "lab", "psk_env": "LAB_PSK"})
    monkeypatch.setenv("LAB_PSK", "correct horse")
    assert wifi.read_passphrase({"ssid": "lab", "psk_env": "LAB_PSK"}) == ("network.wifi.psk_env", "correct horse")
    key = tmp_path / "wifi.psk"
    key.write_text("correct horse\n")
    key.chmod(0o644)
    with pytest.raises(UsageError, match="can be read by others") as refused:
        wifi.read_passphrase({"ssid": "lab", "psk_file": str(key)})
    assert f"chmod 600 {key}" in refused.value.fix
    key.chmod(0o600)
    assert wifi.read_passphrase({"ssid": "lab", "psk_file": str(key)}) == ("network.wifi.psk_file", "correct horse")


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """A state folder with the owner's and the test key, made once for the module (ssh-keygen is
    the slow part); each test's credential is signed afresh as its spec asks."""
    folder = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLUSTEROS_STATE_DIR", str(folder))
        patch.delenv("CLUSTEROS_DIST", raising=False)   # the keys' log goes to this checkout's dist/logs
        secrets.ensure_all(load_spec(ROOT / "cluster.yaml"))
    return folder


@pytest.fixture
def wifi_spec(state, tmp_path, monkeypatch):
    """The shipped spec with network.wifi, on the module's state folder."""
    monkeypatch.setenv("CLUSTEROS_STATE_DIR", str(state))
    monkeypatch.setenv("LAB_PSK", "correct horse battery")
    text = (ROOT / "cluster.yaml").read_text() + "\n"
    spec_file = tmp_path / "cluster.yaml"
    spec_file.write_text(text.replace("\nnetwork:\n", "\nnetwork:\n  wifi: {ssid: lab-net, psk_env: LAB_PSK, country: DE}\n"))
    return load_spec(spec_file)


def test_the_credential_carries_the_derived_key_and_is_signed_again_only_when_it_changes(wifi_spec, monkeypatch):
    first = credentials.ensure_bundle(wifi_spec).read_bytes()
    assert b"correct horse" not in first, "the passphrase stays on the owner's machine"
    assert credentials.ensure_bundle(wifi_spec).read_bytes() == first, "same spec, same bytes"
    owner_pub = secrets.owner_key_path(wifi_spec).with_suffix(".pub")
    taken = credential.parse(first, "democluster", owner_pub)
    assert taken.wifi == {"ssid": "lab-net", "country": "DE",
                          "psk": wifi.derive_psk("lab-net", "correct horse battery")}
    monkeypatch.setenv("LAB_PSK", "another passphrase")
    second = credentials.ensure_bundle(wifi_spec).read_bytes()
    assert second != first and credential.parse(second, "democluster", owner_pub).wifi["psk"] != taken.wifi["psk"]


@pytest.mark.parametrize("bad", [{"ssid": "lab", "psk": "zz" * 32, "country": "DE"},
                                 {"ssid": "lab", "psk": HEX + "\n", "country": "DE"},
                                 {"ssid": "x" * 33, "psk": HEX, "country": "DE"},
                                 {"ssid": "\ud800", "psk": HEX, "country": "DE"},
                                 {"ssid": "lab", "psk": HEX, "country": "de"},
                                 {"ssid": "lab", "psk": HEX, "country": "DE", "extra": "x"},
                                 {"ssid": "lab", "psk": 5, "country": "DE"}, ["lab", HEX], "lab"])
def test_a_malformed_wifi_part_is_refused_before_the_signature_is_looked_at(bad):
    body = {"cluster": "democluster", "generation": 1, "secret": "73" * 32, "ssh_keys": {}, "wifi": bad}
    raw = json.dumps({"credential": body, "signature": "-"}).encode()
    with pytest.raises(credential.BadCredential, match="malformed WiFi"):
        credential.parse(raw, "democluster", Path("/nonexistent/owner.pub"))


def fake_net(root: Path, devices: dict[str, tuple[str, bool]]) -> Path:
    for name, (mac, wireless) in devices.items():
        (root / name).mkdir(parents=True)
        (root / name / "address").write_text(mac + "\n")
        if wireless:
            (root / name / "phy80211").mkdir()
    return root


def test_the_node_uses_the_wlan_device_with_its_lan_mac_else_the_first_one(tmp_path):
    net = fake_net(tmp_path / "net", {"enp0s2": ("52:54:00:00:00:01", False), "wlan0": ("02:00:00:00:00:00", True),
                                      "wlan1": ("02:00:00:00:01:00", True)})
    devices = node_wifi.wlan_devices(net)
    assert devices == {"wlan0": "02:00:00:00:00:00", "wlan1": "02:00:00:00:01:00"}
    assert node_wifi.chosen(devices, "02:00:00:00:01:00") == "wlan1"
    assert node_wifi.chosen(devices, "52:54:00:00:00:01") == "wlan0"
    assert node_wifi.chosen(devices, None) == "wlan0"
    assert node_wifi.chosen({}, None) is None


@pytest.fixture
def node(wifi_spec, tmp_path):
    """A node's places: the owner's public key, its identity (LAN MAC: wlan1's), the credential from its host."""
    places = Places.under(tmp_path / "node")
    for folder in (places.run, places.etc, places.imported):
        folder.mkdir(parents=True)
    (places.etc / "owner.pub").write_bytes(secrets.owner_key_path(wifi_spec).with_suffix(".pub").read_bytes())
    me = identity.Identity("node4", 4, "02:00:00:00:01:00", None, "10.42.0.14/24", "auto")
    (places.run / "identity.json").write_text(me.to_json())
    net = fake_net(tmp_path / "net", {"wlan0": ("02:00:00:00:00:00", True), "wlan1": ("02:00:00:00:01:00", True)})
    return places, net


def test_the_nodes_device_gets_a_0600_configuration_with_the_credentials_network(node, wifi_spec, tmp_path):
    places, net = node
    with pytest.raises(node_wifi.NoWifi, match="no credential on this machine yet"):
        node_wifi.prepare("wlan1", "democluster", places, net, tmp_path / "wifi")
    (places.imported / "clusteros-credential").write_bytes(credentials.ensure_bundle(wifi_spec).read_bytes())
    with pytest.raises(node_wifi.NoWifi, match=r"wlan0 is not this node's WLAN device \(wlan1 is\)"):
        node_wifi.prepare("wlan0", "democluster", places, net, tmp_path / "wifi")
    with pytest.raises(node_wifi.NoWifi, match="enp9s0 is not a WLAN device"):
        node_wifi.prepare("enp9s0", "democluster", places, net, tmp_path / "wifi")
    config = node_wifi.prepare("wlan1", "democluster", places, net, tmp_path / "wifi")
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    text = config.read_text()
    assert "country=DE\n" in text and f"\tssid={b'lab-net'.hex()}\n" in text
    assert f"\tpsk={wifi.derive_psk('lab-net', 'correct horse battery')}\n" in text and "correct horse" not in text


def test_a_credential_without_wifi_joins_nothing(node, wifi_spec, tmp_path):
    places, net = node
    plain = dict(wifi_spec, network={k: v for k, v in wifi_spec["network"].items() if k != "wifi"})
    (places.imported / "clusteros-credential").write_bytes(credentials.ensure_bundle(plain).read_bytes())
    with pytest.raises(node_wifi.NoWifi, match="the credential holds no WiFi network"):
        node_wifi.prepare("wlan1", "democluster", places, net, tmp_path / "wifi")
    assert not (tmp_path / "wifi").exists()


def test_a_credential_taken_while_running_starts_the_supplicant_and_a_new_key_restarts_it(node, wifi_spec, tmp_path,
                                                                                          monkeypatch):
    """Approved (enrollment) or rotated: the agent has clusteros-wifi@ join now, not at the next boot."""
    places, net = node
    calls = tmp_path / "calls"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (tmp_path / "bin" / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    owner_pub = places.etc / "owner.pub"
    with_wifi = credential.parse(credentials.ensure_bundle(wifi_spec).read_bytes(), "democluster", owner_pub)
    assert node_wifi.follow(with_wifi, places, sys_net=net) == "wlan1"
    assert node_wifi.follow(with_wifi, places, restart=True, sys_net=net) == "wlan1"
    assert calls.read_text().splitlines() == ["--no-block start clusteros-wifi@wlan1.service",
                                              "--no-block restart clusteros-wifi@wlan1.service"]
    plain = dict(wifi_spec, network={k: v for k, v in wifi_spec["network"].items() if k != "wifi"})
    without = credential.parse(credentials.ensure_bundle(plain).read_bytes(), "democluster", owner_pub)
    assert node_wifi.follow(without, places, sys_net=net) is None
    assert node_wifi.follow(with_wifi, places, sys_net=fake_net(tmp_path / "wired", {})) is None
    assert len(calls.read_text().splitlines()) == 2, "nothing to join: no systemctl"
    assert node_wifi.follow(without, places, restart=True, sys_net=net) == "wlan1", \
        "a rotation that drops the network restarts the unit, which then stops the supplicant"
    assert calls.read_text().splitlines()[-1] == "--no-block restart clusteros-wifi@wlan1.service"
