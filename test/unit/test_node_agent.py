"""The node-agent's logic: message signing and rejection, roles, addresses, slurm.conf, identity."""

import time
from pathlib import Path

import pytest

from clusteros.spec import load_spec, node_view
from clusteros_node import identity, membership, messages, slurm, status

ROOT = Path(__file__).resolve().parents[2]
KEY = messages.derive_key(b"s" * 32, "clusteros announce")


@pytest.fixture
def spec():
    return node_view(load_spec(ROOT / "cluster.yaml"))


def announcement(name="node2", ts=None, cluster="democluster", **extra):
    payload = {"cluster": cluster, "name": name, "index": 2, "lan_ip": "10.42.0.12", "wg_ip": "10.99.0.2",
               "wg_pubkey": "K" * 44, "wg_port": 51820, "cpus": 2, "memory_mb": 980, "boot_id": "b", **extra}
    return messages.new_payload(payload, ts)


# -- signing ---------------------------------------------------------------

def test_a_signed_announcement_is_accepted():
    verifier = messages.Verifier(KEY, "democluster")
    payload = verifier.verify(messages.encode(announcement(), KEY))
    assert payload["name"] == "node2" and payload["wg_ip"] == "10.99.0.2"


def test_a_wrong_key_is_rejected():
    other = messages.derive_key(b"x" * 32, "clusteros announce")
    with pytest.raises(messages.Rejected, match="bad MAC"):
        messages.Verifier(KEY, "democluster").verify(messages.encode(announcement(), other))


def test_a_tampered_payload_is_rejected():
    packet = bytearray(messages.encode(announcement(), KEY))
    packet[-5] ^= 1
    with pytest.raises(messages.Rejected, match="bad MAC"):
        messages.Verifier(KEY, "democluster").verify(bytes(packet))


def test_a_replayed_announcement_is_rejected():
    verifier = messages.Verifier(KEY, "democluster")
    packet = messages.encode(announcement(), KEY)
    verifier.verify(packet)
    with pytest.raises(messages.Rejected, match="replayed"):
        verifier.verify(packet)


def test_an_older_announcement_after_a_newer_one_is_rejected():
    verifier = messages.Verifier(KEY, "democluster")
    now = time.time()
    verifier.verify(messages.encode(announcement(ts=now), KEY), now=now)
    with pytest.raises(messages.Rejected, match="replayed"):
        verifier.verify(messages.encode(announcement(ts=now - 1), KEY), now=now)


def test_a_stale_or_future_timestamp_is_rejected():
    verifier = messages.Verifier(KEY, "democluster")
    now = time.time()
    for ts in (now - 120, now + 120):
        with pytest.raises(messages.Rejected, match="away from this node's clock"):
            verifier.verify(messages.encode(announcement(ts=ts), KEY), now=now)


def test_another_clusters_announcement_is_rejected_even_with_the_key():
    with pytest.raises(messages.Rejected, match="cluster 'other'"):
        messages.Verifier(KEY, "democluster").verify(messages.encode(announcement(cluster="other"), KEY))


@pytest.mark.parametrize("packet", [b"", b"hello", b"COS1" + b"\0" * 40, b"COS1" + b"x" * 9000])
def test_garbage_is_rejected(packet):
    with pytest.raises(messages.Rejected):
        messages.Verifier(KEY, "democluster").verify(packet)


def test_derived_keys_differ_by_purpose_and_are_stable():
    secret = b"a" * 32
    assert messages.derive_key(secret, "x") == messages.derive_key(secret, "x")
    assert messages.derive_key(secret, "x") != messages.derive_key(secret, "y")
    assert len(slurm.munge_key(secret)) == 128 and slurm.munge_key(secret) != slurm.munge_key(b"b" * 32)


# -- membership and roles ----------------------------------------------------

def test_members_go_down_when_they_stop_announcing():
    window = membership.LIVE_SECONDS
    table = membership.Membership()
    table.update(announcement("node2"), now=100.0)
    table.update(announcement("node3"), now=105.0)
    assert [m.name for m in table.live(100.0 + window)] == ["node2", "node3"]
    assert [m.name for m in table.live(100.0 + window + 1)] == ["node3"]
    assert set(table.known) == {"node2", "node3"}, "a node that went down stays known (slurm shows it DOWN)"


def test_mesh_keeps_a_peer_that_stopped_announcing_and_follows_a_new_key():
    def member(number, key):
        return announcement(f"node{number}", index=number, lan_ip=f"10.42.0.1{number}",
                            wg_ip=f"10.99.0.{number}", wg_pubkey=key * 44)
    table = membership.Membership()
    for number, key in ((1, "A"), (2, "B"), (3, "C")):
        table.update(member(number, key), now=100.0)
    peers = table.mesh_peers("node1")
    assert sorted(p["name"] for p in peers.values()) == ["node2", "node3"], "never itself"
    assert table.live(1000.0) == [] and table.mesh_peers("node1") == peers, "a silent member keeps its tunnel"
    table.update(member(3, "N"), now=1001.0)
    peers = table.mesh_peers("node1")
    assert sorted(peers) == ["B" * 44, "N" * 44], "node3's old key is gone"
    assert peers["N" * 44] == {"name": "node3", "endpoint": "10.42.0.13:51820", "allowed_ip": "10.99.0.3/32"}


