"""K3s: server on the controller, agents join over wg0, with a token derived from the cluster secret.

The token reaches k3s in a 0600 file (--token-file), never on a command line: argv is
world-readable (`ps`), and systemd puts a transient unit's command into its description
and the journal. The binary is optional (services.k3s in the spec): without
/usr/local/bin/k3s the agent reports "not provided" and carries on.
"""

from __future__ import annotations

from pathlib import Path

from clusteros_node import system
from clusteros_node.messages import derive_key

BINARY = Path("/usr/local/bin/k3s")
TOKEN_FILE = Path("/var/lib/clusteros/k3s/token")
UNIT = "clusteros-k3s.service"


def token(secret: bytes) -> str:
    return derive_key(secret, "clusteros k3s token", 32).hex()


def command(role: str, wg_ip: str, controller_ip: str, token_file: Path = TOKEN_FILE) -> list[str]:
    common = ["--token-file", str(token_file), "--node-ip", wg_ip, "--flannel-iface", "wg0"]
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
        token_changed = system.write_if_changed(TOKEN_FILE, (token(secret) + "\n").encode(), mode=0o600)
        wanted = (role, controller_ip)
        if self.running_as == wanted and not token_changed and system.unit_state(UNIT) == "active":
            return
        system.run("systemctl", "stop", UNIT, check=False)
        system.run("systemctl", "reset-failed", UNIT, check=False)
        system.run("systemd-run", f"--unit={UNIT}", "--description=K3s, started by the ClusterOS node-agent",
                   "--property=Restart=always", "--property=KillMode=process",
                   *command(role, wg_ip, controller_ip))
        self.running_as = wanted
