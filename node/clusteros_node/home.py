"""The shared home: /home served by the storage node over NFSv4 on wg0, mounted on first use elsewhere.

The server exports /home to the mesh subnet only, root squashed (root on a member is
nobody on the share). The image makes its NFS server v4 only (TCP 2049, no rpcbind) with
a 15 s grace period, so clients reclaim their state soon after it reboots.

A member mounts it `hard`: while the server is away, I/O on /home waits and then goes
on; nothing fails and nothing needs remounting. The units are written at run time, as
the server's address is the agent's to know, and /home is mounted on first use
(automount), so no boot waits for the server.
"""

from __future__ import annotations

from pathlib import Path

from clusteros_node import system

EXPORTS = Path("/etc/exports.d/clusteros.exports")
UNIT_DIR = Path("/run/systemd/system")
HEADER = "# Written by the ClusterOS node-agent. Do not edit: it is rewritten."
# hard: I/O waits for a rebooting server instead of failing; timeo is in tenths of a second.
MOUNT_OPTIONS = "rw,hard,proto=tcp,vers=4.2,timeo=100,retrans=3,_netdev"


def exports(mesh_subnet: str) -> str:
    return f"{HEADER}\n/home {mesh_subnet}(rw,sync,no_subtree_check,root_squash)\n"


def mount_unit(server_ip: str) -> str:
    return f"""{HEADER}
[Unit]
Description=Shared home from the storage node (NFSv4 over wg0)
After=network.target

[Mount]
What={server_ip}:/home
Where=/home
Type=nfs4
Options={MOUNT_OPTIONS}
TimeoutSec=90
# At shutdown the server may be gone first (the whole cluster powering off): a hard mount
# would hold the node for the stop timeout. Forced and lazy, the unmount does not wait.
ForceUnmount=yes
LazyUnmount=yes
"""


def automount_unit() -> str:
    return f"""{HEADER}
[Unit]
Description=Shared home, mounted on first use

[Automount]
Where=/home
"""


class Home:
    """Keeps this node serving or mounting the shared home; acts only on change."""

    def __init__(self):
        self.units: dict[str, str] = {}

    def as_server(self, mesh_subnet: str) -> None:
        changed = system.write_if_changed(EXPORTS, exports(mesh_subnet).encode())
        self.units = system.unit_states("nfs-server.service")
        if self.units["nfs-server.service"] != "active":
            system.run("systemctl", "start", "nfs-server.service")
        elif changed:
            system.run("exportfs", "-ra")

    def as_client(self, server_ip: str) -> None:
        changed = system.write_if_changed(UNIT_DIR / "home.mount", mount_unit(server_ip).encode())
        changed |= system.write_if_changed(UNIT_DIR / "home.automount", automount_unit().encode())
        if changed:
            system.run("systemctl", "daemon-reload")
        self.units = system.unit_states("home.automount", "home.mount")
        if self.units["home.automount"] != "active":
            system.run("systemctl", "start", "home.automount")

    def state(self) -> dict:
        """As last seen by as_server or as_client (a tick ago at most)."""
        return {unit.replace(".service", ""): state for unit, state in self.units.items()}