def test_controller_is_the_lowest_named_live_node(spec):
    assert membership.controller(spec, ["node2", "node3", "node1"]) == "node1"
    assert membership.controller(spec, ["node3", "node2"]) == "node2"
    assert membership.controller(spec, []) is None


def test_controller_from_the_spec_wins(spec):
    spec["nodes"][2]["role"] = "controller"
    assert membership.controller(spec, ["node1", "node2", "node3"]) == "node3"
    assert membership.controller(spec, ["node1", "node2"]) == "node3", "a named controller is not replaced"


def test_wireguard_addresses_are_stable(spec):
    assert membership.wg_address(spec, 1, "node1") == "10.99.0.1"
    assert membership.wg_address(spec, 3, "node3") == "10.99.0.3"
    unknown = membership.wg_address(spec, None, "node-ab12cd34")
    assert unknown == membership.wg_address(spec, None, "node-ab12cd34")
    assert 100 <= int(unknown.rsplit(".", 1)[1]) < 200


# -- slurm.conf ---------------------------------------------------------------

def test_slurm_conf_lists_every_known_node_with_its_resources():
    nodes = {"node2": {"wg_ip": "10.99.0.2", "cpus": 2, "memory_mb": 1900},
             "node1": {"wg_ip": "10.99.0.1", "cpus": 1, "memory_mb": 980}}
    conf = slurm.render_conf("lab", "node1", "10.99.0.1", nodes,
                             [{"name": "main", "default": True, "max_time": "INFINITE"},
                              {"name": "big", "nodes": ["node2"], "max_time": "1-00:00:00"}])
    assert "SlurmctldHost=node1(10.99.0.1)" in conf
    assert "SlurmctldParameters=enable_configless" in conf
    assert conf.index("NodeName=node1 NodeAddr=10.99.0.1 CPUs=1 RealMemory=980") < conf.index("NodeName=node2")
    assert "PartitionName=main Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP" in conf
    assert "PartitionName=big Nodes=node2 Default=NO MaxTime=1-00:00:00 State=UP" in conf


# -- identity -----------------------------------------------------------------

def test_identity_by_mac_from_the_spec(spec):
    me = identity.resolve(spec, {"enp0s2": spec["nodes"][1]["mac"], "enp0s3": "52:54:01:00:00:02"}, "abc")
    assert (me.name, me.address, me.interface, me.index) == ("node2", "10.42.0.12/24", "enp0s2", 2)


def test_identity_by_the_clusters_vm_mac_range_beyond_the_spec(spec):
    mac = spec["node_naming"]["mac_prefix"] + ":05"
    me = identity.resolve(spec, {"ens3": mac}, "abc")
    assert (me.name, me.address, me.index) == ("node5", "10.42.0.15/24", 5)


def test_unknown_hardware_is_named_by_machine_id_and_claims_no_nic(spec):
    me = identity.resolve(spec, {"eno1": "3c:ec:ef:11:22:33"}, "0123456789abcdef")
    assert (me.name, me.address, me.mac, me.interface) == ("node-01234567", None, None, None)


def test_lan_network_unit_needs_no_dhcp(spec):
    me = identity.resolve(spec, {"enp0s2": spec["nodes"][0]["mac"]}, "")
    unit = identity.lan_network_unit(me, spec)
    assert f"MACAddress={spec['nodes'][0]['mac']}" in unit
    assert "Address=10.42.0.11/24" in unit and "DHCP=no" in unit


def test_hosts_file_names_every_node(spec):
    me = identity.resolve(spec, {"enp0s2": spec["nodes"][0]["mac"]}, "")
    hosts = identity.hosts_file(spec, me)
    assert "10.42.0.12\tnode2" in hosts and "127.0.1.1\tnode1" in hosts


# -- status -------------------------------------------------------------------

def test_status_renders_members_peers_and_services():
    now = float(int(time.time()))   # whole seconds: "30s ago" must not round to 31
    state = {"name": "node1", "role": "controller", "controller": "node1", "lan_address": "10.42.0.11/24",
             "wg_address": "10.99.0.1",
             "members": [{"name": "node1", "lan_ip": "10.42.0.11", "wg_ip": "10.99.0.1", "live": True, "last_seen": 0.5},
                         {"name": "node2", "lan_ip": "10.42.0.12", "wg_ip": "10.99.0.2", "live": False, "last_seen": 40}],
             "wireguard": [{"peer": "node2", "endpoint": "10.42.0.12:51820", "latest_handshake": int(now) - 30}],
             "slurm": {"role": "controller", "slurmctld": "active", "slurmd": "active"}, "k3s": "not provided",
             "errors": {}, "dropped_packets": 2, "updated": now}
    text = status.render(state, now)
    assert "node node1: controller" in text and "node2" in text and "DOWN" in text
    assert "handshake 30s ago" in text and "k3s: not provided" in text and "dropped 2 packets" in text


def test_status_without_an_agent_says_so(tmp_path):
    state = status.load(tmp_path / "missing.json")
    assert "is node-agent.service running?" in status.render(state)
