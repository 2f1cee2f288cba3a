"""The node-agent's logic: messages, field checks, bindings, election, enrollment, credentials, the
files it writes. The agent itself runs here in-process (`apply_system=False`: it changes nothing
on this machine), fed real packets."""

import base64
import dataclasses
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from clusteros.spec import load_spec, node_view
from clusteros_node import (accounting, candidate, credential, election, enroll, firewall, home, identity, messages, registry,
                            slurm, status, system, timesync, transfer, validate, wireguard)
from clusteros_node.agent import Agent
from clusteros_node.places import Places
from clusteros_node.ratelimit import Limiter

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"s" * 32
KEY = messages.announce_key(SECRET)


def wg_key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


@pytest.fixture
def spec():
    return node_view(load_spec(ROOT / "cluster.yaml"))


def payload(name="node2", index=2, seq=1, **extra):
    fields = {"cluster": "democluster", "generation": 1, "name": name, "index": index,
              "lan_ip": f"10.42.0.{10 + index}" if index else "10.42.0.90",
              "wg_ip": f"10.99.0.{index}" if index else "10.99.0.70", "wg_pubkey": wg_key(index or 70),
              "wg_port": 51820, "cpus": 2, "memory_mb": 980, "boot_id": "0b5e6a3c-64b0-4d7f-9d1c-2b8f3c1a4e5d",
              "seq": seq, "controller": None, "slurm_nodes": []}
    return fields | extra


def signed(fields: dict, generation: int = 1, key: bytes = KEY) -> bytes:
    return messages.encode_announcement(fields, generation, key)


# -- messages -------------------------------------------------------------------

def test_an_announcement_opens_with_its_generations_key_only():
    packet = signed(payload())
    assert messages.open_announcement(packet, {1: KEY})["name"] == "node2"
    with pytest.raises(messages.Rejected, match="bad MAC"):
        messages.open_announcement(packet, {1: messages.announce_key(b"x" * 32)})
    with pytest.raises(messages.Rejected, match="generation 1, not one this node holds"):
        messages.open_announcement(packet, {2: KEY})


def test_the_generation_is_under_the_mac_too():
    packet = bytearray(signed(payload()))
    packet[11] ^= 2            # generation 1 -> 3, in the clear part
    with pytest.raises(messages.Rejected):
        messages.open_announcement(bytes(packet), {1: KEY, 3: KEY})


@pytest.mark.parametrize("packet", [b"", b"hello", b"COS2" + b"\0" * 40, b"COS2" + b"x" * 9000, b"COSE{not json"])
def test_garbage_is_rejected(packet):
    with pytest.raises(messages.Rejected):
        kind = messages.kind_of(packet)
        if kind == messages.ANNOUNCE:
            messages.open_announcement(packet, {0: KEY})
        else:
            messages.open_unsigned(packet)


def test_nan_and_infinity_are_not_numbers_here():
    with pytest.raises(messages.Rejected):
        messages.open_unsigned(b'COSE{"seq": NaN}')


def test_derived_keys_differ_by_purpose_and_are_stable():
    assert messages.derive_key(SECRET, "x") == messages.derive_key(SECRET, "x") != messages.derive_key(SECRET, "y")
    assert len(slurm.munge_key(SECRET)) == 128 and slurm.munge_key(SECRET) != slurm.munge_key(b"b" * 32)


# -- field checks -----------------------------------------------------------------

def test_a_good_announcement_becomes_typed(spec):
    a = validate.announcement(payload(), spec)
    assert (a.name, a.index, a.wg_ip, a.seq) == ("node2", 2, "10.99.0.2", 1)


def test_an_announcements_standing_is_all_it_says_but_its_number(spec):
    """What the steady tick compares: a field added to the announcement counts without more code."""
    a = validate.announcement(payload(), spec)
    assert validate.announcement(payload(seq=9), spec).standing() == a.standing()
    for field in dataclasses.fields(a):
        if field.name != "seq":
            assert dataclasses.replace(a, **{field.name: object()}).standing() != a.standing(), field.name


@pytest.mark.parametrize("change,field", [
    ({"name": "node2\nPrologSlurmctld=/tmp/x"}, "name"), ({"name": ""}, "name"), ({"name": 7}, "name"),
    ({"seq": float("nan")}, "seq"), ({"seq": True}, "seq"), ({"seq": -1}, "seq"), ({"cpus": 0}, "cpus"),
    ({"memory_mb": "980"}, "memory_mb"), ({"lan_ip": "10.43.0.12"}, "lan_ip"), ({"lan_ip": "10.42.0.255"}, "lan_ip"),
    ({"wg_ip": "0.0.0.0/0"}, "wg_ip"), ({"wg_ip": "10.99.0.9"}, "wg_ip"), ({"wg_pubkey": "x"}, "wg_pubkey"),
    ({"index": 65}, "index"), ({"boot_id": "b"}, "boot_id"), ({"controller": "Node1"}, "controller"),
    ({"slurm_nodes": ["a"] * 300}, "slurm_nodes"), ({"slurm_nodes": ["ok", "bad name"]}, "slurm_nodes"),
    ({"cluster": "other"}, "cluster"), ({"generation": 0}, "generation"),
])
def test_every_bad_field_is_named(spec, change, field):
    with pytest.raises(validate.Invalid, match=field):
        validate.announcement(payload() | change, spec)


def test_a_missing_field_is_named(spec):
    fields = payload()
    del fields["wg_port"]
    with pytest.raises(validate.Invalid, match="wg_port: missing"):
        validate.announcement(fields, spec)


# -- bindings, replay, liveness ---------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_name_belongs_to_the_key_it_came_with(spec):
    table = registry.Registry()
    table.accept(validate.announcement(payload(), spec), "10.42.0.12")
    with pytest.raises(registry.Refused, match="bound to another WireGuard key"):
        table.accept(validate.announcement(payload(seq=2, wg_pubkey=wg_key(9)), spec), "10.42.0.12")
    with pytest.raises(registry.Refused, match="presents node2's WireGuard key"):
        table.accept(validate.announcement(payload("node3", 3, wg_pubkey=wg_key(2)), spec), "10.42.0.13")


def test_a_wg_address_and_a_lan_address_cannot_be_borrowed(spec):
    table = registry.Registry()
    table.accept(validate.announcement(payload(index=None, name="node-a"), spec), "10.42.0.90")
    with pytest.raises(registry.AddressConflict, match="node-b claims 10.99.0.70, which node-a holds"):
        table.accept(validate.announcement(payload(index=None, name="node-b", wg_pubkey=wg_key(71),
                                                   lan_ip="10.42.0.91"), spec), "10.42.0.91")
    with pytest.raises(registry.Refused, match="says it is at 10.42.0.12 but spoke from 10.42.0.13"):
        table.accept(validate.announcement(payload(seq=5), spec), "10.42.0.13")


def test_a_replay_is_refused_and_the_sequence_survives_a_restart(spec):
    table = registry.Registry()
    table.accept(validate.announcement(payload(seq=10), spec), "10.42.0.12")
    for seq in (10, 9):
        with pytest.raises(registry.Refused, match="a replay"):
            table.accept(validate.announcement(payload(seq=seq), spec), "10.42.0.12")
    restarted = registry.Registry(json.loads(json.dumps(table.state())))
    with pytest.raises(registry.Refused, match="a replay"):
        restarted.accept(validate.announcement(payload(seq=10), spec), "10.42.0.12")
    restarted.accept(validate.announcement(payload(seq=11), spec), "10.42.0.12")


def test_liveness_is_monotonic_and_departed_members_are_pruned(spec):
    mono, wall = Clock(), Clock()
    table = registry.Registry(clock=mono, wall=wall)
    table.accept(validate.announcement(payload(), spec), "10.42.0.12")
    wall.now -= 10_000            # the wall clock steps back: liveness does not care
    assert [m.name for m in table.live()] == ["node2"]
    mono.now += registry.LIVE_SECONDS + 1
    assert table.live() == [] and table.silent_for()["node2"] > registry.LIVE_SECONDS
    mono.now += registry.PRUNE_AFTER
    assert table.prune() == ["node2"] and table.bindings == {}


