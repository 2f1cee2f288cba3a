"""K3s: server on the controller, agents join over wg0, with a token derived from the cluster secret.

The binary is optional (services.k3s in the spec): without /usr/local/bin/k3s the
agent reports "not provided" and carries on.
"""

from __future__ import annotations

from pathlib import Path

from clusteros_node import system
from clusteros_node.messages import derive_key

BINARY = Path("/usr/local/bin/k3s")
UNIT = "clusteros-k3s.service"


def token(secret: bytes) -> str:
    return derive_key(secret, "clusteros k3s token", 32).hex()


def command(role: str, secret: bytes, wg_ip: str, controller_ip: str) -> list[str]:
    common = ["--token", token(secret), "--node-ip", wg_ip, "--flannel-iface", "wg0"]
    if role == "controller":
        return [str(BINARY), "server", "--write-kubeconfig-mode", "0600", *common]
    return [str(BINARY), "agent", "--server", f"https://{controller_ip}:6443", *common]


class K3s:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.running_as: tuple | None = None

    def state(self) -> str:
        if not self.enabled:
            return "disabled"
        if not BINARY.exists():
            return "not provided"
        return system.unit_state(UNIT)

    def ensure(self, role: str, secret: bytes, wg_ip: str, controller_ip: str) -> None:
        if self.state() in ("disabled", "not provided"):
            return
        wanted = (role, controller_ip)
        if self.running_as == wanted and system.unit_state(UNIT) == "active":
            return
        system.run("systemctl", "stop", UNIT, check=False)
        system.run("systemctl", "reset-failed", UNIT, check=False)
        system.run("systemd-run", f"--unit={UNIT}", "--property=Restart=always", "--property=KillMode=process",
                   *command(role, secret, wg_ip, controller_ip))
        self.running_as = wanted
