"""What the owner does to a running cluster from the build host: let a machine in, replace the credential.

Both go through one member, over SSH, and the member's agent does the rest:
- `clusteros approve FINGERPRINT`: that member binds the waiting machine and hands it
  the credential over wg0 (clusteros_node.enroll);
- `clusteros rotate`: a new secret and the next generation, signed here with the owner's
  key; that member takes it and hands it on to every member (one out of reach as soon as
  it is heard again, within the previous generation's grace). A member that was off longer
  then asks to join again, and is approved like a new machine;
- `clusteros serve-pxe`: the PXE set (`doit pxe`, no secret in it) goes to that member, which
  then netboots the machines of its LAN (clusteros_node.pxeserve) until `--stop`.

`--via` names the member: a node number of the test cluster (default 1), or user@host for
a real one (plain `ssh`, with your own keys and config).
"""

from __future__ import annotations

import shlex
import subprocess
import tarfile
from pathlib import Path

from clusteros import credentials
from clusteros.errors import ClusterOSError, UsageError
from clusteros.progress import Progress


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


def _send_tar(spec: dict, via: str, command: str, directory: Path, names: tuple[str, ...]) -> int:
    """Stream `names` from `directory` as a tar into `command`'s stdin on the member, with progress."""
    progress = Progress("serve-pxe", "sending the PXE set", sum((directory / n).stat().st_size for n in names))
    sent = 0

    def counted(source):
        class Counting:
            def read(self, size=-1):
                nonlocal sent
                data = source.read(size)
                sent += len(data)
                progress.update(sent)
                return data
        return Counting()

    with subprocess.Popen(_ssh_argv(spec, via, command), stdin=subprocess.PIPE) as ssh:
        with tarfile.open(fileobj=ssh.stdin, mode="w|") as tar:
            for name in names:
                with open(directory / name, "rb") as source:
                    tar.addfile(tar.gettarinfo(directory / name, arcname=name), counted(source))
        ssh.stdin.close()
        progress.update(sent, final=True)
        return ssh.wait(timeout=300)


def approve(spec: dict, fingerprint: str, via: str = "1") -> int:
    return on_member(spec, via, f"sudo clusteros-node approve {shlex.quote(fingerprint)}")


def rotate(spec: dict, via: str = "1") -> int:
    number = credentials.rotate(spec)
    print(f"clusteros: credential generation {number} made and signed; handing it to the cluster through {via}")
    return on_member(spec, via, "sudo clusteros-node rotate", stdin=credentials.bundle_path(spec).read_bytes())


PXE_UNIT = "clusteros-pxe"


def serve_pxe(spec: dict, via: str, pxe_dir: Path, node_options: list[str]) -> int:
    """Hand the PXE set to member `via` and start it netbooting its LAN (a transient unit: a reboot ends it)."""
    from clusteros_node.pxeserve import SET_FILES
    missing = [name for name in SET_FILES if not (pxe_dir / name).is_file()]
    if missing:
        raise ClusterOSError(f"{pxe_dir} lacks {', '.join(missing)}", fix="build the PXE set with `doit pxe`")
    status = _send_tar(spec, via, "sudo clusteros-node receive-pxe", pxe_dir, SET_FILES)
    if status != 0:
        return status
    options = " ".join(shlex.quote(option) for option in node_options)
    start = (f"sudo systemctl stop {PXE_UNIT} 2>/dev/null; sudo systemctl reset-failed {PXE_UNIT} 2>/dev/null; "
             f"sudo systemd-run --quiet --unit={PXE_UNIT} --description='ClusterOS: netboot this LAN' "
             f"clusteros-node serve-pxe {options} && {_AWAIT_SERVING}")
    return on_member(spec, via, start)


# Until the server says it serves (or has stopped): its first lines are the answer to give.
_AWAIT_SERVING = (f"for i in $(seq 30); do sleep 1; "
                  f"if sudo journalctl -q -u {PXE_UNIT} -n 20 | grep -q 'serve-pxe: netbooting'; then "
                  f"sudo journalctl -q -u {PXE_UNIT} -o cat -n 3; exit 0; fi; "
                  f"systemctl is-active -q {PXE_UNIT} || {{ sudo journalctl -q -u {PXE_UNIT} -o cat -n 20; exit 1; }}; "
                  f"done; echo 'serve-pxe: not serving after 30 s'; exit 1")


def stop_pxe(spec: dict, via: str) -> int:
    return on_member(spec, via, f"sudo systemctl stop {PXE_UNIT} && echo 'serve-pxe: stopped'")
