"""The cluster keeps its own time: the controller serves its clock over wg0, members follow it.

Every node's chrony steps its clock whenever it is more than a second off (static, in the
image: /etc/chrony/conf.d/clusteros.conf). What changes with the controller is written
here: a member's source (the controller's wg0 address), and on the controller alone,
`local stratum 10`, so that it serves its own clock when it has no upstream. Only the
controller may: chrony ignores a source whose stratum equals its own local stratum, so
members that were local references too would never follow it. A node whose clock is wrong
is put right, not shut out (nothing in the protocol trusts a sender's clock).
"""

from __future__ import annotations

from pathlib import Path

from clusteros_node import system

SOURCES = Path("/etc/chrony/sources.d/clusteros.sources")
ROLE_CONF = Path("/etc/chrony/conf.d/clusteros-role.conf")
HEADER = "# Written by the ClusterOS node-agent"
# Polls of 4 to 16 s (chrony's defaults: 64 to 1024 s). After a step, chrony's statistics for a
# source start again and it needs a few fresh samples before it corrects the clock: at a 64 s poll
# that was three minutes with a clock 100 s off; at 16 s it is well under one. The controller is
# on the cluster's own wg0 link, so the traffic (one small packet a node every 16 s) costs nothing.
MINPOLL, MAXPOLL = 2, 4


def sources(role: str, controller_wg_ip: str) -> str:
    if role == "controller":
        return f"{HEADER}: this node is the controller; members follow it.\n"
    return (f"{HEADER}: follow the cluster's controller over wg0.\n"
            f"server {controller_wg_ip} iburst minpoll {MINPOLL} maxpoll {MAXPOLL} prefer\n")


def role_conf(role: str) -> str:
    if role == "controller":
        return f"{HEADER}: the controller serves its own clock when it has no upstream source.\nlocal stratum 10\n"
    return f"{HEADER}: a member follows the controller and serves no clock of its own.\n"


def ensure(role: str, controller_wg_ip: str) -> bool:
    """Point chrony at the controller (or make it the cluster's clock); True if anything changed.
    A new source is a reload; a new role restarts chrony (`local` is read at start only)."""
    new_role = system.write_if_changed(ROLE_CONF, role_conf(role).encode())
    new_source = system.write_if_changed(SOURCES, sources(role, controller_wg_ip).encode())
    if new_role:
        system.run("systemctl", "restart", "chrony.service", check=False)
    elif new_source:
        system.run("chronyc", "reload", "sources", check=False)
    return new_role or new_source