def test_the_table_is_bounded(spec):
    table = registry.Registry()
    for n in range(registry.MAX_MEMBERS):
        table.bindings[f"n{n}"] = registry.Binding(base64.b64encode(n.to_bytes(32, "big")).decode(),
                                                   f"10.98.{n // 250}.{n % 250}", "", 1, 0, 0)
    with pytest.raises(registry.Refused, match="table is full"):
        table.accept(validate.announcement(payload(), spec), "10.42.0.12")


# -- election -------------------------------------------------------------------

def view(live, follows=None, current=None, silent=None, marked=(), listed=(), up_for=float("inf")):
    return election.View(frozenset(live), follows or {n: None for n in live}, current, silent or {}, tuple(marked),
                         tuple(listed), up_for)


def test_a_new_cluster_takes_the_lowest_name():
    assert election.choose(view(["node2", "node1", "node3"])) == "node1"
    assert election.choose(view(["node10", "node2", "node11"])) == "node2", "counted, not sorted as text"


def test_a_new_node_waits_a_while_for_the_preferred_controller_then_leads_without_it():
    listed = ("node1", "node2", "node3")
    early = view(["node3"], listed=listed, up_for=10.0)
    assert election.choose(early) is None, "node1 may still be booting"
    assert election.choose(view(["node3", "node1"], listed=listed, up_for=12.0)) == "node1"
    assert election.choose(view(["node3", "node2"], listed=listed, up_for=election.FORMING)) == "node2"
    marked = view(["node1", "node3"], marked=("node3",), listed=listed, up_for=1.0)
    assert election.choose(marked) == "node3", "the marked node is here: no wait"


def test_a_node_that_followed_a_controller_does_not_wait_when_it_goes():
    follows = {"node2": "node1", "node3": "node1"}
    late = view(["node2", "node3"], follows, "node1", {"node1": election.GRACE}, listed=("node1", "node2", "node3"),
                up_for=5.0)
    assert election.choose(late) == "node2"


def test_a_node_joining_a_running_cluster_follows_it_even_with_a_lower_name():
    follows = {"node2": "node2", "node3": "node2", "node1": None}
    assert election.choose(view(["node1", "node2", "node3"], follows)) == "node2"


def test_a_silent_controller_keeps_its_role_for_the_grace_period_then_the_lowest_live_takes_over():
    follows = {"node2": "node1", "node3": "node1"}
    assert election.choose(view(["node2", "node3"], follows, "node1", {"node1": 25.0})) == "node1"
    assert election.choose(view(["node2", "node3"], follows, "node1", {"node1": 25.0 + election.GRACE})) == "node2"


def test_a_wall_clock_step_changes_nothing_since_nothing_here_is_wall_clock():
    follows = {"node1": "node1", "node2": "node1", "node3": "node1"}
    assert election.choose(view(["node1", "node2", "node3"], follows, "node1")) == "node1"


def test_a_healed_partition_keeps_the_controller_most_follow():
    follows = {"node1": "node1", "node2": "node1", "node3": "node1", "node4": "node4", "node5": "node4"}
    live = follows.keys()
    assert election.choose(view(live, follows, "node4")) == "node1"
    assert election.choose(view(live, follows, "node1")) == "node1"


def test_spec_marked_controllers_keep_the_role_among_themselves():
    marked = ("ctl-a", "ctl-b")
    assert election.choose(view(["w1", "ctl-b", "ctl-a"], marked=marked)) == "ctl-a"
    follows = {"w1": "ctl-b", "ctl-b": "ctl-b", "ctl-a": None}
    assert election.choose(view(["w1", "ctl-b", "ctl-a"], follows, marked=marked)) == "ctl-b", "no flap back"
    assert election.choose(view(["w1"], {"w1": "w1"}, marked=marked)) == "ctl-a", "never an unmarked node"


# -- enrollment -----------------------------------------------------------------

def test_fingerprints_are_short_stable_and_tell_keys_apart():
    assert enroll.fingerprint(wg_key(1)) == enroll.fingerprint(wg_key(1)) != enroll.fingerprint(wg_key(2))
    assert len(enroll.fingerprint(wg_key(1))) == 14 and enroll.fingerprint(wg_key(1)).count("-") == 2


def test_requests_are_checked_kept_bounded_and_found_by_fingerprint(spec):
    clock = Clock()
    pending = enroll.Pending(clock)
    for n in range(enroll.PENDING_MAX + 5):
        pending.heard(enroll.request({"cluster": "democluster", "name": f"node-{n:08x}", "lan_ip": "10.42.0.200",
                                      "wg_pubkey": wg_key(n), "wg_port": 51820}, spec))
    assert len(pending.current()) == enroll.PENDING_MAX
    last = enroll.fingerprint(wg_key(enroll.PENDING_MAX + 4))
    assert pending.find(last.lower().replace("-", " ")).name == f"node-{enroll.PENDING_MAX + 4:08x}"
    clock.now += enroll.PENDING_FOR + 1
    assert pending.current() == []
    with pytest.raises(validate.Invalid):
        enroll.request({"cluster": "democluster", "name": "x y", "lan_ip": "10.42.0.200", "wg_pubkey": wg_key(1),
                        "wg_port": 51820}, spec)


# -- credentials ------------------------------------------------------------------

