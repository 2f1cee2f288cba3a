"""A rack on one host: N real node-agents, each in its own network namespace, a bridge as their LAN.

Each agent is the node-agent itself (`clusteros-node run --no-system`: the whole protocol,
nothing changed on this machine), with its own identity, its own copy of a credential the
test's owner key signed, and its own state folder. Used by test/e2e/test_rack.py and by
bench/run.py (time to converge, and bytes each node sends a second, for 8, 32 and 64).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "node"))
sys.path.insert(0, str(ROOT))

from clusteros.spec import check_spec_data, node_view  # noqa: E402
from clusteros_node import credential, identity  # noqa: E402

BRIDGE = "cosrack0"
PREFIX = "cosr"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@dataclass
class Rack:
    size: int
    work: Path
    processes: list[subprocess.Popen]

    def status(self, number: int) -> dict:
        try:
            return json.loads((self.work / f"n{number}" / "run" / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def converged(self) -> bool:
        """Every agent lists every other as live, and all follow one controller."""
        statuses = [self.status(n) for n in range(1, self.size + 1)]
        if any(not s for s in statuses):
            return False
        controllers = {s.get("controller") for s in statuses}
        full = all(sum(m["live"] for m in s["members"]) == self.size for s in statuses)
        return full and len(controllers) == 1 and None not in controllers

    def sent_bytes(self) -> list[int]:
        """Bytes each agent has sent on its LAN link (the host side of its veth received them)."""
        return [int(Path(f"/sys/class/net/{PREFIX}{n}h/statistics/rx_bytes").read_text())
                for n in range(1, self.size + 1)]

    def running(self) -> int:
        return sum(p.poll() is None for p in self.processes)


def _owner_and_credential(work: Path, cluster: str) -> tuple[Path, bytes]:
    key = work / "owner"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    body = {"cluster": cluster, "generation": 1, "secret": os.urandom(32).hex(), "ssh_keys": {}}
    message = work / "credential.msg"
    message.write_bytes(credential.signed_message(body))
    sh("ssh-keygen", "-Y", "sign", "-q", "-f", str(key), "-n", credential.NAMESPACE, str(message))
    signature = message.with_name(message.name + ".sig").read_text()
    return key.with_suffix(".pub"), json.dumps({"credential": body, "signature": signature}).encode()


def _node_folder(work: Path, spec: dict, number: int, owner_pub: Path, bundle: bytes) -> Path:
    folder = work / f"n{number}"
    for sub in ("run", "lib", "etc", "credentials"):
        (folder / sub).mkdir(parents=True)
    me = identity.known_macs(spec)[spec["nodes"][number - 1]["mac"]]
    (folder / "run" / "identity.json").write_text(me.to_json())
    (folder / "etc" / "owner.pub").write_bytes(owner_pub.read_bytes())
    (folder / "lib" / "credential.json").write_bytes(bundle)
    os.chmod(folder / "lib" / "credential.json", 0o600)
    return folder


def _plumb(spec: dict, number: int) -> None:
    """Namespace cosrN, its veth (the node's MAC) on the bridge, its LAN address."""
    ns, host, inside = f"{PREFIX}{number}", f"{PREFIX}{number}h", f"{PREFIX}{number}n"
    node = spec["nodes"][number - 1]
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", host, "type", "veth", "peer", "name", inside)
    sh("ip", "link", "set", inside, "netns", ns)
    sh("ip", "link", "set", host, "master", BRIDGE, "up")
    sh("ip", "-n", ns, "link", "set", inside, "address", node["mac"], "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ns, "address", "add", f"{node['address']}/{spec['network']['lan']['subnet'].split('/')[1]}",
       "dev", inside)


def start(size: int, work: Path, controller_grace: int = 300) -> Rack:
    stop(size)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec = node_view(check_spec_data(f"cluster: {{name: rack, controller_grace: {controller_grace}}}\n"
                                     f"nodes: {{count: {size}}}\n"
                                     "services: {slurm: {enabled: false}, k3s: {enabled: false}}\n".encode(),
                                     "rack", work))
    (work / "spec.json").write_text(json.dumps(spec))
    owner_pub, bundle = _owner_and_credential(work, "rack")
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "link", "set", BRIDGE, "up")
    processes = []
    env = dict(os.environ, PYTHONPATH=str(ROOT / "node"))
    for number in range(1, size + 1):
        folder = _node_folder(work, spec, number, owner_pub, bundle)
        _plumb(spec, number)
        log = open(folder / "agent.log", "w")
        processes.append(subprocess.Popen(
            ["ip", "netns", "exec", f"{PREFIX}{number}", sys.executable, "-S", "-m", "clusteros_node",
             "--spec", str(work / "spec.json"), "run", "--root", str(folder), "--no-system"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
    return Rack(size, work, processes)


def stop(size: int, rack: Rack | None = None) -> None:
    for process in (rack.processes if rack else []):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in (rack.processes if rack else []):
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    for number in range(1, 65):
        subprocess.run(["ip", "netns", "del", f"{PREFIX}{number}"], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{PREFIX}{number}h"], capture_output=True)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


def until_converged(rack: Rack, timeout: float) -> float:
    """Seconds from now until the rack agrees (raises TimeoutError after `timeout`)."""
    started = time.monotonic()
    while not rack.converged():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{rack.size} agents did not agree within {timeout:.0f}s")
        time.sleep(0.5)
    return time.monotonic() - started
