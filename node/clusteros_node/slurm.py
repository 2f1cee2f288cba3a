"""SLURM: a munge key from the cluster secret, slurm.conf from membership, daemons by role.

The controller runs slurmctld (configless: SlurmctldParameters=enable_configless)
and slurmd; workers run slurmd with --conf-server and fetch slurm.conf from it.
Nodes address each other over wg0.
"""

from __future__ import annotations

import pwd
from pathlib import Path

from clusteros_node import system
from clusteros_node.messages import derive_key

SLURM_CONF = Path("/etc/slurm/slurm.conf")
SLURMD_DEFAULTS = Path("/etc/default/slurmd")
MUNGE_KEY = Path("/etc/munge/munge.key")


def munge_key(secret: bytes) -> bytes:
    """The same on every node, derived where it is used: never sent over the network."""
    return derive_key(secret, "clusteros munge key", 128)


def render_conf(cluster: str, controller: str, controller_ip: str, nodes: dict[str, dict],
                partitions: list[dict]) -> str:
    lines = [
        "# Written by the ClusterOS node-agent from cluster membership. Do not edit: it is rewritten.",
        f"ClusterName={cluster}",
        f"SlurmctldHost={controller}({controller_ip})",
        "SlurmctldParameters=enable_configless",
        "AuthType=auth/munge",
        "CryptoType=crypto/munge",
        "SlurmUser=slurm",
        "SlurmdUser=root",
        "StateSaveLocation=/var/lib/slurm/slurmctld",
        "SlurmdSpoolDir=/var/lib/slurm/slurmd",
        "SlurmctldPidFile=/run/slurmctld.pid",
        "SlurmdPidFile=/run/slurmd.pid",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "MpiDefault=none",
        "ReturnToService=2",
        "SlurmdTimeout=30",
        "SlurmctldTimeout=30",
        "InactiveLimit=0",
        "JobCompType=jobcomp/none",
        "AccountingStorageType=accounting_storage/none",
        "",
    ]
    for name in sorted(nodes):
        node = nodes[name]
        lines.append(f"NodeName={name} NodeAddr={node['wg_ip']} CPUs={node['cpus']} "
                     f"RealMemory={node['memory_mb']} State=UNKNOWN")
    lines.append("")
    for part in partitions:
        members = ",".join(n for n in part.get("nodes", sorted(nodes)) if n in nodes) or "ALL"
        lines.append(f"PartitionName={part['name']} Nodes={members} Default={'YES' if part.get('default') else 'NO'} "
                     f"MaxTime={part.get('max_time', 'INFINITE')} State=UP")
    return "\n".join(lines) + "\n"


def ensure_munge(secret: bytes) -> None:
    user = pwd.getpwnam("munge")
    if system.write_if_changed(MUNGE_KEY, munge_key(secret), mode=0o400, owner=(user.pw_uid, user.pw_gid)):
        system.run("systemctl", "restart", "munge.service")
    elif system.unit_state("munge.service") != "active":
        system.run("systemctl", "start", "munge.service")


class Slurm:
    """Keeps the node's SLURM daemons matching its role; acts only on change."""

    def __init__(self):
        self.role: str | None = None
        self.controller_ip: str | None = None

    def as_controller(self, conf: str) -> None:
        if self.role != "controller":
            SLURMD_DEFAULTS.write_text('SLURMD_OPTIONS=""\n')
        changed = system.write_if_changed(SLURM_CONF, conf.encode())
        if system.unit_state("slurmctld.service") == "active":
            if changed:
                system.run("scontrol", "reconfigure", check=False)
        else:
            system.run("systemctl", "start", "slurmctld.service")
        if self.role != "controller":
            system.run("systemctl", "restart", "slurmd.service")
        elif system.unit_state("slurmd.service") != "active":
            system.run("systemctl", "start", "slurmd.service")
        self.role = "controller"

    def as_worker(self, controller_ip: str, registered: bool) -> None:
        """Run slurmd against the controller once the controller lists this node."""
        if self.role != "worker" or self.controller_ip != controller_ip:
            if system.unit_state("slurmctld.service") == "active":
                system.run("systemctl", "stop", "slurmctld.service")
            SLURM_CONF.unlink(missing_ok=True)
            SLURMD_DEFAULTS.write_text(f'SLURMD_OPTIONS="--conf-server {controller_ip}"\n')
            if system.unit_state("slurmd.service") == "active":
                system.run("systemctl", "stop", "slurmd.service")
            self.role, self.controller_ip = "worker", controller_ip
        if registered and system.unit_state("slurmd.service") != "active":
            system.run("systemctl", "start", "slurmd.service", check=False)

    def state(self) -> dict:
        return {"role": self.role or "none", "slurmctld": system.unit_state("slurmctld.service"),
                "slurmd": system.unit_state("slurmd.service"), "controller_ip": self.controller_ip}