@pytest.fixture
def owner(tmp_path):
    key = tmp_path / "owner"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def bundle(owner: Path, generation: int = 1, cluster: str = "democluster", secret: bytes = SECRET) -> bytes:
    body = {"cluster": cluster, "generation": generation, "secret": secret.hex(), "ssh_keys": {"admin": [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2 test"]}}
    message = owner.with_name("message")
    message.write_bytes(credential.signed_message(body))
    message.with_suffix(".sig").unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-Y", "sign", "-q", "-f", str(owner), "-n", credential.NAMESPACE, str(message)],
                   check=True)
    return json.dumps({"credential": body, "signature": message.with_suffix(".sig").read_text()}).encode()


def test_a_credential_the_owner_signed_is_taken(owner):
    got = credential.parse(bundle(owner), "democluster", owner.with_suffix(".pub"))
    assert (got.generation, got.secret, got.ssh_keys["admin"][0].split()[0]) == (1, SECRET, "ssh-ed25519")


def test_a_credential_anyone_else_signed_or_altered_is_refused(owner, tmp_path):
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with pytest.raises(credential.BadCredential, match="not signed by this cluster's owner"):
        credential.parse(bundle(stranger), "democluster", owner.with_suffix(".pub"))
    altered = json.loads(bundle(owner))
    altered["credential"]["secret"] = (b"t" * 32).hex()
    with pytest.raises(credential.BadCredential, match="not signed by this cluster's owner"):
        credential.parse(json.dumps(altered).encode(), "democluster", owner.with_suffix(".pub"))
    with pytest.raises(credential.BadCredential, match="cluster 'other'"):
        credential.parse(bundle(owner, cluster="other"), "democluster", owner.with_suffix(".pub"))


def test_the_highest_generation_wins_and_is_kept_0600(owner, tmp_path):
    (tmp_path / "a").write_bytes(bundle(owner, 1))
    (tmp_path / "b").write_bytes(bundle(owner, 2, secret=b"u" * 32))
    (tmp_path / "c").write_bytes(b"{broken")
    best, notes = credential.load("democluster", (tmp_path / "a", tmp_path / "b", tmp_path / "c", tmp_path / "none"),
                                  owner.with_suffix(".pub"))
    assert best.generation == 2 and len(notes) == 1 and "not a credential bundle" in notes[0]
    credential.keep(best, tmp_path / "kept" / "credential.json")
    assert oct((tmp_path / "kept" / "credential.json").stat().st_mode & 0o777) == "0o600"


# -- the agent, in-process, fed real packets ----------------------------------------

def make_agent(spec, owner, tmp_path, me) -> Agent:
    places = Places.under(tmp_path / "node")
    for folder in (places.run, places.lib, places.etc):
        folder.mkdir(parents=True)
    (places.etc / "owner.pub").write_bytes(owner.with_suffix(".pub").read_bytes())
    cred = credential.parse(bundle(owner), "democluster", places.owner_key)
    return Agent(spec, me, cred, places, apply_system=False)


@pytest.fixture
def agent(spec, owner, tmp_path):
    return make_agent(spec, owner, tmp_path, identity.Identity("node1", 1, spec["nodes"][0]["mac"], None,
                                                               "10.42.0.11/24", "auto"))


def test_a_wg_address_claimed_after_the_start_gets_the_credential_service_which_moves_with_it(
        spec, owner, tmp_path, monkeypatch):
    """A machine the spec does not list (installed from the owner's stick) has no wg0 address at its
    start: the service it claims one for must listen there, or a pushed rotation never reaches it."""
    unlisted = make_agent(spec, owner, tmp_path, identity.Identity("node-ab12cd34", None, "52:54:00:12:34:90",
                                                                   None, "10.42.0.90/24", "auto"))
    assert unlisted.wg_ip is None
    served, closed = [], []

    class Service:   # what the agent uses of transfer.Server, without binding a 10.99.0.x address here
        def __init__(self, address, port, *handlers):
            self.address = address
            served.append(address)

        def close(self):
            closed.append(self.address)
    monkeypatch.setattr(transfer, "Server", Service)
    monkeypatch.setattr(wireguard, "ensure_interface", lambda *args: None)
    unlisted.apply_system = True   # its wg0 and its service: the two stand-ins above
    unlisted._claim_wg_address(set())
    first = unlisted.wg_ip
    assert first and served == [first] and not closed
    unlisted._claim_wg_address({first})   # a conflict lost: another address, and the service goes there
    assert unlisted.wg_ip != first and served == [first, unlisted.wg_ip] and closed == [first]


def test_the_agent_admits_a_member_and_refuses_one_claiming_its_name(agent, spec):
    own = agent.announcement()
    agent.sent.append(own)   # as the announce thread sends it
    agent.receive(own, "10.42.0.11")   # looped back: not even opened
    assert agent.counts == {"dropped": 0, "rate_limited": 0, "refused": 0} and agent.registry.members == {}
    agent.receive(b"garbage", "10.42.0.11")   # anything else from its address is another machine's
    agent.receive(agent.announcement(), "10.42.0.11")   # a clone of it on its address, say
    assert agent.counts["dropped"] == 1 and agent.counts["refused"] == 1
    agent.receive(signed(payload()), "10.42.0.12")
    assert "node2" in agent.registry.members
    agent.receive(signed(payload("node1", 1, wg_pubkey=wg_key(9), lan_ip="10.42.0.13", wg_ip="10.99.0.1")), "10.42.0.13")
    assert agent.registry.bindings["node2"].wg_pubkey == wg_key(2) and agent.counts["refused"] == 2


def test_its_own_broadcast_read_late_is_still_known(agent):
    """The loop held up by a slow role start (20 ticks) while the announce thread sends on."""
    first = agent.announcement()
    agent.sent.append(first)
    for _ in range(20):
        agent.sent.append(agent.announcement())
    agent.receive(first, "10.42.0.11")
    assert agent.counts == {"dropped": 0, "rate_limited": 0, "refused": 0}


def test_the_agent_announces_what_it_checks(agent, spec):
    opened = messages.open_announcement(agent.announcement(), {1: agent.credential.announce_key})
    a = validate.announcement(opened, spec)
    assert (a.name, a.wg_ip, a.lan_ip) == ("node1", "10.99.0.1", "10.42.0.11")
    assert validate.announcement(messages.open_announcement(agent.announcement(), agent.keys()), spec).seq > a.seq


def fuzzed(rng, spec) -> bytes:
    """A signed announcement with one field replaced by something odd, or random bytes after a valid header."""
    fields = payload(rng.choice(["node2", "node3"]), rng.choice([2, 3]), seq=rng.randrange(1, 10**6))
    odd = [None, "", "x" * 5000, -1, 2**70, 1.5, float("inf"), [], {}, True, "10.99.0.0", "0.0.0.0/0",
           "node1\nPrologSlurmctld=/bin/sh", "../../etc", wg_key(1), "10.42.0.11", {"a": [1, {"b": 2}]}]
    kind = rng.random()
    if kind < 0.7:
        fields[rng.choice(list(fields))] = rng.choice(odd)
    elif kind < 0.8:
        del fields[rng.choice(list(fields))]
    elif kind < 0.9:
        return messages.ANNOUNCE + (1).to_bytes(8, "big") + os.urandom(rng.randrange(0, 200))
    else:
        packet = bytearray(signed(fields))
        packet[rng.randrange(len(packet))] ^= 1 << rng.randrange(8)
        return bytes(packet)
    try:
        return signed(fields)
    except (ValueError, TypeError):
        return signed(payload())


def test_thousands_of_malformed_signed_messages_change_nothing(agent, spec):
    import random
    rng = random.Random(1234)
    agent.receive(signed(payload("node2", 2, seq=1)), "10.42.0.12")
    agent.receive(signed(payload("node3", 3, seq=1)), "10.42.0.13")
    before = json.dumps(agent.registry.state(), sort_keys=True)
    conf_before = agent_conf(agent)
    accepted = 0
    for _ in range(5000):
        packet = fuzzed(rng, spec)
        sender = rng.choice(["10.42.0.12", "10.42.0.13", "10.42.0.99"])
        seen = dict(agent.registry.bindings)
        agent.limiter = Limiter(1e9, 1e9)      # the fuzz is not a flood: every packet is handled
        agent.receive(packet, sender)
        if agent.registry.bindings != seen:
            # Only a fully valid announcement from its own address may move the table on (a newer seq).
            accepted += 1
    after = json.loads(json.dumps(agent.registry.state()))
    assert {n: (b["wg_pubkey"], b["wg_ip"], b["lan_ip"]) for n, b in after.items()} == \
           {n: (b["wg_pubkey"], b["wg_ip"], b["lan_ip"]) for n, b in json.loads(before).items()}
    assert agent_conf(agent) == conf_before
    assert agent.counts["dropped"] + agent.counts["refused"] >= 5000 - accepted


def agent_conf(agent) -> str:
    nodes = {n: {"wg_ip": b.wg_ip, "cpus": b.cpus, "memory_mb": b.memory_mb} for n, b in agent.registry.bindings.items()}
    return slurm.render_conf("democluster", "node1", "10.99.0.1", nodes, [{"name": "main", "default": True}])


def test_a_node_back_from_a_slow_start_hears_its_peers_before_it_chooses_a_controller(agent, monkeypatch):
    """node1, the controller before its reboot, comes back after the others moved on to node2. Its
    start took longer than the settling time: it must still listen that long before choosing, and
    then follow node2, never lead beside it."""
    from clusteros_node import agent as agent_mod
    monkeypatch.setattr(agent_mod, "SETTLE", 0.3)
    time.sleep(0.4)   # the agent's slow start: imports, keys, the interface, the firewall
    monkeypatch.setattr(agent_mod, "open_socket", lambda interface: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    agent.listen(None).close()
    agent.reconcile()
    assert agent.controller is None, "chose before it heard anyone"
    for name, index in (("node2", 2), ("node3", 3)):
        agent.receive(signed(payload(name, index, controller="node2")), f"10.42.0.{10 + index}")
    time.sleep(0.35)
    agent.reconcile()
    assert agent.controller == "node2"


def ticks(agent, count: int, monkeypatch) -> str:
    """`count` ticks of the agent: "R" for a tick that reconciled, "." for one that passed by."""
    from clusteros_node import agent as agent_mod
    seen, reconcile = [], agent.reconcile
    monkeypatch.setattr(agent, "reconcile", lambda: seen.append("R") or reconcile())
    for _ in range(count):
        before = len(seen)
        agent._tick()
        if len(seen) == before:
            seen.append(".")
    monkeypatch.setattr(agent, "reconcile", reconcile)
    assert agent_mod.CHECK_STEADY_EVERY == 5
    return "".join(seen)


@pytest.fixture
def formed(agent, monkeypatch):
    """node1 leading node2 and node3, every unit steady."""
    from clusteros_node import agent as agent_mod
    monkeypatch.setattr(agent_mod, "SETTLE", 0.0)
    monkeypatch.setattr(system, "units_steady", lambda: True)
    for name, index in (("node2", 2), ("node3", 3)):
        agent.receive(signed(payload(name, index, controller="node1")), f"10.42.0.{10 + index}")
    return agent


def test_a_node_in_shape_is_checked_every_fifth_tick_and_at_once_when_what_it_acts_on_changes(formed, monkeypatch):
    # The first tick elects node1, the second records that this node follows it, the third finds
    # everything in shape: four ticks pass by, then a fifth checks.
    assert ticks(formed, 12, monkeypatch) == "RRR....R...." and formed.controller == "node1"
    formed.receive(signed(payload("node3", 3, seq=2, controller="node1", cpus=4)), "10.42.0.13")
    assert ticks(formed, 3, monkeypatch) == "R..", "a member's new announcement is acted on at the next tick"
    formed.receive(signed(payload("node3", 3, seq=3, controller="node1", cpus=4)), "10.42.0.13")
    assert ticks(formed, 1, monkeypatch) == ".", "the same announcement with a new number changes nothing"
    formed.receive(signed(payload("node2", 2, seq=2, controller="node2")), "10.42.0.12")
    assert ticks(formed, 2, monkeypatch) == "RR", "a member following another controller: every tick"


def test_a_reconciliation_that_changed_the_node_or_failed_is_followed_by_another(formed, monkeypatch, tmp_path):
    assert ticks(formed, 4, monkeypatch) == "RRR."
    real = formed.reconcile
    monkeypatch.setattr(formed, "reconcile", lambda: (real(), system.write_if_changed(tmp_path / "f", b"x")))
    formed.passed_by = 4   # the next tick checks
    assert ticks(formed, 3, monkeypatch) == "RR.", "a file written: checked again at the next tick"

    def k3s_fails():
        raise system.CommandError("systemd-run exited 1")
    monkeypatch.setattr(formed, "reconcile", lambda: (real(), formed._step("k3s", k3s_fails)))
    formed.passed_by = 4
    assert ticks(formed, 3, monkeypatch) == "RRR", "a failed step is retried every tick"
    monkeypatch.setattr(formed, "reconcile", real)
    formed.errors["announce"] = "OSError: [Errno 101] Network is unreachable"   # the announce thread's
    assert ticks(formed, 3, monkeypatch) == "R..", "what no step of the reconciliation said"
    monkeypatch.setattr(system, "units_steady", lambda: False)
    assert ticks(formed, 2, monkeypatch) == "RR", "a unit on its way: every tick"
    monkeypatch.setattr(system, "units_steady", lambda: True)
    assert ticks(formed, 3, monkeypatch) == "R.."


def test_a_tick_that_read_every_unit_again_and_found_them_steady_is_followed_by_ticks_that_pass_by(formed, monkeypatch):
    assert ticks(formed, 4, monkeypatch) == "RRR."
    steady = {"now": False}   # the tick's new_tick: STEADY_TICKS have passed, the states are read again
    monkeypatch.setattr(system, "units_steady", lambda: steady["now"])
    real = formed.reconcile
    monkeypatch.setattr(formed, "reconcile", lambda: (real(), steady.update(now=True)))   # ...all steady
    assert ticks(formed, 3, monkeypatch) == "R.."


def test_a_step_of_the_start_that_failed_is_tried_every_tick_until_it_is_done(formed, monkeypatch):
    tries = []

    def firewall():
        tries.append(1)
        if len(tries) < 3:
            raise system.CommandError("nft -f - exited 1: Could not process rule")
    formed._until_done("firewall", firewall)
    assert "firewall" in formed.errors
    assert ticks(formed, 6, monkeypatch) == "RRR..." and len(tries) == 3, "tried at each tick until it was done"
    assert "firewall" not in formed.errors and not formed.unfinished


def test_saving_the_member_table_is_no_change_of_the_node(formed, monkeypatch):
    assert ticks(formed, 4, monkeypatch) == "RRR."
    saved = formed.places.lib / "members.json"
    before = saved.read_text()
    formed.receive(signed(payload("node2", 2, seq=5, controller="node1")), "10.42.0.12")   # a new number only
    formed.last_saved = 0.0
    assert ticks(formed, 1, monkeypatch) == "." and saved.read_text() != before, "saved on a tick that passed by"


def test_a_rotation_heard_before_it_arrives_leaves_nothing_behind(formed, monkeypatch, owner, pushes):
    """node2 announces generation 2 before this node is handed it: once it is, the node is as steady
    as before, and never takes itself for superseded."""
    assert ticks(formed, 4, monkeypatch) == "RRR."
    key2 = messages.announce_key(b"u" * 32)
    formed.receive(signed(payload("node2", 2, seq=2, generation=2, controller="node1"), 2, key2), "10.42.0.12")
    assert formed.newer_generation == 2
    formed.pushed(bundle(owner, 2, secret=b"u" * 32), "10.99.0.2")
    assert formed.newer_generation == 0
    for name, index in (("node2", 2), ("node3", 3)):
        formed.receive(signed(payload(name, index, seq=3, generation=2, controller="node1"), 2, key2),
                       f"10.42.0.{10 + index}")
    assert ticks(formed, 3, monkeypatch) == "RRR", "the previous generation's grace: every tick"
    formed.retiring = {1: (key, 0.0) for key, _ in formed.retiring.values()}   # the grace is over (no packet since)
    assert ticks(formed, 4, monkeypatch) == "R...", "its old key kept, but no longer counting"
    formed.last_accepted -= 120   # then two minutes of silence: still this cluster's member
    formed._housekeeping()


def test_one_newer_header_long_ago_is_no_cluster_that_moved_on(formed, monkeypatch):
    forged = signed(payload("node3", 3, seq=9, generation=99), 99, b"f" * 32)   # no key of this node opens it
    formed.receive(forged, "10.42.0.13")
    assert formed.newer_generation == 99 and formed.counts["dropped"] == 1
    formed.last_accepted -= 120
    formed.newer_heard -= 30
    formed._housekeeping()   # the silence alone: no SystemExit
    formed.newer_heard += 30
    with pytest.raises(SystemExit):
        formed._housekeeping()   # hearing only the newer generation, lately, for a minute: superseded
    formed.newer_heard -= 61
    formed._housekeeping()
    assert formed.newer_generation == 0, "not heard for a minute: forgotten"
    assert ticks(formed, 4, monkeypatch).endswith(".")


def test_only_a_bound_member_can_say_the_cluster_moved_on(formed):
    for sender in ("10.42.0.77", "10.42.0.11"):   # a stranger on the LAN; this node's own address
        formed.receive(signed(payload("node7", 7, generation=99), 99, b"f" * 32), sender)
    assert formed.newer_generation == 0 and formed.counts["dropped"] == 2


def test_a_flood_from_one_sender_is_cut_and_others_still_get_through(agent):
    for seq in range(1, 2000):
        agent.receive(signed(payload("node3", 3, seq=seq)), "10.42.0.13")
    assert agent.counts["rate_limited"] > 1900
    agent.receive(signed(payload()), "10.42.0.12")
    assert "node2" in agent.registry.members


def test_approval_binds_the_candidate_and_its_credential_is_served_once(agent, spec):
    req = {"cluster": "democluster", "name": "node-00c0ffee", "lan_ip": "10.42.0.200", "wg_pubkey": wg_key(77),
           "wg_port": 51820}
    agent.receive(messages.encode_unsigned(messages.ENROLL, req), "10.42.0.200")
    with pytest.raises(ValueError, match="no machine asking to join"):
        agent.approve("AAAA-BBBB-CCCC")
    answer = agent.approve(enroll.fingerprint(wg_key(77)))
    assert "approved node-00c0ffee" in answer
    wg_ip = agent.registry.bindings["node-00c0ffee"].wg_ip
    assert int(wg_ip.rsplit(".", 1)[1]) > 64, "above the indexed nodes' addresses"
    assert agent.credential_for("10.99.0.3") is None
    assert agent.credential_for(wg_ip) == agent.credential.raw
    assert agent.credential_for(wg_ip) is None, "served once"
    agent._offer_approvals()
    assert agent.outbox == [], "a served approval is no longer offered"


def test_a_machine_another_member_approved_no_longer_shows_as_asking(agent):
    req = {"cluster": "democluster", "name": "node3", "lan_ip": "10.42.0.13", "wg_pubkey": wg_key(3), "wg_port": 51820}
    agent.receive(messages.encode_unsigned(messages.ENROLL, req), "10.42.0.13")
    assert [p["name"] for p in agent.status()["pending"]] == ["node3"]
    agent.receive(signed(payload("node3", 3)), "10.42.0.13")    # its first announcement, once approved elsewhere
    assert "node3" in agent.registry.members and agent.status()["pending"] == []


@pytest.fixture
def pushes(monkeypatch):
    """transfer.push, recorded by member name; a name in `pushes.unreachable` fails as a down link does."""
    record = SimpleNamespace(to=[], unreachable=set())

    def push(wg_ip: str, port: int, raw: bytes, device: str | None = None) -> None:
        name = f"node{wg_ip.rsplit('.', 1)[1]}"
        if name in record.unreachable:
            raise ConnectionRefusedError(f"{name} is out of reach")
        record.to.append(name)
    monkeypatch.setattr(transfer, "push", push)
    return record


def hand_on_round(agent) -> None:
    agent._hand_on_behind()
    assert node_retry(lambda: not agent.handing_on), "the round ends"


def test_a_rotation_reaches_a_member_out_of_reach_once_it_is_heard_but_no_machine_unknown_then(agent, owner, pushes):
    for n in (2, 3):
        agent.receive(signed(payload(f"node{n}", n)), f"10.42.0.{10 + n}")
    pushes.unreachable.add("node3")
    said = agent.rotate(bundle(owner, 2, secret=b"u" * 32))
    assert pushes.to == ["node2"] and "handed to node2" in said and "not yet to node3" in said, said
    pushes.unreachable.clear()
    agent.receive(signed(payload("node5", 5)), "10.42.0.15")   # the previous generation, in its grace: a member
    agent.receive(signed(payload("node3", 3, seq=2)), "10.42.0.13")
    hand_on_round(agent)
    assert pushes.to == ["node2", "node3"], "node5 was not a member the rotation knew: it is never handed it"
    hand_on_round(agent)
    assert pushes.to == ["node2", "node3"] and agent.behind == {}


def test_a_member_not_heard_at_the_rotation_is_handed_it_once_heard_within_the_grace(agent, owner, pushes):
    """Right after a boot, say: node3 is bound but not heard lately."""
    agent.receive(signed(payload("node2", 2)), "10.42.0.12")
    agent.receive(signed(payload("node3", 3)), "10.42.0.13")
    agent.registry.members["node3"].heard = time.monotonic() - 3600
    said = agent.rotate(bundle(owner, 2, secret=b"u" * 32))
    assert pushes.to == ["node2"] and "not yet to node3" in said, said
    hand_on_round(agent)
    assert pushes.to == ["node2"], "not live: not tried"
    agent.receive(signed(payload("node3", 3, seq=2)), "10.42.0.13")
    hand_on_round(agent)
    assert pushes.to == ["node2", "node3"] and agent.behind == {}


def test_a_member_forgotten_in_the_grace_or_back_with_another_key_is_never_handed_it(agent, owner, pushes):
    for n in (2, 3):
        agent.receive(signed(payload(f"node{n}", n)), f"10.42.0.{10 + n}")
    pushes.unreachable |= {"node2", "node3"}
    agent.rotate(bundle(owner, 2, secret=b"u" * 32))
    pushes.unreachable.clear()
    agent.forget("node2")
    agent.forget("node3")
    agent.receive(signed(payload("node2", 2, seq=2)), "10.42.0.12")   # back, old generation, its own key
    agent.receive(signed(payload("node3", 3, seq=2, wg_pubkey=wg_key(33))), "10.42.0.13")   # a new key
    hand_on_round(agent)
    assert pushes.to == [], "forgotten after the rotation: a member again, but not one the rotation knew"


def test_a_member_still_behind_when_the_grace_ends_is_not_handed_it(agent, owner, pushes):
    agent.receive(signed(payload("node2", 2)), "10.42.0.12")
    pushes.unreachable.add("node2")
    agent.rotate(bundle(owner, 2, secret=b"u" * 32))
    pushes.unreachable.clear()
    agent.retiring = {g: (key, time.monotonic() - 1) for g, (key, _) in agent.retiring.items()}
    hand_on_round(agent)
    assert pushes.to == [] and agent.behind == {}, "after the grace it asks to join again, as a machine that was off"


def test_a_member_a_push_reached_hands_nothing_on(agent, owner, pushes):
    agent.receive(signed(payload("node2", 2)), "10.42.0.12")
    agent.pushed(bundle(owner, 2, secret=b"u" * 32), "10.99.0.2")
    hand_on_round(agent)
    assert agent.credential.generation == 2 and pushes.to == []


def test_a_push_the_member_refuses_is_no_hand_on_and_a_bad_one_leaves_the_service_up(tmp_path):
    taken, said = [], []

    def on_push(raw: bytes, peer: str) -> None:
        if raw != b"good":
            raise credential.BadCredential("not signed by this cluster's owner")
        taken.append(raw)
    server = transfer.Server("127.0.0.1", 0, lambda peer: None, on_push, said.append)
    port = server.listener.getsockname()[1]
    try:
        with pytest.raises(ConnectionError, match="did not take"):
            transfer.push("127.0.0.1", port, b"forged")
        transfer.push("127.0.0.1", port, b"good", device="lo")
        assert taken == [b"good"] and "not signed" in said[0]
        with pytest.raises(OSError):   # bound to its device: never out by another route
            transfer.push("127.0.0.1", port, b"good", device="cos-nodev0")
    finally:
        server.close()


def test_a_closed_credential_service_takes_no_more_connections_and_its_thread_ends():
    """Closed when the node's wg0 address moves: the old address must not answer once more."""
    handed = []
    server = transfer.Server("127.0.0.1", 0, lambda peer: handed.append(peer) or b"bundle", lambda *_: None, print)
    port = server.listener.getsockname()[1]
    assert transfer.fetch("127.0.0.1", port) == b"bundle"
    server.close()
    server.thread.join(5)
    assert not server.thread.is_alive(), "accept() woken by the shutdown"
    with pytest.raises(OSError):
        transfer.fetch("127.0.0.1", port)
    assert handed == ["127.0.0.1"]


def test_wg0_keeps_only_the_address_the_node_holds(monkeypatch):
    """After a conflict lost, the address given up goes from wg0 (`ip address replace` adds the new one beside it)."""
    ran = []
    monkeypatch.setattr(system, "run", lambda *argv, **_: ran.append(" ".join(argv)) or "")
    monkeypatch.setattr(system, "query", lambda *argv, **_: json.dumps([{"ifname": "wg0", "addr_info": [
        {"local": "10.99.0.70", "prefixlen": 24}, {"local": "10.99.0.71", "prefixlen": 24}]}]))
    wireguard.ensure_interface("10.99.0.71", 24, 51820, Path("/nonexistent"))
    assert "ip address replace 10.99.0.71/24 dev wg0" in ran and "ip address del 10.99.0.70/24 dev wg0" in ran
    assert not [c for c in ran if c.startswith("ip address del 10.99.0.71")]


# -- what the agent writes ------------------------------------------------------------

def test_slurm_conf_lists_every_known_node_with_its_resources():
    nodes = {"node2": {"wg_ip": "10.99.0.2", "cpus": 2, "memory_mb": 1900},
             "node1": {"wg_ip": "10.99.0.1", "cpus": 1, "memory_mb": 980}}
    conf = slurm.render_conf("lab", "node1", "10.99.0.1", nodes,
                             [{"name": "main", "default": True, "max_time": "INFINITE"},
                              {"name": "big", "nodes": ["node2"], "max_time": "1-00:00:00"}])
    assert "SlurmctldHost=node1(10.99.0.1)" in conf and "SlurmctldParameters=enable_configless" in conf
    assert conf.index("NodeName=node1 NodeAddr=10.99.0.1 CPUs=1 RealMemory=980") < conf.index("NodeName=node2")
    assert "PartitionName=main Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP" in conf
    assert "PartitionName=big Nodes=node2 Default=NO MaxTime=1-00:00:00 State=UP" in conf


def test_slurm_conf_confines_jobs_by_cgroup_and_wires_mpi_by_pmix():
    conf = agent_conf_for(accounting_host=None)
    for line in ("ProctrackType=proctrack/cgroup", "TaskPlugin=task/cgroup,task/affinity",
                 "JobAcctGatherType=jobacct_gather/cgroup", "MpiDefault=pmix", "SelectTypeParameters=CR_Core_Memory",
                 "AccountingStorageType=accounting_storage/none"):
        assert line in conf.splitlines(), line
    with_dbd = agent_conf_for(accounting_host="10.99.0.1").splitlines()
    assert "AccountingStorageType=accounting_storage/slurmdbd" in with_dbd
    assert "AccountingStorageHost=10.99.0.1" in with_dbd


def agent_conf_for(accounting_host):
    return slurm.render_conf("lab", "node1", "10.99.0.1", {"node1": {"wg_ip": "10.99.0.1", "cpus": 2, "memory_mb": 900}},
                             [{"name": "main", "default": True}], accounting_host=accounting_host)


def test_cgroup_conf_holds_a_step_to_its_cores_memory_and_devices():
    conf = dict(line.split("=", 1) for line in slurm.render_cgroup_conf().splitlines() if "=" in line)
    assert conf == {"CgroupPlugin": "cgroup/v2", "ConstrainCores": "yes", "ConstrainRAMSpace": "yes",
                    "AllowedRAMSpace": "100", "ConstrainSwapSpace": "yes", "AllowedSwapSpace": "0",
                    "ConstrainDevices": "yes"}


@pytest.fixture
def slurm_host(monkeypatch, tmp_path):
    """SLURM's files in tmp_path, and its commands recorded (calls) against unit states the test sets."""
    calls, states = [], {"slurmctld.service": "active", "slurmd.service": "active"}
    monkeypatch.setattr(slurm, "SLURM_CONF", tmp_path / "slurm.conf")
    monkeypatch.setattr(slurm, "CGROUP_CONF", tmp_path / "cgroup.conf")
    monkeypatch.setattr(slurm, "SLURMD_DEFAULTS", tmp_path / "slurmd")
    monkeypatch.setattr(slurm.system, "run", lambda *argv, **kw: calls.append(argv) or "")
    monkeypatch.setattr(slurm.system, "unit_state", lambda unit: states[unit])
    return calls, states


def test_new_nodes_restart_slurmctld_and_then_every_slurmd_is_told(slurm_host):
    calls, states = slurm_host
    daemons = slurm.Slurm()
    daemons.role = "controller"
    two = {"node1": {"wg_ip": "10.99.0.1", "cpus": 1, "memory_mb": 900}}
    three = two | {"node2": {"wg_ip": "10.99.0.2", "cpus": 1, "memory_mb": 900}}
    conf = lambda nodes: slurm.render_conf("lab", "node1", "10.99.0.1", nodes, [{"name": "main"}])  # noqa: E731
    daemons.as_controller(conf(two))
    assert calls == [("systemctl", "restart", "slurmctld.service")], "the first conf, new to slurmctld"
    calls.clear()
    daemons.as_controller(conf(two))
    assert calls == [("scontrol", "reconfigure")], "then every slurmd takes it"
    calls.clear()
    daemons.as_controller(conf(two))
    assert calls == [], "nothing changed: nothing done"
    daemons.as_controller(conf(three))
    daemons.as_controller(conf(three))
    assert calls == [("systemctl", "restart", "slurmctld.service"), ("scontrol", "reconfigure")]
    calls.clear()
    partitions = slurm.render_conf("lab", "node1", "10.99.0.1", three, [{"name": "main"}, {"name": "b"}])
    daemons.as_controller(partitions)
    assert calls == [("scontrol", "reconfigure")], "a new partition needs no restart"


def test_a_controller_back_from_a_reboot_tells_the_slurmds_nothing_they_already_have(slurm_host, tmp_path):
    calls, states = slurm_host
    pushed = tmp_path / "slurm-pushed.conf"
    nodes = {"node1": {"wg_ip": "10.99.0.1", "cpus": 1, "memory_mb": 900}}
    conf = slurm.render_conf("lab", "node1", "10.99.0.1", nodes, [{"name": "main"}])
    before = slurm.Slurm(pushed_file=pushed)
    before.role = "controller"
    before.as_controller(conf)
    before.as_controller(conf)
    assert calls[-1] == ("scontrol", "reconfigure") and pushed.read_text() == conf
    calls.clear()
    states["slurmctld.service"] = "inactive"          # the reboot: slurm.conf stays on disk
    after = slurm.Slurm(pushed_file=pushed)
    after.as_controller(conf)
    assert calls == [("systemctl", "start", "slurmctld.service"), ("systemctl", "restart", "slurmd.service")]
    calls.clear()
    states["slurmctld.service"] = "active"
    after.as_controller(conf)
    assert calls == [], "the slurmds have this slurm.conf: no reconfigure while slurmctld starts launching jobs"
    two_partitions = slurm.render_conf("lab", "node1", "10.99.0.1", nodes, [{"name": "main"}, {"name": "b"}])
    after.as_controller(two_partitions)
    assert calls == [("scontrol", "reconfigure")], "a change is still pushed"
    assert pushed.read_text() == two_partitions


def test_slurmdbd_is_named_only_once_it_answered_and_then_for_good():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        dbd = accounting.Accounting(accounting.ConnectProbe(port))
        asked = [dbd.reachable("127.0.0.1") for _ in range(3)]   # nothing listens: refused
        assert asked == [False] * 3, "not up yet: slurm.conf says accounting_storage/none"
        server.listen()
        assert node_retry(lambda: dbd.reachable("127.0.0.1")), "answered on a later tick"
    assert dbd.reachable("127.0.0.1"), "and remembered once the listener is gone"


def test_slurmdbd_once_reached_is_named_from_the_start_after_a_reboot(tmp_path):
    """A controller that reached slurmdbd names it at its next start (a new agent, nothing listening
    yet): its slurmctld has saved state, so it need not start without accounting and be restarted
    once slurmdbd answers, losing the batch job it was launching then."""
    reached = tmp_path / "slurmdbd-reached"
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        dbd = accounting.Accounting(accounting.ConnectProbe(port), reached_file=reached)
        assert node_retry(lambda: dbd.reachable("127.0.0.1"))
    assert reached.read_text() == "127.0.0.1\n"
    after_reboot = accounting.Accounting(accounting.ConnectProbe(port), reached_file=reached)
    assert after_reboot.reachable("127.0.0.1"), "named at once, nothing listening"
    assert not after_reboot.reachable("127.0.0.2"), "another storage node is asked afresh"


def test_a_probe_of_a_silent_host_never_holds_the_tick_and_starts_again_after_its_patience():
    # A silent host on loopback: a listener whose one-place queue is full drops further SYNs.
    with socket.socket() as server, socket.socket() as first_in:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        first_in.connect(("127.0.0.1", port))
        now = [0.0]
        probe = accounting.ConnectProbe(port, patience=5.0, first_wait=0.05, clock=lambda: now[0])
        started = time.monotonic()
        assert not probe.answered_by("127.0.0.1")
        pending = probe.sock
        assert not probe.answered_by("127.0.0.1") and probe.sock is pending, "still waiting: the same connect"
        now[0] = 6.0
        assert not probe.answered_by("127.0.0.1") and probe.sock is None, "gave up on it"
        assert not probe.answered_by("127.0.0.1") and probe.sock is not None, "and tries again"
        probe._close()
        assert time.monotonic() - started < 0.5, "no call waited longer than its first wait"


def test_a_listening_host_is_answered_in_the_same_call():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert accounting.ConnectProbe(server.getsockname()[1]).answered_by("127.0.0.1")


def node_retry(check, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_shared_home_is_exported_to_the_mesh_only_and_mounted_hard_on_first_use():
    assert home.exports("10.99.0.0/24").splitlines()[-1] == "/home 10.99.0.0/24(rw,sync,no_subtree_check,root_squash)"
    argv = home.mount_argv("10.99.0.1")
    assert argv[0] == "systemd-mount" and argv[-2:] == ["10.99.0.1:/home", "/home"]
    assert {"--automount=yes", "--type=nfs4", f"--options={home.MOUNT_OPTIONS}", "--property=TimeoutSec=90",
            "--property=ForceUnmount=yes", "--property=LazyUnmount=yes"} <= set(argv)
    assert "hard" in home.MOUNT_OPTIONS.split(",") and "soft" not in home.MOUNT_OPTIONS


@pytest.mark.parametrize("states, loaded, commands", [
    ({"home.automount": "active", "home.mount": "inactive"}, True, []),
    ({"home.automount": "inactive", "home.mount": "active"}, True, []),
    ({"home.automount": "inactive", "home.mount": "inactive"}, True, ["systemctl start"]),
    ({"home.automount": "inactive", "home.mount": "inactive"}, False, ["systemctl start", "systemd-mount"]),
    ({"home.automount": "failed", "home.mount": "inactive"}, False,
     ["systemctl reset-failed", "systemctl start", "systemd-mount"]),
])
def test_a_client_makes_the_home_automount_only_when_it_is_not_there(monkeypatch, states, loaded, commands):
    """No unit file and no daemon-reload: a loaded automount is started, and only when none is
    loaded is one made through systemd's API (systemd-mount refuses a unit name that is loaded)."""
    ran = []

    def run(*argv, **_):
        ran.append(argv)
        if argv[:2] == ("systemctl", "start") and not loaded:
            raise system.CommandError("Unit home.automount not found.")
        return ""
    monkeypatch.setattr(system, "unit_states", lambda *units: {u: states[u] for u in units})
    monkeypatch.setattr(system, "run", run)
    home.Home().as_client("10.99.0.1")
    assert [" ".join(argv[:2]) if argv[0] == "systemctl" else argv[0] for argv in ran] == commands
    assert all("daemon-reload" not in argv for argv in ran)


def test_slurmdbd_conf_keeps_its_database_password_and_grants_are_idempotent():
    conf = accounting.render_dbd_conf("0123456789abcdef" * 2)
    assert accounting.password_in(conf) == "0123456789abcdef" * 2
    assert "StorageType=accounting_storage/mysql" in conf and "AuthType=auth/munge" in conf
    assert accounting.password_in("StoragePass=short\n") is None, "only a password the agent made"
    sql = accounting.grant_sql("ab" * 16)
    assert "CREATE DATABASE IF NOT EXISTS slurm_acct_db" in sql and "CREATE USER IF NOT EXISTS" in sql


def test_the_firewall_lets_only_ssh_in_on_the_uplink():
    rules = firewall.ruleset("enp0s2", 7946)
    assert "policy drop" in rules and "tcp dport 22 accept" in rules
    assert 'iifname { "enp0s2", "wg0" } accept' in rules
    assert 'iifname "enp0s2" udp dport 7946 limit rate over' in rules
    assert rules.count("delete table inet clusteros") == 1, "the table is replaced whole"


@pytest.mark.needs("nft")
@pytest.mark.parametrize("lan", ["enp0s2", None])
def test_nft_accepts_the_firewall_ruleset(lan):
    # `nft -c` parses and checks against the kernel without committing anything.
    # The image has no /etc/protocols, so names it would need there must not appear.
    check = "mount --bind /dev/null /etc/protocols && exec nft -c -f -"
    done = subprocess.run(["unshare", "--mount", "sh", "-c", check], input=firewall.ruleset(lan, 7946),
                          text=True, capture_output=True)
    assert done.returncode == 0, done.stderr


def test_members_follow_the_controllers_clock():
    assert "server 10.99.0.1 iburst" in timesync.sources("worker", "10.99.0.1")
    assert "server" not in timesync.sources("controller", "10.99.0.1").split("\n", 1)[1]
    # Only the controller is a local reference: chrony ignores a source at its own local stratum.
    assert "local stratum" in timesync.role_conf("controller")
    assert "local" not in timesync.role_conf("worker").split("\n", 1)[1]


def test_the_image_steps_a_wrong_clock_whenever_it_happens():
    """chrony takes the last makestep it reads: conf.d comes first, so the main file must have none."""
    overlay = ROOT / "images" / "common" / "overlay" / "etc" / "chrony"
    directives = lambda path: [line.split() for line in path.read_text().splitlines()   # noqa: E731
                               if line.strip() and not line.startswith("#")]
    main = directives(overlay / "chrony.conf")
    assert ["confdir", "/etc/chrony/conf.d"] in main and not [d for d in main if d[0] == "makestep"]
    assert ["makestep", "1", "-1"] in directives(overlay / "conf.d" / "clusteros.conf")


def test_the_k3s_token_never_reaches_a_command_line():
    from clusteros_node import k3s
    argv = k3s.command("worker", "10.99.0.2", "10.99.0.1")
    assert "--token-file" in argv and "--token" not in argv and k3s.token(SECRET) not in " ".join(argv)


def test_status_renders_members_pending_peers_and_services():
    now = float(int(__import__("time").time()))
    state = {"mode": "member", "name": "node1", "role": "controller", "controller": "node1",
             "lan_address": "10.42.0.11/24", "wg_address": "10.99.0.1", "credential": {"generation": 2, "id": "abc"},
             "members": [{"name": "node1", "lan_ip": "10.42.0.11", "wg_ip": "10.99.0.1", "live": True, "last_seen": 0.5},
                         {"name": "node2", "lan_ip": "10.42.0.12", "wg_ip": "10.99.0.2", "live": False, "last_seen": 40}],
             "pending": [{"name": "node-00c0ffee", "lan_ip": "10.42.0.200", "fingerprint": "ABCD-EFGH-JKLM", "asked": 3}],
             "wireguard": [{"peer": "node2", "endpoint": "10.42.0.12:51820", "latest_handshake": int(now) - 30}],
             "slurm": {"role": "controller", "slurmctld": "active", "slurmd": "active"}, "k3s": "not provided",
             "errors": {}, "dropped_packets": 2, "updated": now}
    text = status.render(state, now)
    assert "node node1: controller" in text and "DOWN" in text and "credential generation 2" in text
    assert "ABCD-EFGH-JKLM  node-00c0ffee" in text and "handshake 30s ago" in text and "2 dropped" in text


def test_a_candidates_status_says_how_to_let_it_in():
    text = status.render({"mode": "candidate", "name": "node-00c0ffee", "why": "it holds no credential",
                          "lan_address": "10.42.0.200/24", "fingerprint": "ABCD-EFGH-JKLM"})
    assert "not a member" in text and "clusteros-node approve ABCD-EFGH-JKLM" in text


def test_status_without_an_agent_says_so(tmp_path):
    assert "is node-agent.service running?" in status.render(status.load(tmp_path / "missing.json"))


def test_a_live_member_cannot_be_moved_to_another_address_by_a_copy_of_its_announcement(spec):
    mono = Clock()
    table = registry.Registry(clock=mono)
    table.accept(validate.announcement(payload(seq=1), spec), "10.42.0.12")
    moved = payload(seq=99, lan_ip="10.42.0.13")   # node2's name and key, from node3's address
    with pytest.raises(registry.Refused, match="node2 speaks from 10.42.0.12: not also from 10.42.0.13"):
        table.accept(validate.announcement(moved, spec), "10.42.0.13")
    mono.now += registry.LIVE_SECONDS + 1         # gone quiet: it may have come back elsewhere (DHCP)
    table.accept(validate.announcement(moved, spec), "10.42.0.13")


def test_the_fingerprint_goes_to_every_console_the_kernel_has(tmp_path):
    active = tmp_path / "active"
    active.write_text("ttyS0 tty0\n")
    assert candidate.consoles(active) == [Path("/dev/ttyS0"), Path("/dev/tty0")], "the screen and the serial line"
    active.write_text("../sda\n")
    assert candidate.consoles(active) == [Path("/dev/console")], "only console names"
    assert candidate.consoles(tmp_path / "none") == [Path("/dev/console")]


@pytest.fixture
def fake_systemd(tmp_path, monkeypatch):
    """A `systemctl` that logs its calls and says each unit's state from states/<unit> (active if
    none), and a cgroup folder per unit; the agent's unit-state memory starts empty."""
    calls, states, cgroups = tmp_path / "calls", tmp_path / "states", tmp_path / "system.slice"
    states.mkdir()
    (tmp_path / "systemctl").write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\n'
        f'if [ "$1" = is-active ]; then shift; for u in "$@"; do cat {states}/$u 2>/dev/null || echo active; done; fi\n')
    (tmp_path / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(system, "_watched", set())
    monkeypatch.setattr(system, "_seen", {})
    monkeypatch.setattr(system, "_seen_at", {"tick": 0, "cgroups": {}})
    monkeypatch.setattr(system, "SERVICES_CGROUP", cgroups)

    def populated(unit: str, yes: bool) -> None:
        (cgroups / unit).mkdir(parents=True, exist_ok=True)
        (cgroups / unit / "cgroup.events").write_text(f"populated {int(yes)}\nfrozen 0\n")

    def state(unit: str, value: str) -> None:
        (states / unit).write_text(value + "\n")

    def asked() -> list[str]:
        return [c for c in calls.read_text().splitlines() if c.startswith("is-active")] if calls.exists() else []
    return SimpleNamespace(calls=calls, populated=populated, state=state, asked=asked)


def test_unit_states_cost_one_systemctl_for_every_unit_and_a_change_is_read_afresh(fake_systemd):
    fake_systemd.populated("munge.service", True)
    system.new_tick()
    assert system.unit_state("munge.service") == "active"
    assert system.unit_states("munge.service", "slurmd.service") == {"munge.service": "active", "slurmd.service": "active"}
    fake_systemd.populated("munge.service", False)   # munge stopped: every state is read again
    fake_systemd.state("munge.service", "inactive")
    system.new_tick()
    for unit in ("slurmd.service", "munge.service", "slurmd.service"):
        system.unit_state(unit)
    assert fake_systemd.asked() == ["is-active munge.service", "is-active slurmd.service",
                                    "is-active munge.service slurmd.service"], "the next tick: one call for all"
    system.run("systemctl", "start", "--no-block", "slurmd.service")
    system.unit_state("munge.service")
    assert fake_systemd.calls.read_text().splitlines()[-2:] == ["start --no-block slurmd.service",
                                                                "is-active munge.service slurmd.service"], "a start: read again"


def test_steady_unit_states_are_kept_until_a_cgroup_fills_or_empties_or_for_a_few_ticks(fake_systemd):
    fake_systemd.populated("slurmd.service", True)
    fake_systemd.state("slurmctld.service", "inactive")
    system.new_tick()
    system.unit_states("slurmd.service", "slurmctld.service")
    for _ in range(system.STEADY_TICKS - 1):
        system.new_tick()
        assert system.unit_states("slurmd.service", "slurmctld.service") == {
            "slurmd.service": "active", "slurmctld.service": "inactive"}
    assert len(fake_systemd.asked()) == 1, "steady: nothing asked again"
    system.new_tick()
    system.unit_state("slurmd.service")
    assert len(fake_systemd.asked()) == 2, f"after {system.STEADY_TICKS} ticks: asked again"

    fake_systemd.populated("slurmd.service", False)    # slurmd died
    fake_systemd.state("slurmd.service", "failed")
    system.new_tick()
    assert system.unit_state("slurmd.service") == "failed", "seen at the very next tick"
    fake_systemd.populated("slurmctld.service", True)  # someone started slurmctld
    fake_systemd.state("slurmctld.service", "active")
    system.new_tick()
    assert system.unit_state("slurmctld.service") == "active"
    assert len(fake_systemd.asked()) == 4

    fake_systemd.populated("slurmd.service", True)     # systemd restarts it: on its way
    fake_systemd.state("slurmd.service", "activating")
    for _ in range(2):
        system.new_tick()
        assert system.unit_state("slurmd.service") == "activating"
    assert len(fake_systemd.asked()) == 6, "a unit on its way is asked about every tick"


def test_a_complete_read_of_the_unit_states_makes_them_steady_again_at_once(fake_systemd):
    fake_systemd.populated("slurmd.service", True)
    system.new_tick()
    system.unit_states("slurmd.service")
    for _ in range(system.STEADY_TICKS):
        system.new_tick()
    assert not system.units_steady(), "kept STEADY_TICKS ticks: read again"
    system.unit_states("slurmd.service")
    assert system.units_steady(), "read again and all steady: the agent needs not wait another tick to know"


def test_a_file_written_if_changed_is_not_read_again_until_someone_else_changes_it(tmp_path, monkeypatch):
    path, reads = tmp_path / "slurm.conf", []
    real_read = system.read_bytes
    monkeypatch.setattr(system, "read_bytes", lambda p: reads.append(p) or real_read(p))
    assert system.write_if_changed(path, b"one\n") is True
    assert system.write_if_changed(path, b"one\n") is False and reads == [], "what it left there, unread"
    path.write_bytes(b"changed by hand\n")   # in place: same inode, another size
    assert system.write_if_changed(path, b"one\n") is True and path.read_bytes() == b"one\n"
    replaced = tmp_path / "other"
    replaced.write_bytes(b"two\n")
    os.replace(replaced, path)   # an editor's save: another inode, the same size
    assert system.write_if_changed(path, b"one\n") is True and path.read_bytes() == b"one\n"
    with open(path, "r+b") as f:
        f.write(b"two\n")   # in place, the same size: on kernels before 6.13 its ctime may not move
    monkeypatch.setattr(system, "RECHECK_AFTER", 0.0)   # ... so a kept file is read again now and then
    assert system.write_if_changed(path, b"one\n") is True and path.read_bytes() == b"one\n"
    monkeypatch.undo()
    monkeypatch.setattr(system, "read_bytes", lambda p: reads.append(p) or real_read(p))
    fresh, reads[:] = tmp_path / "fresh", []
    fresh.write_bytes(b"same\n")   # there before the agent: read once, then known
    assert system.write_if_changed(fresh, b"same\n") is False and reads == [fresh]
    assert system.write_if_changed(fresh, b"same\n") is False and reads == [fresh]


def test_wg_peers_are_read_every_few_ticks_and_afresh_after_a_change(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    (tmp_path / "wg").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n'
                                 'if [ "$1" = show ]; then printf "priv\\tpub\\t51820\\toff\\n'
                                 'KEYA\\t(none)\\t10.42.0.12:51820\\t10.99.0.2/32\\t0\\t0\\t0\\t25\\n"; fi\n')
    (tmp_path / "wg").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(system, "_tick", 0)
    monkeypatch.setattr(system, "_kept", {})
    wanted = {"KEYA": {"name": "node2", "endpoint": "10.42.0.12:51820", "allowed_ip": "10.99.0.2/32"}}
    shows = lambda: [c for c in calls.read_text().splitlines() if c.startswith("show")]   # noqa: E731
    assert wireguard.current_peers() == wireguard.current_peers()
    assert len(shows()) == 2, "outside the agent's ticks (a candidate), read every time"
    system.new_tick()
    assert wireguard.sync_peers(wanted) == [] and "KEYA" in wireguard.current_peers()
    assert len(shows()) == 3, "the mesh and the status file share one read"
    for _ in range(system.STEADY_TICKS - 1):
        system.new_tick()
        assert wireguard.sync_peers(wanted) == []
    assert len(shows()) == 3, "nothing changed: nothing read again"
    system.new_tick()
    wireguard.current_peers()
    assert len(shows()) == 4, f"read again after {system.STEADY_TICKS} ticks"
    new = {"KEYB": {"name": "node3", "endpoint": "10.42.0.13:51820", "allowed_ip": "10.99.0.3/32"}}
    assert len(wireguard.sync_peers(new)) == 2
    wireguard.current_peers()
    assert len(shows()) == 5, "a change made is read again"
    assert "set wg0 peer KEYA remove" in calls.read_text()


def test_accounting_starts_mariadb_without_waiting_and_goes_on_only_once_it_is_up(tmp_path, monkeypatch):
    calls, states = tmp_path / "calls", tmp_path / "states"
    (tmp_path / "systemctl").write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\n'
        f'if [ "$1" = is-active ]; then shift; for u in "$@"; do grep "^$u " {states} | cut -d" " -f2; done; fi\n')
    (tmp_path / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(system, "_watched", set())
    dbd = accounting.Accounting()
    for mariadb, expected in (("inactive", "start --no-block mariadb.service"), ("activating", None),
                              ("failed", "start --no-block mariadb.service")):
        states.write_text(f"mariadb.service {mariadb}\nslurmdbd.service inactive\n")
        calls.write_text("")
        system.new_tick()
        dbd.ensure()
        started = [c for c in calls.read_text().splitlines() if not c.startswith("is-active")]
        assert started == ([expected] if expected else []), (mariadb, started)
        assert not dbd.granted, "no account and no slurmdbd before MariaDB is up"
