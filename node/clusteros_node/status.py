"""`clusteros-node status`: what this node's agent knows, as a table or JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path

STATUS_FILE = Path("/run/clusteros/status.json")
STALE_SECONDS = 30


def load(path: Path = STATUS_FILE) -> dict:
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"error": f"no status in {path}: is node-agent.service running?"}
    status["stale"] = time.time() - status.get("updated", 0) > STALE_SECONDS
    return status


def _ago(seconds: float) -> str:
    return "never" if seconds is None else f"{seconds:.0f}s ago"


def render(status: dict, now: float | None = None) -> str:
    if "error" in status:
        return status["error"]
    now = now or time.time()
    lines = [f"node {status['name']}: {status['role']}, controller {status['controller'] or '(electing)'}",
             f"  LAN {status['lan_address'] or '-'}   wg0 {status['wg_address']}"]
    if status.get("stale"):
        lines.append("  WARNING: this status is more than 30s old: the agent may be stuck or stopped")
    lines.append("\nmembers:")
    for m in status["members"]:
        lines.append(f"  {m['name']:<16} {m['lan_ip']:<15} wg {m['wg_ip']:<15} "
                     f"{'live' if m['live'] else 'DOWN'} (seen {_ago(m['last_seen'])})")
    lines.append("\nwireguard peers:")
    for p in status["wireguard"] or []:
        hs = p["latest_handshake"]
        lines.append(f"  {p['peer']:<16} {p['endpoint']:<21} handshake {_ago(now - hs) if hs else 'never'}")
    if not status["wireguard"]:
        lines.append("  (none)")
    slurm = status["slurm"]
    lines.append(f"\nslurm: {slurm.get('role')}, slurmctld {slurm.get('slurmctld', '-')}, slurmd {slurm.get('slurmd', '-')}")
    lines.append(f"k3s: {status['k3s']}")
    if status["errors"]:
        lines.append("\nerrors (retried every tick):")
        lines += [f"  {step}: {message}" for step, message in sorted(status["errors"].items())]
    if status.get("dropped_packets"):
        lines.append(f"\ndropped {status['dropped_packets']} packets that were not valid announcements of this cluster")
    return "\n".join(lines)
