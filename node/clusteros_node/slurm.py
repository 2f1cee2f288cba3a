"""SLURM: a munge key from the cluster secret, slurm.conf from membership, daemons by role.

The controller runs slurmctld (configless: SlurmctldParameters=enable_configless)
and slurmd; workers run slurmd with --conf-server and fetch slurm.conf and cgroup.conf
from it. Nodes address each other over wg0.

Jobs are confined by cgroup v2 (proctrack, task and accounting through cgroups): a step
gets the cores and memory it asked for and no more, and one that exceeds --mem is killed
by the kernel in its own cgroup, which slurmstepd reports as out of memory. MPI steps
are wired up by PMIx. With accounting, slurmctld sends job records to slurmdbd on the
storage node (see accounting.py).
"""

from __future__ import annotations

import pwd
from pathlib import Path

from clusteros_node import system
from clusteros_node.messages import derive_key

SLURM_CONF = Path("/etc/slurm/slurm.conf")
CGROUP_CONF = Path("/etc/slurm/cgroup.conf")
SLURMD_DEFAULTS = Path("/etc/default/slurmd")
MUNGE_KEY = Path("/etc/munge/munge.key")


def munge_key(secret: bytes) -> bytes:
    """The same on every node, derived where it is used: never sent over the network."""
    return derive_key(secret, "clusteros munge key", 128)


def render_conf(cluster: str, controller: str, controller_ip: str, nodes: dict[str, dict],
                partitions: list[dict], accounting_host: str | None = None) -> str:
    """slurm.conf for these members; with `accounting_host`, job records go to its slurmdbd."""
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
        "ProctrackType=proctrack/cgroup",
        "TaskPlugin=task/cgroup,task/affinity",
        "JobAcctGatherType=jobacct_gather/cgroup",
        # Every 5 s, not 30: the peak memory of a short job is seen at all.
        "JobAcctGatherFrequency=task=5",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "MpiDefault=pmix",
        "ReturnToService=2",
        "SlurmdTimeout=30",
        "SlurmctldTimeout=30",
        "InactiveLimit=0",
        "JobCompType=jobcomp/none",
        *_accounting_lines(accounting_host),
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


def _accounting_lines(host: str | None) -> list[str]:
    if host is None:
        return ["AccountingStorageType=accounting_storage/none"]
    return ["AccountingStorageType=accounting_storage/slurmdbd", f"AccountingStorageHost={host}"]


def render_cgroup_conf() -> str:
    """cgroup.conf: a step is held to its cores, its memory (with no swap beyond it) and its devices."""
    return "\n".join([
        "# Written by the ClusterOS node-agent. Do not edit: it is rewritten.",
        "CgroupPlugin=cgroup/v2",
        "ConstrainCores=yes",
        "ConstrainRAMSpace=yes",
        "AllowedRAMSpace=100",
        "ConstrainSwapSpace=yes",
        "AllowedSwapSpace=0",
        "ConstrainDevices=yes",
    ]) + "\n"


def ensure_munge(secret: bytes) -> None:
    user = pwd.getpwnam("munge")
    if system.write_if_changed(MUNGE_KEY, munge_key(secret), mode=0o400, owner=(user.pw_uid, user.pw_gid)):
        system.run("systemctl", "restart", "munge.service")
    elif system.unit_state("munge.service") != "active":
        system.run("systemctl", "start", "munge.service")


def _needs_restart(before: str, after: str) -> bool:
    """Nodes and the accounting host are read at start only (a reconfigure cannot change them)."""
    def at_start(conf: str) -> list[str]:
        return [line for line in conf.splitlines() if line.startswith(("NodeName=", "AccountingStorage"))]
    return at_start(before) != at_start(after)


class Slurm:
    """Keeps the node's SLURM daemons matching its role; acts only on change."""

    def __init__(self, pushed_file: Path | None = None):
        self.role: str | None = None
        self.controller_ip: str | None = None
        self.pushed = system.Kept(pushed_file)   # the slurm.conf every slurmd was last told to take

    def as_controller(self, conf: str) -> None:
        if self.role != "controller":
            SLURMD_DEFAULTS.write_text('SLURMD_OPTIONS=""\n')
        before = system.read_text(SLURM_CONF)
        system.write_if_changed(CGROUP_CONF, render_cgroup_conf().encode())
        system.write_if_changed(SLURM_CONF, conf.encode())
        self._run_slurmctld(before, conf)
        if self.role != "controller":
            system.run("systemctl", "restart", "slurmd.service")
        elif system.unit_state("slurmd.service") != "active":
            system.run("systemctl", "start", "slurmd.service")
        self.role = "controller"

    def _run_slurmctld(self, before: str, conf: str) -> None:
        """Start slurmctld, or bring it to `conf`; then make every slurmd take `conf` too.

        A new node or a new accounting host takes a restart (slurmctld 22.05 exits on a
        reconfigure that adds nodes). A restart tells no slurmd, and a worker's slurmd
        keeps the slurm.conf it fetched, so srun there would not know the new node: the
        reconfigure that follows sends the new files to every slurmd (configless).

        What was pushed is kept on disk: a controller back from a reboot with the same
        slurm.conf has nothing to tell the slurmds. A needless reconfigure seconds after
        slurmctld's start lost a batch job it was launching then (never sent to its node,
        requeued as NODE_FAIL minutes later: seen in a clean-clone run with 22.05.8).
        """
        if system.unit_state("slurmctld.service") != "active":
            system.run("systemctl", "start", "slurmctld.service")
        elif _needs_restart(before, conf):
            system.run("systemctl", "restart", "slurmctld.service")
        elif self.pushed.text != conf:
            system.run("scontrol", "reconfigure")   # fails while slurmctld is starting: retried next tick
            self.pushed.set(conf)

    def as_worker(self, controller_ip: str, registered: bool) -> None:
        """Run slurmd against the controller once the controller lists this node."""
        if self.role != "worker" or self.controller_ip != controller_ip:
            if system.unit_state("slurmctld.service") == "active":
                system.run("systemctl", "stop", "slurmctld.service")
            SLURM_CONF.unlink(missing_ok=True)
            CGROUP_CONF.unlink(missing_ok=True)
            SLURMD_DEFAULTS.write_text(f'SLURMD_OPTIONS="--conf-server {controller_ip}"\n')
            if system.unit_state("slurmd.service") == "active":
                system.run("systemctl", "stop", "slurmd.service")
            self.role, self.controller_ip = "worker", controller_ip
        if registered and system.unit_state("slurmd.service") != "active":
            system.run("systemctl", "start", "slurmd.service", check=False)

    def state(self) -> dict:
        return {"role": self.role or "none", "slurmctld": system.unit_state("slurmctld.service"),
                "slurmd": system.unit_state("slurmd.service"), "controller_ip": self.controller_ip}
