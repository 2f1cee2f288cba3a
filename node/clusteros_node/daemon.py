"""`clusteros-node run`: a member's agent, or a candidate's, depending on the credential this node holds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from clusteros_node import agent, identity, lanaddr, system
from clusteros_node import credential as credential_mod
from clusteros_node import wifi
from clusteros_node.candidate import Candidate
from clusteros_node.places import Places


def located(spec: dict, me: identity.Identity, places: Places) -> identity.Identity:
    """The identity with its LAN address: the plan's, or (a machine the spec does not list) DHCP's or a free one."""
    if me.address is not None:
        return me
    machine_id = (Path("/etc/machine-id").read_text().strip() if Path("/etc/machine-id").exists() else me.name)
    found = lanaddr.acquire(spec["network"]["lan"]["subnet"], machine_id, places.lib / "lan-address")
    if found is None:
        return me
    agent.log(f"lan: {found[1]} on {found[0]}")
    return dataclasses.replace(me, interface=found[0], address=found[1])


def install_ssh_keys(credential: credential_mod.Credential, places: Places) -> None:
    """The SSH keys the credential brings (users the spec gives none): for sshd now, and for every boot
    after (clusteros-identity reads /var/lib/clusteros/ssh-keys)."""
    lines = "".join(f"{user} {key}\n" for user, keys in sorted(credential.ssh_keys.items()) for key in keys)
    system.write_if_changed(places.lib / "ssh-keys", lines.encode())
    for user, keys in credential.ssh_keys.items():
        system.write_if_changed(places.run / "authorized_keys" / user, "".join(k + "\n" for k in keys).encode())


def superseded(places: Places) -> int:
    try:
        return int((places.lib / "superseded").read_text())
    except (OSError, ValueError):
        return 0


def start(spec: dict, places: Places, apply_system: bool = True) -> int:
    try:
        me = identity.load(places.run)
    except (OSError, ValueError, TypeError) as exc:
        agent.log(f"node-agent: no identity in {places.run}/identity.json ({exc}): has clusteros-identity run?")
        return 1
    if apply_system:
        me = located(spec, me, places)
    credential, notes = credential_mod.load(spec["cluster"]["name"], places.credential_sources, places.owner_key)
    for note in notes:
        agent.log(f"credential: passed over {note}")
    why = "it holds no credential of this cluster"
    if credential is not None and credential.generation <= superseded(places):
        why = f"its credential (generation {credential.generation}) was replaced by its owner"
        credential = None
    if credential is None:
        return Candidate(spec, me, places, why, apply_system).run()
    if apply_system:
        install_ssh_keys(credential, places)
        wifi.follow(credential, places)   # a no-op where it joined at boot
    agent.Agent(spec, me, credential, places, apply_system).run()
    return 0
