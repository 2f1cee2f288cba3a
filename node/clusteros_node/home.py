"""The shared home: /home served by the storage node over NFSv4 on wg0, mounted on first use elsewhere.

The server exports /home to the mesh subnet only, root squashed (root on a member is
nobody on the share). The image makes its NFS server v4 only (TCP 2049, no rpcbind) with
a 15 s grace period, so clients reclaim their state soon after it reboots.

A member mounts it `hard`: while the server is away, I/O on /home waits and then goes
on; nothing fails and nothing needs remounting. /home is mounted on first use
(automount), so no boot waits for the server, and only once the agent has heard the
storage node. Its units are transient, made by `systemd-mount` through systemd's API:
units written to /run would need a `systemctl daemon-reload`, which runs every
generator and reads every unit file again (7 CPU-seconds of an emulated node, at the
moment it forms its cluster).
"""

from __future__ import annotations

from pathlib import Path

from clusteros_node import system

EXPORTS = Path("/etc/exports.d/clusteros.exports")
HEADER = "# Written by the ClusterOS node-agent. Do not edit: it is rewritten."
# hard: I/O waits for a rebooting server instead of failing; timeo is in tenths of a second.
MOUNT_OPTIONS = "rw,hard,proto=tcp,vers=4.2,timeo=100,retrans=3,_netdev"


def exports(mesh_subnet: str) -> str:
    return f"{HEADER}\n/home {mesh_subnet}(rw,sync,no_subtree_check,root_squash)\n"


DESCRIPTION = "Shared home from the storage node (NFSv4 over wg0)"


def mount_argv(server_ip: str) -> list[str]:
    """/home's automount and mount units, made transient (they go with the boot; the agent makes
    them again at the next). At shutdown the server may be gone first (the whole cluster powering
    off): a hard mount would hold the node for the stop timeout, so the unmount is forced and lazy."""
    return ["systemd-mount", "--automount=yes", "--type=nfs4", f"--options={MOUNT_OPTIONS}",
            f"--description={DESCRIPTION}", "--property=TimeoutSec=90",
            "--property=ForceUnmount=yes", "--property=LazyUnmount=yes", f"{server_ip}:/home", "/home"]


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
        self.units = system.unit_states("home.automount", "home.mount")
        if "active" in self.units.values():   # waiting on /home, or /home mounted already
            return
        if "failed" in self.units.values():   # a failed transient unit stays loaded, and its name taken
            system.run("systemctl", "reset-failed", "home.automount", "home.mount", check=False)
        try:   # a unit still loaded (stopped, or written by an older agent) starts as it is
            system.run("systemctl", "start", "home.automount")
        except system.CommandError:   # none is: make them (systemd-mount refuses a name that is loaded)
            system.run(*mount_argv(server_ip))

    def state(self) -> dict:
        """As last seen by as_server or as_client (a tick ago at most)."""
        return {unit.replace(".service", ""): state for unit, state in self.units.items()}
