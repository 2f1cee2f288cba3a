"""What the owner does to a running cluster from the build host: let a machine in, replace the credential.

Both go through one member, over SSH, and the member's agent does the rest:
- `clusteros approve FINGERPRINT`: that member binds the waiting machine and hands it
  the credential over wg0 (clusteros_node.enroll);
- `clusteros rotate`: a new secret and the next generation, signed here with the owner's
  key; that member takes it and hands it on to every live member. A member that was off
  then asks to join again, and is approved like a new machine.

`--via` names the member: a node number of the test cluster (default 1), or user@host for
a real one (plain `ssh`, with your own keys and config).
"""

from __future__ import annotations

import shlex
import subprocess

from clusteros import credentials
from clusteros.errors import UsageError


def _ssh_argv(spec: dict, via: str, command: str) -> list[str]:
    if via.isdigit():
        from clusteros.vm import cluster   # the test cluster: its node handles know the port and key
        nodes = cluster.running_nodes(spec)
        if not 1 <= int(via) <= len(nodes):
            raise UsageError(f"--via {via}: the test cluster has nodes 1 to {len(nodes)}")
        return nodes[int(via) - 1].ssh.argv(command)
    if "@" not in via:
        raise UsageError(f"--via {via!r}: give a node number of the test cluster, or user@host",
                         fix="e.g. --via 2, or --via admin@10.42.0.11")
    return ["ssh", "-o", "BatchMode=yes", via, "--", command]


def on_member(spec: dict, via: str, command: str, stdin: bytes | None = None) -> int:
    """Run `command` on the member `via`; its output goes to ours. Returns its exit status."""
    return subprocess.run(_ssh_argv(spec, via, command), input=stdin, timeout=300).returncode


def approve(spec: dict, fingerprint: str, via: str = "1") -> int:
    return on_member(spec, via, f"sudo clusteros-node approve {shlex.quote(fingerprint)}")


def rotate(spec: dict, via: str = "1") -> int:
    number = credentials.rotate(spec)
    print(f"clusteros: credential generation {number} made and signed; handing it to the cluster through {via}")
    return on_member(spec, via, "sudo clusteros-node rotate", stdin=credentials.bundle_path(spec).read_bytes())
