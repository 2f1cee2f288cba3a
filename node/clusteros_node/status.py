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
    if status.get("mode") == "candidate":
        return render_candidate(status)
    now = now or time.time()
    credential = status.get("credential") or {}
    lines = [f"node {status['name']}: {status['role']}, controller {status['controller'] or '(electing)'}",
             f"  LAN {status['lan_address'] or '-'}   wg0 {status['wg_address'] or '-'}   "
             f"credential generation {credential.get('generation', '-')} ({credential.get('id', '-')})"]
    if status.get("stale"):
        lines.append("  WARNING: this status is more than 30s old: the agent may be stuck or stopped")
    lines += _members(status) + _pending(status) + _peers(status, now)
    slurm = status["slurm"]
    lines.append(f"\nslurm: {slurm.get('role')}, slurmctld {slurm.get('slurmctld', '-')}, slurmd {slurm.get('slurmd', '-')}")
    lines.append(f"k3s: {status['k3s']}")
    lines += _storage(status.get("storage") or {})
    if status["errors"]:
        lines.append("\nerrors (retried every tick):")
        lines += [f"  {step}: {message}" for step, message in sorted(status["errors"].items())]
    dropped = {k: status.get(f"{k}_packets") for k in ("dropped", "refused", "rate_limited")}
    if any(dropped.values()):
        lines.append("\npackets not taken: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in dropped.items() if v)
                     + " (see the agent's journal)")
    return "\n".join(lines)


def _members(status: dict) -> list[str]:
    lines = ["\nmembers:"]
    for m in status["members"]:
        seen = "never since the agent started" if m["last_seen"] is None else _ago(m["last_seen"])
        lines.append(f"  {m['name']:<16} {m['lan_ip']:<15} wg {m['wg_ip']:<15} "
                     f"{'live' if m['live'] else 'DOWN'} (seen {seen})")
    return lines


def _pending(status: dict) -> list[str]:
    if not status.get("pending"):
        return []
    lines = ["\nasking to join (approve with `clusteros-node approve FINGERPRINT`):"]
    for p in status["pending"]:
        lines.append(f"  {p['fingerprint']}  {p['name']:<16} {p['lan_ip']:<15} (asked {_ago(p['asked'])})")
    return lines


def _peers(status: dict, now: float) -> list[str]:
    lines = ["\nwireguard peers:"]
    for p in status["wireguard"] or []:
        hs = p["latest_handshake"]
        lines.append(f"  {p['peer']:<16} {p['endpoint']:<21} handshake {_ago(now - hs) if hs else 'never'}")
    return lines + (["  (none)"] if not status["wireguard"] else [])


def _storage(storage: dict) -> list[str]:
    if not storage:
        return []
    parts = [f"{what} " + ", ".join(f"{unit} {state}" for unit, state in units.items())
             for what, units in storage.items() if isinstance(units, dict) and units]
    return [f"storage node {storage.get('node', '-')}" + (": " + "; ".join(parts) if parts else "")]


def render_candidate(status: dict) -> str:
    lines = [f"node {status['name']}: not a member ({status['why']})",
             f"  LAN {status['lan_address'] or '-'}",
             f"  key fingerprint {status['fingerprint']}: on any member, `clusteros-node approve {status['fingerprint']}`"]
    if status.get("last_error"):
        lines.append(f"  last attempt: {status['last_error']}")
    return "\n".join(lines)
